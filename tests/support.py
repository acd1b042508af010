"""Helpers shared by the tests: topology files from dicts, running topologies, process checks."""

from __future__ import annotations

import contextlib
import io
import os
import select
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alto_bus.deploy.supervisor import StatusProbe, Supervisor


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(topology: dict[str, Any]) -> str:
    """Enough TOML for topology files: [broker], [[stage]] and other arrays of tables."""
    lines = []
    for key, value in topology.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        else:
            for table in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_topology(folder: Path, topology: dict[str, Any], name: str = "topology.toml") -> Path:
    path = Path(folder) / name
    path.write_text(to_toml(topology))
    return path


@contextlib.contextmanager
def running(topology: dict[str, Any] | Path, log_level: str = "WARNING") -> Iterator[Supervisor]:
    """Launch a topology as real processes; stop every one of them afterwards, whatever happens."""
    with tempfile.TemporaryDirectory() as tmp:
        path = topology if isinstance(topology, Path) else write_topology(Path(tmp), topology)
        sup = Supervisor(str(path), out=io.StringIO(), log_level=log_level)
        try:
            sup.start()
            yield sup
        finally:
            sup.stop()


def status(sup: Supervisor) -> dict:
    with StatusProbe(sup.addresses["control"]) as probe:
        st = probe.query(timeout=5.0)
    assert st is not None, "the broker did not answer a status query"
    return st


def wait_exit(pid: int, timeout: float) -> bool:
    """True when process ``pid`` has exited (or is a zombie) within ``timeout``; no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Running (not exited, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going between open and read
        return False


def wait_for(predicate, timeout: float, what: str):
    """Re-check a condition on the system's own state until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
