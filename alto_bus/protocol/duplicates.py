"""Markers seen twice after a retry: recognised by path and dropped. Pure, no sockets.

A stage with ``retries`` re-runs the items a dead instance held (alto_bus/runtime/resend.py).
A handler that may be re-run is deterministic, so its children keep their paths: whoever
is downstream may get a DATA chunk, an END or a DROP it already has. Ancestry counting
(alto_bus.protocol.ancestry) would call that a contradiction; this filter, used by every
stage downstream of a retries stage and by the gateway, drops the exact repeats first:

* DATA: same path, ``seq`` and loop turn as one already seen (a streamed item's chunks
  are numbered), by the same input (a merge takes the same paths from each of its inputs);
* END: same path and the same count (a different count is a contradiction: passed on, so
  ancestry reports it);
* DROP: same path.

It remembers one entry per marker of each request until the request ends (``forget``),
at most ``memory`` in all: past that the oldest requests are forgotten (their repeats
then reach ancestry, which fails the request rather than give a wrong result).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from alto_bus.protocol.messages import Data, Drop, End

# Markers remembered per process before the oldest requests are forgotten.
MEMORY = 1_000_000


class Duplicates:
    __slots__ = ("memory", "by_rid", "size", "dropped")

    def __init__(self, memory: int = MEMORY) -> None:
        self.memory = memory
        self.by_rid: dict[int, dict[tuple, Any]] = {}  # rid -> marker key -> END count (or None)
        self.size = 0
        self.dropped = 0  # repeats dropped (counted in stats)

    def fresh(self, msg: Any, source: int = 0) -> bool:
        """False for an exact repeat of a marker already seen (drop it); True otherwise.
        ``source``: the input it came by (a merge takes the same paths from each input)."""
        kind = type(msg)
        if kind is Data:
            key: tuple = (source, tuple(msg.path), msg.seq, msg.turns)  # a loop's next turn is new
            value = None
        elif kind is End:
            key, value = (source, tuple(msg.path), "end"), msg.n
        elif kind is Drop:
            key, value = (source, tuple(msg.path), "drop"), None
        else:
            return True  # an ERROR: the gateway's business, never a repeat to hide
        rid = msg.path[0]
        seen = self.by_rid.get(rid)
        if seen is None:
            seen = self.by_rid[rid] = {}
        elif key in seen:
            if seen[key] == value:
                self.dropped += 1
                return False
            return True  # a different END count: a contradiction, for ancestry to report
        seen[key] = value
        self.size += 1
        if self.size > self.memory:
            self._bound()
        return True

    def filter(self, msgs: Iterable[Any], source: int = 0) -> Iterator[Any]:
        return (m for m in msgs if self.fresh(m, source))

    def forget(self, rids: Iterable[int]) -> None:
        """These requests ended: nothing of theirs comes that matters."""
        by_rid = self.by_rid
        for rid in rids:
            seen = by_rid.pop(rid, None)
            if seen is not None:
                self.size -= len(seen)

    def _bound(self) -> None:
        by_rid = self.by_rid
        while self.size > self.memory and len(by_rid) > 1:
            oldest = next(iter(by_rid))
            self.size -= len(by_rid.pop(oldest))
