"""Hosts on one machine: network namespaces on a bridge, each running a real sshd.

``Hosts(n)`` makes namespaces ``alto<k>h1..n`` with addresses ``198.18.<k>.1..n/24`` (the
benchmarking range, never another), joins them with veth pairs to a bridge
``altobr<k>`` in the test's own namespace (which gets ``198.18.<k>.254``, the "login
node" the launcher and the clients run on), and starts ``/usr/sbin/sshd`` in each with
its own host key, an authorized key of the test's, and a pid file, all in a temporary
folder. ``k`` is chosen so that no route of this namespace uses the subnet already,
so runs side by side do not meet. ``close()`` kills every process left in each
namespace (``ip netns pids``), deletes the namespaces and the bridge, whatever happened.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


# Every tool a cluster test runs, and the Debian package it comes from. scripts/setup.sh
# installs them (as root, with apt-get, before scripts/test.sh enters its loopback-only
# namespace, where no package registry is reachable); the tests install nothing.
TOOLS = {"ip": "iproute2", "ssh": "openssh-client", "ssh-keygen": "openssh-client", SSHD: "openssh-server",
         "nsenter": "util-linux"}


def not_root() -> str | None:
    """The reason to skip every cluster test when not root (else None)."""
    if os.geteuid() != 0:
        return "cluster tests need root: they make network namespaces, veth pairs and a bridge"
    return None


def missing(tools: dict[str, str], what: str = "cluster tests") -> str | None:
    """None when every tool is there; else why the tests cannot run, and what to do."""
    gone = {t: p for t, p in tools.items() if shutil.which(t) is None}
    if not gone:
        return None
    packages = sorted(set(gone.values()))
    return (f"{what}: {', '.join(gone)} not installed; run scripts/setup.sh as root "
            f"(it installs the Debian packages {' '.join(packages)})")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _free_subnet() -> int:
    taken = ip("-4", "route", "show").stdout + ip("netns", "list").stdout
    choices = list(range(10, 250))
    random.shuffle(choices)
    for k in choices:
        if f"198.18.{k}." not in taken and f"alto{k}h" not in taken and not Path(f"/sys/class/net/altobr{k}").exists():
            return k
    raise RuntimeError("no free 198.18.k.0/24 subnet")


@dataclass
class Host:
    name: str         # the [[host]] name (and the namespace's)
    address: str
    ns: str
    sshd: subprocess.Popen | None = None


@dataclass
class Hosts:
    n: int
    folder: Path
    k: int = 0
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    login: str = ""           # the test namespace's address on the bridge
    ssh_key: Path = Path()
    _made: list[str] = field(default_factory=list)

    def up(self) -> Hosts:
        self.k = _free_subnet()
        k = self.k
        self.bridge = f"altobr{k}"
        self.login = f"198.18.{k}.254"
        ip("link", "add", self.bridge, "type", "bridge")
        self._made.append("bridge")
        ip("addr", "add", f"{self.login}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            ns = f"alto{k}h{i}"
            ip("netns", "add", ns)
            self.hosts.append(Host(ns, f"198.18.{k}.{i}", ns))
            ip("link", "add", f"altov{k}h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", f"altov{k}h{i}", "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"198.18.{k}.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        self._start_sshd()
        return self

    # -- sshd -----------------------------------------------------------------------------

    def _start_sshd(self) -> None:
        ssh_dir = self.folder / "ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ssh_key = ssh_dir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_key)], check=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(Path(f"{self.ssh_key}.pub").read_text())
        authorized.chmod(0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        for h in self.hosts:
            hd = ssh_dir / h.name
            hd.mkdir()
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hd / "host_key")], check=True)
            config = hd / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress {h.address}", "Port 22", f"HostKey {hd / 'host_key'}", f"PidFile {hd / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "UseDNS no", "MaxStartups 100", "MaxSessions 100", "LogLevel VERBOSE", "",
            ]))
            h.sshd = subprocess.Popen(["ip", "netns", "exec", h.ns, SSHD, "-D", "-f", str(config),
                                       "-E", str(hd / "sshd.log")], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        for h in self.hosts:
            while not _accepts(h.address, 22):
                if h.sshd.poll() is not None:
                    raise RuntimeError(f"sshd in {h.ns} exited with code {h.sshd.returncode}: "
                                       f"{(ssh_dir / h.name / 'sshd.log').read_text()[-500:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd in {h.ns} did not listen on {h.address}:22 within 15 s")
                time.sleep(0.05)

    def ssh_args(self) -> list[str]:
        """Launcher options that reach these hosts."""
        return ["--ssh-key", str(self.ssh_key), "--ssh-option", "StrictHostKeyChecking=no",
                "--ssh-option", "UserKnownHostsFile=/dev/null", "--ssh-option", "LogLevel=ERROR"]

    def ssh(self, host: Host, command: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(["ssh", "-T", "-i", str(self.ssh_key), "-o", "StrictHostKeyChecking=no",
                                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                                 "-o", "BatchMode=yes", host.address, command], **popen)

    # -- processes --------------------------------------------------------------------------

    def pids(self, host: Host) -> set[int]:
        out = ip("netns", "pids", host.ns, check=False).stdout
        return {int(p) for p in out.split()}

    def app_pids(self, host: Host) -> set[int]:
        """Processes in the namespace other than its daemons: sshd (and its sessions), slurmd."""
        return {p for p in self.pids(host)
                if not _cmdline(p).startswith(("sshd", SSHD, "ip netns exec", "slurmd", "/usr/sbin/slurmd"))}

    def exec(self, host: Host, argv: list[str], **popen) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", host.ns, *argv], **popen)

    def close(self) -> None:
        for h in self.hosts:
            for _ in range(3):
                left = self.pids(h)
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for pid in left:
                    _reap_wait(pid, 5)
            if h.sshd is not None:
                try:
                    h.sshd.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            ip("netns", "del", h.ns, check=False)
        if "bridge" in self._made:
            ip("link", "del", self.bridge, check=False)


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    return _cmdline(pid)


def _reap_wait(pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        import select

        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
