"""The per-host supervisor: starts a host's broker and instances as processes, watches them, stops them.

One class for both commands. ``alto launch FILE`` is a supervisor with a one-host plan
(:func:`~alto_bus.deploy.plan.local_plan`: this machine runs the broker and every
instance on the file's addresses); ``alto node FILE --host NAME`` one with that host's
share of the [[host]] tables (:func:`~alto_bus.deploy.plan.plan`).

It prints the gateway address, status lines as instances register and ``ready``, and
stops everything in order (the HTTP front door, then instances: they drain and leave;
then the broker). ``alto launch`` also runs the HTTP front door (``--http`` or an
``[http]`` table) as a process of its own, a client of the gateway like any other.
Children run in their own session (a Ctrl-C reaches only the supervisor) and carry a
parent-death signal, so even a supervisor killed with SIGKILL leaves no orphan: SIGTERM
for ``alto launch``, SIGKILL for a node (a node that disappears takes its instances
with it, as a lost machine would).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.errors import LaunchError, NodeError
from alto_bus.deploy.gpu_placement import Placed
from alto_bus.deploy.plan import NodePlan, local_plan, rehost
from alto_bus.deploy.processes import die_with, end, exited
from alto_bus.deploy.run_signal import run_until_signal
from alto_bus.deploy.status_probe import StatusProbe
from alto_bus.deploy.tracing_config import tracing_env
from alto_bus.net import curve as keys
from alto_bus.protocol.gateway_bodies import TOKEN_ENV

__all__ = ["Child", "LaunchError", "NodeError", "StatusProbe", "Supervisor", "curve_args", "launch",
           "run_until_signal"]

log = logging.getLogger("alto.node")
BROKER_RESTARTS = 5  # a minute, at most


@dataclass
class Child:
    role: str                      # "broker", "http", "<stage>#<replica>" or "pool <pool>#<replica>"
    proc: subprocess.Popen
    placed: Placed | None = None
    pidfd: int | None = None
    done: bool = False             # its exit was reported

    @property
    def stage(self) -> str | None:
        """The stage this instance serves (None for the broker and pool members)."""
        return self.placed.stage if self.placed is not None and self.placed.what == "stage" else None


@dataclass
class Supervisor:
    topology_path: str
    plan: NodePlan | None = None         # None: the file's one-host plan, loaded by start()
    broker: str | None = None            # the control address (not on the broker's host)
    port_base: int | None = None
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    log_level: str = "WARNING"
    broker_wait: float = 10.0
    ready_timeout: float = 600.0  # a vLLM engine can take minutes to load
    announce: bool = False
    http: str | None = None              # HOST:PORT of the HTTP front door (overrides [http] listen)
    metrics: str | None = None           # --metrics-port: PORT or HOST:PORT of this host's /metrics
    stop_grace: float | None = None      # per group (instances, broker); default 10 s here, 40 s on a node
    children: list[Child] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    own: dict[str, dict[str, str]] = field(default_factory=dict)  # "broker", "gateway#g" -> what it bound
    _restarts: list[float] = field(default_factory=list)   # when the broker was restarted
    _metrics: Any = None                 # the NodeMetrics server, with --metrics-port
    _token: str = field(default_factory=lambda: os.urandom(16).hex())  # the broker's and gateways' secret

    @property
    def name(self) -> str:
        assert self.plan is not None
        return self.plan.host.name

    @property
    def _who(self) -> str:
        """How messages name this supervisor: nothing for ``alto launch``, the host on a node."""
        return "" if self.plan is None or self.plan.local else f"host {self.name!r}: "

    # -- start ------------------------------------------------------------------------------

    def _spawn(self, role: str, args: list[str], placed: Placed | None = None,
               extra_env: dict[str, str] | None = None, **popen: Any) -> Child:
        assert self.plan is not None
        env = {**tracing_env(self.plan.topology), **os.environ, **(extra_env or {})}  # [tracing] as OTEL_*
        # Handlers are named "module:function" relative to where alto was started.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        env["ALTO_LOG_LEVEL"] = self.log_level
        if placed is not None and not self.plan.local:
            env["CUDA_VISIBLE_DEVICES"] = placed.cuda_visible_devices
        death = signal.SIGTERM if self.plan.local else signal.SIGKILL
        # Its own process group (a terminal's Ctrl-C reaches the supervisor alone, and what
        # it spawns can be killed with it), but not its own session: with the kernel's
        # autogroup scheduling every session is a group that gets an equal share of the
        # CPU, and a stage that wakes now and then in a group of its own waited hundreds of
        # ms for a core beside a busy vLLM engine (the streaming burst, BENCHMARKS.md).
        proc = subprocess.Popen([sys.executable, "-m", "alto_bus", *args], env=env, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with(os.getpid(), death, own_group=True), **popen)
        child = Child(role, proc, placed)
        try:
            child.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            child.pidfd = None
        self.children.append(child)
        return child

    def start(self) -> None:
        if self.plan is None:
            self.plan = local_plan(topo_mod.load(self.topology_path))
        p = self.plan
        curve = keys.topology_curve(p.topology, "broker" if p.runs_broker else "worker", p.host.name)
        if p.runs_broker:
            self._start_broker()
            if p.local:
                self._start_http()
        else:
            assert self.broker is not None
            self._probe(curve)
        for placed in p.instances:
            role = f"{'pool ' if placed.what == 'pool' else ''}{placed.stage}#{placed.replica}"
            self._spawn(role, self._worker_args(placed), placed)
        if self.metrics is not None:
            self._start_metrics(curve)
        self._await_ready(curve)

    def _start_metrics(self, curve: keys.Curve | None) -> None:
        """/metrics of this host's processes (alto_bus.service.node_metrics); prints ``metrics URL``."""
        from alto_bus.service.node_metrics import NodeMetrics, parse_metrics_port

        assert self.plan is not None and self.broker is not None and self.metrics is not None
        p = self.plan
        try:
            host, port = parse_metrics_port(self.metrics, "127.0.0.1" if p.local else p.host.address)
            self._metrics = NodeMetrics(self.broker, lambda: [c.proc.pid for c in self.children if c.placed],
                                        None if p.local else p.host.name, p.runs_broker, curve)
            url = self._metrics.start(host, port)
        except (OSError, ValueError) as exc:
            raise NodeError(f"{self._who}--metrics-port {self.metrics}: cannot serve /metrics: {exc}") from None
        self._print(f"{'' if p.local else f'host {self.name}: '}metrics {url}")

    def _start_broker(self, rebind: dict[str, str] | None = None) -> None:
        self._spawn_tier("broker", ["broker", self.topology_path], rebind, "the broker")
        self.addresses = {**self.addresses, **self.own["broker"]}
        if rebind is not None:
            self._join_gateways()
            return
        self.broker = self.addresses["control"]
        for g in range(1, self.plan.topology.broker.gateways):
            self._start_gateway(g)
        if self.announce:
            self._print(json.dumps(self.addresses))
        else:
            self._print(f"gateway {self.addresses['gateway']}")
            self._print(f"control {self.addresses['control']}")

    def _start_gateway(self, index: int, rebind: dict[str, str] | None = None) -> None:
        """Gateway ``index`` beside the broker (``[broker] gateways``), on its own addresses."""
        assert self.broker is not None
        self._spawn_tier(f"gateway#{index}", ["gateway", self.topology_path, "--index", str(index),
                                              "--control", self.broker], rebind, f"gateway {index}")
        self._join_gateways()

    def _spawn_tier(self, role: str, args: list[str], rebind: dict[str, str] | None, what: str) -> None:
        """Start the broker or a gateway and read the addresses it bound into ``own[role]``."""
        assert self.plan is not None
        args = [*args, "--announce"]
        if not self.plan.local:
            args += ["--bind-host", self.plan.host.address]
        if self.port_base is not None:
            args += ["--port-base", str(self.port_base)]
        if rebind is not None:
            args += ["--rebind", json.dumps(rebind)]
        child = self._spawn(role, args, stdout=subprocess.PIPE, extra_env={TOKEN_ENV: self._token})
        try:
            self.own[role] = _read_announcement(child.proc, timeout=30, what=what)
        except NodeError as exc:
            raise NodeError(f"{self._who}{exc}") from None

    def _join_gateways(self) -> None:
        """Clients get every gateway's address, comma-separated (the broker's first)."""
        assert self.plan is not None
        roles = ["broker", *(f"gateway#{g}" for g in range(1, self.plan.topology.broker.gateways))]
        self.addresses["gateway"] = ",".join(self.own[r]["gateway"] for r in roles if r in self.own)

    def _start_http(self) -> None:
        """The HTTP front door, when asked for; prints ``http http://HOST:PORT`` once it listens."""
        assert self.plan is not None
        topo = self.plan.topology
        listen = self.http or (topo.http.listen if topo.http else None)
        if listen is None:
            return
        args = ["http", "--gateway", self.addresses["gateway"], "--control", self.addresses["control"],
                "--listen", listen, "--timeout", str(topo.http.timeout if topo.http else 30.0), "--announce",
                *curve_args(topo)]
        door = self._spawn("http", args, stdout=subprocess.PIPE)
        try:
            url = _read_announcement(door.proc, timeout=30, what="the HTTP front door")["http"]
        except NodeError as exc:
            raise NodeError(f"{self._who}{exc}") from None
        self.addresses["http"] = url
        if not self.announce:
            self._print(f"http {url}")

    def _worker_args(self, placed: Placed) -> list[str]:
        assert self.plan is not None and self.broker is not None
        p, topo = self.plan, self.plan.topology
        unit = topo.pool(placed.stage) if placed.what == "pool" else topo.stage(placed.stage)
        args = ["worker", "--broker", self.broker, f"--{placed.what}", unit.name]
        if placed.what == "pool" and unit.members:   # member i talks to members[i]
            args += ["--member-index", str(placed.replica)]
        if p.local:
            return [*args, *curve_args(topo)]
        worker_key = topo.security.host_key(p.host) if topo.security else None
        return [*args, "--host-name", p.host.name, "--inbox", rehost(unit.inbox, p.host.address),
                "--advertise", unit.advertise or p.host.address, *curve_args(topo, worker_key)]

    def _probe(self, curve: keys.Curve | None) -> None:
        """Ask the broker for its status before starting anything (bounded by broker_wait)."""
        assert self.plan is not None
        with StatusProbe(self.broker, curve=curve) as probe:
            status = probe.query(timeout=self.broker_wait)
        if status is not None:
            return
        refused = {k: v for k, v in keys.refusals().items() if k.startswith("status probe") and v}
        if refused:
            raise NodeError(f"host {self.name!r}: the broker at {self.broker} refused this host's key "
                            f"({self.plan.topology.security.host_key(self.plan.host)}): it is not in its allowed keys")
        raise NodeError(f"host {self.name!r}: the broker at {self.broker} did not answer within "
                        f"{self.broker_wait:g} s (is it running, and is this the right address?)")

    def _await_ready(self, curve: keys.Curve | None) -> None:
        """Print each stage once all its replicas registered (broker's host), this host's line (a node)."""
        assert self.plan is not None
        p, topo = self.plan, self.plan.topology
        mine = {c.proc.pid for c in self.children if c.placed is not None}
        reported: set[str] = set()
        own_ready = p.local  # a one-host plan: every stage registered says it all
        deadline = time.monotonic() + self.ready_timeout
        t0 = time.monotonic()
        with StatusProbe(self.broker, curve=curve) as probe:
            while True:
                self._check_children()
                status = probe.query(timeout=1.0)
                if status is not None:
                    insts = [i for st in status["stages"].values() for i in st["instances"]]
                    up = {i["pid"] for i in insts if i["host"] == self.name and i["pid"] in mine}
                    if not own_ready and up == mine:  # (also with no instance: says the host is up)
                        own_ready = True
                        self._print(f"host {self.name}: {len(mine)} instance(s) ready "
                                    f"({time.monotonic() - t0:.1f} s)")
                    if p.runs_broker:
                        for stage in topo.stages:
                            got = status["stages"][stage.name]["instances"]
                            if stage.name not in reported and len(got) >= stage.replicas:
                                reported.add(stage.name)
                                where = (f"pids {', '.join(str(i['pid']) for i in got)}" if p.local
                                         else ", ".join(f"{i['host']}:{i['pid']}" for i in got))
                                self._print(f"stage {stage.name} ({stage.kind}): {len(got)}/{stage.replicas} "
                                            f"instances ready ({where})")
                    if own_ready and (not p.runs_broker or len(reported) == len(topo.stages)):
                        if p.runs_broker:
                            self._print("ready")
                        return
                if time.monotonic() > deadline:
                    missing = [s.name for s in topo.stages if s.name not in reported]
                    what = f"stages {missing}" if p.runs_broker else "its instances"
                    raise NodeError(f"{self._who}{what} did not register within {self.ready_timeout:g} s")

    def _check_children(self) -> None:
        for child in self.children:
            code = exited(child.proc)
            if code is not None:
                raise NodeError(f"{self._who}{child.role} (pid {child.proc.pid}) exited with code {code} "
                                "during start-up (its log is above)")

    # -- run and stop -----------------------------------------------------------------------

    def supervise(self, stop: list[bool], watch_stdin: bool = False) -> int:
        """Serve until a signal (``stop``), stdin EOF, or the broker (or every instance) is gone."""
        assert self.plan is not None
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        old_wakeup = signal.set_wakeup_fd(wfd)
        try:
            return self._serve(stop, rfd, sys.stdin.fileno() if watch_stdin else None)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)

    def _serve(self, stop: list[bool], wake_fd: int, stdin_fd: int | None) -> int:
        assert self.plan is not None
        prefix = "" if self.plan.local else f"host {self.name}: "
        while not stop[0]:
            fds = [wake_fd] + [c.pidfd for c in self.children if c.pidfd is not None and not c.done]
            if stdin_fd is not None:
                fds.append(stdin_fd)
            ready, _, _ = select.select(fds, [], [], 5.0)
            if wake_fd in ready:
                try:
                    os.read(wake_fd, 4096)
                except BlockingIOError:
                    pass
            if stdin_fd is not None and stdin_fd in ready:
                if not os.read(stdin_fd, 4096):
                    log.info("host %s: stdin closed; stopping", self.name)
                    return 0
            for child in self.children:
                code = exited(child.proc)  # and what it spawned killed (a vLLM engine core)
                if code is None or child.done:
                    continue
                child.done = True
                self._print(f"{prefix}{child.role} (pid {child.proc.pid}) exited with code {code}")
                tier = child.role == "broker" or child.role.startswith("gateway#")
                if tier and self._may_restart_broker():
                    # The same addresses: instances register again, clients reconnect; what
                    # it held (requests in flight) is lost, and clients are told.
                    try:
                        if child.role == "broker":
                            self._start_broker(rebind=self.own["broker"])
                        else:
                            self._start_gateway(int(child.role[len("gateway#"):]), rebind=self.own[child.role])
                    except NodeError as exc:
                        self._print(f"{prefix}{child.role} could not be restarted: {exc}")
                        return 1
                    where = self.own[child.role]["control" if child.role == "broker" else "gateway"]
                    self._print(f"{prefix}{child.role} restarted (pid {self.children[-1].proc.pid}) on {where}")
                    break  # the list of children changed
                if tier or child.role == "http":  # the service is down (or half down)
                    return 1
            workers = [c for c in self.children if c.placed is not None]
            if workers and all(c.done for c in workers) and not self.plan.runs_broker:
                return 0 if all(c.proc.returncode == 0 for c in workers) else 1
        return 0

    def _may_restart_broker(self) -> bool:
        """At most ``BROKER_RESTARTS`` restarts a minute: a broker that dies at once every
        time (a bad file, a port taken) ends the launch instead of looping."""
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        return len(self._restarts) <= BROKER_RESTARTS

    def stop(self, grace: float | None = None) -> None:
        """Instances first (they drain and leave), then the broker; SIGKILL what outlives ``grace``."""
        if self._metrics is not None:
            self._metrics.stop()
        if grace is None:
            grace = self.stop_grace if self.stop_grace is not None else (
                10.0 if self.plan is None or self.plan.local else 40.0)
        # The front door first (no new requests), instances next (they drain), the broker last.
        door = [c for c in self.children if c.role == "http"]
        tier = [c for c in self.children if c.role == "broker" or c.role.startswith("gateway#")]
        instances = [c for c in self.children if c.role != "http" and c not in tier]
        for group in (door, instances, tier):
            for child in group:
                if child.proc.poll() is None:
                    try:
                        child.proc.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            for child in group:
                end(child.proc, child.pidfd, max(0.0, deadline - time.monotonic()))
        for child in self.children:
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            if child.pidfd is not None:
                os.close(child.pidfd)
                child.pidfd = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def curve_args(topology: topo_mod.Topology, key: str | None = None) -> list[str]:
    """``alto worker`` options for the topology's [security] (none when it has none)."""
    sec = topology.security
    return [] if sec is None else ["--key", key or sec.worker_key, "--broker-key", sec.broker_key]


def _read_announcement(proc: subprocess.Popen, timeout: float, what: str) -> dict[str, str]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise NodeError(f"{what} did not start within {timeout:g} s")
    line = proc.stdout.readline()
    if not line:
        raise NodeError(f"{what} exited with code {proc.wait()} before it was up (see its log above)")
    return json.loads(line)


def launch(path: str | Path, *, out: IO[str] = sys.stdout, log_level: str = "WARNING",
           http: str | None = None, metrics: str | None = None) -> int:
    """Run ``alto launch``; returns the process exit code. ``http``: serve the front door on HOST:PORT;
    ``metrics``: this machine's /metrics on PORT or HOST:PORT."""
    return run_until_signal(Supervisor(str(path), out=out, log_level=log_level, http=http, metrics=metrics),
                            (NodeError,), out)
