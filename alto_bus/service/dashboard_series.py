"""The dashboard's live figures: a bounded window of samples of the broker's status (pure).

Once a tick (a second) the front door hands :meth:`DashboardSeries.sample` the
broker's status; each sample becomes one point: requests/s (from the gateway's
counters: every client, not only HTTP), the p50/p99 of the requests this front door
answered over the last ``span`` seconds, per stage queue depth, messages/s and handler
p50/p99 (from the instances' heartbeat histograms), and per pool the placement of
each prompt and its measured demand. Only the last ``points`` samples are kept, and
at most ``limit`` latencies: memory does not grow with uptime or traffic.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from alto_bus.runtime.handler_seconds import read_buckets

POINTS = 300     # five minutes at one sample a second
SPAN = 10.0      # seconds of requests a latency percentile is taken over
LIMIT = 20_000   # latencies kept for that (a busier door takes its percentiles from the latest)

Buckets = list[tuple[float, float]]  # cumulative (upper bound, count), ending with +Inf


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of a sorted list; None when it is empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def bucket_quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket (as
    Prometheus' histogram_quantile does); None without observations. A quantile in the
    +Inf bucket reads as the highest finite bound."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def _delta(cur: Buckets, old: Buckets | None) -> Buckets:
    if old is None:
        return cur
    return [(b, max(0.0, c - o)) for (b, c), (_, o) in zip(cur, old, strict=False)]


def _sum(parts: list[Buckets]) -> Buckets:
    out = [(b, 0.0) for b, _ in parts[0]]
    for p in parts:
        out = [(b, a + c) for (b, a), (_, c) in zip(out, p, strict=False)]
    return out


def _grown(cur: float, prev: float) -> float:
    """How much a counter grew; one that went down restarted (a new broker) from zero."""
    return cur - prev if cur >= prev else cur


def _n(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class LatencyWindow:
    """End-to-end latencies of the requests answered in the last ``span`` seconds."""

    def __init__(self, span: float = SPAN, limit: int = LIMIT) -> None:
        self.span = span
        self._done: deque[tuple[float, float]] = deque(maxlen=limit)  # (when, seconds)

    def add(self, now: float, seconds: float) -> None:
        self._done.append((now, seconds))

    def percentiles(self, now: float) -> dict[str, Any]:
        while self._done and self._done[0][0] < now - self.span:
            self._done.popleft()
        ordered = sorted(s for t, s in self._done if t >= now - self.span)
        return {"n": len(ordered), "p50": percentile(ordered, 0.5), "p99": percentile(ordered, 0.99)}


class DashboardSeries:
    """The last ``points`` samples, and the latest status's per-instance view."""

    def __init__(self, points: int = POINTS, span: float = SPAN, limit: int = LIMIT) -> None:
        self.span = span
        self.started = time.time()  # names this series: a page that sees it change starts over
        self.latencies = LatencyWindow(span, limit)
        self.points: deque[dict[str, Any]] = deque(maxlen=points)
        self.latest: dict[str, Any] | None = None      # the last status that came
        self.instances: dict[str, list[dict[str, Any]]] = {}
        self._prev: tuple[float, dict[str, float], dict[tuple[str, int], float]] | None = None
        self._handler: deque[tuple[float, dict[tuple[str, int], Buckets]]] = deque()

    def sample(self, status: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
        """Add the point of ``status`` (None: the broker did not answer) taken at ``now``."""
        lat = self.latencies.percentiles(now)
        point: dict[str, Any] = {"t": now, "up": status is not None, "p50": lat["p50"], "p99": lat["p99"],
                                 "http_n": lat["n"]}
        if status is None:
            self.points.append(point)
            return point
        self.latest = dict(status)
        gateway = status.get("gateway") or {}
        totals = {k: _n(gateway.get(k)) for k in ("admitted", "completed", "failed", "rejected")}
        msgs = {(stage, i.get("iid")): _n((i.get("stats") or {}).get("messages_in"))
                for stage, st in (status.get("stages") or {}).items() for i in st.get("instances", [])}
        prev = self._prev
        dt = now - prev[0] if prev is not None else 0.0
        self._prev = (now, totals, msgs)

        def rate(cur: float, old: float | None) -> float | None:
            return None if old is None or dt <= 0 else round(_grown(cur, old) / dt, 3)

        for key in ("completed", "failed", "admitted"):
            point[key + "_per_s"] = rate(totals[key], prev[1][key] if prev else None)
        point["in_flight"] = _n(gateway.get("in_flight"))
        point["stages"] = self._stages(status.get("stages") or {}, now, rate, prev[2] if prev else {})
        point["pools"] = {name: {"placement": {pr: list(ms) for pr, ms in (p.get("placement") or {}).items()},
                                 "demand": dict(p.get("demand_tokens_per_s") or {}),
                                 "load": dict(p.get("member_loads") or {})}
                          for name, p in (status.get("pools") or {}).items()}
        self.points.append(point)
        return point

    def _stages(self, stages: Mapping[str, Any], now: float, rate: Any,
                old_msgs: dict[tuple[str, int], float]) -> dict[str, Any]:
        # Each instance's handler histogram now, less what it was ``span`` seconds ago: the window's share.
        cur_hist = {}
        for stage, st in stages.items():
            for i in st.get("instances", []):
                read = read_buckets(i.get("stats") or {})
                if read is not None:
                    cur_hist[(stage, i.get("iid"))] = read[0]
        while len(self._handler) > 1 and self._handler[1][0] <= now - self.span:
            self._handler.popleft()
        base = self._handler[0][1] if self._handler else {}
        self._handler.append((now, cur_hist))
        window = {key: _delta(h, base.get(key)) for key, h in cur_hist.items()}
        out: dict[str, Any] = {}
        self.instances = {}
        for stage, st in stages.items():
            views = []
            for i in st.get("instances", []):
                key = (stage, i.get("iid"))
                mine = window.get(key, [])
                views.append({"iid": i.get("iid"), "host": i.get("host"), "pid": i.get("pid"),
                              "depth": _n(i.get("depth")), "draining": bool(i.get("draining")),
                              "stalled": _n(i.get("stalled")), "bad": sum(_n(v) for v in (i.get("bad") or {}).values()),
                              "msgs_per_s": rate(_n((i.get("stats") or {}).get("messages_in")), old_msgs.get(key)),
                              "handler_p50": bucket_quantile(mine, 0.5), "handler_p99": bucket_quantile(mine, 0.99)})
            self.instances[stage] = views
            parts = [h for key, h in window.items() if key[0] == stage]
            both = _sum(parts) if parts else []
            per_s = [v["msgs_per_s"] for v in views if v["msgs_per_s"] is not None]
            out[stage] = {"depth": sum(v["depth"] for v in views), "instances": len(views),
                          "msgs_per_s": round(sum(per_s), 3) if per_s else None,
                          "handler_p50": bucket_quantile(both, 0.5), "handler_p99": bucket_quantile(both, 0.99)}
        return out

    def view(self, since: float | None = None) -> dict[str, Any]:
        """What the page polls: the points after ``since`` (all without it: a page keeps
        those it has), the graph, the instances, the pools, the totals."""
        st = self.latest or {}
        stages = st.get("stages") or {}
        points = list(self.points) if since is None else [p for p in self.points if p["t"] > since]
        return {
            "series": self.started,
            "span": self.span,
            "points": points,
            "stages": {name: {"kind": s.get("kind"), "input": s.get("input"), "pool": s.get("pool"),
                              "replicas": s.get("replicas")} for name, s in stages.items()},
            "instances": self.instances,
            "pools": {name: {k: p.get(k) for k in ("policy", "placement", "demand_tokens_per_s", "member_loads",
                                                   "kv", "hit_rates", "running", "waiting")}
                      | {"decisions": list(p.get("decisions") or [])[-5:]}
                      for name, p in (st.get("pools") or {}).items()},
            "gateway": st.get("gateway") or {},
            "epoch": st.get("epoch"),
        }
