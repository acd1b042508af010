"""`alto launch FILE --metrics-port`: Prometheus /metrics of the machine's processes, no HTTP front door."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from alto_bus import Client
from tests.integration.test_http import Launched, topology
from tests.support import wait_for, write_topology


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_port_serves_the_machines_instances_without_the_front_door(tmp_path):
    run = Launched(write_topology(tmp_path, topology()), "--metrics-port", "127.0.0.1:0")
    try:
        assert run.url is None  # no front door
        printed = dict(line.split(" ", 1) for line in run.lines if " " in line)
        url = printed["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        assert run.lines.index(f"metrics {url}") < run.lines.index("ready")
        with Client(printed["gateway"]) as client:
            assert client.submit("node metrics", timeout=30).result(timeout=40) == ["NODE", "METRICS"]

        def handled() -> dict | None:  # every instance has reported its handler's time
            m = scrape(url)
            instances = [labels for name, labels in m if name == "alto_instance_queue_depth"]
            return m if instances and all(m.get(("alto_stage_handler_seconds_count", labels))
                                          for labels in instances) else None

        m = wait_for(handled, 15, "a heartbeat with the handlers' times of both stages")
        assert m[("alto_broker_up", ())] == 1
        assert m[("alto_gateway_requests_completed_total", ())] == 1  # this host runs the gateway
        assert {dict(k[1])["stage"] for k in m if k[0] == "alto_instance_queue_depth"} == {"split", "upper"}
        assert m[("alto_stage_instances", (("stage", "upper"),))] == 1
    finally:
        run.stop()
    assert run.proc.returncode == 0
