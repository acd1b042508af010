"""Across hosts: ``alto node`` (one host's share of a topology) and the launcher over ssh.

A topology with ``[[host]]`` tables runs on several machines. Placement
(:mod:`alto_bus.deploy.gpu_placement`, validated when the file loads) gives each host its
instances and their GPUs; every host computes the same answer on its own.

``alto node FILE --host NAME`` starts and supervises one host's instances (and, on the
first host, the broker and gateway). Its children die with it (SIGKILL by parent-death
signal: a node that disappears takes its instances with it, as a lost machine would),
and it dies with whatever started it: ``--watch-stdin`` stops it when its stdin closes
(the ssh session, or the launcher, went away) and ``--die-with-parent`` when its parent
process dies. Before it starts anything it checks its keys and that the broker answers,
so that a wrong file or a silent broker is a one-line error naming the host or file.

Two ways in, one launcher script (``scripts/launch_cluster.py``, or ``alto launch FILE
--hosts``):

- **ssh** (as torchrun- or DeepSpeed-style launchers do): check every host in parallel
  (``alto node --check`` over ssh), start the first host's node (broker + gateway +
  its instances), read the broker's addresses, then the other hosts' nodes; print
  ``ready``; on Ctrl-C close every node's stdin (each stops its instances, which drain),
  then the broker's host. Nothing is left on any host.
- **Slurm**: ``srun --ntasks-per-node=1 alto node FILE --slurm`` runs one node per
  Slurm node; each finds its share from ``SLURM_JOB_NODELIST``, ``SLURMD_NODENAME`` /
  ``SLURM_NODEID`` and ``SLURM_JOB_ID``. The first node of the list runs the broker on
  fixed ports (the file's, or ``20000 + 3 x (job id mod 10000)`` where the file says 0),
  so every other node knows its address without asking anyone.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import queue
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from alto_bus.net import curve as keys
from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.supervisor import StatusProbe, _read_announcement, curve_args, run_until_signal
from alto_bus.deploy.gpu_placement import Placed, describe

log = logging.getLogger("alto.node")

_PR_SET_PDEATHSIG = 1
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


class NodeError(RuntimeError):
    """This host cannot run its share; the message names the host (and file)."""


def _set_parent_death_signal(sig: int) -> bool:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0
    except OSError:
        return False  # not Linux: stdin EOF and signals still stop a node


def _die_with(parent: int, sig: int):
    def preexec() -> None:
        _set_parent_death_signal(sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


# -- addresses on a host ----------------------------------------------------------------------


def _rehost(address: str, host: str, port: int | None = None) -> str:
    """A loopback ``tcp://`` address moved to ``host`` (port kept, or ``port`` where it is 0)."""
    if not address.startswith("tcp://"):
        return address
    bind_host, _, p = address[len("tcp://"):].rpartition(":")
    if bind_host not in LOOPBACK:
        return address
    if port is not None and p in ("0", "*"):
        p = str(port)
    return f"tcp://{host}:{p}"


def bind_broker_on(topo: topo_mod.Topology, host: str, port_base: int | None = None) -> topo_mod.Topology:
    """The topology with its broker bound on ``host`` (loopback addresses only) and advertised there."""
    b = topo.broker
    ports = {"control": 0, "gateway": 1, "results": 2}
    moved = {name: _rehost(getattr(b, name), host, None if port_base is None else port_base + off)
             for name, off in ports.items()}
    broker = dataclasses.replace(b, **moved, advertise=b.advertise or host)
    return dataclasses.replace(topo, broker=broker)


def slurm_port_base(job_id: str | int) -> int:
    """Fixed broker ports for one Slurm job (the same on every node, different per job)."""
    return 20000 + 3 * (int(job_id) % 10000)


