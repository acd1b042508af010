"""The aggregate stage's logic: group items by ancestry, reduce a group once it is whole. Pure.

An :class:`Aggregator` with key depth ``d`` groups every item by ``path[:d]``. It keeps
a group's items until the group's :class:`~alto_bus.protocol.ancestry.GroupTracker` says the
subtree is complete, then hands the items, ordered by path, to an :class:`Operator`
and frees the group. The caller (the runtime) feeds it DATA (whole items), END and
DROP, and sends what the calls return:

* ``(group, output)``: DATA of the group's path with ``output``;
* ``(group, DROPPED)``: DROP of the group's path (its root was dropped upstream, or a
  per-item filter removed the item), so counts stay exact downstream.

Markers above the key depth (``len(path) < d``) do not belong to any group: the calls
return nothing and :meth:`Aggregator.passes_through` tells the caller to forward them
unchanged (an END above the groups still counts the group outputs right). A group whose
request deadline passes is freed by :meth:`Aggregator.expire` and reported, so the
caller emits an ERROR; a partial group is never reduced.

Operators (:func:`make_operator`): ``collect``, ``count``, ``sum``, ``all``, ``any``,
``top_k``, ``filter`` (per item), ``barrier`` (no reduction: :mod:`alto_workers.barrier`
releases a complete group's items unchanged) and a user callable ``"module:function"``.
"""

from __future__ import annotations

import importlib
import inspect
import operator as _op
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from alto_bus.protocol.ancestry import (
    AncestryError,
    GroupError,
    GroupTracker,
    Path,
    forget_requests,
    requests_of,
)

Item = tuple[Path, Any]


class _Dropped:
    """The output that means "send DROP for this path" (a singleton)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DROPPED"

    def __reduce__(self) -> str:
        return "DROPPED"


DROPPED: Any = _Dropped()


class AggregateError(GroupError):
    """A group (or item) that cannot produce an output; its state is already freed.

    ``path`` is the group's path (or the item's, for per-item operators and items that
    belong to no group): the caller reports an ERROR for that request.
    """


# -- operators ------------------------------------------------------------------------


class Operator:
    """Reduces one complete group, or (``per_item``) decides on one item at a time."""

    name = "operator"
    per_item = False
    keeps_paths = False   # a barrier: complete groups are released item by item, paths kept

    def group(self, items: list[Item], group: Path) -> Any:
        """The output of a complete group; ``items`` are ``(path, payload)`` ordered by path."""
        raise NotImplementedError

    def item(self, path: Path, payload: Any) -> Any:
        """Per-item operators: the payload to pass on, or :data:`DROPPED`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} operator>"


def _field_getter(field: str | None) -> Callable[[Any], Any]:
    if field is None:
        return lambda payload: payload

    def get(payload: Any) -> Any:
        try:
            return payload[field]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"item has no field {field!r}: {payload!r:.80}") from None

    return get


class Collect(Operator):
    name = "collect"

    def group(self, items: list[Item], group: Path) -> list:
        return [payload for _, payload in items]


class Count(Operator):
    name = "count"

    def group(self, items: list[Item], group: Path) -> int:
        return len(items)


class _FieldReduction(Operator):
    """One builtin reduction over a field of every item (the whole item without a field)."""

    reduce: Callable[[Iterable[Any]], Any]

    def __init__(self, field: str | None = None) -> None:
        self.get = _field_getter(field)

    def group(self, items: list[Item], group: Path) -> Any:
        # Path order, so float sums do not depend on arrival order.
        return self.reduce(self.get(payload) for _, payload in items)


class Sum(_FieldReduction):
    name = "sum"
    reduce = staticmethod(sum)


class AllTrue(_FieldReduction):
    name = "all"
    reduce = staticmethod(all)


class AnyTrue(_FieldReduction):
    name = "any"
    reduce = staticmethod(any)


class TopK(Operator):
    name = "top_k"

    def __init__(self, k: int, score: str | None = None) -> None:
        self.k = k
        self.get = _field_getter(score)

    def group(self, items: list[Item], group: Path) -> list:
        # Items come in path order and the sort is stable: equal scores stay in path order.
        ranked = sorted(items, key=lambda item: self.get(item[1]), reverse=True)
        return [payload for _, payload in ranked[: self.k]]


_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": _op.eq,
    "not_equals": _op.ne,
    "lt": _op.lt,
    "le": _op.le,
    "gt": _op.gt,
    "ge": _op.ge,
    "in": lambda value, options: value in options,
}


class Filter(Operator):
    """Per item: kept items pass unchanged, removed ones become DROP."""

    name = "filter"
    per_item = True

    def __init__(self, predicate: Callable[[Any, Path], Any]) -> None:
        self.predicate = predicate

    def item(self, path: Path, payload: Any) -> Any:
        return payload if self.predicate(payload, path) else DROPPED


class Release(Operator):
    """``barrier``: no reduction; the stage releases a complete group's items as they are
    (:mod:`alto_workers.barrier` does the holding and the replay)."""

    name = "barrier"
    keeps_paths = True

    def group(self, items: list[Item], group: Path) -> Any:
        raise TypeError("a barrier releases its items; it does not reduce a group")


class Call(Operator):
    """A user callable ``f(payloads)`` or ``f(payloads, group_path)``."""

    def __init__(self, spec: str, fn: Callable[..., Any]) -> None:
        self.name = spec
        self.fn = fn
        self.with_path = _positional_arity(fn) >= 2

    def group(self, items: list[Item], group: Path) -> Any:
        payloads = [payload for _, payload in items]
        return self.fn(payloads, group) if self.with_path else self.fn(payloads)


# -- the registry ---------------------------------------------------------------------


def _positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional parameters ``fn`` names (1 when it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds)


def load_callable(spec: Any, what: str) -> Callable[..., Any]:
    """``"module:function"`` (dotted attributes allowed) -> the callable; errors name ``what``."""
    if not isinstance(spec, str):
        raise ValueError(f"{what} must be a 'module:function' string, got {spec!r}")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must be 'module:function', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"{what}: cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{what}: {spec!r} is not callable")
    call = obj if inspect.isroutine(obj) else type(obj).__call__
    if inspect.iscoroutinefunction(call):
        raise ValueError(f"{what}: {spec!r} is async; aggregate callables must be plain functions")
    return obj


