"""Well-formed msgpack with wrong types, sizes and values on every socket of a running
topology: no process dies, every bad message is counted by socket and reason, and the
topology then serves exact results.

Random bytes rarely decode (test_pipeline keeps that test); these messages do decode.
Each is a valid message of its kind with one field replaced by a value of another type,
size or range, so that every field of every kind is hit.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_bus import Client
from alto_bus.protocol import wire
from tests.support import running, status

H = "tests.integration.handlers"
TOPOLOGY = {"broker": {}, "stage": [
    {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
    {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split", "replicas": 2},
]}
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=10)
# Valid messages of each kind (request ids far from any the gateway gives out).
path = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(lambda p: [10**12, *p])
left_ms = st.none() | st.integers(0, 10**12)  # a request's time left, from nothing to 31 years
DATA_PLANE = [
    st.tuples(st.just(wire.DATA), path, st.integers(0, 3), value, st.booleans(), st.integers(0, 3),
              st.none(), st.integers(0, 3), left_ms),
    st.tuples(st.just(wire.END), path, st.integers(0, 3), st.integers(0, 3), left_ms),
    st.tuples(st.just(wire.DROP), path, st.integers(0, 3), left_ms),
    st.tuples(st.just(wire.ERROR), path, st.text(max_size=8), st.text(max_size=8), st.integers(0, 3)),
]
CLIENT_PLANE = [
    st.tuples(st.just(wire.SUBMIT), st.integers(10**9, 2 * 10**9), value, st.booleans(), st.floats(0.1, 1.0)),
    st.tuples(st.just(wire.CANCEL), st.integers(0, 2**32)),
    st.tuples(st.just(wire.BYE)),
]
# Control bodies for every op a stranger could send; "shutdown" is the one op that does
# what it says (alto stop), so it is left out. A "ready" names no stage of the topology.
CONTROL = {
    "hello": {"stage": "nosuchstage", "pid": 1, "host": "h"},
    "ready": {"stage": "nosuchstage", "address": "tcp://127.0.0.1:9", "pid": 1, "host": "h"},
    "heartbeat": {"depth": 0, "held": [1], "stats": {"x": 1}, "prompt": {"prefill_tokens": 1}, "spills": {}},
    "lost": {"iid": 1, "rids": [1], "older": []},
    "pool_info": {"pool": "nosuchpool"},
    "leave": {}, "bye": {}, "status": {},
    # A stranger posing as a gateway (without alto launch's token), or reporting as one.
    "gw_hello": {"index": 1, "gateway": "tcp://127.0.0.1:9", "results": "tcp://127.0.0.1:9", "token": "guess"},
    "gw_report": {"ended": [10**12], "oldest": 0, "status": {"completed": 5}},
    "gw_cancel": {"rids": [10**12]},
}


@st.composite
def mutated(draw: st.DrawFn, kinds: list) -> list:
    """A valid message of a random kind with one field (not its kind) replaced, or cut short."""
    msg = list(draw(st.one_of(kinds)))
    if len(msg) > 1:
        i = draw(st.integers(1, len(msg) - 1))
        if draw(st.booleans()):
            msg[i] = draw(value)
        else:
            msg = msg[:i]
    return msg


@st.composite
def control_frame(draw: st.DrawFn) -> bytes:
    op = draw(st.sampled_from(sorted(CONTROL)))
    body = dict(CONTROL[op])
    if body and draw(st.booleans()):
        body[draw(st.sampled_from(sorted(body)))] = draw(value)
    else:
        body = draw(st.dictionaries(st.text(max_size=6), value, max_size=3)) if draw(st.booleans()) else body
    if op == "ready" and body.get("stage") in ("split", "upper"):
        body["stage"] = "nosuchstage"
    return msgpack.packb([wire.VERSION, op, body])


@pytest.mark.parametrize("gateways", [1, 2])
def test_wrong_types_sizes_and_values_on_every_socket_harm_nothing(gateways: int):
    """With several gateways, those beside the broker get the same on their own sockets."""
    ctx = zmq.Context.instance()
    with running({**TOPOLOGY, "broker": {"gateways": gateways}}) as sup:
        st0 = status(sup)
        inboxes = [(name, i["address"]) for name, s in st0["stages"].items() for i in s["instances"]]
        results = [g["results"] for g in st0["gateways"]]
        gateway = ctx.socket(zmq.DEALER)  # a DEALER connected to several gateways takes turns
        control = ctx.socket(zmq.DEALER)
        pushes = [ctx.socket(zmq.PUSH) for _ in inboxes + results]
        try:
            for g in st0["gateways"]:
                gateway.connect(g["gateway"])
            control.connect(st0["addresses"]["control"])
            for sock, address in zip(pushes, [a for _, a in inboxes] + results):
                sock.connect(address)
            targets = [(sock, name) for sock, (name, _) in zip(pushes, inboxes)]
            targets += [(sock, wire.GATEWAY_STAGE) for sock in pushes[len(inboxes):]]
            sent = {"client": 0, "control": 0, "data": 0}

            @SETTINGS
            @given(st.lists(mutated(CLIENT_PLANE), min_size=1, max_size=4),
                   st.lists(mutated(DATA_PLANE), min_size=1, max_size=4), control_frame(),
                   st.integers(0, len(targets) - 1))
            def send(client_msgs: list, data_msgs: list, control_msg: bytes, target: int) -> None:
                gateway.send(msgpack.packb([wire.VERSION, *client_msgs]))
                control.send(control_msg)
                sock, stage = targets[target]
                sock.send(msgpack.packb([wire.VERSION, stage, *data_msgs]))
                sent["client"] += len(client_msgs)
                sent["control"] += 1
                sent["data"] += len(data_msgs)

            send()
            assert sent["control"] == SETTINGS.max_examples  # every example reached the sockets
            control.send(msgpack.packb([wire.VERSION, "gw_hello", CONTROL["gw_hello"]]))  # unchanged, once
            # Every process still serves, and exact results come back.
            with Client(sup.addresses["gateway"]) as client:
                futures = {f"w{i} x{i} y{i}": client.submit(f"w{i} x{i} y{i}") for i in range(50)}
                for text, fut in futures.items():
                    assert fut.result(timeout=60) == text.upper().split()
            assert all(c.proc.poll() is None for c in sup.children), [c.proc.poll() for c in sup.children]
            # Instances report their counts with their next heartbeat: wait for it (bounded).
            deadline = time.monotonic() + 10
            while True:
                after = status(sup)
                inbox_bad = sum(sum(i["bad"].values()) for s in after["stages"].values() for i in s["instances"])
                posed = "gw_hello token" in after["gateway"]["bad_by_socket"].get("control", {})
                if (inbox_bad and posed) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            for sock in [gateway, control, *pushes]:
                sock.close(linger=1000)
    bad = after["gateway"]["bad_by_socket"]
    # Bad messages were refused on each of the broker's sockets, counted by a fixed reason.
    assert set(bad) >= {"client", "control", "results"}, bad
    assert any(r.startswith("SUBMIT ") for r in bad["client"]), bad["client"]
    assert "gw_hello token" in bad["control"], "a stranger's gateway hello was taken"
    assert all(len(r) < 40 for counts in bad.values() for r in counts), bad
    assert inbox_bad > 0, "no inbox counted a bad message"
    for g in after["gateways"][1:]:  # and on the sockets of each gateway beside it
        assert g["up"] and set(g["bad_by_socket"]) >= {"client", "results"}, g
