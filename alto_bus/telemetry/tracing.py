"""The process's tracer, from the standard OpenTelemetry environment; off by default.

Tracing is on in a process when one of these holds:

* ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``; a comma list), or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (OTLP);
* the host process (an embedded worker, a client) installed an SDK ``TracerProvider``
  of its own: alto_bus then adds its spans to it.

``OTEL_SDK_DISABLED=true`` turns it off whatever else is set. OTLP goes over HTTP
(``http/protobuf``) unless ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` says ``grpc``; the
exporters read their own variables (endpoint, headers, timeout), the SDK reads the
sampler's (``OTEL_TRACES_SAMPLER``) and the batch processor's (``OTEL_BSP_*``).
``alto launch`` turns a topology's ``[tracing]`` table into these variables for every
process it starts (alto_bus/deploy/tracing_config.py).

Nothing here imports OpenTelemetry while tracing is off, so an untraced process pays
neither its import time nor anything per message.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from alto_bus.telemetry.carry import TraceParent, format_traceparent, parse_traceparent

log = logging.getLogger("alto.tracing")

SCOPE = "alto_bus"
DEFAULT_SERVICE = "alto_bus"
EXPORTERS = ("otlp", "console", "none")

_lock = threading.Lock()
_tracer: Any = None
_configured = False


class TracingError(ValueError):
    """The tracing configuration cannot be used; the message names the variable."""


def enabled_by_env(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(exporter_names(env))


def exporter_names(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment names ("none" and empty entries left out);
    TracingError for a name alto_bus does not know."""
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:  # an endpoint alone means OTLP
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for n in names:
        if n not in EXPORTERS:
            raise TracingError(f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter {n!r} "
                               f"(alto_bus knows {', '.join(EXPORTERS)})")
    return [n for n in names if n != "none"]


def tracer(role: str = "alto") -> Any:
    """This process's OpenTelemetry tracer, or None when tracing is off. The first call
    decides (``role`` names the process in the resource: broker, worker, client)."""
    global _tracer, _configured
    if _configured:
        return _tracer
    with _lock:
        if not _configured:
            _tracer = _make_tracer(role, os.environ)
            _configured = True
    return _tracer


def _make_tracer(role: str, env: Mapping[str, str]) -> Any:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    provider = None
    if "opentelemetry.trace" in sys.modules:  # the host may have set up its own provider
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        current = trace.get_tracer_provider()
        provider = current if isinstance(current, TracerProvider) else None
    if provider is None:
        names = exporter_names(env)
        if not names:
            return None
        provider = _make_provider(role, names, env)
    log.info("tracing on (%s)", role)
    return provider.get_tracer(SCOPE)


def _make_provider(role: str, names: list[str], env: Mapping[str, str]) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {"alto.process": role, "process.pid": os.getpid()}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = DEFAULT_SERVICE
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package "
                               "opentelemetry-exporter-otlp-proto-grpc") from None
        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: alto_bus exports OTLP as "
                           "'http/protobuf' or 'grpc'")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


# -- context <-> OpenTelemetry ----------------------------------------------------------


def current_traceparent() -> str | None:
    """The traceparent of the caller's current span (OpenTelemetry's context), if there is
    a sampled one; None without OpenTelemetry loaded (then this costs a dict lookup)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    ctx = api.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, True)


def parent_context(parent: TraceParent | str | None) -> Any:
    """An OpenTelemetry context whose current span is the remote ``parent`` (None: a root)."""
    if isinstance(parent, str):
        parent = parse_traceparent(parent)
    if parent is None:
        return None
    from opentelemetry import trace

    span = trace.NonRecordingSpan(trace.SpanContext(parent.trace_id, parent.span_id, is_remote=True,
                                                    trace_flags=trace.TraceFlags(parent.flags)))
    return trace.set_span_in_context(span)


def traceparent_of(span: Any) -> str | None:
    """What a span's children carry on the wire; None when it is not sampled (then
    nothing downstream traces the request)."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, True)


def end_span(span: Any, error: str | None = None, **attributes: Any) -> None:
    """End ``span``, as failed with ``error`` when given."""
    if attributes:
        span.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
