"""Deadlines travel with the request: a worker frees what it holds for a request past its
deadline by itself, with no word from the broker (here: the broker is stopped with
SIGSTOP while the request waits in two stages, so no cancel and no "ended" notice can
come). The workers say so in their log, the status counts it once the broker is back,
and the topology then serves exact results."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from alto_bus.deploy.status_probe import StatusProbe
from tests.integration.test_launch import Launched, children_of
from tests.support import wait_for, write_topology

H = "tests.integration.deadline_handlers"


def topology() -> dict:
    return {"broker": {"heartbeat_interval": 0.2}, "stage": [
        {"name": "split", "kind": "function", "handler": f"{H}:fan"},
        {"name": "work", "kind": "function", "handler": f"{H}:wait_for_gate", "input": "split"},
        {"name": "join", "kind": "aggregate", "input": "work", "key": "request", "op": "collect"}]}


def query(control: str) -> dict:
    with StatusProbe(control) as probe:
        st = probe.query(timeout=10)
    assert st is not None, "the broker did not answer a status query"
    return st


def instances(st: dict, stage: str) -> list[dict]:
    return st["stages"][stage]["instances"]


def stderr_until(proc, words: set[str], timeout: float) -> list[str]:
    """Lines of the launcher's stderr (every process's log) until each of ``words`` was in one."""
    lines, buf, deadline = [], b"", time.monotonic() + timeout
    while words:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, left))
        assert ready, f"no log line with {sorted(words)} within {timeout} s; got {lines}"
        chunk = os.read(proc.stderr.fileno(), 65536)
        assert chunk, "alto launch exited"
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in map(bytes.decode, done):
            lines.append(line)
            words = {w for w in words if w not in line}
    return lines


@pytest.fixture
def launched(tmp_path):
    run = Launched(write_topology(tmp_path, topology()))
    try:
        yield run
    finally:
        for pid in children_of(run.proc.pid):  # a stopped broker would not see SIGKILL's siblings go
            os.kill(pid, signal.SIGCONT)
        run.kill_all()


def test_workers_free_a_request_past_its_deadline_with_the_broker_silent(launched, tmp_path: Path):
    launched.read_until("ready")
    gateway, control = launched.lines[0].split()[1], launched.lines[1].split()[1]
    st = query(control)
    workers = {i["pid"] for s in st["stages"].values() for i in s["instances"]}
    (broker,) = set(children_of(launched.proc.pid)) - workers
    gate = tmp_path / "gate"
    with Client(gateway, timeout=60, gateway_silence=60.0) as client:
        t0 = time.monotonic()
        doomed = client.submit({"gate": str(gate)}, timeout=1.0)
        # "a" waits in join's open group, "b" in work's handler: both hold the request.
        deadline = time.monotonic() + 0.8
        while not all(instances(st, s)[0]["depth"] for s in ("work", "join")):
            assert time.monotonic() < deadline, f"the request did not reach both stages: {st['stages']}"
            st = query(control)
        os.kill(broker, signal.SIGSTOP)
        try:
            lines = stderr_until(launched.proc, {"stage work: freed 1", "stage join: freed 1"}, timeout=15)
            freed_at = time.monotonic()
        finally:
            os.kill(broker, signal.SIGCONT)
        assert freed_at - t0 >= 1.0, "freed before the request's deadline"
        assert any("past their deadline" in line for line in lines)
        with pytest.raises(RequestError) as err:
            doomed.result(timeout=20)
        assert "deadline exceeded" in err.value.message, err.value
        def freed() -> dict | None:  # the heartbeats sent while the broker was stopped come in first
            st = query(control)
            return st if all(i["depth"] == 0 and i["stats"].get("deadlines_expired") == 1
                             for s in ("work", "join") for i in instances(st, s)) else None

        st = wait_for(freed, 5, "work and join to report the request freed, each counted once")
        # split had passed the request on; what it still kept (the ids it sent) went too, or
        # went with an "ended" notice that came before the broker stopped.
        assert instances(st, "split")[0]["stats"].get("deadlines_expired", 0) <= 1
        # The workers serve on: a request whose gate is open comes back whole.
        gate.touch()
        assert sorted(client.submit({"gate": str(gate)}, timeout=30).result(timeout=30)) == ["A", "B"]
