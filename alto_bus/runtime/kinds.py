"""Stage kinds, found by name through the ``alto_bus.stage_kinds`` entry points.

The engine imports no worker kind. A kind is a :class:`StageKind` object that a package
names in its metadata; the built-in ones (``function``, ``aggregate``, ``lm``) register
exactly as a third party's would::

    # setup.cfg of the package that brings the kind
    [options.entry_points]
    alto_bus.stage_kinds =
        my-kind = my_package.stage:KIND
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "alto_bus.stage_kinds"

REQUIRED = object()  # the default of a field the topology must give

# name -> (accepted types, default or REQUIRED)
FieldSpec = Mapping[str, tuple[tuple[type, ...], Any]]


@dataclass(frozen=True)
class StageKind:
    """What the engine needs of a kind of stage.

    ``fields``: the kind's own fields in a ``[[stage]]`` table (beside the common ones).
    ``check(values, input, label, check_handlers) -> bool``: validation before anything
    starts (raise ``TopologyError`` naming ``label`` and the field); returns whether the
    stage fans out (each input item becomes children ``path + [i]``). It may add derived
    entries to ``values``.
    ``build(config)`` (or ``build(config, engine)`` for a stage on a pool): the stage's
    :class:`~alto_bus.runtime.stage.StageLogic`.
    ``keyed``: its input is routed by aggregation key (the ``key`` field), unless the
    check set ``values["per_item"]``.
    Kinds whose instances can share an engine in a ``[[pool]]`` also give
    ``check_engine(values, label)`` and ``make_engine(pool_fields)``; ``gpus(fields)``
    says how many GPUs one instance takes when the topology does not.
    """

    name: str
    fields: FieldSpec
    build: Callable[..., Any]
    check: Callable[[dict[str, Any], str | None, str, bool], bool] | None = None
    keyed: bool = False
    check_engine: Callable[[dict[str, Any], str], None] | None = None
    make_engine: Callable[[dict[str, Any]], Any] | None = None
    gpus: Callable[[dict[str, Any]], int] | None = None
    doc: str = field(default="", compare=False)


class UnknownKind(LookupError):
    """No registered stage kind has this name."""


_loaded: dict[str, StageKind] = {}


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """The names of every registered kind (without importing them)."""
    return sorted(set(_entry_points()) | set(_loaded))


def stage_kind(name: str) -> StageKind:
    """The kind registered as ``name``; :class:`UnknownKind` names the known ones."""
    kind = _loaded.get(name)
    if kind is not None:
        return kind
    ep = _entry_points().get(name)
    if ep is None:
        known = known_kinds()
        hint = (f"known kinds: {', '.join(known)}" if known else
                f"no kinds are registered at all: install the project (pip install -e .) so that its "
                f"'{ENTRY_POINT_GROUP}' entry points exist")
        raise UnknownKind(f"no stage kind named {name!r}; {hint}")
    kind = ep.load()
    if not isinstance(kind, StageKind) or kind.name != name:
        raise UnknownKind(f"entry point {name!r} of group {ENTRY_POINT_GROUP!r} ({ep.value}) is not a "
                          f"StageKind named {name!r}")
    _loaded[name] = kind
    return kind


def register(kind: StageKind) -> StageKind:
    """Register a kind in this process only (tests, notebooks); packages use entry points."""
    _loaded[kind.name] = kind
    return kind
