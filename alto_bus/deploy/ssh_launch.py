"""The launcher over ssh: start a topology's nodes on their hosts and stop them everywhere.

As torchrun- or DeepSpeed-style launchers do (``scripts/launch_cluster.py``, or ``alto
launch FILE --hosts``): check every host in parallel (``alto node --check`` over ssh),
start the first host's node (broker + gateway + its instances), read the broker's
addresses, then the other hosts' nodes; print ``ready``; on Ctrl-C close every node's
stdin (each stops its instances, which drain), then the broker's host. Nothing is left
on any host.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.errors import NodeError
from alto_bus.deploy.plan import plan
from alto_bus.deploy.processes import die_with
from alto_bus.deploy.run_signal import run_until_signal


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
                                          preexec_fn=die_with(os.getpid(), signal.SIGTERM))
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
                                start_new_session=True, preexec_fn=die_with(os.getpid(), signal.SIGTERM))
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
