"""The gateway's span per request: from admission to its RESULT or FAILED answer.

Its parent is the caller's context (SUBMIT's ``traceparent``: the HTTP front door
passes the ``traceparent`` header on, the Python client its argument or the current
OpenTelemetry span); without one the request starts a trace. Its own context goes on
the request's first DATA, so every stage's item spans are its children
(alto_bus/telemetry/stage_spans.py). An unsampled request carries nothing: no worker
traces it.
"""

from __future__ import annotations

from typing import Any

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Submit
from alto_bus.telemetry import tracing

# Spans of requests that ended with no answer (their client went away) are swept once
# this many more are open than the book has requests in flight.
SWEEP_SLACK = 1024


def request_spans(book: Any) -> RequestSpans | None:
    """The gateway's request spans, or None when tracing is off in this process."""
    tracer = tracing.tracer("broker")
    return None if tracer is None else RequestSpans(tracer, book)


class RequestSpans:
    def __init__(self, tracer: Any, book: Any) -> None:
        self.tracer = tracer
        self.book = book   # the request book (its ``requests``: what is still in flight)
        self.open: dict[tuple[bytes, int], tuple[int, Any]] = {}  # (client, cid) -> (rid, span)

    def start(self, client: bytes, msg: Submit, rid: int, entry: str, instance: int) -> str | None:
        """Open the span of admitted request ``rid``; the traceparent its first DATA carries."""
        from opentelemetry.trace import SpanKind

        span = self.tracer.start_span("alto.request", context=tracing.parent_context(msg.traceparent),
                                      kind=SpanKind.SERVER, attributes={
                                          "alto.request.id": rid, "alto.request.stream": msg.stream,
                                          "alto.entry.stage": entry, "alto.entry.instance_id": instance})
        old = self.open.pop((client, msg.cid), None)
        if old is not None:  # the book refuses a cid in flight, so that one has ended
            tracing.end_span(old[1], "ended without an answer")
        self.open[(client, msg.cid)] = (rid, span)
        return tracing.traceparent_of(span)

    def answered(self, out: list[tuple[bytes, list]]) -> None:
        """End the spans of the requests these answers end (RESULT, FAILED)."""
        if not self.open:
            return
        for client, msg in out:
            op = msg[0]
            if op != wire.RESULT and op != wire.FAILED:
                continue
            entry = self.open.pop((client, msg[1]), None)
            if entry is None:
                continue  # refused before admission: it had no span
            if op == wire.RESULT:
                tracing.end_span(entry[1])
            else:
                tracing.end_span(entry[1], f"stage {msg[2]!r}: {msg[3]}", **{"alto.error.stage": str(msg[2])})
        if len(self.open) > len(self.book.requests) + SWEEP_SLACK:
            self.sweep()

    def sweep(self) -> None:
        """End the spans of requests that left the book unanswered (their client is gone)."""
        live = self.book.requests
        for key, (rid, span) in list(self.open.items()):
            if rid not in live:
                del self.open[key]
                tracing.end_span(span, "ended without an answer: the client went away")
