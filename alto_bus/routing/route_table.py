"""Where a sender's next item goes, from what the broker published. Pure: no sockets.

A sender keeps the routing table of every epoch a request in flight may still use (a
keyed hop routes by the request's epoch, not the newest one), the key tables of the next
stage, the pool placement when that stage runs on an LM pool, and the instances the
broker declared dead. For each item it answers one of:

* an instance id (``GATEWAY`` for the last stage: the results inbox; with several
  gateways, ``gateway_dest(rid, n)``: the one that admitted the request),
* ``PARK``: no instance can take it yet (the table it needs is on its way),
* a :class:`Fail`: it can never be delivered (its group's owner died, its epoch is gone).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alto_bus.protocol.messages import Data, Message
from alto_bus.routing.choice import LoadView, pow2_choice
from alto_bus.routing.keytable import KeyTable
from alto_bus.routing.pool_route import PoolRoute
from alto_bus.routing.subsetting import candidates

# The destination id of the gateway's results inbox. Instance ids start at 1
# (control/membership.py), so 0 is reserved for it and never names an instance.
GATEWAY = 0


def gateway_dest(rid: int, n: int) -> int:
    """The destination id of the gateway that admitted request ``rid`` when there are
    ``n`` gateways: gateway ``g`` admits the ids ``rid % n == g`` and is destination ``-g``."""
    return -(rid % n) if n > 1 else GATEWAY


def is_gateway(dest: int) -> bool:
    return dest <= GATEWAY


class _Park:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PARK"


PARK = _Park()  # "no instance yet": keep the item and route it again with the next table


@dataclass(frozen=True)
class Fail:
    """The item's request cannot go on: ``path`` (the request) fails with ``reason``."""

    path: list
    reason: str
    epoch: int


Decision = int | _Park | Fail


def choose_instance(candidates: Sequence[int], loads: LoadView, rng: random.Random,
                    pool: PoolRoute | None = None) -> int:
    """A stateless hop (and the gateway's entry hop): the pool's policy when the stage is
    on an LM pool and it names one of ``candidates``, else power of two choices on load."""
    if pool is not None:
        iid = pool.pick()
        if iid is not None and iid in candidates:
            return iid
    return pow2_choice(candidates, loads, rng)


def _nothing_parked(dest: int) -> int:
    return 0


def _results(results: str | list[str] | None) -> list[str]:
    """The gateways' results addresses as published: one string, or one per gateway
    ("" for a gateway not started yet)."""
    if results is None:
        return [""]
    return [results] if isinstance(results, str) else [str(r) for r in results] or [""]