def broker_control(topo: topo_mod.Topology, broker_host: topo_mod.HostConfig, port_base: int | None) -> str:
    """The control address every node dials, known without asking (Slurm mode)."""
    address = bind_broker_on(topo, broker_host.address, port_base).broker.control
    bind_host, _, port = address[len("tcp://"):].rpartition(":")
    if port in ("0", "*"):
        raise NodeError(f"{topo.source}: [broker] control {topo.broker.control!r}: a fixed port is needed "
                        "when every node starts at once (give one, or run under Slurm for a derived one)")
    host = topo.broker.advertise or (broker_host.address if bind_host in ("0.0.0.0", "*") else bind_host)
    return f"tcp://{host}:{port}"


# -- Slurm ------------------------------------------------------------------------------------


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host lists: ``gpu[01-03,7],login1`` -> gpu01 gpu02 gpu03 gpu7 login1."""
    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        out.extend(_expand_one(part.strip()))
    return [h for h in out if h]


def _expand_one(pattern: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[:m.start()], pattern[m.end():]
    names = []
    for rng in m.group(1).split(","):
        lo, _, hi = rng.partition("-")
        if hi:
            width = len(lo)
            names += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
        else:
            names.append(f"{head}{lo}")
    return [n + rest for n in names for rest in _expand_one(tail)] if tail else names


@dataclass(frozen=True)
class SlurmNode:
    nodes: list[str]     # the step's (or job's) nodes, in Slurm's order
    name: str            # this node
    job_id: str


def slurm_node(environ: dict[str, str] | os._Environ = os.environ) -> SlurmNode:
    """Where this task runs, from the variables srun sets."""
    nodelist = (environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
                or environ.get("SLURM_NODELIST"))
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not nodelist or not job_id:
        raise NodeError("--slurm: SLURM_JOB_NODELIST and SLURM_JOB_ID are not set; run it under srun "
                        "(srun --ntasks-per-node=1 alto node FILE --slurm)")
    nodes = expand_hostlist(nodelist)
    name = environ.get("SLURMD_NODENAME")
    if name not in nodes:
        try:
            name = nodes[int(environ["SLURM_NODEID"])]
        except (KeyError, ValueError, IndexError):
            raise NodeError(f"--slurm: this node ({name or 'SLURMD_NODENAME unset'}) is not in the job's "
                            f"node list {nodelist!r} and SLURM_NODEID does not say which it is") from None
    return SlurmNode(nodes, name, job_id)


def slurm_topology(topo: topo_mod.Topology, sn: SlurmNode, gpus: int | None,
                   environ: dict[str, str] | os._Environ = os.environ) -> topo_mod.Topology:
    """The topology's hosts are the Slurm nodes: the [[host]] tables of that name, or made up."""
    if topo.hosts:
        known = {h.name: h for h in topo.hosts}
        missing = [n for n in sn.nodes if n not in known]
        if missing:
            raise topo_mod.TopologyError(f"{topo.source}: Slurm node {missing[0]!r} is not a [[host]] of this file "
                                         f"(hosts: {', '.join(known)}); name the hosts as Slurm does, or "
                                         "leave [[host]] out")
        hosts = tuple(known[n] for n in sn.nodes)
    else:
        if gpus is None:
            gpus = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
        hosts = tuple(topo_mod.HostConfig(n, n, gpus, None, None, None) for n in sn.nodes)
    topo = dataclasses.replace(topo, hosts=hosts)
    topo_mod.place_instances(topo)
    return topo


# -- what one host runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    topology: topo_mod.Topology
    host: topo_mod.HostConfig
    host_names: list[str]         # the hosts of this run, the broker's first
    instances: list[Placed]

    @property
    def runs_broker(self) -> bool:
        return self.host.name == self.host_names[0]


def plan(topo: topo_mod.Topology, host: str, host_names: list[str] | None = None) -> NodePlan:
    if not topo.hosts:
        raise topo_mod.TopologyError(f"{topo.source}: no [[host]] tables; `alto launch FILE` runs it on this machine")
    names = host_names or [h.name for h in topo.hosts]
    placement = topo_mod.place_instances(topo, names)
    known = {h.name: h for h in topo.hosts}
    if host not in names:
        raise topo_mod.TopologyError(f"{topo.source}: no [[host]] named {host!r} in this run "
                                     f"(hosts: {', '.join(names)})")
    for what, unit in [("stage", s) for s in topo.stages] + [("pool", p) for p in topo.pools]:
        if unit.inbox.startswith("ipc://"):
            raise topo_mod.TopologyError(f"{topo.source}: {what} {unit.name!r}: field 'inbox': {unit.inbox!r} "
                                         "cannot be reached from other hosts; use tcp://")
    return NodePlan(topo, known[host], names, placement[host])


