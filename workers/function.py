"""The ``function`` stage kind: any Python callable named ``module:function``.

With ``options`` in the topology, ``handler`` names a factory that is called once with
them and returns the callable (for handlers that load something first).
"""

from __future__ import annotations

import inspect
from typing import Any

from alto_bus.deploy.topology import StageConfig, TopologyError, import_object
from alto_bus.runtime.kinds import REQUIRED, StageKind
from alto_bus.runtime.stage import FunctionStage

FIELDS = {
    "handler": ((str,), REQUIRED),
    "options": ((dict,), None),      # when given, handler is a factory called with them
    "fanout": ((bool,), None),       # default: a generator handler fans out
    "threads": ((int,), 0),          # >0: a sync handler runs on this many threads, off the loop
}
MAX_THREADS = 256


def build_stage(config: StageConfig) -> FunctionStage:
    fn = import_object(config.fields["handler"])
    options = config.fields.get("options")
    if options is not None:
        fn = fn(**options)
    return FunctionStage(fn, threads=config.fields.get("threads", 0))


def check(values: dict[str, Any], input: str | None, label: str, check_handlers: bool) -> bool:
    """The handler can be imported and called; returns whether the stage fans out."""
    spec = values["handler"]
    if not 0 <= values["threads"] <= MAX_THREADS:
        raise TopologyError(f"{label}: field 'threads' must be 0 (on the event loop) to {MAX_THREADS}, "
                            f"got {values['threads']}")
    if check_handlers:
        try:
            fn = import_object(spec)
        except ImportError as exc:
            raise TopologyError(f"{label}: field 'handler': {exc}") from None
        if not callable(fn):
            raise TopologyError(f"{label}: field 'handler': {spec!r} is not callable")
        if values["fanout"] is None and values["options"] is None:
            return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    elif ":" not in spec:
        raise TopologyError(f"{label}: field 'handler': {spec!r} is not 'module:function'")
    return bool(values["fanout"])


KIND = StageKind("function", FIELDS, build=build_stage, check=check)
