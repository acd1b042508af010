"""The aggregate operators as the reference interpreter computes them (reference.py).

Written from DESIGN.md ("Workers", "Graphs") and the README, not from workers/aggregate.py,
so that the reference is an oracle for the runtime rather than a copy of it. A group's
items come as ``(path, payload)`` in path order; a join's items carry their input's index
at ``path[fork depth]``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

from alto_bus.deploy.topology import import_object

Items = list[tuple[tuple, Any]]


class OpFailure(Exception):
    """An operator that cannot give an output; the text is the request's error."""


def positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional parameters ``fn`` takes (1 when its signature is hidden)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _field(payload: Any, name: str | None) -> Any:
    if name is None:
        return payload
    try:
        return payload[name]
    except (KeyError, IndexError, TypeError):
        raise OpFailure(f"item has no field {name!r}: {payload!r:.80}") from None


_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": operator.eq, "not_equals": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge, "in": lambda value, options: value in options,
}


class GroupOp:
    """One stage's operator: ``reduce(items, group)`` for a keyed stage, ``keep(payload,
    path)`` for ``filter`` (per item), ``barrier`` passes a whole group on unchanged."""

    def __init__(self, op: str, options: dict | None, join: tuple[int, tuple[str, ...]] | None) -> None:
        self.op = op
        self.options = dict(options or {})
        self.join = join  # (fork depth, the merged inputs' names) for a join
        self.per_item = op == "filter"
        self.barrier = op == "barrier"
        self.fn: Callable[..., Any] | None = None
        if ":" in op:
            self.fn = import_object(op)
        elif op == "filter":
            where = self.options.get("where")
            self.fn = import_object(where) if where else None

    # -- per item --

    def keep(self, payload: Any, path: list) -> bool:
        try:
            if self.fn is not None:
                return bool(self.fn(payload, tuple(path)) if positional_arity(self.fn) >= 2 else self.fn(payload))
            value = _field(payload, self.options.get("field"))
            tests = [(t, v) for t, v in self.options.items() if t in _TESTS]
            if not tests:
                return bool(value)
            (test, operand), = tests
            return bool(_TESTS[test](value, operand))
        except OpFailure as exc:
            raise OpFailure(f"filter failed on {list(path)}: ValueError: {exc}") from None
        except Exception as exc:
            raise OpFailure(f"filter failed on {list(path)}: {describe(exc)}") from None

    # -- per group --

    def reduce(self, items: Items, group: tuple) -> Any:
        try:
            return self._reduce(items, group)
        except OpFailure as exc:
            raise OpFailure(f"{self.op} failed on group {list(group)}: ValueError: {exc}") from None
        except Exception as exc:
            raise OpFailure(f"{self.op} failed on group {list(group)}: {describe(exc)}") from None

    def _by_input(self, items: Items) -> dict[str, list]:
        depth, names = self.join
        out: dict[str, list] = {name: [] for name in names}
        for path, payload in items:
            out[names[path[depth]]].append(payload)
        return out

    def _reduce(self, items: Items, group: tuple) -> Any:
        op, opts = self.op, self.options
        payloads = [payload for _, payload in items]
        if self.fn is not None:
            arg = self._by_input(items) if self.join else payloads
            return self.fn(arg, group) if positional_arity(self.fn) >= 2 else self.fn(arg)
        if op == "collect":
            return self._by_input(items) if self.join else payloads
        if op == "count":
            return len(payloads)
        if op in ("sum", "all", "any"):
            values = [_field(p, opts.get("field")) for p in payloads]
            return {"sum": sum, "all": all, "any": any}[op](values)
        if op == "top_k":
            scored = [(_field(p, opts.get("score")), p) for p in payloads]
            # Highest score first; equal scores keep path order.
            ranked = sorted(range(len(scored)), key=lambda i: scored[i][0], reverse=True)
            return [scored[i][1] for i in ranked[: opts["k"]]]
        raise ValueError(f"the reference has no operator {op!r}")
