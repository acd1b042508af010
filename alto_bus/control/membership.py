"""The broker's membership table: instances, heartbeats, epochs, routing tables. Pure.

One table of instances; everything else (the per-stage lists a routing table holds,
the loads it publishes) is derived from it when it changes, so no index can go stale.
A change of the set of routable instances cuts a new epoch when the epoch or the table is
next read: the changes between two reads (a burst of registrations the broker handles in
one turn of its loop) are one epoch, and one table to build and publish, not one each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alto_bus.routing.keytable import KeyTable


@dataclass
class Instance:
    iid: int
    stage: str
    identity: bytes
    address: str
    pid: int
    host: str
    last_seen: float
    depth: int = 0                       # queue depth in the last heartbeat
    held: list[int] = field(default_factory=list)  # request ids it holds, last heartbeat
    draining: bool = False               # left the routing table, finishing its work
    pool: str | None = None              # an LM pool's member serves one stage per prompt
    member: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    stalled: float = 0.0                 # s its event loop had not run at the last heartbeat
    bad: dict[str, int] = field(default_factory=dict)  # malformed input dropped, by reason


class Membership:
    def __init__(self, stage_names: list[str], heartbeat_interval: float, liveness: int,
                 keyed: dict[str, float] | None = None, id_base: int = 0) -> None:
        """``id_base``: first epoch and instance id. A restarted broker starts above any its
        predecessor used, so that no sender mistakes a new instance for an old (dead) one."""
        self.stage_names = stage_names
        self.keyed = keyed or {}   # keyed stage -> eps of its bounded-load key table
        self.dead_ids: list[int] = []  # instances that died, newest last (senders fail their keys)
        self.heartbeat_interval = heartbeat_interval
        self.liveness = liveness
        self.instances: dict[int, Instance] = {}
        self.by_identity: dict[bytes, int] = {}
        self._epoch = id_base
        self._next_iid = id_base + 1
        self._keyed_history: dict[int, dict[str, Any]] = {}  # epoch -> keys and keyed instances
        self._changed = False                # routable set changed since the last epoch
        self._table: dict[str, Any] = self._make_table()

    # -- changes -----------------------------------------------------------------------

    def add(self, stage: str, identity: bytes, address: str, pid: int, host: str, now: float,
            *, pool: str | None = None, member: str | None = None) -> Instance:
        """A new routable instance (a new epoch). ``pool``/``member``: the LM pool member it
        belongs to, listed in the table the new epoch publishes."""
        old = self.by_identity.get(identity)
        if old is not None:  # the same worker registering again (e.g. after a broker restart)
            self.remove(old)
        inst = Instance(self._next_iid, stage, identity, address, pid, host, now, pool=pool, member=member)
        self._next_iid += 1
        self.instances[inst.iid] = inst
        self.by_identity[identity] = inst.iid
        self._new_epoch()
        return inst

    def remove(self, iid: int) -> Instance | None:
        inst = self.instances.pop(iid, None)
        if inst is None:
            return None
        self.by_identity.pop(inst.identity, None)
        if not inst.draining:
            self._new_epoch()
        return inst

    def drain(self, iid: int) -> bool:
        """Take an instance out of routing (new epoch); it stays a member until it says bye."""
        inst = self.instances.get(iid)
        if inst is None or inst.draining:
            return False
        inst.draining = True
        self._new_epoch()
        return True

    def heartbeat(self, identity: bytes, now: float, depth: int, held: list[int], stats: dict,
                  stalled: float = 0.0, bad: dict[str, int] | None = None) -> Instance | None:
        iid = self.by_identity.get(identity)
        if iid is None:
            return None
        inst = self.instances[iid]
        inst.last_seen = now
        inst.depth = depth
        inst.held = held
        inst.stats = stats
        inst.stalled = stalled
        inst.bad = bad or {}
        return inst

    def excuse(self, seconds: float, now: float) -> None:
        """The broker itself could not run for ``seconds`` (paused, swapped out): that time
        is not the instances' silence. Heartbeats sent meanwhile may still be on the way in."""
        for inst in self.instances.values():
            inst.last_seen = min(now, inst.last_seen + seconds)

    def dead(self, now: float) -> list[Instance]:
        """Instances silent for more than ``liveness`` heartbeat intervals (removed)."""
        limit = self.heartbeat_interval * self.liveness
        gone = [i for i in self.instances.values() if now - i.last_seen > limit]
        for inst in gone:
            self.dead_ids = [*self.dead_ids[-999:], inst.iid]
            self.remove(inst.iid)
        return gone

    # -- derived -----------------------------------------------------------------------

    def _new_epoch(self) -> None:
        self._changed = True

    def _commit(self) -> None:
        if not self._changed:
            return
        self._changed = False
        self._epoch += 1
        table = self._table = self._make_table()
        if self.keyed:  # what a keyed hop of this epoch needs, for as long as it is in flight
            self._keyed_history[self._epoch] = {
                "epoch": self._epoch, "keys": table["keys"],
                "stages": {s: table["stages"].get(s, []) for s in self.keyed}}

    @property
    def epoch(self) -> int:
        """The current epoch (cut now if the routable set changed since the last one)."""
        self._commit()
        return self._epoch

    @property
    def table(self) -> dict[str, Any]:
        """The current epoch's routing table."""
        self._commit()
        return self._table

    @property
    def complete(self) -> bool:
        """Every stage has a routable instance."""
        return all(self.table["stages"].get(name) for name in self.stage_names)

    def published(self, oldest: int) -> dict[str, Any]:
        """The table to publish: this epoch's, with the key tables (and keyed instances) of
        every older epoch a request in flight still uses (``oldest``), so that an instance
        that joins later can route those requests' keyed items too."""
        table, epoch = self.table, self._epoch
        for e in [e for e in self._keyed_history if e < oldest and e != epoch]:
            del self._keyed_history[e]
        older = [t for e, t in sorted(self._keyed_history.items()) if e != epoch]
        return {**table, "older": older} if older else dict(table)

    def _make_table(self) -> dict[str, Any]:
        stages: dict[str, list[list]] = {name: [] for name in self.stage_names}
        for inst in sorted(self.instances.values(), key=lambda i: i.iid):
            if not inst.draining:
                stages.setdefault(inst.stage, []).append([inst.iid, inst.address])
        keys = {}
        for stage, eps in self.keyed.items():
            ids = [iid for iid, _ in stages.get(stage, [])]
            if ids:
                loads = {iid: self.instances[iid].depth for iid in ids}
                keys[stage] = KeyTable.build(self._epoch, ids, loads, eps=eps).to_dict()
        members = {i.iid: i.member for i in self.instances.values() if i.member is not None}
        return {"epoch": self._epoch, "stages": stages, "keys": keys, "members": members, "dead": list(self.dead_ids)}

    def routable(self, stage: str) -> list[int]:
        return [iid for iid, _ in self.table["stages"].get(stage, [])]

    def loads(self) -> dict[int, int]:
        return {iid: inst.depth for iid, inst in self.instances.items()}

    def status(self, replicas: dict[str, int]) -> dict[str, Any]:
        """Per stage: the replicas asked for and every instance, live or draining."""
        by_stage: dict[str, list[Instance]] = {name: [] for name in self.stage_names}
        for inst in sorted(self.instances.values(), key=lambda i: i.iid):
            by_stage.setdefault(inst.stage, []).append(inst)
        return {name: {"replicas": replicas.get(name),
                       "instances": [{"iid": i.iid, "pid": i.pid, "host": i.host, "address": i.address,
                                      "depth": i.depth, "draining": i.draining, "stats": i.stats,
                                      "stalled": i.stalled, "bad": i.bad}
                                     for i in by_stage[name]]}
                for name in self.stage_names}

    def count(self, stage: str) -> int:
        return len(self.table["stages"].get(stage, []))
