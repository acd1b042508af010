"""What the benchmark scripts share: a launch waited on until ready, CPU use read from
/proc (Linux), percentiles."""

from __future__ import annotations

import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def launch_until_ready(args: list[str], env: dict[str, str] | None = None,
                       timeout: float = 60.0) -> tuple[subprocess.Popen, dict[str, str]]:
    """``python -m alto_bus <args>`` from the repository root, and what it printed before
    "ready" (its first word -> the rest: "gateway" -> the address). Killed if it does not
    say ready within ``timeout``."""
    proc = subprocess.Popen([sys.executable, "-m", "alto_bus", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    printed: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        if b"\n" not in buf:  # raw reads: a buffered readline would hide lines from select
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                proc.kill()
                proc.wait()
                raise SystemExit(f"alto {' '.join(args)} did not say ready within {timeout:.0f} s")
            buf += chunk
            continue
        raw, buf = buf.split(b"\n", 1)
        line = raw.decode().strip()
        if line == "ready":
            return proc, printed
        word, _, rest = line.partition(" ")
        printed[word] = rest


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()   # the name may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot: differences give the busy fraction."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]          # idle + iowait
    total = sum(vals[:8])
    return total - idle, total


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); inf entries sort last."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if math.isinf(s[hi]):
        return math.inf if k > lo or math.isinf(s[lo]) else s[lo]
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
