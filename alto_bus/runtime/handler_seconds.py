"""How long a stage's handler takes per item, as a histogram the heartbeat carries.

A worker counts each call into fixed buckets (cheap: one bisect, no lock: the loop
thread only) and reports them in its heartbeat's ``stats`` as flat numbers, so no new
control field is needed: ``handler_count``, ``handler_sum`` and one cumulative
``handler_le_<bound>`` per bucket, the way Prometheus exposes a histogram. The broker
passes ``stats`` through to its status, and the metrics and the dashboard read them
back with :func:`read_buckets`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

# From a fast function (sub-millisecond) to an LM generation (minutes).
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
          60.0, 120.0, 300.0)
PREFIX = "handler_le_"
KEYS = tuple(f"{PREFIX}{b:g}" for b in BOUNDS)


class HandlerSeconds:
    """Per-bucket counts of handler durations (loop thread only)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1  # le is inclusive: bounds[i] >= seconds
        self.total += seconds

    def stats(self) -> dict[str, float]:
        """The heartbeat's flat figures: cumulative counts per bound, the count and the sum."""
        out: dict[str, float] = {}
        running = 0
        for key, n in zip(KEYS, self.counts, strict=False):  # the last count: +Inf
            running += n
            out[key] = running
        out["handler_count"] = running + self.counts[-1]
        out["handler_sum"] = round(self.total, 6)
        return out


def read_buckets(stats: Mapping[str, Any]) -> tuple[list[tuple[float, float]], float, float] | None:
    """(cumulative (bound, count) pairs ending with +Inf, count, sum) from a heartbeat's
    stats, or None when the instance reports no handler times (not a function stage)."""
    count = stats.get("handler_count")
    if not isinstance(count, (int, float)):
        return None
    pairs = [(b, float(stats.get(k, 0) or 0)) for b, k in zip(BOUNDS, KEYS, strict=True)]
    pairs.append((float("inf"), float(count)))
    return pairs, float(count), float(stats.get("handler_sum", 0.0) or 0.0)
