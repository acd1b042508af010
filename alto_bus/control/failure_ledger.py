"""The broker's failure ledger: instances retired, suspected, dead or gone, and what each
leaves to settle. Pure: no sockets, no clock of its own (every method takes ``now``).

One record per instance (the zguide's lesson: one table, every view derived from it):

* **retired**: out of the routing table but still a member (draining). The gateway's
  entry link to it stays here, because what was sent to it still counts if it dies or
  leaves before finishing; the link goes when the instance departs.
* **suspected**: a sender reported request ids whose items went to it ("lost"). They
  fail after ``wait`` (``liveness`` heartbeats) unless the instance proves alive.
* **gone**: it died or left. What it held, and what was sent to it recently, fails at
  once naming stage, instance and host; what was sent earlier is only *doubtful* (it
  may have been passed on long ago, or still wait in its inbox): failed when due unless
  it ended or a live instance reports holding it.

A record is forgotten once nothing is pending on it; gone records are kept (at most
``memory`` of them, oldest settled first) so that a late "lost" report still names the
instance.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Departure:
    """Who the instance was and how it went: what an error message names."""
    stage: str
    pid: int
    host: str
    identity: bytes
    why: str   # "died (no heartbeat for 3.1 s)", "left before finishing", ...

    def describe(self, iid: int) -> str:
        return f"instance {iid} of stage {self.stage!r} (pid {self.pid} on {self.host}) {self.why}"


@dataclass
class Record:
    iid: int
    link: Any = None                      # retired: the gateway's entry link, kept until it departs
    departure: Departure | None = None    # gone: died or left
    suspects: list[tuple[float, list[int]]] = field(default_factory=list)  # (when due, rids)
    doubtful: dict[int, float] = field(default_factory=dict)               # rid -> when due

    @property
    def state(self) -> str:
        if self.departure is not None:
            return "gone"
        return "retired" if self.link is not None else "suspected"

    @property
    def pending(self) -> bool:
        return self.link is not None or bool(self.suspects) or bool(self.doubtful)


class Failure(NamedTuple):
    """One request to fail: ``stage`` and ``message`` are what its client is told."""
    rid: int
    stage: str
    message: str
    iid: int
    cause: str  # "held" (gone with it), "lost" (a sender's report) or "doubtful"


class FailureLedger:
    def __init__(self, wait: float, memory: int = 10_000) -> None:
        self.wait = wait          # how long a suspect has to prove alive
        self.memory = memory      # gone records kept once settled
        self.records: dict[int, Record] = {}  # iid -> record, oldest first

    # -- views -------------------------------------------------------------------------

    @property
    def retired(self) -> dict[int, Any]:
        """iid -> entry link of every retired instance (derived: read-only)."""
        return {r.iid: r.link for r in self.records.values() if r.link is not None}

    def retired_link(self, iid: int) -> Any:
        """The entry link kept for a retired instance, or None."""
        rec = self.records.get(iid)
        return rec.link if rec is not None else None

    def state(self, iid: int) -> str | None:
        rec = self.records.get(iid)
        return rec.state if rec is not None else None

    # -- what happens ------------------------------------------------------------------

    def retired_from_routing(self, iid: int, link: Any) -> None:
        """The instance left the routing table but is still a member: keep its link."""
        self._record(iid).link = link

    def left_membership(self, members: Container[int]) -> None:
        """Instances no longer members without a departure (they registered again under a
        new id): their retired links carry nothing more to settle."""
        for rec in list(self.records.values()):
            if rec.link is not None and rec.iid not in members:
                rec.link = None
                self._forget_if_settled(rec)

    def departed(self, iid: int, departure: Departure, now: float, held: Iterable[int] = (),
                 recent: Iterable[int] = (), older: Iterable[int] = ()) -> list[Failure]:
        """The instance died or left: what it ``held`` and what was sent to it ``recent``ly
        fails now; what was sent ``older`` becomes doubtful. Returns the failures (each
        request once); its retired link, if any, is dropped (the caller read it first)."""
        rec = self._record(iid)
        rec.link = None
        rec.departure = departure
        self.records[iid] = self.records.pop(iid)  # newest last: the oldest is forgotten first
        now_rids = sorted(set(held).union(recent))
        failing = set(now_rids)
        self._doubt(iid, (r for r in older if r not in failing), now + self.wait)
        message = departure.describe(iid)
        self._bound()
        return [Failure(rid, departure.stage, message, iid, "held") for rid in now_rids]

    def reported_lost(self, iid: int, rids: Iterable[int], now: float, older: Iterable[int] = ()) -> None:
        """A sender's items for these requests went to ``iid``, which it believes dead.
        ``older``: sent before the sender's recent window (doubtful, see the module doc)."""
        rec = self._record(iid)
        rec.suspects.append((now + self.wait, [int(r) for r in rids]))
        self._doubt(iid, (int(r) for r in older), now + self.wait)

    def settle(self, now: float, in_flight: Container[int], alive: Container[bytes],
               held: Callable[[], Container[int]]) -> list[Failure]:
        """What is due: suspects whose instance did not come back, and doubtful requests
        that neither ended nor are held by a live instance (``held()``, called only when
        needed). ``in_flight``: requests not ended; ``alive``: identities of members."""
        out: list[Failure] = []
        failed: set[int] = set()
        for rec in list(self.records.values()):
            if not rec.suspects or rec.suspects[0][0] > now:
                continue
            due = [s for s in rec.suspects if s[0] <= now]
            rec.suspects = [s for s in rec.suspects if s[0] > now]
            lost = self._lost_to(rec, alive)
            if lost is not None:
                for _, rids in due:
                    for rid in rids:
                        if rid in in_flight and rid not in failed:
                            failed.add(rid)
                            out.append(Failure(rid, lost[0], lost[1], rec.iid, "lost"))
        due_doubts = [(rec, rid) for rec in self.records.values() for rid, when in rec.doubtful.items()
                      if when <= now or rid not in in_flight or rid in failed]
        live_held = held() if due_doubts else ()
        for rec, rid in due_doubts:
            live = rid in in_flight and rid not in failed
            if live and rid in live_held:
                continue  # live work on it: checked again next time
            del rec.doubtful[rid]
            if not live:
                continue  # it ended (its items got through), or failed above
            lost = self._lost_to(rec, alive)
            if lost is not None:
                failed.add(rid)
                out.append(Failure(rid, lost[0], lost[1], rec.iid, "doubtful"))
        for rec in list(self.records.values()):
            self._forget_if_settled(rec)
        return out

    # -- inside ------------------------------------------------------------------------

    def _lost_to(self, rec: Record, alive: Container[bytes]) -> tuple[str, str] | None:
        """(stage, message) for requests whose items went to ``rec``'s instance; None if
        it came back (it was alive, and it has those items)."""
        dep = rec.departure
        if dep is None:  # reported lost but never seen leaving: the broker trusts the sender
            return "?", f"instance {rec.iid} of stage '?' died; items of this request were sent to it"
        if dep.identity in alive:
            return None
        return dep.stage, f"{dep.describe(rec.iid)}; items of this request were sent to it"

    def _doubt(self, iid: int, rids: Iterable[int], when: float) -> None:
        # One instance answers for a doubtful request: the first that was named for it.
        others = [r.doubtful for r in self.records.values() if r.doubtful and r.iid != iid]
        mine = self._record(iid).doubtful
        for rid in rids:
            if rid not in mine and not any(rid in d for d in others):
                mine[rid] = when

    def _record(self, iid: int) -> Record:
        rec = self.records.get(iid)
        if rec is None:
            rec = self.records[iid] = Record(iid)
        return rec

    def _forget_if_settled(self, rec: Record) -> None:
        if not rec.pending and rec.departure is None:
            self.records.pop(rec.iid, None)  # a suspect with nothing left: nothing to remember

    def _bound(self) -> None:
        extra = len(self.records) - self.memory
        if extra <= 0:
            return
        for rec in [r for r in self.records.values() if not r.pending][:extra]:
            del self.records[rec.iid]
