"""The topology's optional ``[tracing]`` table: OpenTelemetry traces for every process.

    [tracing]
    exporter = "otlp"                      # "otlp", "console" or "none" (OTEL_TRACES_EXPORTER)
    endpoint = "http://127.0.0.1:4318"     # the OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT)
    protocol = "http/protobuf"             # or "grpc" (OTEL_EXPORTER_OTLP_PROTOCOL)
    service_name = "alto_bus"              # OTEL_SERVICE_NAME
    sample_ratio = 1.0                     # the share of requests traced (parent-based sampling)

The supervisor (``alto launch``, ``alto node``) turns the table into those standard
variables for every process it starts (broker, workers, HTTP front door); a variable
already set in its own environment wins, so one host can point elsewhere. Each process
then configures itself from its environment (alto_bus/telemetry/tracing.py), so a worker
started by hand traces the same way with the same variables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from alto_bus.deploy.topology import Topology, TopologyError, _fields

TRACING_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "exporter": ((str,), "otlp"),
    "endpoint": ((str,), None),
    "protocol": ((str,), "http/protobuf"),
    "service_name": ((str,), "alto_bus"),
    "sample_ratio": ((int, float), 1.0),
}
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class TracingConfig:
    exporter: str
    endpoint: str | None
    protocol: str
    service_name: str
    sample_ratio: float

    def env(self) -> dict[str, str]:
        """The OTEL_* variables this table stands for."""
        out = {"OTEL_TRACES_EXPORTER": self.exporter, "OTEL_SERVICE_NAME": self.service_name}
        if self.exporter == "otlp":
            out["OTEL_EXPORTER_OTLP_PROTOCOL"] = self.protocol
            if self.endpoint is not None:
                out["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.endpoint
        if self.sample_ratio < 1.0:
            out["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            out["OTEL_TRACES_SAMPLER_ARG"] = repr(float(self.sample_ratio))
        return out


def tracing_env(topo: Topology) -> dict[str, str]:
    """What a process the supervisor starts gets from ``[tracing]`` (empty without one)."""
    cfg = getattr(topo, "tracing", None)
    return cfg.env() if cfg is not None else {}


def with_tracing(topo: Topology, raw: dict[str, Any]) -> Topology:
    """Validate ``[tracing]`` (absent: each process follows its own OTEL_* environment)."""
    if "tracing" not in raw:
        return topo
    where = f"{topo.source}: [tracing]"
    v = _fields(raw["tracing"], TRACING_FIELDS, where)
    for name, allowed in (("exporter", EXPORTERS), ("protocol", PROTOCOLS)):
        if v[name] not in allowed:
            raise TopologyError(f"{where} field {name!r} must be one of {', '.join(allowed)}; got {v[name]!r}")
    endpoint = v["endpoint"]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise TopologyError(f"{where} field 'endpoint' must be a URL like http://127.0.0.1:4318; got {endpoint!r}")
    if endpoint is not None and v["exporter"] != "otlp":
        raise TopologyError(f"{where} field 'endpoint' is for exporter 'otlp' (the exporter is {v['exporter']!r})")
    if not v["service_name"].strip():
        raise TopologyError(f"{where} field 'service_name' is empty")
    ratio = v["sample_ratio"]
    if not 0.0 <= ratio <= 1.0:
        raise TopologyError(f"{where} field 'sample_ratio' must be within [0, 1]; got {ratio!r}")
    return dataclasses.replace(topo, tracing=TracingConfig(v["exporter"], endpoint, v["protocol"],
                                                           v["service_name"], float(ratio)))
