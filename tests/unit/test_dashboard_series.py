"""The dashboard's time series: rates from counters, percentiles over a window, bounded memory."""

from __future__ import annotations

import pytest

from alto_bus.runtime.handler_seconds import HandlerSeconds
from alto_bus.service.dashboard_series import DashboardSeries, LatencyWindow, bucket_quantile, percentile


def status(completed: int, failed: int = 0, messages_in: int = 0, handler: dict | None = None,
           placement: dict | None = None, demand: dict | None = None) -> dict:
    inst = {"iid": 1, "host": "h", "pid": 10, "depth": 3, "draining": False, "stalled": 0.0, "bad": {},
            "stats": {"messages_in": messages_in, **(handler or {})}}
    return {"epoch": 2,
            "gateway": {"admitted": completed + failed, "completed": completed, "failed": failed, "in_flight": 1},
            "stages": {"split": {"replicas": 1, "kind": "function", "input": None, "instances": [inst]}},
            "pools": {"p": {"policy": "prompt_aware", "placement": placement or {}, "demand_tokens_per_s": demand or {},
                            "member_loads": {"h:10": 3}}}}


def test_rates_come_from_the_counters_between_samples():
    s = DashboardSeries()
    first = s.sample(status(10, messages_in=100), now=100.0)
    assert first["completed_per_s"] is None  # no earlier sample to compare with
    p = s.sample(status(30, failed=2, messages_in=160), now=102.0)
    assert p["completed_per_s"] == 10.0 and p["failed_per_s"] == 1.0 and p["admitted_per_s"] == 11.0
    assert p["stages"]["split"]["msgs_per_s"] == 30.0 and p["stages"]["split"]["depth"] == 3
    assert s.instances["split"][0]["msgs_per_s"] == 30.0
    # A restarted broker counts from zero again: its new count is the growth, never a negative rate.
    p = s.sample(status(4), now=103.0)
    assert p["completed_per_s"] == 4.0


def test_latency_percentiles_cover_the_last_span_seconds_only():
    w = LatencyWindow(span=10.0)
    for k in range(100):
        w.add(0.0, 5.0)              # old and slow: out of the window by t = 20
        w.add(15.0, (k + 1) / 1000)  # 1..100 ms
    got = w.percentiles(20.0)
    assert got == {"n": 100, "p50": 0.05, "p99": 0.099}
    assert w.percentiles(30.0) == {"n": 0, "p50": None, "p99": None}


def test_memory_is_bounded_by_points_and_latency_limit():
    s = DashboardSeries(points=5, limit=50)
    for t in range(1000):
        s.latencies.add(float(t), 0.01)
        s.sample(status(t), now=float(t))
    assert len(s.points) == 5 and [p["t"] for p in s.points] == [995.0, 996.0, 997.0, 998.0, 999.0]
    assert len(s.latencies._done) <= 50
    assert len(s._handler) <= 12  # the histograms of one span (10 s at one sample a second), not of all time


def test_a_broker_that_does_not_answer_is_a_gap_not_an_error():
    s = DashboardSeries()
    s.sample(status(1), now=1.0)
    p = s.sample(None, now=2.0)
    assert p["up"] is False and "completed_per_s" not in p
    assert s.view()["gateway"]["completed"] == 1  # the last status that came is still shown


def test_handler_percentiles_are_over_the_window_not_since_start():
    h = HandlerSeconds()
    for _ in range(100):
        h.observe(4.0)            # slow, long ago
    s = DashboardSeries(span=10.0)
    s.sample(status(0, handler=h.stats()), now=0.0)
    for _ in range(100):
        h.observe(0.002)          # fast, in the last 10 s
    p = s.sample(status(0, handler=h.stats()), now=5.0)
    assert 0.001 < p["stages"]["split"]["handler_p50"] <= 0.0025
    assert p["stages"]["split"]["handler_p99"] <= 0.0025
    assert s.instances["split"][0]["handler_p50"] == p["stages"]["split"]["handler_p50"]  # its one instance


def test_placements_and_demand_are_kept_per_point():
    s = DashboardSeries()
    s.sample(status(0, placement={"a": ["m1"], "b": ["m1", "m2"]}, demand={"a": 10.0, "b": 250.0}), now=1.0)
    s.sample(status(0, placement={"a": ["m1", "m2"], "b": ["m2"]}, demand={"a": 400.0, "b": 20.0}), now=2.0)
    v = s.view()
    assert [p["pools"]["p"]["placement"]["a"] for p in v["points"]] == [["m1"], ["m1", "m2"]]
    assert [p["pools"]["p"]["demand"]["b"] for p in v["points"]] == [250.0, 20.0]
    assert v["stages"] == {"split": {"kind": "function", "input": None, "pool": None, "replicas": 1}}
    assert v["pools"]["p"]["policy"] == "prompt_aware"


@pytest.mark.parametrize("q, expected", [(0.5, 0.0075), (0.25, 0.005), (1.0, 0.01)])
def test_bucket_quantile_interpolates_within_the_bucket(q, expected):
    # 0 in (0, 0.005], 10 in (0.005, 0.01]: like Prometheus' histogram_quantile.
    buckets = [(0.005, 0.0), (0.01, 10.0), (float("inf"), 10.0)]
    assert bucket_quantile(buckets, q) == pytest.approx(expected if q != 0.25 else 0.00625)


def test_bucket_quantile_edges():
    assert bucket_quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert bucket_quantile([(0.1, 0.0), (float("inf"), 4.0)], 0.5) == 0.1  # above every bound: the top one
    assert percentile([], 0.5) is None and percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_a_page_asks_only_for_the_points_it_does_not_have():
    s = DashboardSeries()
    for t in (1.0, 2.0, 3.0):
        s.sample(status(int(t)), now=t)
    assert [p["t"] for p in s.view()["points"]] == [1.0, 2.0, 3.0]
    assert [p["t"] for p in s.view(since=2.0)["points"]] == [3.0]
    assert s.view(since=3.0)["points"] == [] and s.view(since=3.0)["gateway"]["completed"] == 3
    assert s.view()["series"] == s.started  # a page that sees another value starts over