def _take(op: str, options: Mapping[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ValueError(f"{op}: options must be a table, got {options!r}")
    for name in options:
        if name not in allowed:
            hint = f" (allowed: {', '.join(allowed)})" if allowed else " (it takes none)"
            raise ValueError(f"{op}: unknown option {name!r}{hint}")
    return dict(options)


def _field_option(op: str, options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{op}: option {name!r} must be a field name (non-empty), got {value!r}")
    return value


def _make_filter(options: dict[str, Any]) -> Filter:
    where = options.pop("where", None)
    field = _field_option("filter", options, "field")
    options.pop("field", None)
    if where is not None:
        if field is not None or options:
            extra = "field" if field is not None else sorted(options)[0]
            raise ValueError(f"filter: option 'where' excludes option {extra!r}")
        fn = load_callable(where, "filter: option 'where'")
        if _positional_arity(fn) >= 2:
            return Filter(fn)
        return Filter(lambda payload, path: fn(payload))
    if field is None:
        raise ValueError("filter: needs option 'where' (module:function) or 'field' (and a test)")
    get = _field_getter(field)
    if not options:
        return Filter(lambda payload, path: get(payload))
    if len(options) > 1:
        raise ValueError(f"filter: one test per filter, got options {sorted(options)}")
    (test, operand), = options.items()
    compare = _TESTS[test]
    if test == "in" and not isinstance(operand, (list, tuple)):
        raise ValueError(f"filter: option 'in' must be a list, got {operand!r}")
    return Filter(lambda payload, path: compare(get(payload), operand))


def make_operator(op: str, options: Mapping[str, Any] | None = None) -> Operator:
    """The operator named ``op`` (or the user callable ``"module:function"``) with ``options``."""
    options = {} if options is None else options
    if not isinstance(op, str):
        raise ValueError(f"aggregate operator must be a name, got {op!r}")
    if ":" in op:
        _take(op, options, ())
        return Call(op, load_callable(op, "aggregate operator"))
    if op in ("collect", "count"):
        _take(op, options, ())
        return Collect() if op == "collect" else Count()
    if op in ("sum", "all", "any"):
        opts = _take(op, options, ("field",))
        cls = {"sum": Sum, "all": AllTrue, "any": AnyTrue}[op]
        return cls(_field_option(op, opts, "field"))
    if op == "top_k":
        opts = _take(op, options, ("k", "score"))
        if "k" not in opts:
            raise ValueError("top_k: option 'k' is required")
        k = opts["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"top_k: option 'k' must be an int >= 1, got {k!r}")
        return TopK(k, _field_option(op, opts, "score"))
    if op == "filter":
        return _make_filter(_take(op, options, ("where", "field", *_TESTS)))
    if op == "barrier":
        _take(op, options, ())
        return Release()
    known = "collect, count, sum, all, any, top_k, filter, barrier"
    raise ValueError(f"unknown aggregate operator {op!r} (known: {known}, or 'module:function')")


# -- the aggregator -------------------------------------------------------------------


class _Group(GroupTracker):
    # The tracker and the items in one object, the items flat (path, payload, path,
    # payload, ...): no tuple per item. Both save memory per open group.
    __slots__ = ("items",)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.items: list[Any] = []


def _item_path(item: Item) -> Path:
    return item[0]


class Aggregator:
    """Groups the items of a keyed stage by ``path[:key_depth]`` and reduces complete groups."""

    def __init__(self, key_depth: int, op: Operator) -> None:
        if isinstance(key_depth, bool) or not isinstance(key_depth, int) or key_depth < 1:
            raise ValueError(f"key_depth must be an int >= 1, got {key_depth!r}")
        if not isinstance(op, Operator):
            raise ValueError(f"op must be an Operator (see make_operator), got {op!r}")
        self.key_depth = key_depth
        self.op = op
        self._groups: dict[Path, _Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def passes_through(self, path: Sequence[int]) -> bool:
        """True for markers the caller forwards unchanged (they belong to no group)."""
        return self.op.per_item or len(path) < self.key_depth

    # -- data-plane events --

    def data(self, path: Sequence[int], payload: Any) -> list[tuple[Path, Any]]:
        """A whole item. Returns the groups it completed (at most one) with their output."""
        path = tuple(path)
        if self.op.per_item:
            try:
                return [(path, self.op.item(path, payload))]
            except Exception as exc:
                message = f"{self.op.name} failed on {list(path)}: {_describe(exc)}"
                raise AggregateError(path, message) from exc
        if len(path) < self.key_depth:
            message = f"item {list(path)} is shallower than the key depth {self.key_depth}"
            raise AggregateError(path, message)
        root = path[: self.key_depth]
        group = self._open(root)
        group.items += (path, payload)
        return self._after(group, group.leaf, path)

    def end(self, path: Sequence[int], n: int) -> list[tuple[Path, Any]]:
        """``END(path, n)``. Returns the groups it completed with their output."""
        path = tuple(path)
        if self.passes_through(path):
            return []
        group = self._open(path[: self.key_depth])
        return self._after(group, lambda p: group.end(p, n), path)

    def drop(self, path: Sequence[int]) -> list[tuple[Path, Any]]:
        """``DROP(path)``. Returns the groups it completed; a dropped group root yields DROPPED."""
        path = tuple(path)
        if self.passes_through(path):
            return []
        group = self._open(path[: self.key_depth])
        # A dropped root is the whole group gone upstream: DROP it, do not reduce nothing.
        return self._after(group, group.drop, path, dropped=len(path) == self.key_depth)

    # -- lifetime --

    def expire(self, deadline_of: Callable[[Path], float | None], now: float) -> list[Path]:
        """Free and return the groups whose ``deadline_of(group)`` (None: no deadline) is past."""
        late = [root for root in self._groups if (d := deadline_of(root)) is not None and d <= now]
        for root in late:
            del self._groups[root]
        return late

    def cancel(self, rids: Iterable[int]) -> list[Path]:
        """Free the open groups of these requests (failed, cancelled); return them."""
        return forget_requests(self._groups, rids)

    def held(self) -> set[int]:
        """Request ids with an open group (what a failure of this instance loses)."""
        return requests_of(self._groups)

    def open_groups(self) -> list[dict[str, Any]]:
        """For diagnostics: each open group, the items it holds and what it waits on."""
        return [
            {"group": list(root), "items": len(g.items) // 2, "waiting_on": g.waiting_on(3)}
            for root, g in self._groups.items()
        ]

    # -- internals --

    def _open(self, root: Path) -> _Group:
        group = self._groups.get(root)
        if group is None:
            group = self._groups[root] = _Group(root)
        return group

    def _after(
        self, group: _Group, event: Callable[[Path], bool], path: Path, dropped: bool = False
    ) -> list[tuple[Path, Any]]:
        root = group.root
        try:
            complete = event(path)
        except (AncestryError, TypeError) as exc:  # TypeError: a path of non-ints
            del self._groups[root]
            raise AggregateError(root, f"group {list(root)}: {exc}") from exc
        if not complete:
            return []
        del self._groups[root]
        return [(root, DROPPED)] if dropped else self._reduce(group)

    def _reduce(self, group: _Group) -> list[tuple[Path, Any]]:
        flat = group.items
        items = sorted(zip(flat[::2], flat[1::2], strict=True), key=_item_path)
        try:
            output = self.op.group(items, group.root)
        except Exception as exc:
            message = f"{self.op.name} failed on group {list(group.root)}: {_describe(exc)}"
            raise AggregateError(group.root, message) from exc
        return [(group.root, output)]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
