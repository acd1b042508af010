"""``alto launch``: a local supervisor for one topology on this machine.

It validates the topology, starts the broker and every stage instance as separate OS
processes, prints the gateway address, one status line per stage and ``ready``, and
stops everything on Ctrl-C or SIGTERM. Children run in their own session (a Ctrl-C
reaches only the launcher, which stops them in order) and carry a parent-death signal,
so even a launcher killed with SIGKILL leaves no orphan behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from alto_bus.net import curve as keys
from alto_bus.deploy import topology as topo_mod
from alto_bus.protocol import wire
from alto_bus.net.sockets import make_socket

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    pass


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGTERM this child when the launcher dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return  # not Linux: the launcher's own shutdown still stops the children
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


@dataclass
class Child:
    role: str            # "broker" or "<stage>#<replica>"
    proc: subprocess.Popen
    stage: str | None = None


@dataclass
class Supervisor:
    topology_path: str
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    log_level: str = "WARNING"
    ready_timeout: float = 600.0  # a vLLM engine can take minutes to start on a busy machine
    children: list[Child] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    def _spawn(self, role: str, args: list[str], stage: str | None = None, **popen: Any) -> Child:
        env = dict(os.environ)
        # Handlers are named "module:function" relative to where alto was launched.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        env["ALTO_LOG_LEVEL"] = self.log_level
        parent = os.getpid()
        proc = subprocess.Popen([sys.executable, "-m", "alto_bus", *args], env=env,
                                start_new_session=True, preexec_fn=lambda: _die_with_parent(parent),
                                **popen)
        child = Child(role, proc, stage)
        self.children.append(child)
        return child

    def start(self) -> None:
        topology = topo_mod.load(self.topology_path)
        broker = self._spawn("broker", ["broker", self.topology_path, "--announce"], stdout=subprocess.PIPE)
        self.addresses = _read_announcement(broker.proc, timeout=30)
        self._print(f"gateway {self.addresses['gateway']}")
        self._print(f"control {self.addresses['control']}")
        pooled = {s for p in topology.pools for s in p.stages}
        for pool in topology.pools:
            for r in range(pool.replicas):
                self._spawn(f"pool {pool.name}#{r}", ["worker", "--broker", self.addresses["control"],
                                                      "--pool", pool.name, *curve_args(topology)])
        for stage in topology.stages:
            if stage.name in pooled:
                continue
            for r in range(stage.replicas):
                self._spawn(f"{stage.name}#{r}", ["worker", "--broker", self.addresses["control"],
                                                  "--stage", stage.name, *curve_args(topology)], stage=stage.name)
        self._await_ready(topology)
        self._print("ready")

    def _await_ready(self, topology: topo_mod.Topology) -> None:
        reported: set[str] = set()
        deadline = time.monotonic() + self.ready_timeout
        with StatusProbe(self.addresses["control"], curve=keys.topology_curve(topology, "broker")) as probe:
            while True:
                self._check_children()
                status = probe.query(timeout=1.0)
                if status is not None:
                    for stage in topology.stages:
                        insts = status["stages"][stage.name]["instances"]
                        if stage.name not in reported and len(insts) >= stage.replicas:
                            reported.add(stage.name)
                            pids = ", ".join(str(i["pid"]) for i in insts)
                            self._print(f"stage {stage.name} ({stage.kind}): {len(insts)}/{stage.replicas} "
                                        f"instances ready (pids {pids})")
                    if len(reported) == len(topology.stages):
                        return
                if time.monotonic() > deadline:
                    missing = [s.name for s in topology.stages if s.name not in reported]
                    raise LaunchError(f"stages {missing} did not register within {self.ready_timeout:g} s")

    def _check_children(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise LaunchError(f"{child.role} (pid {child.proc.pid}) exited with code {code} during start-up")

    def supervise(self, stop_flag: list[bool]) -> int:
        """Wait for a stop request; report children that exit. Returns the exit code."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        old = signal.set_wakeup_fd(wfd)
        try:
            while not stop_flag[0]:
                select.select([rfd], [], [], 1.0)
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
                for child in self.children:
                    code = child.proc.poll()
                    if code is not None and not getattr(child, "reported", False):
                        child.reported = True  # type: ignore[attr-defined]
                        self._print(f"{child.role} (pid {child.proc.pid}) exited with code {code}")
                        if child.role == "broker":
                            return 1
            return 0
        finally:
            signal.set_wakeup_fd(old)
            os.close(rfd)
            os.close(wfd)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every child, wait, then SIGKILL what is left. Leaves nothing running."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            if child.proc.stdout is not None:
                child.proc.stdout.close()

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def curve_args(topology: topo_mod.Topology, key: str | None = None) -> list[str]:
    """``alto worker`` options for the topology's [security] (none when it has none)."""
    sec = topology.security
    return [] if sec is None else ["--key", key or sec.worker_key, "--broker-key", sec.broker_key]


def _read_announcement(proc: subprocess.Popen, timeout: float) -> dict[str, str]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise LaunchError(f"the broker did not start within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        raise LaunchError(f"the broker exited with code {proc.wait()} before it was up (see its log above)")
    return json.loads(line)


class StatusProbe:
    """Ask a broker for its status (used by the launcher and ``alto status``)."""

    def __init__(self, control: str, curve: Any = None) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = make_socket(self.ctx, zmq.DEALER, connect=control,
                                curve=curve.to_broker("status probe") if curve else None)

    def __enter__(self) -> StatusProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close(linger=0)

    def query(self, timeout: float) -> dict | None:
        self.sock.send(wire.encode_control("status"))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(left * 1000):
                return None
            op, body = wire.decode_control(self.sock.recv())
            if op == "status":
                return body
        return None

    def request(self, op: str, timeout: float) -> bool:
        self.sock.send(wire.encode_control(op))
        return bool(self.sock.poll(timeout * 1000))


def launch(path: str | Path, *, out: IO[str] = sys.stdout, log_level: str = "WARNING") -> int:
    """Run ``alto launch``; returns the process exit code."""
    return run_until_signal(Supervisor(str(path), out=out, log_level=log_level), (LaunchError,), out)


def run_until_signal(runner: Any, failures: tuple[type[BaseException], ...], out: IO[str] = sys.stdout,
                     wake: Any = None) -> int:
    """Start ``runner`` and supervise it until SIGINT/SIGTERM or its own end; the exit code.

    ``runner`` has ``start()``, ``supervise(stop_flag) -> int`` and ``stop()`` (a
    :class:`Supervisor`, a cluster launcher). A topology error exits 2, one of
    ``failures`` 1, with the message on stderr; ``runner`` is stopped in every case.
    ``wake()`` is called from the signal handler for a runner that sleeps in a wait.
    """
    stop_flag = [False]

    def on_signal(signum: int, frame: Any) -> None:
        stop_flag[0] = True
        if wake is not None:
            wake()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        runner.start()
        code = runner.supervise(stop_flag)
        print("stopping", file=out, flush=True)
        return code
    except topo_mod.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except failures as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        runner.stop()
