"""A worker's part in ``retries``: copies of what it sent to a stage that may re-run
its handler, sent again when the broker says an instance departed; and the filter that
drops the repeats a re-run sends downstream.

* :class:`KeptItems` (pure): per destination instance, per request, the messages sent
  there (the decoded records: a reference, no copy of the payload), in order, until the
  request ends (the broker's "ended" notices) or is cancelled. At most ``memory``
  messages in all: past that the oldest requests' copies are forgotten, and noted, so
  that a later resend reports them "lost" (the broker fails them) instead of a hang.
* :class:`Retrying` ties it to a worker. Only a worker with a consumer that has
  ``retries`` keeps copies (its ``_route`` is replaced by one that keeps them; every
  other worker's hot path is untouched), and only a stage at or after one filters
  repeats (:mod:`alto_bus.protocol.duplicates`).

A resend routes each copy again through the current table (a keyed hop: the group's
owner in the first epoch where it is alive, see RouteTable._key_owner), keeps it again
under its new instance, and tells the broker which requests it sent again ("resent"):
each costs an attempt there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alto_bus.protocol.duplicates import Duplicates
from alto_bus.protocol.messages import Message
from alto_bus.routing.route_table import PARK, Fail

# Messages a worker keeps for resends before it forgets the oldest requests' copies.
KEPT_MEMORY = 200_000
# Request ids remembered per instance whose copies were forgotten (reported lost on resend).
EVICTED_MEMORY = 100_000
# Ids per "resent"/"lost" control message: keeps control frames bounded.
REPORT_CHUNK = 50_000

Kept = tuple[int, Message, bool]  # (consumer index, message, streamed chunk)


class KeptItems:
    __slots__ = ("memory", "by_dest", "where", "size", "evicted")

    def __init__(self, memory: int = KEPT_MEMORY) -> None:
        self.memory = memory
        self.by_dest: dict[int, dict[int, list[Kept]]] = {}  # dest -> rid -> copies, in send order
        self.where: dict[int, set[int]] = {}                 # rid -> dests with copies (oldest rid first)
        self.size = 0
        self.evicted: dict[int, dict[int, None]] = {}        # dest -> rids whose copies were forgotten

    def add(self, dest: int, consumer: int, msg: Message, stream: bool) -> None:
        rid = msg.path[0]
        per = self.by_dest.get(dest)
        if per is None:
            per = self.by_dest[dest] = {}
        copies = per.get(rid)
        if copies is None:
            copies = per[rid] = []
            self.where.setdefault(rid, set()).add(dest)
        copies.append((consumer, msg, stream))
        self.size += 1
        if self.size > self.memory:
            self._bound()

    def forget(self, rids: Iterable[int]) -> None:
        """These requests ended (or were cancelled): no copy of theirs is needed."""
        for rid in rids:
            for dest in self.where.pop(rid, ()):
                per = self.by_dest[dest]
                self.size -= len(per.pop(rid))
                if not per:
                    del self.by_dest[dest]

    def take(self, dest: int, rids: Iterable[int] | None = None) -> tuple[list[Kept], list[int], list[int]]:
        """The copies sent to ``dest`` (only of ``rids`` when given), no longer kept there:
        (copies in send order, their request ids, ids whose copies were forgotten)."""
        per = self.by_dest.get(dest, {})
        chosen = list(per) if rids is None else [r for r in dict.fromkeys(rids) if r in per]
        out: list[Kept] = []
        for rid in chosen:
            copies = per.pop(rid)
            self.size -= len(copies)
            out.extend(copies)
            dests = self.where[rid]
            dests.discard(dest)
            if not dests:
                del self.where[rid]
        if not per:
            self.by_dest.pop(dest, None)
        evicted = self.evicted.pop(dest, {}) if rids is None else {}
        return out, chosen, list(evicted)

    def has(self, dest: int) -> bool:
        return dest in self.by_dest or dest in self.evicted

    def _bound(self) -> None:
        while self.size > self.memory and len(self.where) > 1:
            rid = next(iter(self.where))
            for dest in self.where.pop(rid):
                per = self.by_dest[dest]
                self.size -= len(per.pop(rid))
                if not per:
                    del self.by_dest[dest]
                lost = self.evicted.setdefault(dest, {})
                lost[rid] = None
                if len(lost) > EVICTED_MEMORY:
                    del lost[next(iter(lost))]


class Retrying:
    """A worker's copies for resends and its filter of repeats (either may be off)."""

    def __init__(self, worker: Any, retries: dict[int, int], dedupe: bool) -> None:
        self.w = worker
        self.consumers = set(retries)       # consumer indexes with retries: their items are kept
        self.kept = KeptItems()
        self.seen = Duplicates() if dedupe else None
        self.pending: set[int] = set()      # resends waiting for a table without their instance
        if self.consumers:
            worker._route = self.route      # the keeping route; others keep the plain one

    @classmethod
    def attach(cls, worker: Any, welcome: dict) -> Retrying | None:
        """From the broker's welcome: None when the stage neither feeds a stage with
        retries nor may see repeats (nothing changes for it)."""
        retries = {i: int(c["config"].get("retries") or 0) for i, c in enumerate(welcome.get("consumers") or [])}
        retries = {i: n for i, n in retries.items() if n > 0}
        for i, n in retries.items():
            worker.routes.tables[i].retries = n  # a keyed hop to a dead owner goes to a live one
        dedupe = bool(worker.config.dedupe)
        return cls(worker, retries, dedupe) if retries or dedupe else None

    # -- the data plane ----------------------------------------------------------------

    def route(self, msg: Message, path: list, stream: bool = False, consumer: int = 0) -> None:
        """Worker._route, keeping a copy of what goes to an instance of a stage with retries."""
        w = self.w
        dest = w.routes.tables[consumer].route(msg, path, stream)
        if dest is PARK:
            w._park(consumer, msg, path)
        elif isinstance(dest, Fail):
            w.error(dest.path, dest.reason, dest.epoch)
        else:
            if consumer in self.consumers:
                self.kept.add(dest, consumer, msg, stream)
            w._send(w.outboxes.get(dest), msg, w.routes.targets[consumer])

    def incoming(self, msgs: Iterable[Message], index: int) -> Iterable[Message]:
        """The messages of one frame (by input ``index``) without the repeats of a re-run."""
        seen = self.seen
        if seen is None:
            return msgs
        before = seen.dropped
        fresh = [m for m in msgs if seen.fresh(m, index)]
        if seen.dropped != before:
            self.w.stats["duplicates"] += seen.dropped - before
        return fresh

    def forget(self, rids: list[int]) -> None:
        """Requests that ended or were cancelled."""
        if rids:
            self.kept.forget(rids)
            if self.seen is not None:
                self.seen.forget(rids)

    # -- departures --------------------------------------------------------------------

    def resend(self, iid: int) -> None:
        """The broker says instance ``iid`` departed: send again what was sent to it."""
        if any(iid in t.next_ids for t in self.w.routes.tables):
            self.pending.add(iid)  # our table still routes to it: wait for the one without it
            return
        self.pending.discard(iid)
        copies, rids, evicted = self.kept.take(iid)
        self._route_again(copies)
        w = self.w
        for i in range(0, len(rids), REPORT_CHUNK):
            w._control.send("resent", {"iid": iid, "rids": rids[i:i + REPORT_CHUNK]})
        for i in range(0, len(evicted), REPORT_CHUNK):  # no copy left: the broker fails them
            w._control.send("lost", {"iid": iid, "rids": evicted[i:i + REPORT_CHUNK]})

    def table_applied(self) -> None:
        for iid in list(self.pending):
            self.resend(iid)

    def dropped(self, dest: int, why: str, unsent: set[int]) -> bool:
        """The outbox to ``dest`` closed. True if it fed a stage with retries: then nothing
        is reported lost. If it died, everything sent there is sent again now, with the
        table that says so (nothing routed in between: a stream's chunks stay in order; the
        broker's "resend" then finds nothing left); if it only left the table (or moved),
        what it never got is sent elsewhere now."""
        if not self.consumers:
            return False
        tables = self.w.routes.tables
        if not self.kept.has(dest) and not any(dest in tables[i].dead for i in self.consumers):
            return False
        if why == "died":
            self.resend(dest)
        elif unsent:
            copies, _, _ = self.kept.take(dest, unsent)
            self._route_again(copies)
        return True

    def _route_again(self, copies: list[Kept]) -> None:
        cancelled = self.w._cancelled
        n = 0
        for consumer, msg, stream in copies:
            if msg.path[0] not in cancelled:
                self.route(msg, msg.path, stream, consumer)
                n += 1
        if n:
            self.w.stats["resent"] += n
            self.w.outboxes.flush_all()
