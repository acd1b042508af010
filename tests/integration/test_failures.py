"""Failures a user must see as clear errors, never as hangs: dead instances, overload,
deadlines, clients that go away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from alto_bus import Client, RequestError
from tests.support import wait_for, running, status

H = "tests.integration.handlers"


def slow(replicas: int = 2, concurrency: int = 256, **broker) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3, **broker},
        "stage": [{"name": "slow", "kind": "function", "handler": f"{H}:slow_echo",
                   "replicas": replicas, "concurrency": concurrency}],
    }


def test_a_dead_instance_fails_the_requests_it_held_and_the_rest_go_on():
    with running(slow(replicas=2)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit({"sleep": 3.0, "i": i}) for i in range(20)]

        def both_busy():  # every request arrived, and each instance holds some
            insts = status(sup)["stages"]["slow"]["instances"]
            return insts if all(i["depth"] > 0 for i in insts) and sum(i["depth"] for i in insts) == 20 else None

        insts = wait_for(both_busy, 10, "both instances to report holding all 20 requests")
        victim = insts[0]
        os.kill(victim["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        ok, failed = [], []
        for f in futures:
            try:
                ok.append(f.result(timeout=20))
            except RequestError as exc:
                failed.append(exc)
        assert failed and ok, (len(ok), len(failed))
        assert len(failed) == victim["depth"]
        for exc in failed:
            assert exc.stage == "slow"
            assert f"pid {victim['pid']}" in exc.message and "died" in exc.message
        # Failures were reported within a few heartbeats, not at the request deadline.
        assert time.monotonic() - t0 < 10
        st = wait_for(lambda: (s := status(sup)) and len(s["stages"]["slow"]["instances"]) == 1 and s,
                      5, "the dead instance to leave the table")
        assert st["epoch"] > 2
        assert client.submit({"sleep": 0.01, "i": "after"}).result(timeout=10) == {"sleep": 0.01, "i": "after"}


def test_admission_refuses_past_max_inflight_with_a_clear_error():
    with running(slow(replicas=1, max_inflight=20)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit({"sleep": 0.5, "i": i}) for i in range(100)]
        ok, overloaded = 0, 0
        for f in futures:
            try:
                f.result(timeout=30)
                ok += 1
            except RequestError as exc:
                assert exc.stage == "gateway" and exc.message.startswith("overloaded")
                overloaded += 1
        assert ok >= 20 and overloaded >= 50
        assert status(sup)["gateway"]["in_flight"] == 0


def test_a_request_past_its_deadline_ends_in_an_error():
    with running(slow(replicas=1)) as sup, Client(sup.addresses["gateway"]) as client:
        t0 = time.monotonic()
        with pytest.raises(RequestError, match="deadline exceeded") as err:
            client.submit({"sleep": 5.0}, timeout=0.5).result(timeout=10)
        assert err.value.stage == "gateway"
        assert time.monotonic() - t0 < 3
        assert client.submit({"sleep": 0.01}).result(timeout=10) == {"sleep": 0.01}


def test_a_client_that_closes_leaves_no_state_behind():
    with running(slow(replicas=1)) as sup:
        client = Client(sup.addresses["gateway"])
        futures = [client.submit({"sleep": 1.0, "i": i}) for i in range(50)]
        wait_for(lambda: status(sup)["gateway"]["in_flight"] == 50, 10, "the requests to be admitted")
        client.close()
        assert all(isinstance(f.exception(timeout=5), RequestError) for f in futures)
        wait_for(lambda: status(sup)["gateway"]["in_flight"] == 0, 5, "the gateway to forget the client")
        assert status(sup)["gateway"]["clients"] == 0


def test_a_client_process_that_dies_leaves_no_state_behind():
    with running(slow(replicas=1)) as sup:
        # The last, quick request's result proves the gateway has read the 30 before it.
        code = ("import os, sys; from alto_bus import Client; c = Client(sys.argv[1]); "
                "fs = [c.submit({'sleep': 1.0, 'i': i}) for i in range(30)]; "
                "c.submit({'sleep': 0.0}).result(timeout=20); os._exit(0)")
        subprocess.run([sys.executable, "-c", code, sup.addresses["gateway"]], timeout=30, check=True)
        assert status(sup)["gateway"]["admitted"] == 31
        # Results come back to a peer that is gone: the gateway must drop them and the client's state.
        wait_for(lambda: status(sup)["gateway"]["in_flight"] == 0, 15, "the gateway to forget the dead client")
