"""Python callables in a graph's fields, as the ``"module:function"`` strings a topology holds.

Two ways to name one. For processes (``to_toml``, ``launch``) a callable must be
importable in another interpreter: a function at the top level of an importable module
becomes ``"module:qualname"``; a lambda, a closure or a ``__main__`` function cannot, and
the error names the stage and the field. In this process (``run``) any callable will do:
:class:`LocalNames` puts the others in a module of its own in ``sys.modules``, so the topology,
its validation and the workers' stage building see an ordinary ``"module:attr"``.
"""

from __future__ import annotations

import itertools
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alto_bus.deploy.topology import TopologyError, import_object

Namer = Callable[[Any, str, str], str]   # (callable, stage name, field) -> "module:attr"

_runs = itertools.count(1)


def portable_name(fn: Any, where: str) -> str:
    """``"module:qualname"`` of a callable another process can import; ``where`` starts the error."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    why = None
    if not module or not qualname:
        why = f"{type(fn).__name__} objects have no module and name"
    elif "<lambda>" in qualname:
        why = "it is a lambda"
    elif "<locals>" in qualname:
        why = "it is defined inside a function (a closure)"
    elif module == "__main__":
        why = "it is defined in __main__ (a script or a notebook), which other processes cannot import"
    else:
        try:
            found = import_object(f"{module}:{qualname}")
        except ImportError as exc:
            why = str(exc)
        else:
            if found is not fn:
                why = f"'{module}:{qualname}' is another object (a decorator or a later definition?)"
    if why is not None:
        raise TopologyError(f"{where}: {fn!r} cannot run in another process: {why}; define it at the "
                            "top level of an importable module, or name it 'module:function' "
                            "(Graph.run() runs any callable in this process)")
    return f"{module}:{qualname}"


def portable_namer(source: str) -> Namer:
    return lambda fn, stage, field: portable_name(fn, f"{source}: stage {stage!r}: field {field!r}")


class LocalNames:
    """A module of this process's callables, for one in-process run (remove it with ``close``)."""

    def __init__(self) -> None:
        self.module = types.ModuleType(f"_alto_graph_{next(_runs)}")
        self.module.__doc__ = "Callables of a Graph run in this process (alto_bus.graph.specs)."
        sys.modules[self.module.__name__] = self.module
        self._count = itertools.count()

    def __call__(self, fn: Any, stage: str, field: str) -> str:
        try:
            return portable_name(fn, "")  # the same topology as its file, when it can be named
        except TopologyError:
            pass
        attr = re.sub(r"[^A-Za-z0-9_]", "_", f"{stage}__{field}") + f"__{next(self._count)}"
        setattr(self.module, attr, fn)
        return f"{self.module.__name__}:{attr}"

    def close(self) -> None:
        sys.modules.pop(self.module.__name__, None)

    def __enter__(self) -> LocalNames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def named_fields(stage: dict[str, Any], namer: Namer) -> dict[str, Any]:
    """A stage table with every callable (a field, or a value in a table field such as
    ``options``) replaced by its name."""
    name = str(stage.get("name"))
    out: dict[str, Any] = {}
    for field, value in stage.items():
        if callable(value):
            value = namer(value, name, field)
        elif isinstance(value, dict):
            value = {k: (namer(v, name, f"{field}.{k}") if callable(v) else v) for k, v in value.items()}
        out[field] = value
    return out


def spec_strings(stages: list[dict[str, Any]]) -> list[str]:
    """Every "module:attr"-looking string of the stages' fields (and of their table fields)."""
    values = [v for s in stages for v in s.values()]
    values += [x for v in values if isinstance(v, dict) for x in v.values()]
    return [v for v in values if isinstance(v, str) and ":" in v]


def import_roots(specs: list[str]) -> list[str]:
    """The sys.path entries the modules of ``specs`` were imported from (to give processes)."""
    roots: list[str] = []
    for spec in specs:
        module_name = spec.partition(":")[0]
        module = sys.modules.get(module_name)
        file = getattr(module, "__file__", None)
        if not file:
            continue
        root = Path(file).resolve().parent
        if Path(file).name == "__init__.py":
            root = root.parent
        for _ in module_name.split(".")[1:]:
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots
