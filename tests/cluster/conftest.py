"""Fixtures for tests across "hosts": network namespaces with real sshd, real launches.

Every test leaves nothing behind: the launcher is killed if it still runs, and any
process left in a namespace (other than its sshd) fails the test and is killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.netns import TOOLS, Hosts, missing, not_root
from tests.support import alive, to_toml, wait_for  # noqa: F401 (the tests take wait_for from here)

ROOT = Path(__file__).resolve().parents[2]
H = "tests.cluster.handlers"

_NOT_ROOT = not_root()
if _NOT_ROOT is not None:
    pytest.skip(_NOT_ROOT, allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def _tools():
    """As root a cluster test that cannot run fails (it is not skipped): a missing tool
    is a set-up to fix. Session scope: checked before any host is made."""
    reason = missing(TOOLS)
    if reason:
        pytest.fail(reason)


@pytest.fixture(scope="module")
def hosts3(tmp_path_factory):
    hosts = Hosts(3, tmp_path_factory.mktemp("hosts"))
    try:
        hosts.up()
    except Exception:
        hosts.close()
        raise
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def clean(hosts3):
    """After the test: nothing of ours runs in any namespace (else: fail, after killing it)."""
    yield hosts3
    left = {}
    deadline = time.monotonic() + 20
    for h in hosts3.hosts:
        while (pids := hosts3.app_pids(h)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pids:
            left[h.name] = sorted(pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not left, f"processes left behind in the namespaces: {left}"


def host_tables(hosts: Hosts, gpus: list[int] | None = None) -> list[dict]:
    gpus = gpus or [0] * len(hosts.hosts)
    return [{"name": h.name, "address": h.address, "gpus": g} for h, g in zip(hosts.hosts, gpus)]


def write(folder: Path, topology: dict[str, Any], name: str = "topology.toml") -> Path:
    path = folder / name
    path.write_text(to_toml(topology))
    return path


class Launch:
    """``scripts/launch_cluster.py FILE`` run as a user runs it, output read line by line."""

    def __init__(self, path: Path, hosts: Hosts, *extra: str, alto_launch: bool = False) -> None:
        entry = ["-m", "alto_bus", "launch", str(path), "--hosts"] if alto_launch \
            else ["scripts/launch_cluster.py", str(path)]
        self.proc = subprocess.Popen([sys.executable, *entry, *hosts.ssh_args(), *extra], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._buf = b""
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()

    def _read_err(self) -> None:
        for raw in self.proc.stderr:
            self.err.append(raw.decode(errors="replace").rstrip("\n"))

    def read_until(self, predicate, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                self.lines.append(line.decode())
                if predicate(self.lines[-1]):
                    return self.lines[-1]
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; stdout {self.lines}; stderr {self.err[-20:]}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self.proc.wait(10)
                self._err_thread.join(5)  # the last lines of its stderr
                raise AssertionError(f"launcher exited ({self.proc.returncode}); stdout {self.lines}; "
                                     f"stderr {self.err[-20:]}")
            self._buf += chunk

    def ready(self, timeout: float = 90.0) -> str:
        return self.read_until(lambda ln: ln.startswith("ready"), timeout)

    def value(self, key: str) -> str:
        return next(ln.split()[1] for ln in self.lines if ln.startswith(key + " "))

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._err_thread.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@pytest.fixture
def launches():
    started: list[Launch] = []

    def start(path: Path, hosts: Hosts, *extra: str, alto_launch: bool = False) -> Launch:
        run = Launch(path, hosts, *extra, alto_launch=alto_launch)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def gone(pids: set[int]) -> bool:
    return not any(alive(p) for p in pids)
