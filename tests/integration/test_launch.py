"""`alto launch` as a user runs it: output, stop on signals, no orphan, bad topologies refused."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alto_bus import Client
from alto_bus.deploy.status_probe import StatusProbe
from tests.support import alive, wait_exit, write_topology

H = "tests.integration.handlers"
ROOT = Path(__file__).resolve().parents[2]


def topology() -> dict:
    return {
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
            {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split", "replicas": 2},
        ],
    }


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


class Launched:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "alto_bus", "launch", str(path)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._buf = b""

    def read_until(self, word: str, timeout: float = 60.0, prefix: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while not self.lines or not (self.lines[-1].startswith(word) if prefix else self.lines[-1] == word):
            left = deadline - time.monotonic()
            if b"\n" not in self._buf:
                ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
                assert ready, f"no {word!r} within {timeout} s; got {self.lines}"
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"alto launch exited early: {self.proc.stderr.read().decode()}"
                self._buf += chunk
                continue
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(line.decode())

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            for pid in children_of(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
        self.proc.wait()


def launched_blocking(tmp_path: Path, **broker) -> Iterator[Launched]:
    """``alto launch`` of one stage, 2 replicas, whose handler blocks until the file
    ``item["wait_for"]`` exists (tests of what survives a death); killed whatever happens."""
    topo = {"broker": {"heartbeat_interval": 0.2, **broker}, "stage": [
        {"name": "work", "kind": "function", "handler": "tests.integration.handlers:block_until",
         "replicas": 2, "threads": 4}]}
    run = Launched(write_topology(tmp_path, topo))
    try:
        yield run
    finally:
        run.kill_all()


@pytest.fixture
def launched(tmp_path):
    run = Launched(write_topology(tmp_path, topology()))
    try:
        yield run
    finally:
        run.kill_all()


def test_launch_prints_gateway_stage_lines_and_ready_then_serves(launched):
    launched.read_until("ready")
    assert launched.lines[0].startswith("gateway tcp://127.0.0.1:")
    assert sum(line.startswith("stage ") for line in launched.lines) == 2
    assert any(line.startswith("stage split (function): 2/2 instances ready") for line in launched.lines)
    gateway = launched.lines[0].split()[1]
    with Client(gateway) as client:
        assert client.submit("x y").result(timeout=30) == ["X", "Y"]
    assert len(children_of(launched.proc.pid)) == 5  # broker + 4 instances


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_process(launched, sig):
    launched.read_until("ready")
    kids = children_of(launched.proc.pid)
    launched.proc.send_signal(sig)
    assert launched.proc.wait(30) == 0
    assert all(wait_exit(pid, 15) for pid in kids)
    assert not any(alive(pid) for pid in kids)


def test_a_dead_broker_is_restarted_on_its_addresses_and_the_instances_serve_on(launched):
    launched.read_until("ready")
    gateway, control = launched.lines[0].split()[1], launched.lines[1].split()[1]
    with StatusProbe(control) as probe:
        st = probe.query(timeout=10)
    workers = {i["pid"] for s in st["stages"].values() for i in s["instances"]}
    (broker,) = set(children_of(launched.proc.pid)) - workers
    os.kill(broker, signal.SIGKILL)
    launched.read_until("broker restarted", prefix=True)
    assert control in launched.lines[-1]
    # The same instances register again with the new broker (no process was restarted).
    deadline, seen = time.monotonic() + 30, set()
    with StatusProbe(control) as probe:
        while time.monotonic() < deadline and seen != workers:
            st = probe.query(timeout=2) or {"stages": {}}
            seen = {i["pid"] for s in st["stages"].values() for i in s["instances"]}
    assert seen == workers, (seen, workers)
    assert broker not in children_of(launched.proc.pid) and len(children_of(launched.proc.pid)) == 5
    with Client(gateway) as client:   # the same gateway address serves new requests
        assert [client.submit(f"a{i} b{i}").result(timeout=30) for i in range(20)] == [
            [f"A{i}", f"B{i}"] for i in range(20)]


def test_killing_the_launcher_leaves_no_orphan(launched):
    launched.read_until("ready")
    kids = children_of(launched.proc.pid)
    assert len(kids) == 5
    launched.proc.kill()  # SIGKILL: the launcher gets no chance to clean up
    launched.proc.wait()
    assert all(wait_exit(pid, 15) for pid in kids), [p for p in kids if alive(p)]


@pytest.fixture
def spawning(tmp_path, monkeypatch):
    """``alto launch`` of a stage of 2 instances that each spawn a process when they load
    (as vLLM does its engine core): (the launch, {instance pid: its spawned pid})."""
    spawned = tmp_path / "spawned"
    monkeypatch.setenv("ALTO_TEST_SPAWNED", str(spawned))
    topo = {"stage": [{"name": "up", "kind": "function", "handler": "tests.integration.spawning_handlers:upper",
                       "replicas": 2}]}
    run = Launched(write_topology(tmp_path, topo))
    everyone: dict[int, int] = {}
    try:
        run.read_until("ready")
        with StatusProbe(run.lines[1].split()[1]) as probe:  # the launcher and broker load it too
            workers = {i["pid"] for s in probe.query(timeout=10)["stages"].values() for i in s["instances"]}
        everyone = dict(tuple(map(int, line.split())) for line in spawned.read_text().splitlines())
        pids = {w: p for w, p in everyone.items() if w in workers}
        yield run, pids
    finally:
        run.kill_all()
        for pid in everyone.values():  # a failed test leaves no sleep behind either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_instances_lead_their_own_process_groups_in_the_launchers_session(spawning):
    # One session: with the kernel's autogroup scheduling each session shares the CPU as
    # a whole, and a stage alone in one waited hundreds of ms for a core beside a busy
    # vLLM engine. Own groups: what an instance spawns is killed with it.
    run, pids = spawning
    for worker in pids:
        assert os.getsid(worker) == os.getsid(run.proc.pid), "an instance left the launcher's session"
        assert os.getpgid(worker) == worker, "an instance does not lead a process group of its own"
        assert os.getpgid(pids[worker]) == worker, "what an instance spawned is not in its group"


def test_what_a_dead_instance_spawned_dies_with_it(spawning):
    run, pids = spawning
    assert len(pids) == 2 and all(alive(p) for p in pids.values())
    victim, other = sorted(pids)
    os.kill(victim, signal.SIGKILL)  # it gets no chance to stop its engine
    assert wait_exit(pids[victim], 15), "the killed instance's engine process outlived it"
    assert alive(pids[other]), "the other instance's engine process was killed too"


@pytest.mark.parametrize("how", ["signal", "kill"])
def test_stopping_the_launch_stops_what_its_instances_spawned(spawning, how):
    run, pids = spawning
    if how == "signal":
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
    else:  # the launcher itself SIGKILLed: its instances get SIGTERM from the kernel
        run.proc.kill()
        run.proc.wait()
    assert all(wait_exit(p, 15) for p in pids.values()), [p for p in pids.values() if alive(p)]


@pytest.mark.parametrize("change, words", [
    ({"colour": "red"}, ["stage 'upper'", "unknown field 'colour'"]),
    ({"input": "nowhere"}, ["stage 'upper'", "field 'input'", "no stage named 'nowhere'"]),
    ({"replicas": 0}, ["stage 'upper'", "field 'replicas'", ">= 1"]),
    ({"handler": f"{H}:missing"}, ["stage 'upper'", "field 'handler'", "has no attribute 'missing'"]),
    ({"handler": "no_such_module:fn"}, ["stage 'upper'", "field 'handler'", "cannot import module 'no_such_module'"]),
])
def test_a_bad_topology_is_refused_before_anything_starts(tmp_path, change, words):
    topo = topology()
    topo["stage"][1].update(change)
    path = write_topology(tmp_path, topo)
    out = subprocess.run([sys.executable, "-m", "alto_bus", "launch", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(path) in out.stderr
    for w in words:
        assert w in out.stderr
    assert "gateway" not in out.stdout  # nothing was started
