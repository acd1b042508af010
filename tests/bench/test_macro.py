"""Macro benchmarks: one stage hop against raw pyzmq in the same run, and a small pipeline
end to end (run with `pytest --benchmark-only`)."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
from pathlib import Path

import pytest
import zmq

from alto_bus import Client
from tests.support import running

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_hop", ROOT / "scripts" / "bench_hop.py")
bench_hop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_hop)

N = 20_000


@pytest.fixture(scope="module")
def hops():
    ctx = zmq.Context.instance()
    sink = ctx.socket(zmq.PULL)
    sink_addr = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
    ready = mp.Event()
    relay_in = f"tcp://127.0.0.1:{bench_hop._free_port()}"
    relay = mp.Process(target=bench_hop.raw_relay, args=(relay_in, sink_addr, ready))
    relay.start()
    broker = bench_hop.FakeBroker(sink_addr)
    broker.start()
    worker = mp.Process(target=bench_hop.alto_worker, args=(broker.address, mp.Event()))
    worker.start()
    try:
        assert ready.wait(10) and broker.registered.wait(30)
        yield {"sink": sink, "raw": relay_in, "alto": broker.inbox}
    finally:
        push = ctx.socket(zmq.PUSH)
        push.connect(relay_in)
        push.send(b"STOP")
        push.close(linger=1000)
        broker.shutdown()
        for p in (relay, worker):
            p.join(5)
            if p.is_alive():
                p.kill()
        sink.close(linger=0)


@pytest.mark.parametrize("kind", ["raw", "alto"])
def test_one_hop_20k_token_batches(benchmark, hops, kind):
    rate = benchmark.pedantic(bench_hop.throughput, args=(hops[kind], hops["sink"], N, bench_hop.TOKENS16,
                                                          kind == "alto"), rounds=3, iterations=1)
    benchmark.extra_info["messages_per_s"] = rate
    assert rate > 0


@pytest.mark.parametrize("kind", ["raw", "alto"])
def test_one_hop_latency(benchmark, hops, kind):
    lat = benchmark.pedantic(bench_hop.latency, args=(hops[kind], hops["sink"], 200, kind == "alto"),
                             rounds=3, iterations=1)
    assert len(lat) == 200


def test_small_pipeline_500_requests(benchmark):
    topo = {"stage": [
        {"name": "split", "kind": "function", "handler": "tests.integration.handlers:split", "replicas": 2},
        {"name": "upper", "kind": "function", "handler": "tests.integration.handlers:upper", "input": "split",
         "replicas": 2},
    ]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        def burst():
            return [f.result(timeout=60) for f in [client.submit(f"a{i} b{i} c{i}") for i in range(500)]]

        results = benchmark.pedantic(burst, rounds=3, iterations=1)
    assert results[7] == ["A7", "B7", "C7"]
