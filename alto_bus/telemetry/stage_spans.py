"""A worker's spans: one per item per stage, children of the request's span.

The gateway puts the request span's traceparent on the request's first DATA; a worker
that traces remembers it per request (:class:`~alto_bus.telemetry.carry.RequestContexts`)
and puts it on the first chunk of every item it emits for that request, so the next
stage, in whatever process, opens its item spans under the same parent. An untraced
request (no context on its messages) gets no spans anywhere.

The worker sees three hooks (runtime/worker.py): :func:`traced` wraps the stage logic
when tracing is on (else it is left alone and nothing here runs), the inbox hands each
DATA that carries a context to :meth:`StageTracing.carried`, and ``Worker.data`` takes
the ``trace`` the wrapped emitter passes. An LM stage adds its figures with
:func:`note_generation`.
"""

from __future__ import annotations

from typing import Any

from alto_bus.protocol.messages import Data
from alto_bus.telemetry import tracing
from alto_bus.telemetry.carry import ItemSpans, RequestContexts


def traced(logic: Any, worker: Any) -> tuple[Any, StageTracing | None]:
    """``(logic, None)`` when tracing is off; else the logic wrapped, and its tracing."""
    tracer = tracing.tracer("worker")
    if tracer is None:
        return logic, None
    hook = StageTracing(tracer, worker)
    return TracedLogic(logic, hook), hook


def note_generation(out: Any, path: list, **attributes: Any) -> None:
    """Add an LM generation's figures (``gen_ai.*``) to the span of item ``path``; a
    no-op when the stage is not traced (``out`` is then the worker itself)."""
    note = getattr(out, "note", None)
    if note is not None:
        note(path, {k: v for k, v in attributes.items() if v is not None})


def stage_attributes(config: Any) -> dict[str, Any]:
    """What every span of the stage says about it, the ``gen_ai.*`` request fields of an LM stage too."""
    attrs: dict[str, Any] = {"alto.stage": config.name, "alto.stage.kind": config.kind}
    if config.kind == "lm":
        f = config.fields
        attrs["gen_ai.operation.name"] = "chat" if f.get("chat") else "text_completion"
        if f.get("engine"):
            attrs["gen_ai.system"] = f["engine"]
        if f.get("model"):
            attrs["gen_ai.request.model"] = f["model"]
        if f.get("pool"):
            attrs["alto.pool"] = f["pool"]
        attrs["alto.prompt"] = f.get("prompt_name") or config.name
        for name in ("max_tokens", "temperature"):
            if f.get(name) is not None:
                attrs[f"gen_ai.request.{name}"] = f[name]
    return attrs


class StageTracing:
    """The open item spans of one stage instance and the context of its requests."""

    def __init__(self, tracer: Any, worker: Any) -> None:
        self.tracer = tracer
        self.worker = worker
        self.contexts = RequestContexts()
        self.items: ItemSpans[Any] = ItemSpans()
        self.name = f"stage {worker.stage}"
        self.attributes = stage_attributes(worker.config)

    def carried(self, msg: Data) -> None:
        """A DATA with a trace context reached the stage: remember the request's context;
        the first chunk of an item opens the item's span."""
        path = msg.path
        self.contexts.remember(path[0], msg.trace)
        if msg.seq != 0 or tuple(path) in self.items:
            return
        parent = tracing.parent_context(msg.trace)
        if parent is None:
            return  # not a valid traceparent: the item goes untraced
        span = self.tracer.start_span(self.name, context=parent, attributes={
            **self.attributes, "alto.instance_id": self.worker.iid if self.worker.iid is not None else -1,
            "alto.item.path": list(path), "alto.request.id": path[0]})
        for old in self.items.open(path, span):
            tracing.end_span(old, "abandoned: too many items open at this stage")

    def trace_of(self, rid: int) -> str | None:
        return self.contexts.get(rid)

    def ended(self, spans: list, error: str | None = None) -> None:
        for span in spans:
            tracing.end_span(span, error)

    def request_over(self, rids: set[int], why: str) -> None:
        for rid in rids:
            self.ended(self.items.end_request(rid), why)
        self.contexts.forget(rids)


class TracedEmitter:
    """What the wrapped logic emits through: the worker's calls, with the request's trace
    context on each item's first chunk, ending the spans those outputs complete."""

    def __init__(self, out: Any, hook: StageTracing) -> None:
        self._out = out
        self._hook = hook
        self.stage = out.stage

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        hook = self._hook
        self._out.data(path, seq, payload, final, epoch, hook.trace_of(path[0]) if seq == 0 else None)
        if final:
            hook.ended(hook.items.output(path))

    def end(self, path: list, n: int, epoch: int) -> None:
        self._out.end(path, n, epoch)
        self._hook.ended(self._hook.items.fanned_out(path), None)

    def drop(self, path: list, epoch: int) -> None:
        self._out.drop(path, epoch)
        self._hook.ended(self._hook.items.output(path))

    def error(self, path: list, message: str, epoch: int) -> None:
        self._out.error(path, message, epoch)
        self._hook.ended(self._hook.items.end_request(path[0]), message)

    def spawn(self, rid: int, work: Any) -> None:
        self._out.spawn(rid, work)

    def note(self, path: list, attributes: dict[str, Any]) -> None:
        span = self._hook.items.get(path)
        if span is not None:
            span.set_attributes(attributes)

    def __getattr__(self, name: str) -> Any:  # anything else a stage reads off the worker
        return getattr(self._out, name)


class TracedLogic:
    """The stage's logic, bound to a :class:`TracedEmitter`; a cancel ends its spans."""

    def __init__(self, logic: Any, hook: StageTracing) -> None:
        self._logic = logic
        self._hook = hook
        # The per-message calls, bound once (not looked up through __getattr__ each time).
        self.on_data, self.on_end, self.on_drop = logic.on_data, logic.on_end, logic.on_drop

    def bind(self, out: Any) -> None:
        self._logic.bind(TracedEmitter(out, self._hook))

    def cancel(self, rids: set[int]) -> None:
        self._logic.cancel(rids)
        self._hook.request_over(rids, "cancelled: the request ended elsewhere")

    def __getattr__(self, name: str) -> Any:  # on_data, on_end, held, depth, prompt_stats, ...
        return getattr(self._logic, name)
