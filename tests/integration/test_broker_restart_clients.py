"""A broker that dies under ``alto launch`` comes back on the same addresses within a second,
so its clients never find the gateway silent: each PONG names the gateway's run, and a
client that sees a new one fails its requests in flight at once, naming the gateway,
instead of waiting for their own deadlines. Requests sent afterwards succeed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from alto_bus.deploy.status_probe import StatusProbe
from tests.integration.test_launch import launched_blocking
from tests.support import wait_for


@pytest.fixture
def launched(tmp_path):
    yield from launched_blocking(tmp_path)


def test_requests_in_flight_when_the_broker_restarts_fail_at_once_and_new_ones_succeed(launched, tmp_path: Path):
    launched.read_until("ready")
    gateway, control = launched.lines[0].split()[1], launched.lines[1].split()[1]
    gate = tmp_path / "gate"
    with StatusProbe(control) as probe:
        st = probe.query(timeout=10)
    workers = {i["pid"] for s in st["stages"].values() for i in s["instances"]}
    with open(f"/proc/{launched.proc.pid}/task/{launched.proc.pid}/children") as f:
        (broker,) = {int(p) for p in f.read().split()} - workers
    # gateway_silence 30 s: only the new run's PONG can end these requests early.
    with Client(gateway, timeout=300, gateway_silence=30.0) as client:
        # The first request goes with a ping; its PONG (before its result) names the run.
        assert client.submit({"text": "warm"}).result(timeout=30) == "WARM"
        futures = [client.submit({"text": f"t{i}", "wait_for": str(gate)}) for i in range(50)]

        def admitted() -> int:  # in flight means admitted: not still on its way to the gateway
            with StatusProbe(control) as probe:
                return probe.query(timeout=5)["gateway"]["in_flight"]

        wait_for(lambda: admitted() == 50, 10, "the gateway to admit the 50 requests")
        t0 = time.monotonic()
        os.kill(broker, signal.SIGKILL)
        launched.read_until("broker restarted", prefix=True)
        for f in futures:
            with pytest.raises(RequestError) as err:
                f.result(timeout=20)   # their own deadline is 300 s, the silence limit 30 s
            assert err.value.stage == "gateway" and gateway in err.value.message
            assert "restarted" in err.value.message
        assert time.monotonic() - t0 < 20
        gate.touch()
        deadline = time.monotonic() + 30
        while True:  # the instances register again within a few heartbeats
            try:
                assert client.submit({"text": "after"}).result(timeout=30) == "AFTER"
                break
            except RequestError as exc:
                assert "unavailable" in exc.message and time.monotonic() < deadline, exc
