"""A real topology (separate processes, real sockets): results, streams, errors, bad frames."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import pytest
import zmq

from alto_bus import AsyncClient, Client, RequestError
from alto_bus.protocol import wire
from tests.support import running, status

H = "tests.integration.handlers"

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def three_stage(replicas: tuple[int, int, int] = (2, 3, 2), **broker) -> dict:
    return {
        "broker": broker,
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": replicas[0]},
            {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split",
             "replicas": replicas[1]},
            {"name": "tag", "kind": "function", "handler": f"{H}:tag", "input": "upper",
             "replicas": replicas[2]},
        ],
    }


@pytest.fixture(scope="module")
def pipeline():
    with running(three_stage()) as sup:
        yield sup


def random_text(rng: random.Random) -> str:
    # 0..8 words: the empty fan-out (END with n = 0) must complete too.
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))


def test_2000_concurrent_requests_each_get_exactly_their_result(pipeline):
    rng = random.Random(7)
    texts = [f"{random_text(rng)} r{i}" for i in range(2000)]
    with Client(pipeline.addresses["gateway"]) as client:
        futures = [client.submit(t) for t in texts]
        results = [f.result(timeout=120) for f in futures]
    for text, result in zip(texts, results):
        assert [r["word"] for r in result] == [w.upper() for w in text.split()]
    # The work was spread over the replicas of the last stage.
    pids = {r["pid"] for result in results for r in result}
    assert len(pids) == 2


def test_empty_fan_out_gives_an_empty_list(pipeline):
    with Client(pipeline.addresses["gateway"]) as client:
        assert client.submit("").result(timeout=30) == []


def test_stream_yields_partials_then_the_result(pipeline):
    with Client(pipeline.addresses["gateway"]) as client:
        stream = client.stream("one two three")
        parts = list(stream)
        result = stream.result(timeout=30)
    assert sorted(p.path for p in parts) == [(0,), (1,), (2,)]
    assert all(p.final for p in parts)
    assert [r["word"] for r in result] == ["ONE", "TWO", "THREE"]


def test_asyncio_client(pipeline):
    async def main():
        async with AsyncClient(pipeline.addresses["gateway"]) as client:
            results = await asyncio.gather(*(client.submit(f"w{i} x{i}") for i in range(200)))
            parts = [p async for p in client.stream("a b")]
            return results, parts

    results, parts = asyncio.run(main())
    assert [[r["word"] for r in res] for res in results] == [[f"W{i}", f"X{i}"] for i in range(200)]
    assert [p.data["word"] for p in sorted(parts, key=lambda p: p.path)] == ["A", "B"]


def test_alto_submit_prints_the_result(pipeline):
    out = subprocess.run([sys.executable, "-m", "alto_bus", "submit", "--gateway",
                          pipeline.addresses["gateway"], "--compact", json.dumps("hi there")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [r["word"] for r in json.loads(out.stdout)] == ["HI", "THERE"]


def test_payload_msgpack_cannot_carry_is_refused_at_submit(pipeline):
    with Client(pipeline.addresses["gateway"]) as client:
        with pytest.raises(TypeError, match="msgpack"):
            client.submit(object())


def test_random_bytes_on_every_socket_are_counted_and_dropped(pipeline):
    st = status(pipeline)
    targets = [st["addresses"]["gateway"], st["addresses"]["control"]]
    inboxes = [i["address"] for s in st["stages"].values() for i in s["instances"]]
    rng = random.Random(3)
    ctx = zmq.Context.instance()
    garbage = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(20)]
    garbage += [b"\x93\x01\xa3abc", b"\x92\x09\x00", b"\xc1", b"\x91\x01"]  # wrong version, bad stage...
    for address in targets:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(address)
        for g in garbage:
            sock.send(g)
        sock.send_multipart([b"a", b"b", b"c"])
        sock.close(linger=2000)
    # Well-formed frames for the wrong receiver: a stage's frame at the gateway, the
    # gateway's at a stage. Each is dropped whole, never read as a result or an item.
    item = [wire.data([10**9], 0, "x", True, 0)]
    for address, misaddressed in [(a, wire.encode_frame(wire.GATEWAY_STAGE, item)) for a in inboxes] + [
            (st["addresses"]["results"], wire.encode_frame("tag", item))]:
        sock = ctx.socket(zmq.PUSH)
        sock.connect(address)
        for g in garbage + [misaddressed]:
            sock.send(g)
        sock.close(linger=2000)
    # Every process still serves, and correct results still come back.
    with Client(pipeline.addresses["gateway"]) as client:
        assert [r["word"] for r in client.submit("still alive").result(timeout=30)] == ["STILL", "ALIVE"]
    assert all(c.proc.poll() is None for c in pipeline.children)
    after = status(pipeline)
    assert after["gateway"]["bad_frames"] >= 2 * len(garbage) + 1
    assert after["gateway"]["late_messages"] == st["gateway"]["late_messages"]


def test_handler_error_becomes_an_error_result_and_the_worker_keeps_serving(tmp_path):
    topo = {
        "broker": {},
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 1},
            {"name": "check", "kind": "function", "handler": f"{H}:explode", "input": "split", "replicas": 1},
        ],
    }
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        bad = [client.submit(f"fine boom{i} fine") for i in range(20)]
        good = [client.submit(f"fine{i} ok") for i in range(20)]
        for f in bad:
            with pytest.raises(RequestError) as err:
                f.result(timeout=30)
            assert err.value.stage == "check"
            assert "ValueError" in err.value.message and "cannot take 'boom" in err.value.message
        assert [f.result(timeout=30) for f in good] == [[f"fine{i}", "ok"] for i in range(20)]
        assert all(c.proc.poll() is None for c in sup.children)


def test_drop_and_nested_fan_out(tmp_path):
    topo = {
        "broker": {},
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
            {"name": "short", "kind": "function", "handler": f"{H}:keep_short", "input": "split", "replicas": 2},
            {"name": "letters", "kind": "function", "handler": f"{H}:letters", "input": "short", "replicas": 3},
        ],
    }
    rng = random.Random(11)
    texts = [random_text(rng) for _ in range(300)]
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = [f.result(timeout=60) for f in [client.submit(t) for t in texts]]
    for text, result in zip(texts, results):
        assert result == [c for w in text.split() if len(w) <= 5 for c in w]


def test_single_item_pipeline_returns_one_value_and_a_dropped_request_an_empty_list():
    topo = {"stage": [{"name": "short", "kind": "function", "handler": f"{H}:keep_short", "replicas": 1}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        assert client.submit("tiny").result(timeout=30) == "tiny"
        assert client.submit("enormous").result(timeout=30) == []


def test_async_generator_handler_fans_out():
    topo = {"stage": [{"name": "split", "kind": "function", "handler": f"{H}:async_split", "replicas": 2}]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        assert client.submit("x y z").result(timeout=30) == ["x", "y", "z"]


def test_every_address_can_be_ipc(tmp_path):
    topo = {
        "broker": {"control": f"ipc://{tmp_path}/control", "gateway": f"ipc://{tmp_path}/gateway",
                   "results": f"ipc://{tmp_path}/results"},
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2,
             "inbox": f"ipc://{tmp_path}/split-{{instance}}"},
            {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split", "replicas": 2,
             "inbox": f"ipc://{tmp_path}/upper-{{instance}}"},
        ],
    }
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        assert sup.addresses["gateway"].startswith("ipc://")
        assert client.submit("over unix sockets").result(timeout=30) == ["OVER", "UNIX", "SOCKETS"]
        inboxes = [i["address"] for s in status(sup)["stages"].values() for i in s["instances"]]
        assert len(set(inboxes)) == 4 and all(a.startswith("ipc://") for a in inboxes)