def load_keys(p: NodePlan) -> None:
    """Read the secret keys this host needs now, so a missing one is named before anything starts."""
    sec = p.topology.security
    if sec is None:
        return
    try:
        if p.runs_broker:
            keys.load_pair(sec.broker_key)
        if p.instances or not p.runs_broker:
            keys.load_pair(sec.host_key(p.host))
    except keys.KeyFileError as exc:
        raise NodeError(f"host {p.host.name!r}: {exc}") from None


# -- alto node --------------------------------------------------------------------------------


@dataclass
class _Child:
    role: str                      # "broker" or "<stage>#<replica>"
    proc: subprocess.Popen
    placed: Placed | None = None
    pidfd: int | None = None
    done: bool = False


@dataclass
class Node:
    plan: NodePlan
    broker: str | None = None            # the control address (not on the broker's host)
    port_base: int | None = None
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    log_level: str = "WARNING"
    broker_wait: float = 10.0
    ready_timeout: float = 600.0  # a vLLM engine can take minutes to load
    announce: bool = False
    topology_path: str = ""
    host_names_arg: str | None = None
    children: list[_Child] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.plan.host.name

    def _spawn(self, role: str, args: list[str], placed: Placed | None = None, **popen: Any) -> _Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        env["ALTO_LOG_LEVEL"] = self.log_level
        if placed is not None:
            env["CUDA_VISIBLE_DEVICES"] = placed.cuda_visible_devices
        proc = subprocess.Popen([sys.executable, "-m", "alto_bus", *args], env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with(os.getpid(), signal.SIGKILL), **popen)
        child = _Child(role, proc, placed)
        try:
            child.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            child.pidfd = None
        self.children.append(child)
        return child

    def start(self) -> None:
        p = self.plan
        topo = p.topology
        curve = keys.topology_curve(topo, "broker" if p.runs_broker else "worker", p.host.name)
        if p.runs_broker:
            args = ["broker", self.topology_path, "--announce", "--bind-host", p.host.address]
            if self.port_base is not None:
                args += ["--port-base", str(self.port_base)]
            broker = self._spawn("broker", args, stdout=subprocess.PIPE)
            try:
                self.addresses = _read_announcement(broker.proc, timeout=30)
            except Exception as exc:
                raise NodeError(f"host {self.name!r}: {exc}") from None
            self.broker = self.addresses["control"]
            if self.announce:
                self._print(json.dumps(self.addresses))
            else:
                self._print(f"gateway {self.addresses['gateway']}")
                self._print(f"control {self.addresses['control']}")
        else:
            assert self.broker is not None
            self._probe(curve)
        worker_key = topo.security.host_key(p.host) if topo.security else None
        for placed in p.instances:
            unit = topo.pool(placed.stage) if placed.what == "pool" else topo.stage(placed.stage)
            args = ["worker", "--broker", self.broker, f"--{placed.what}", unit.name, "--host-name", p.host.name,
                    "--inbox", _rehost(unit.inbox, p.host.address), "--advertise", unit.advertise or p.host.address,
                    *curve_args(topo, worker_key)]
            role = f"{'pool ' if placed.what == 'pool' else ''}{unit.name}#{placed.replica}"
            self._spawn(role, args, placed)
        self._await_ready(curve)

    def _probe(self, curve: keys.Curve | None) -> None:
        """Ask the broker for its status before starting anything (bounded by broker_wait)."""
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
        topo = self.plan.topology
        mine = {c.proc.pid for c in self.children if c.placed is not None}
        reported: set[str] = set()
        own_ready = False
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
                    if self.plan.runs_broker:
                        for stage in topo.stages:
                            got = status["stages"][stage.name]["instances"]
                            if stage.name not in reported and len(got) >= stage.replicas:
                                reported.add(stage.name)
                                where = ", ".join(f"{i['host']}:{i['pid']}" for i in got)
                                self._print(f"stage {stage.name} ({stage.kind}): {len(got)}/{stage.replicas} "
                                            f"instances ready ({where})")
                    if own_ready and (not self.plan.runs_broker or len(reported) == len(topo.stages)):
                        if self.plan.runs_broker:
                            self._print("ready")
                        return
                if time.monotonic() > deadline:
                    missing = [s.name for s in topo.stages if s.name not in reported]
                    what = f"stages {missing}" if self.plan.runs_broker else "its instances"
                    raise NodeError(f"host {self.name!r}: {what} did not register within {self.ready_timeout:g} s")

    def _check_children(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise NodeError(f"host {self.name!r}: {child.role} (pid {child.proc.pid}) exited with code {code} "
                                "during start-up (its log is above)")

    def supervise(self, stop: list[bool], wake_fd: int, watch_stdin: bool) -> int:
        """Serve until a signal, stdin EOF, or the broker (or every instance) is gone."""
        stdin_fd = sys.stdin.fileno() if watch_stdin else None
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
                code = child.proc.poll()
                if code is None or child.done:
                    continue
                child.done = True
                self._print(f"host {self.name}: {child.role} (pid {child.proc.pid}) exited with code {code}")
                if child.role == "broker":
                    return 1
            workers = [c for c in self.children if c.placed is not None]
            if workers and all(c.done for c in workers) and not self.plan.runs_broker:
                return 0 if all(c.proc.returncode == 0 for c in workers) else 1
        return 0

    def stop(self, grace: float = 40.0) -> None:
        """Instances first (they drain and leave), then the broker; SIGKILL what outlives ``grace``."""
        instances = [c for c in self.children if c.role != "broker"]
        for group in (instances, [c for c in self.children if c.role == "broker"]):
            for child in group:
                if child.proc.poll() is None:
                    try:
                        child.proc.send_signal(signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            for child in group:
                try:
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        for child in self.children:
            if child.proc.stdout is not None:
                child.proc.stdout.close()
            if child.pidfd is not None:
                os.close(child.pidfd)
                child.pidfd = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", help="the [[host]] this node is (ssh mode)")
    who.add_argument("--slurm", action="store_true", help="find this node's share from the Slurm environment")
    p.add_argument("--hosts", help="the hosts of this run, NAME,NAME,... (default: every [[host]]; the first "
                                   "runs the broker)")
    p.add_argument("--broker", help="the broker's control address (every host but the broker's)")
    p.add_argument("--gpus", type=int, help="--slurm without [[host]] tables: GPUs per node "
                                            "(default: SLURM_GPUS_ON_NODE)")
    p.add_argument("--check", action="store_true", help="validate the file, this host's share and keys; start nothing")
    p.add_argument("--announce", action="store_true", help="print the broker's addresses as one JSON line")
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes (an ssh session that ends)")
    p.add_argument("--die-with-parent", action="store_true", help="stop when the parent process dies")
    p.add_argument("--broker-wait", type=float, help="seconds to wait for the broker to answer "
                                                     "(default 10; 120 with --slurm)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds until every instance has registered")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO from every process")


def node_main(args: argparse.Namespace) -> int:
    """``alto node``: returns the exit code."""
    level = "INFO" if args.verbose else os.environ.get("ALTO_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING), stream=sys.stderr,
                        format=f"%(asctime)s %(name)s[{os.getpid()}] %(levelname)s %(message)s")
    if args.die_with_parent:
        parent = os.getppid()
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            return 1
    stop = [False]
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)

    def on_signal(signum: int, frame: Any) -> None:
        stop[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    old_wakeup = signal.set_wakeup_fd(wfd)
    node: Node | None = None
    try:
        topo = topo_mod.load(args.topology)
        port_base = None
        broker = args.broker
        names = args.hosts.split(",") if args.hosts else None
        if args.slurm:
            sn = slurm_node()
            topo = slurm_topology(topo, sn, args.gpus)
            host, names = sn.name, sn.nodes
            port_base = slurm_port_base(sn.job_id)
            if host != names[0] and broker is None:
                broker = broker_control(topo, topo.hosts[0], port_base)
        else:
            host = args.host
        p = plan(topo, host, names)
        load_keys(p)
        if args.check:
            print(f"host {p.host.name}: ok: " + describe({p.host.name: p.instances})[0].split(": ", 1)[1]
                  + (" + broker and gateway" if p.runs_broker else ""), flush=True)
            return 0
        if not p.runs_broker and broker is None:
            raise NodeError(f"host {p.host.name!r}: give --broker (the control address the broker's host printed)")
        if p.runs_broker and args.broker:
            raise NodeError(f"host {p.host.name!r} runs the broker (it is the first host of this run); "
                            "do not give --broker")
        wait = args.broker_wait if args.broker_wait is not None else (120.0 if args.slurm else 10.0)
        node = Node(p, broker=broker, port_base=port_base, broker_wait=wait, ready_timeout=args.ready_timeout,
                    announce=args.announce, topology_path=args.topology,
                    log_level="INFO" if args.verbose else os.environ.get("ALTO_LOG_LEVEL", "WARNING"))
        if stop[0]:
            return 0
        node.start()
        return node.supervise(stop, rfd, args.watch_stdin)
    except topo_mod.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (NodeError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if node is not None:
            node.stop()
        signal.set_wakeup_fd(old_wakeup)
        os.close(rfd)
        os.close(wfd)


# -- the launcher over ssh --------------------------------------------------------------------


@dataclass
class Ssh:
    """How to reach the hosts: ``ssh [options] [-p port] [-l user] address 'cd WORKDIR && exec ...'``."""

    identity: str | None = None
    options: list[str] = field(default_factory=list)
    connect_timeout: float = 5.0
    python: str = sys.executable
    workdir: str = field(default_factory=os.getcwd)

    def argv(self, host: topo_mod.HostConfig, remote: list[str], env: dict[str, str]) -> list[str]:
        cmd = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout:g}",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.identity:
            cmd += ["-i", self.identity]
        for opt in self.options:
            cmd += ["-o", opt]
        if host.ssh_port:
            cmd += ["-p", str(host.ssh_port)]
        if host.ssh_user:
            cmd += ["-l", host.ssh_user]
        assigns = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
        line = (f"cd {shlex.quote(self.workdir)} && exec env {' '.join(assigns)} "
                f"{shlex.quote(self.python)} -m alto_bus {' '.join(shlex.quote(a) for a in remote)}")
        return [*cmd, host.address, line]


@dataclass
class _Remote:
    host: topo_mod.HostConfig
    proc: subprocess.Popen
    lines: queue.SimpleQueue
    err_tail: list[str] = field(default_factory=list)
    ended: bool = False


class ClusterLauncher:
    """Start a topology on its hosts over ssh and stop it everywhere."""

    def __init__(self, topology_path: str, host_names: list[str] | None = None, *, ssh: Ssh | None = None,
                 out: IO[str] = sys.stdout, err: IO[str] = sys.stderr, log_level: str = "WARNING",
                 ready_timeout: float = 600.0, stop_grace: float = 45.0) -> None:
        self.path = topology_path
        self.host_names = host_names
        self.ssh = ssh or Ssh()
        self.out = out
        self.err = err
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.remotes: dict[str, _Remote] = {}
        self.addresses: dict[str, str] = {}
        self.events: queue.SimpleQueue = queue.SimpleQueue()   # (host, line | None) from every remote
        self.ready_seconds: float | None = None
        self.topology: topo_mod.Topology | None = None
        self.names: list[str] = []

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        topo = topo_mod.load(self.path)
        if not topo.hosts:
            raise topo_mod.TopologyError(f"{self.path}: no [[host]] tables to launch on")
        names = self.host_names or [h.name for h in topo.hosts]
        for name in names:
            plan(topo, name, names)  # every host's share is valid here, before anything starts
        self.topology, self.names = topo, names
        hosts = {h.name: h for h in topo.hosts}
        self._preflight([hosts[n] for n in names])
        first = hosts[names[0]]
        self._run(first, ["--announce"])
        self.addresses = self._await_announcement(first)
        self._print(f"gateway {self.addresses['gateway']}")
        self._print(f"control {self.addresses['control']}")
        for name in names[1:]:
            self._run(hosts[name], ["--broker", self.addresses["control"]])
        self._await_ready(names, t0)
        self.ready_seconds = time.monotonic() - t0
        self._print(f"ready ({len(names)} hosts, {self.ready_seconds:.1f} s)")

    def _node_args(self, host: topo_mod.HostConfig, extra: list[str]) -> list[str]:
        path = self.path if Path(self.path).is_absolute() or self.ssh.workdir != os.getcwd() \
            else os.path.abspath(self.path)
        return ["node", path, "--host", host.name, "--hosts", ",".join(self.names), *extra]

    def _env(self) -> dict[str, str]:
        return {"ALTO_LOG_LEVEL": self.log_level, "PYTHONPATH": self.ssh.workdir}

    def _preflight(self, hosts: list[topo_mod.HostConfig]) -> None:
        """``alto node --check`` on every host at once: reachable, same code, files and keys there."""
        procs = {h.name: subprocess.Popen(self.ssh.argv(h, self._node_args(h, ["--check"]), self._env()),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                                          preexec_fn=_die_with(os.getpid(), signal.SIGTERM))
                 for h in hosts}
        errors = []
        deadline = time.monotonic() + self.ssh.connect_timeout + 60
        for h in hosts:
            proc = procs[h.name]
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                err = (err or "") + f"\nno answer within {self.ssh.connect_timeout + 60:g} s"
            if proc.returncode != 0:
                why = _last_lines(err) or f"exit code {proc.returncode}"
                if proc.returncode == 255 and "ssh:" not in why:
                    why = f"ssh failed: {why}"
                errors.append(why if why.startswith(f"host {h.name!r}") else f"host {h.name!r} ({h.address}): {why}")
        if errors:
            raise NodeError("; ".join(errors) + " (nothing was started)")

    def _run(self, host: topo_mod.HostConfig, extra: list[str]) -> _Remote:
        argv = self.ssh.argv(host, self._node_args(host, ["--watch-stdin", "--die-with-parent", *extra]), self._env())
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=_die_with(os.getpid(), signal.SIGTERM))
        remote = _Remote(host, proc, self.events)
        self.remotes[host.name] = remote
        threading.Thread(target=self._read_out, args=(remote,), daemon=True, name=f"ssh-{host.name}-out").start()
        threading.Thread(target=self._read_err, args=(remote,), daemon=True, name=f"ssh-{host.name}-err").start()
        return remote

    def _read_out(self, remote: _Remote) -> None:
        for raw in remote.proc.stdout:
            self.events.put((remote.host.name, raw.decode(errors="replace").rstrip("\n")))
        self.events.put((remote.host.name, None))

    def _read_err(self, remote: _Remote) -> None:
        for raw in remote.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            remote.err_tail = [*remote.err_tail[-4:], line]
            print(f"[{remote.host.name}] {line}", file=self.err, flush=True)

    def _next_event(self, deadline: float, what: str) -> tuple[str, str | None]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeError(f"{what} within {self.ready_timeout:g} s")
        try:
            event = self.events.get(timeout=left)
        except queue.Empty:
            raise NodeError(f"{what} within {self.ready_timeout:g} s") from None
        if event[0] == "":
            raise NodeError("interrupted while starting")
        return event

    def _ended(self, name: str) -> str:
        remote = self.remotes[name]
        remote.ended = True
        code = remote.proc.wait()
        return f"host {name!r} ({remote.host.address}): alto node exited with code {code}: " \
               f"{_last_lines(chr(10).join(remote.err_tail)) or 'no message'}"

    def _await_announcement(self, host: topo_mod.HostConfig) -> dict[str, str]:
        deadline = time.monotonic() + min(self.ready_timeout, 60.0)
        while True:
            name, line = self._next_event(deadline, f"host {host.name!r}: the broker did not start")
            if line is None:
                raise NodeError(self._ended(name))
            if name == host.name and line.startswith("{"):
                return json.loads(line)
            self._print(line)

    def _await_ready(self, names: list[str], t0: float) -> None:
        waiting = set(names)
        deadline = t0 + self.ready_timeout
        while waiting:
            name, line = self._next_event(deadline, f"hosts {sorted(waiting)} were not ready")
            if line is None:
                raise NodeError(self._ended(name))
            if line == "ready" and name == names[0]:
                waiting.discard(name)
                continue
            if line.startswith(f"host {name}: ") and "instance(s) ready" in line:
                if name != names[0]:
                    waiting.discard(name)
            self._print(line)

    # -- run and stop -----------------------------------------------------------------------

    def supervise(self, stop: list[bool]) -> int:
        """Forward what the nodes print; a lost host is reported (the rest serves on)."""
        while not stop[0]:
            try:
                name, line = self.events.get(timeout=None)
            except queue.Empty:  # pragma: no cover - a blocking get only returns with an item
                continue
            if name == "":
                continue  # a signal's wake-up
            if line is not None:
                self._print(line)
                continue
            msg = self._ended(name)
            if name == self.names[0]:
                print(f"error: {msg}; the broker is gone, stopping every host", file=self.err, flush=True)
                return 1
            self._print(f"lost {msg}")
            self._print(f"rejoin it with: alto node {self.path} --host {name} --hosts {','.join(self.names)} "
                        f"--broker {self.addresses.get('control')}")
        return 0

    def wake(self) -> None:
        self.events.put(("", None))

    def stop(self) -> None:
        """Every host but the broker's first (their instances drain), then the broker's host."""
        order = [n for n in self.remotes if n != (self.names[0] if self.names else None)]
        order = [order, [n for n in self.remotes if n not in order]]
        for group in order:
            for name in group:
                remote = self.remotes[name]
                if remote.proc.poll() is None and remote.proc.stdin is not None:
                    try:
                        remote.proc.stdin.close()  # the node sees EOF and stops its instances
                    except OSError:
                        pass
            deadline = time.monotonic() + self.stop_grace
            for name in group:
                proc = self.remotes[name].proc
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"host {name!r}: its node did not stop within {self.stop_grace:g} s; closing its ssh "
                          "session (the node dies with it)", file=self.err, flush=True)
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or ln.startswith("ssh:")]
    picked = errors[-n:] if errors else lines[-n:]
    return " / ".join(ln.removeprefix("error: ") for ln in picked)


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ssh-key", help="ssh identity file (-i)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="an ssh -o option, e.g. StrictHostKeyChecking=accept-new (repeatable)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="ssh ConnectTimeout (seconds)")
    p.add_argument("--remote-python", default=sys.executable,
                   help="the Python on the hosts that has alto_bus (default: this one; a shared file system)")
    p.add_argument("--remote-workdir", default=os.getcwd(), help="where to run on the hosts (default: here)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds until every instance has registered")


def launch_cluster_main(args: argparse.Namespace) -> int:
    """``scripts/launch_cluster.py FILE`` / ``alto launch FILE --hosts ...``: the exit code."""
    names = None if args.hosts in (None, "all") else [n for n in args.hosts.split(",") if n]
    ssh = Ssh(identity=getattr(args, "ssh_key", None), options=getattr(args, "ssh_option", []),
              connect_timeout=getattr(args, "connect_timeout", 5.0),
              python=getattr(args, "remote_python", sys.executable),
              workdir=getattr(args, "remote_workdir", os.getcwd()))
    launcher = ClusterLauncher(args.topology, names, ssh=ssh, log_level="INFO" if args.verbose else "WARNING",
                               ready_timeout=getattr(args, "ready_timeout", 600.0))
    return run_until_signal(launcher, (NodeError,), sys.stdout, wake=launcher.wake)
