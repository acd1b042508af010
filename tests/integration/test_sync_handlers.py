"""Sync handlers that block: with ``threads`` they run off the event loop, so other
requests move past a blocked one; on the loop, the heartbeats say the loop is stalled."""

from __future__ import annotations

import time
from pathlib import Path

from alto_bus import Client
from tests.support import running, status

H = "tests.integration.handlers"


def one_stage(threads: int) -> dict:
    return {"broker": {"heartbeat_interval": 0.2}, "stage": [
        {"name": "work", "kind": "function", "handler": f"{H}:block_until", "replicas": 1, "threads": threads},
    ]}


def test_with_threads_a_blocked_handler_does_not_hold_back_other_requests(tmp_path: Path):
    gate = tmp_path / "go"
    with running(one_stage(threads=2)) as sup, Client(sup.addresses["gateway"], timeout=60) as client:
        blocked = client.submit({"text": "first", "wait_for": str(gate)})
        free = [client.submit({"text": f"next{i}"}) for i in range(5)]
        assert [f.result(timeout=30) for f in free] == [f"NEXT{i}" for i in range(5)]
        assert not blocked.done()          # still waiting for its file, on its own thread
        gate.touch()
        assert blocked.result(timeout=30) == "FIRST"


def test_on_the_event_loop_a_blocking_handler_shows_as_stalled(tmp_path: Path):
    gate = tmp_path / "go"
    with running(one_stage(threads=0)) as sup, Client(sup.addresses["gateway"], timeout=60) as client:
        blocked = client.submit({"text": "first", "wait_for": str(gate)})
        deadline, stalled = time.monotonic() + 20, 0.0
        while time.monotonic() < deadline and stalled < 1.0:  # five heartbeats of 0.2 s
            (inst,) = status(sup)["stages"]["work"]["instances"]
            stalled = inst["stalled"]
            time.sleep(0.1)
        gate.touch()
        assert blocked.result(timeout=30) == "FIRST"
    assert stalled >= 1.0, "the instance's heartbeats did not say its loop was stalled"


def test_a_generator_on_threads_fans_out_in_order():
    topo = {"broker": {}, "stage": [
        {"name": "split", "kind": "function", "handler": f"{H}:split", "threads": 2},
        {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split", "threads": 1},
    ]}
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=60) as client:
        texts = [" ".join(f"w{i}x{j}" for j in range(i % 7)) for i in range(60)]
        futures = [client.submit(t) for t in texts]
        assert [f.result(timeout=60) for f in futures] == [t.upper().split() for t in texts]
