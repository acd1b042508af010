"""Several gateways (``[broker] gateways = N``): the broker is gateway 0, the others are
processes of their own. Each admits its own requests, gets their results straight from
the last stage, fails them when an instance that held them dies, and one that dies is
restarted on its addresses without touching the others' requests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from alto_bus.deploy.cli import _format_status
from alto_bus.deploy.status_probe import StatusProbe
from tests.integration.test_launch import launched_blocking
from tests.integration.test_pipeline import three_stage
from tests.support import running, status, wait_for

H = "tests.integration.handlers"


def test_each_gateway_admits_its_own_requests_and_gets_their_exact_results():
    with running(three_stage(gateways=3, heartbeat_interval=0.2)) as sup:
        addresses = sup.addresses["gateway"].split(",")
        assert len(set(addresses)) == 3
        clients = [Client(a, timeout=30) for a in addresses]
        try:
            texts = [f"request {i} of {'abc'[i % 3]}" for i in range(300)]
            futures = [clients[i % 3].submit(t) for i, t in enumerate(texts)]
            for text, f in zip(texts, futures, strict=True):
                assert [w["word"] for w in f.result(timeout=30)] == text.upper().split()
        finally:
            for c in clients:
                c.close()

        def every_gateway_reported():
            gws = status(sup)["gateways"]
            return gws if all(g.get("completed") == 100 for g in gws) else None

        gws = wait_for(every_gateway_reported, 10, "each gateway to report its 100 requests")
        assert [g["index"] for g in gws] == [0, 1, 2] and all(g["up"] for g in gws)
        assert [g["gateway"] for g in gws] == addresses
        st = status(sup)
        total = st["gateway"]
        assert (total["admitted"], total["completed"], total["failed"]) == (300, 300, 0)
        text = _format_status(st)  # what alto status prints
        for g, address in enumerate(addresses):
            assert f"gateway {g} {address}: 0 in flight, 100 completed, 0 failed" in text


def test_an_instance_that_dies_fails_the_requests_of_every_gateway_at_once(tmp_path: Path):
    gate = tmp_path / "gate"  # never made: the instance holds every request until it dies
    topo = {"broker": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3, "gateways": 2}, "stage": [
        {"name": "work", "kind": "function", "handler": f"{H}:block_until", "threads": 8}]}
    with running(topo) as sup:
        clients = [Client(a, timeout=120) for a in sup.addresses["gateway"].split(",")]
        try:
            futures = [c.submit({"text": f"t{i}", "wait_for": str(gate)}) for i in range(4) for c in clients]
            (inst,) = wait_for(lambda: [i for i in status(sup)["stages"]["work"]["instances"] if i["depth"] >= 8],
                               10, "the instance to hold all 8 requests")
            os.kill(inst["pid"], signal.SIGKILL)
            t0 = time.monotonic()
            for f in futures:
                with pytest.raises(RequestError) as err:
                    f.result(timeout=30)
                assert err.value.stage == "work" and f"pid {inst['pid']}" in err.value.message
            assert time.monotonic() - t0 < 10, "failed by their deadline, not by the death"
        finally:
            for c in clients:
                c.close()


@pytest.fixture
def launched(tmp_path):
    yield from launched_blocking(tmp_path, gateways=2)


def test_a_gateway_that_dies_is_restarted_and_only_its_requests_are_lost(launched, tmp_path: Path):
    launched.read_until("ready")
    first, second = launched.lines[0].split()[1].split(",")
    control = launched.lines[1].split()[1]
    gate = tmp_path / "gate"
    with StatusProbe(control) as probe:
        st = probe.query(timeout=10)
    pid = st["gateways"][1]["pid"]
    with Client(first, timeout=300) as c0, Client(second, timeout=300, gateway_silence=30.0) as c1:
        assert c1.submit({"text": "warm"}).result(timeout=30) == "WARM"  # its PONG names the run
        mine = [c0.submit({"text": f"a{i}", "wait_for": str(gate)}) for i in range(20)]
        theirs = [c1.submit({"text": f"b{i}", "wait_for": str(gate)}) for i in range(20)]
        def held() -> int:
            with StatusProbe(control) as probe:
                return sum(i["depth"] for i in probe.query(timeout=5)["stages"]["work"]["instances"])

        wait_for(lambda: held() >= 8, 10, "the instances to take requests of both gateways")
        os.kill(pid, signal.SIGKILL)
        launched.read_until("gateway#1 restarted", prefix=True)
        t0 = time.monotonic()
        for f in theirs:
            with pytest.raises(RequestError) as err:
                f.result(timeout=20)   # their own deadline is 300 s, the silence limit 30 s
            assert err.value.stage == "gateway" and second in err.value.message
        assert time.monotonic() - t0 < 20
        gate.touch()
        assert [f.result(timeout=30) for f in mine] == [f"A{i}" for i in range(20)]
        deadline = time.monotonic() + 30
        while True:  # the restarted gateway has its view of the broker within a tick or two
            try:
                assert c1.submit({"text": "after"}).result(timeout=30) == "AFTER"
                break
            except RequestError as exc:
                assert "unavailable" in exc.message and time.monotonic() < deadline, exc
