"""``GET /metrics`` of one host's processes: ``alto node`` / ``alto launch --metrics-port PORT``.

A Prometheus server scrapes each host of a cluster where its instances run, without
going through the HTTP front door (which may not run, or runs on another host). The
supervisor serves the broker's figures restricted to the instances and pool members it
started (:func:`node_view`), under the same names and labels as the front door's
``/metrics``; the host that runs the broker adds the gateway's. Each scrape asks the
broker for its status (nothing is cached); a broker that does not answer reads as
``alto_broker_up 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from alto_bus.deploy.http_config import parse_listen
from alto_bus.service.metrics import BrokerCollector

STATUS_TIMEOUT = 2.0


def parse_metrics_port(value: str, default_host: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` -> (host, port); ValueError names what is wrong."""
    if value.isdigit():
        value = f"{default_host}:{value}"
    return parse_listen(value)


def node_view(status: Mapping[str, Any], pids: Collection[int], host: str | None,
              with_gateway: bool) -> dict[str, Any]:
    """The part of the broker's ``status`` about this host: the instances whose pid it
    started (and, when ``host`` is given, that registered from it), the pool members among
    them (named ``host:pid``), and the gateway when this host runs it."""
    def mine(inst: Mapping[str, Any]) -> bool:
        return inst.get("pid") in pids and (host is None or inst.get("host") == host)

    stages = {name: {**st, "instances": [i for i in st.get("instances", []) if mine(i)]}
              for name, st in (status.get("stages") or {}).items()}
    members = {f"{i.get('host')}:{i.get('pid')}" for st in stages.values() for i in st["instances"]}
    pools = {}
    for name, pool in (status.get("pools") or {}).items():
        per_member = {k: {m: v for m, v in (pool.get(k) or {}).items() if m in members}
                      for k in ("member_loads", "kv", "hit_rates", "running", "waiting")}
        # A prompt's demand and placement are the pool's, not one host's: left to the broker's host.
        shared = {k: pool.get(k) or {} for k in ("demand_tokens_per_s", "placement")} if with_gateway else {}
        pools[name] = {**per_member, **shared}
    out: dict[str, Any] = {"stages": stages, "pools": pools}
    if with_gateway:
        out["gateway"] = status.get("gateway") or {}
    return out


class NodeMetrics:
    """A small HTTP server (prometheus_client's, in a daemon thread) for one host's /metrics."""

    def __init__(self, control: str, pids: Callable[[], Collection[int]], host: str | None, with_gateway: bool,
                 curve: Any = None) -> None:
        self.control, self.pids, self.host, self.with_gateway, self.curve = control, pids, host, with_gateway, curve
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(BrokerCollector(self._status))
        self._server: Any = None

    def _status(self) -> dict[str, Any] | None:
        from alto_bus.deploy.status_probe import StatusProbe

        with StatusProbe(self.control, curve=self.curve) as probe:
            status = probe.query(timeout=STATUS_TIMEOUT)
        return None if status is None else node_view(status, set(self.pids()), self.host, self.with_gateway)

    def start(self, host: str, port: int) -> str:
        """Listen on host:port (0: a free one); the URL of /metrics. OSError when it cannot bind."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = self._server.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
