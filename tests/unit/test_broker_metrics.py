"""The broker's figures as Prometheus metrics: what a scrape shows of a status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alto_bus.service.metrics import BrokerCollector


def scrape(status: dict | None) -> list:
    registry = CollectorRegistry()
    registry.register(BrokerCollector(lambda: status))
    text = generate_latest(registry).decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def test_repeats_dropped_after_a_retry_are_counted_per_instance_and_at_the_gateway():
    status = {
        "gateway": {"in_flight": 2, "admitted": 10, "duplicates": 3},
        "stages": {"mid": {"replicas": 2, "instances": [
            {"host": "h", "pid": 7, "depth": 1, "stats": {"messages_in": 40, "duplicates": 5}},
            {"host": "h", "pid": 8, "depth": 0, "stats": {"messages_in": 30}},
        ]}},
    }
    samples = scrape(status)
    got = {(s.name, s.labels.get("instance")): s.value for s in samples}
    assert got[("alto_gateway_duplicates_dropped_total", None)] == 3
    assert got[("alto_instance_duplicates_dropped_total", "h:7")] == 5
    assert got[("alto_instance_duplicates_dropped_total", "h:8")] == 0
    assert got[("alto_broker_up", None)] == 1


def test_a_broker_that_does_not_answer_is_down_and_nothing_else_is_made_up():
    samples = scrape(None)
    assert [(s.name, s.value) for s in samples] == [("alto_broker_up", 0.0)]
