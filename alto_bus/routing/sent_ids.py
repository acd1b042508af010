"""The request ids a sender sent to one peer: what may have died with that peer. Pure.

Both kinds of sender keep them: a worker for each downstream instance (its outbox) and the
gateway for each entry-stage instance (its entry link). If the peer dies, the ids sent in
the last few intervals may be in no report the peer made ("recent": the broker fails
them), while ids sent before are only doubtful: under load they may still wait in the
peer's inbox, in none of its "held" reports, for as long as its queue is ("older": the
broker fails them unless they ended or a live instance holds them).

The two senders differ only in the window (how many intervals count as recent):

* the gateway rotates an entry link on that peer's own heartbeat, so two generations
  cover it: since the last heartbeat, and the interval before (that heartbeat may have
  left before those items arrived);
* a worker rotates on the broker's clock (the "loads" report) and never sees the peer's
  heartbeats, so it keeps ``liveness + 2`` intervals: as long as the broker may take to
  declare the peer dead, and a margin.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Container, Iterable


class SentIds:
    """Ids sent to one peer, one generation per interval (newest last), then "older"."""

    __slots__ = ("window", "memory", "recent", "older")

    def __init__(self, window: int, memory: int | None = None) -> None:
        self.window = window    # generations that count as recent, the current one included
        self.memory = memory    # bound on "older" when "ended" notices go missing (None: none)
        self.recent: collections.deque[set[int]] = collections.deque([set()])
        self.older: dict[int, None] = {}  # insertion order: the oldest first

    def add(self, rid: int) -> None:
        self.recent[-1].add(rid)

    def forget(self, ended: Iterable[int]) -> None:
        """These requests ended: their items got through, nothing to account for."""
        ended = list(ended)
        if not ended:
            return
        for gen in self.recent:
            gen.difference_update(ended)
        older = self.older
        for rid in ended:
            older.pop(rid, None)

    def rotate(self, keep_if: Container[int] | None = None) -> int:
        """An interval passed: a new generation; the one past the window becomes older
        (only its ids in ``keep_if``, when given: the requests still in flight). Returns
        how many of the oldest ids were forgotten to stay within ``memory``."""
        recent = self.recent
        older = self.older
        recent.append(set())
        while len(recent) > self.window:
            gen = recent.popleft()
            kept = gen if keep_if is None else (r for r in gen if r in keep_if)
            older.update(dict.fromkeys(kept))
        extra = 0 if self.memory is None else len(older) - self.memory
        if extra > 0:
            for rid in list(itertools.islice(older, extra)):
                del older[rid]
            return extra
        return 0

    def lost(self, also: Iterable[int] = ()) -> tuple[list[int], list[int]]:
        """The peer died: (recent ids and ``also``, older ids not among them), sorted."""
        recent = set(also).union(*self.recent)
        return sorted(recent), sorted(r for r in self.older if r not in recent)
