"""A stage barrier: hold a group's items until the group is whole, then release them.

``kind = "aggregate"`` with ``op = "barrier"``: items are grouped by
``path[:key_depth]`` as for any aggregate (keyed routing brings a group to one
instance), but a complete group is not reduced to one item: every DATA, END and DROP
the group received is sent on unchanged, paths and all, in the order it came. Nothing
downstream starts on a group before all of it exists.

That is how a pipeline runs stage by stage, the way FacTool runs its batches and the
way the paper's baseline "waits for whole outputs between stages": with
``key = "request"`` between two stages, the second sees none of a request's items
until the first has produced all of them (``topology/factool_baseline.toml``). The
stage costs one hop and holds the group's items, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from alto_bus.protocol.ancestry import (
    AncestryError, GroupError, GroupTracker, Path, forget_requests, requests_of,
)
from alto_bus.runtime.stage import KeyedStage
from alto_bus.deploy.topology import StageConfig

# A held event: ("data", path, payload, epoch) | ("end", path, n, epoch) | ("drop", path, None, epoch)
Event = tuple[str, list, Any, int]


class BarrierError(GroupError):
    """A marker that contradicts the group (its state is already freed); ``path`` is the group's."""


class _Held(GroupTracker):
    __slots__ = ("events",)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[Event] = []


class Barrier:
    """Groups events by ``path[:key_depth]``; returns a group's events once it completes. Pure."""

    def __init__(self, key_depth: int) -> None:
        if isinstance(key_depth, bool) or not isinstance(key_depth, int) or key_depth < 1:
            raise ValueError(f"key_depth must be an int >= 1, got {key_depth!r}")
        self.key_depth = key_depth
        self._groups: dict[Path, _Held] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def passes_through(self, path: Sequence[int]) -> bool:
        """Markers above the groups (shallower than the key) are the caller's to forward."""
        return len(path) < self.key_depth

    def data(self, path: Sequence[int], payload: Any, epoch: int) -> list[Event]:
        if len(path) < self.key_depth:
            raise BarrierError(tuple(path), f"item {list(path)} is shallower than the key depth {self.key_depth}")
        return self._event(("data", list(path), payload, epoch), lambda g, p: g.leaf(p))

    def end(self, path: Sequence[int], n: int, epoch: int) -> list[Event]:
        return self._event(("end", list(path), n, epoch), lambda g, p: g.end(p, n))

    def drop(self, path: Sequence[int], epoch: int) -> list[Event]:
        return self._event(("drop", list(path), None, epoch), lambda g, p: g.drop(p))

    def _event(self, event: Event, mark: Any) -> list[Event]:
        path = tuple(event[1])
        root = path[: self.key_depth]
        group = self._groups.get(root)
        if group is None:
            group = self._groups[root] = _Held(root)
        group.events.append(event)
        try:
            complete = mark(group, path)
        except (AncestryError, TypeError) as exc:
            del self._groups[root]
            raise BarrierError(root, f"group {list(root)}: {exc}") from exc
        if not complete:
            return []
        del self._groups[root]
        return group.events

    def cancel(self, rids: Iterable[int]) -> None:
        forget_requests(self._groups, rids)

    def held(self) -> set[int]:
        return requests_of(self._groups)


class BarrierStage(KeyedStage):
    """The runtime adapter: streamed items join whole, complete groups are replayed."""

    def __init__(self, key_depth: int) -> None:
        self.barrier = Barrier(key_depth)
        super().__init__(self.barrier)

    def on_item(self, path: list, payload: Any, epoch: int) -> None:
        self._replay(self.guarded(self.barrier.data, epoch, path, payload, epoch))

    def on_group_end(self, path: list, n: int, epoch: int) -> None:
        self._replay(self.guarded(self.barrier.end, epoch, path, n, epoch))

    def on_group_drop(self, path: list, epoch: int) -> None:
        self._replay(self.guarded(self.barrier.drop, epoch, path, epoch))

    def _replay(self, released: list[Event]) -> None:
        for kind, p, value, epoch in released:
            if kind == "data":
                self.out.data(p, 0, value, True, epoch)
            elif kind == "end":
                self.out.end(p, value, epoch)
            else:
                self.out.drop(p, epoch)


def build_stage(config: StageConfig) -> BarrierStage:
    return BarrierStage(config.key_depth or 1)
