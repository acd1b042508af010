"""Prometheus metrics of the HTTP front door (``GET /metrics``), in vLLM's naming style.

Two sources, one registry of its own (never the process-global one):

* what the front door measures itself, per request: admitted, completed, failed by
  reason, in flight, end-to-end latency and time to the first partial;
* what the broker knows, read from its status (``StatusProbe``) at scrape time by a
  custom collector: gateway counts, per stage and instance queue depth and message
  counts, handler latency histograms, per pool member load, KV-cache usage, prefix-cache
  hit rate, running and waiting sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from alto_bus.runtime.handler_seconds import read_buckets

log = logging.getLogger("alto.http")

# Pipelines span a millisecond (functions) to minutes (LM chains).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
                   40.0, 80.0, 160.0, 320.0)

# Per-instance counters a worker reports in its heartbeat stats: (stats key, metric, help).
INSTANCE_COUNTERS = (
    ("messages_in", "alto_instance_messages_in", "Messages (DATA/END/DROP) taken from the inbox."),
    ("frames_in", "alto_instance_frames_in", "Frames (batches of messages) taken from the inbox."),
    ("frames_out", "alto_instance_frames_out", "Frames sent downstream."),
    ("errors", "alto_instance_errors", "Items that ended in an error (a handler raised, an input refused)."),
    ("bad_frames", "alto_instance_bad_frames", "Frames dropped because they did not decode."),
    ("duplicates", "alto_instance_duplicates_dropped", "Repeats of a re-run stage's output dropped (retries)."),
)
GATEWAY_COUNTERS = (
    ("admitted", "alto_gateway_requests_admitted", "Requests the gateway admitted (every client)."),
    ("completed", "alto_gateway_requests_completed", "Requests the gateway answered with a result."),
    ("failed", "alto_gateway_requests_failed", "Admitted requests that ended in an error."),
    ("rejected", "alto_gateway_requests_rejected", "Requests refused at admission (overloaded, unavailable, bad)."),
    ("late_messages", "alto_gateway_late_messages", "Messages for requests that had already ended."),
    ("bad_frames", "alto_gateway_bad_frames", "Frames the gateway dropped because they did not decode."),
    ("duplicates", "alto_gateway_duplicates_dropped", "Repeats of a re-run stage's output dropped (retries)."),
)


def _num(value: Any) -> float:
    """A status figure as a sample; anything else (a field whose shape changed) reads as 0."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class FrontDoorMetrics:
    """The front door's own figures plus the broker's, in one registry."""

    def __init__(self, status: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admitted = Counter("alto_requests_admitted", "Requests the front door passed to the gateway.",
                                registry=r)
        self.completed = Counter("alto_requests_completed", "Requests answered with a result.", registry=r)
        self.failed = Counter("alto_requests_failed", "Requests answered with an error, by reason "
                              "(bad_request, refused, overloaded, unavailable, instance_lost, timeout, "
                              "handler_error, cancelled, internal).", ["reason"], registry=r)
        self.in_flight = Gauge("alto_requests_in_flight", "Requests the front door is serving now.", registry=r)
        self.e2e = Histogram("alto_e2e_request_latency_seconds", "From a request's body read to its result "
                             "or error.", buckets=LATENCY_BUCKETS, registry=r)
        self.first_partial = Histogram("alto_time_to_first_partial_seconds", "From a streamed request's body "
                                       "read to its first partial.", buckets=LATENCY_BUCKETS, registry=r)
        if status is not None:
            r.register(BrokerCollector(status))

    def render(self) -> bytes:
        """The text exposition (calls the broker: run it off the event loop)."""
        return generate_latest(self.registry)


class BrokerCollector(Collector):
    """Figures from the broker's status, read at each scrape (nothing is cached)."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # no call to the broker when the collector is registered

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        up = GaugeMetricFamily("alto_broker_up", "1 when the broker answered this scrape's status query.")
        up.add_metric([], 0.0 if st is None else 1.0)
        yield up
        if st is None:
            return
        for part, read in (("gateway", _gateway), ("stages", _stages), ("pools", _pools)):
            try:  # a status of another shape loses its figures, never the scrape
                families = list(read(st.get(part) or {}))
            except (AttributeError, TypeError, ValueError) as exc:
                log.warning("status field %r not understood, left out of the metrics: %s", part, exc)
                continue
            yield from families


def _gateway(g: dict[str, Any]) -> Iterator[Metric]:
    m = GaugeMetricFamily("alto_gateway_requests_in_flight", "Requests admitted and not yet answered.")
    m.add_metric([], _num(g.get("in_flight")))
    yield m
    for key, name, doc in GATEWAY_COUNTERS:
        c = CounterMetricFamily(name, doc)
        c.add_metric([], _num(g.get(key)))
        yield c


def _stages(stages: dict[str, Any]) -> Iterator[Metric]:
    replicas = GaugeMetricFamily("alto_stage_replicas", "Instances the topology asks for.", labels=["stage"])
    live = GaugeMetricFamily("alto_stage_instances", "Instances registered now.", labels=["stage"])
    depth = GaugeMetricFamily("alto_instance_queue_depth", "Items queued at an instance (its last heartbeat).",
                              labels=["stage", "instance"])
    draining = GaugeMetricFamily("alto_instance_draining", "1 while an instance drains before it leaves.",
                                 labels=["stage", "instance"])
    counters = {key: CounterMetricFamily(name, doc, labels=["stage", "instance"])
                for key, name, doc in INSTANCE_COUNTERS}
    handler = HistogramMetricFamily("alto_stage_handler_seconds", "Time a stage's handler took per item "
                                    "(a function's call, an LM stage's generation; from the instance's heartbeat).",
                                    labels=["stage", "instance"])
    for stage, st in stages.items():
        insts = st.get("instances", [])
        replicas.add_metric([stage], _num(st.get("replicas")))
        live.add_metric([stage], float(len(insts)))
        for i in insts:
            labels = [stage, f"{i.get('host')}:{i.get('pid')}"]  # as pools name their members
            depth.add_metric(labels, _num(i.get("depth")))
            draining.add_metric(labels, 1.0 if i.get("draining") else 0.0)
            stats = i.get("stats") or {}
            for key, c in counters.items():
                c.add_metric(labels, _num(stats.get(key)))
            timing = read_buckets(stats)
            if timing is not None:
                pairs, _, total = timing
                handler.add_metric(labels, [(floatToGoString(b), n) for b, n in pairs], total)
    yield from (replicas, live, depth, draining, *counters.values(), handler)


def _pools(pools: dict[str, Any]) -> Iterator[Metric]:
    load = GaugeMetricFamily("alto_pool_member_load", "Items queued at a pool member, over its prompts.",
                             labels=["pool", "instance"])
    kv_usage = GaugeMetricFamily("alto_pool_kv_cache_usage_perc", "KV-cache usage of a pool member "
                                 "(1 = full).", labels=["pool", "instance"])
    kv_capacity = GaugeMetricFamily("alto_pool_kv_cache_capacity_tokens", "KV-cache size of a pool member, "
                                    "in tokens.", labels=["pool", "instance"])
    hits = GaugeMetricFamily("alto_pool_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache, "
                             "over those looked up (since the engine started).", labels=["pool", "instance"])
    demand = GaugeMetricFamily("alto_pool_prompt_demand_tokens_per_second", "Measured token work of a prompt.",
                               labels=["pool", "prompt"])
    placed = GaugeMetricFamily("alto_pool_prompt_instances", "Members a prompt is placed on.",
                               labels=["pool", "prompt"])
    running = GaugeMetricFamily("alto_pool_num_requests_running", "Sequences in a pool member's engine batch "
                                "(over its prompts).", labels=["pool", "instance"])
    waiting = GaugeMetricFamily("alto_pool_num_requests_waiting", "Sequences queued at a pool member's engine "
                                "(over its prompts).", labels=["pool", "instance"])
    for name, p in pools.items():
        for member, value in (p.get("member_loads") or {}).items():
            load.add_metric([name, member], _num(value))
        for member, kv in (p.get("kv") or {}).items():
            capacity = _num(kv.get("capacity"))
            kv_capacity.add_metric([name, member], capacity)
            if capacity > 0:
                kv_usage.add_metric([name, member], _num(kv.get("used")) / capacity)
        for member, rate in (p.get("hit_rates") or {}).items():
            hits.add_metric([name, member], _num(rate))
        for prompt, tps in (p.get("demand_tokens_per_s") or {}).items():
            demand.add_metric([name, prompt], _num(tps))
        for prompt, members in (p.get("placement") or {}).items():
            placed.add_metric([name, prompt], float(len(members)))
        for member, n in (p.get("running") or {}).items():
            running.add_metric([name, member], _num(n))
        for member, n in (p.get("waiting") or {}).items():
            waiting.add_metric([name, member], _num(n))
    yield from (load, kv_usage, kv_capacity, hits, demand, placed, running, waiting)