class RouteTable:
    """One sender's view of where the next stage's instances are, per epoch."""

    retries = 0  # the next stage's retries (set by alto_bus.runtime.resend): a dead owner is replaced

    def __init__(self, stage: str, next_stage: str | None = None, key_depth: int | None = None, *,
                 pool: PoolRoute | None = None, pool_name: str | None = None,
                 rng: random.Random | None = None, loads: LoadView | None = None,
                 results: str | list[str] | None = None) -> None:
        self.stage = stage                  # the sending stage
        self.next = next_stage              # None: the sender is the last stage
        self.key_depth = key_depth          # the next stage's aggregation depth (None: stateless)
        self.pool = pool                    # the next stage's pool route, when it is on a pool
        self.pool_name = pool_name
        self.rng = rng or random.Random(0)
        self.loads = loads or LoadView()
        self.results = _results(results)    # each gateway's results address, by gateway index
        self.table: dict[str, Any] = {"epoch": 0, "stages": {}}  # the newest table
        self.tables: dict[int, dict[str, Any]] = {}   # epoch -> table, epochs still in flight
        self.keys: dict[int, KeyTable] = {}           # epoch -> key table of the next stage
        self._forgotten_before = 0                    # epochs below this were dropped: never re-learnt
        self.addresses: dict[int, str] = {}           # live next-stage instances of kept epochs
        self.dead: set[int] = set()
        self.avoid: set[int] = set()                  # peers not taking input (the sender's blocked outboxes)
        self.parked: Callable[[int], int] = _nothing_parked  # frames the sender has parked for a peer
        self.next_ids: list[int] = []                 # next-stage instances of the newest epoch
        self._listed: list[int] = []                  # as the newest table lists them (dead too)
        self.group: tuple[int, int] | None = None     # (group, groups) of load subsetting, from the loads report
        self.subset: list[int] = []                   # what a stateless item picks among: next_ids or its group
        self._sticky: dict[tuple, int] = {}           # a streamed item's instance until its end

    @property
    def epoch(self) -> int:
        return int(self.table["epoch"])

    # -- what the broker publishes ------------------------------------------------------

    def apply(self, table: dict[str, Any]) -> None:
        """A new routing table (a membership change): the newest epoch."""
        epoch = int(table["epoch"])
        self.table = table
        self.tables[epoch] = table
        if "results" in table:
            self.results = _results(table["results"])
        self.dead = {int(i) for i in table.get("dead", ())}  # the broker's recent deaths: bounded
        nxt = self.next
        stages = table["stages"]
        # A dead instance is never a destination, even if a table still lists it.
        listed = self._listed = [int(iid) for iid, _ in stages.get(nxt, [])] if nxt else []
        self.next_ids = [iid for iid in listed if iid not in self.dead]
        self.subset = list(candidates(listed, self.next_ids, self.group))
        if self.pool is not None:
            members = {int(k): v for k, v in table.get("members", {}).items()}
            peers = table.get("peers", len(stages.get(self.stage, ())))  # the sending stage's instances
            self.pool.members(members, self.next_ids, int(peers))
        keys = table.get("keys", {}).get(nxt) if nxt else None
        if keys is not None:
            self.keys[epoch] = KeyTable.from_dict(keys)
        # Older epochs still in flight (an instance that joined late never saw their tables).
        for old in table.get("older", ()) if nxt else ():
            e = int(old["epoch"])
            if e not in self.tables and e >= self._forgotten_before and nxt in old.get("keys", {}):
                self.tables[e] = old
                self.keys[e] = KeyTable.from_dict(old["keys"][nxt])
        self._refresh_addresses()

    def apply_loads(self, body: dict[str, Any]) -> None:
        """The broker's heartbeat-interval report: loads, pool placements, the oldest epoch
        a request in flight uses (older tables are dropped)."""
        self.loads.update({int(k): int(v) for k, v in body.get("loads", {}).items()})
        # Every report names the groups of a subsetted consumer; none named: the whole stage.
        named = body.get("groups", {}).get(self.next) if self.next else None
        group = (int(named[0]), int(named[1])) if named else None
        if group != self.group:
            self.group = group
            self.subset = list(candidates(self._listed, self.next_ids, group))
        self.forget_epochs_before(int(body.get("oldest", 0)))
        if self.pool is not None:
            name = self.pool_name
            self.pool.update(body.get("placements", {}).get(name),
                             body.get("member_loads", {}).get(name))

    def forget_requests(self, ended: Iterable[int]) -> None:
        """Requests that ended (a stream cut short by an error or a cancel never sends its
        last chunk): their streamed items' instances are forgotten."""
        gone = set(ended)
        if gone and self._sticky:
            self._sticky = {p: d for p, d in self._sticky.items() if p[0] not in gone}

    def forget_epochs_before(self, oldest: int) -> None:
        self._forgotten_before = max(self._forgotten_before, oldest)
        current = self.epoch
        stale = [e for e in self.tables if e < oldest and e != current]
        if stale:
            for e in stale:
                del self.tables[e]
                self.keys.pop(e, None)
            self._refresh_addresses()

    def _refresh_addresses(self) -> None:
        nxt = self.next
        live: dict[int, str] = {}
        if nxt:
            for table in self.tables.values():
                for iid, addr in table["stages"].get(nxt, []):
                    if int(iid) not in self.dead:
                        live[int(iid)] = addr
        self.addresses = live
        self._sticky = {p: d for p, d in self._sticky.items() if d in live or d <= GATEWAY}

    def gone(self, links: Mapping[int, str]) -> list[tuple[int, str]]:
        """Of ``links`` (instance -> the address this sender's link to it dials), those no kept
        epoch routes to, with why: "died", "left the routing table", or "moved" (the id now
        names another address: a restarted broker numbers instances afresh)."""
        out = []
        for d, address in links.items():
            if d <= GATEWAY:
                if -d < len(self.results) and self.results[-d] not in (address, ""):
                    out.append((d, "moved"))  # a gateway restarted elsewhere
                continue
            if d not in self.addresses:
                out.append((d, "died" if d in self.dead else "left the routing table"))
            elif self.addresses[d] != address:
                out.append((d, "moved"))
        return out

    def address(self, dest: int) -> str:
        return self.results[-dest] if dest <= GATEWAY else self.addresses[dest]

    @property
    def ready(self) -> bool:
        """Parked items may be routed again: there is a next-stage instance (or no next stage)."""
        return bool(self.next_ids) or self.next is None

    # -- routing one item ---------------------------------------------------------------

    def route(self, msg: Message, path: list, stream: bool = False) -> Decision:
        """Where ``msg`` (a DATA/END/DROP of item ``path``) goes next.
        ``stream``: a chunk of a streamed item; all its chunks go to one instance."""
        if self.next is None:
            return GATEWAY if len(self.results) < 2 else self.gateway_for(path[0])
        kd = self.key_depth
        if kd is not None and len(path) >= kd:
            return self._key_owner(msg.epoch, path, kd)
        ids = self.subset
        if not ids:
            return PARK
        if self.avoid:  # a stateless hop goes round a peer that is not taking input, if it can
            ids = ([i for i in ids if i not in self.avoid] or [i for i in self.next_ids if i not in self.avoid]
                   or self._least_parked(self.next_ids))
        if stream:
            key = tuple(path)
            dest = self._sticky.get(key)
            if dest is None:
                dest = self._sticky[key] = choose_instance(ids, self.loads, self.rng, self.pool)
            if msg.final:  # its last chunk
                del self._sticky[key]
        elif type(msg) is Data:
            dest = choose_instance(ids, self.loads, self.rng, self.pool)
        else:  # END/DROP markers are not LM requests: keep them out of a pool's policy
            dest = pow2_choice(ids, self.loads, self.rng)
        self.loads.note_sent(dest)
        return dest

    def gateway_for(self, rid: int) -> Decision:
        """The gateway that admitted ``rid`` (PARK while its address is not known yet)."""
        dest = gateway_dest(rid, len(self.results))
        return dest if self.results[-dest] else PARK

    def _least_parked(self, ids: list[int]) -> list[int]:
        """Every peer is full: those with the fewest frames parked. A peer that stopped
        taking input then gets no more while the others drain theirs, and the sender's
        park budget is not spent on it (which would stop the sender reading its inbox)."""
        parked = {i: self.parked(i) for i in ids}
        least = min(parked.values())
        return [i for i in ids if parked[i] == least]

    def _key_owner(self, epoch: int, path: list, kd: int) -> Decision:
        """The owner of this item's group in the request's epoch: all senders agree on it."""
        table = self.keys.get(epoch)
        if table is None:
            if epoch > self.epoch or not self.keys:
                return PARK  # that epoch's table is on its way
            return Fail(path[:1], f"no key table for epoch {epoch} of stage {self.next!r}", epoch)
        dest = table.owner(tuple(path[:kd]))
        if dest in self.dead and self.retries:
            # Its items are sent again: every sender takes the owner in the first later epoch
            # where it is alive, so they agree on it.
            key = tuple(path[:kd])
            dest = next((o for e in sorted(self.keys) if e > epoch
                         if (o := self.keys[e].owner(key)) not in self.dead), dest)
        if dest in self.dead:
            return Fail(path[:1], f"instance {dest} of stage {self.next!r}, owner of group "
                                  f"{path[1:kd]} in epoch {epoch}, died", epoch)
        return dest
