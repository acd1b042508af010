"""What the benchmark scripts share: CPU use read from /proc (Linux), percentiles."""

from __future__ import annotations

import math
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
