"""The per-tick "loads" report: what changed, and only what each stage routes by. Pure.

A sender chooses among the instances of the stages it feeds (and the members of their
pools), so it needs only their loads; and a load it already has need not come again.
Sending every instance the loads of every instance is N messages of O(N): O(N^2) bytes a
tick, and as many encodings. Here each stage gets one body, with its consumers' loads
that changed since the last tick, encoded once and sent to each of its instances; an
instance that has not had a report yet (or asked again) gets the whole of them. A report
is sent without blocking and may be lost: each names its tick, and a worker that sees a
tick missing asks again (``resync``), so the whole reports every ``full_every`` ticks are
only a backstop, rare enough that their O(N x consumers) bytes do not dominate.

With load subsetting (``[broker] load_subset``, :mod:`alto_bus.routing.subsetting`) a
sender of a large stateless stage routes among one group of its instances, so a body is
made per (stage, the groups its instance routes among) instead of per stage: still one
encoding for many instances, each with about ``load_subset`` loads. The body names the
groups (``"groups": {consumer: [group, groups]}``), which is how the sender learns its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alto_bus.protocol import wire
from alto_bus.routing import subsetting

FULL_EVERY = 120  # ticks between whole reports (a minute at the default heartbeat interval; [broker] loads_full_every)

# What one body is made for: the stage, and (consumer, group, groups) per subsetted consumer.
Key = tuple[str, tuple[tuple[str, int, int], ...]]


def reports_by_stage(common: Mapping[str, Any], loads: Mapping[int, int], stage_of: Mapping[int, str],
                     consumers: Mapping[str, tuple[str, ...]], pool_of: Mapping[str, str],
                     placements: Mapping[str, Any] | None = None,
                     member_loads: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """stage -> the "loads" body for its instances: ``common`` (epoch, ended, oldest), the
    ``loads`` of its consumers' instances, and the placements and member loads of their pools."""
    by_stage = _by_stage(loads, stage_of)
    return {stage: _body(common, {i: v for c in feeds for i, v in by_stage.get(c, {}).items()},
                         feeds, (), pool_of, placements, member_loads)
            for stage, feeds in consumers.items()}


class LoadReports:
    """The frames of one tick: per body, the changes (for instances that had the last
    report of the same body) and the whole (for the others)."""

    def __init__(self, consumers: Mapping[str, tuple[str, ...]], pool_of: Mapping[str, str],
                 full_every: int = FULL_EVERY, subset: int = 0, subsettable: Iterable[str] = ()) -> None:
        self.consumers = consumers
        self.pool_of = pool_of
        self.full_every = full_every
        self.subset = subset                                    # instances per group (0: off)
        self.subsettable = frozenset(subsettable) if subset > 0 else frozenset()
        self._sent: dict[int, int] = {}   # the loads as of the last report
        self._had: set[int] = set()       # instances that got it
        self._key: dict[int, Key] = {}    # instance -> the body it got last
        self._members: dict[Key, frozenset[int]] = {}  # body -> whose loads it carried last
        self._tick = 0
        self.bytes_last_tick = 0          # what this tick sent, for status and the benchmark

    def frames(self, common: Mapping[str, Any], loads: Mapping[int, int], stage_of: Mapping[int, str],
               placements: Mapping[str, Any] | None = None,
               member_loads: Mapping[str, Any] | None = None,
               routable: Mapping[str, Sequence[int]] | None = None) -> Iterable[tuple[int, bytes]]:
        """(instance, frame) for every instance in ``stage_of``. ``routable``: per subsettable
        stage, its instances as the published table lists them (sorted ids): what groups cut."""
        self._tick += 1
        whole_tick = self._tick % self.full_every == 0
        common = {**common, "tick": self._tick}
        by_stage = _by_stage(loads, stage_of)
        keys = self._keys(stage_of, routable or {})
        members = {key: self._members_of(key, by_stage, routable or {}) for key in set(keys.values())}
        changed = set(loads) if whole_tick else {i for i, v in loads.items() if self._sent.get(i) != v}
        delta_common = {**common, "whole": True} if whole_tick else common
        delta: dict[Key, bytes] = {}
        for key, ids in members.items():
            # A member new to the body (it joined, or moved from another group) goes whole.
            fresh = ids if whole_tick else (changed & ids) | (ids - self._members.get(key, frozenset()))
            delta[key] = self._encoded(key, delta_common, loads, fresh, placements, member_loads)
        whole: dict[Key, bytes] = {}      # encoded only for a body with an instance that needs it
        out, nbytes = [], 0
        for iid, key in keys.items():
            frame = delta[key]
            if not whole_tick and (iid not in self._had or self._key.get(iid) != key):
                if key not in whole:
                    whole[key] = self._encoded(key, {**common, "whole": True}, loads, members[key],
                                               placements, member_loads)
                frame = whole[key]
            out.append((iid, frame))
            nbytes += len(frame)
        self._sent = dict(loads)
        self._had = set(stage_of)
        self._key = keys
        self._members = members
        self.bytes_last_tick = nbytes
        return out

    def resync(self, iid: int) -> None:
        """The instance missed a report: the whole of its loads next tick."""
        self._had.discard(iid)

    def _keys(self, stage_of: Mapping[int, str], routable: Mapping[str, Sequence[int]]) -> dict[int, Key]:
        """Each instance's body: its stage and, per subsettable consumer big enough to cut,
        the group its rank (among its stage's instances by id) routes among."""
        ids_of: dict[str, list[int]] = {}
        for iid, stage in stage_of.items():
            if stage in self.consumers:  # a stage the topology does not name gets nothing
                ids_of.setdefault(stage, []).append(iid)
        keys: dict[int, Key] = {}
        for stage, ids in ids_of.items():
            cut = [(c, n) for c in self.consumers[stage] if c in self.subsettable
                   if (n := subsetting.group_count(len(routable.get(c, ())), len(ids), self.subset)) > 1]
            if not cut:
                keys.update(dict.fromkeys(ids, (stage, ())))
                continue
            for rank, iid in enumerate(sorted(ids)):
                keys[iid] = (stage, tuple((c, subsetting.sender_group(rank, n), n) for c, n in cut))
        return keys

    def _members_of(self, key: Key, by_stage: Mapping[str, Mapping[int, int]],
                    routable: Mapping[str, Sequence[int]]) -> frozenset[int]:
        """The instances whose loads the body carries: of each consumer, its group, or all."""
        stage, groups = key
        cut = {c: (g, n) for c, g, n in groups}
        out: set[int] = set()
        for c in self.consumers[stage]:
            if c in cut:
                out.update(subsetting.block(routable[c], *cut[c]))
            else:
                out.update(by_stage.get(c, ()))
        return frozenset(out)

    def _encoded(self, key: Key, common: Mapping[str, Any], loads: Mapping[int, int], ids: Iterable[int],
                 placements: Mapping[str, Any] | None, member_loads: Mapping[str, Any] | None) -> bytes:
        stage, groups = key
        body = _body(common, {i: loads[i] for i in ids if i in loads}, self.consumers[stage], groups,
                     self.pool_of, placements, member_loads)
        return wire.encode_control("loads", body)


def _by_stage(loads: Mapping[int, int], stage_of: Mapping[int, str]) -> dict[str, dict[int, int]]:
    by_stage: dict[str, dict[int, int]] = {}
    for iid, load in loads.items():
        by_stage.setdefault(stage_of[iid], {})[iid] = load
    return by_stage


def _body(common: Mapping[str, Any], loads: dict[int, int], feeds: tuple[str, ...],
          groups: tuple[tuple[str, int, int], ...], pool_of: Mapping[str, str],
          placements: Mapping[str, Any] | None, member_loads: Mapping[str, Any] | None) -> dict[str, Any]:
    body = dict(common)
    body["loads"] = loads
    if groups:
        body["groups"] = {c: [g, n] for c, g, n in groups}
    if placements is not None:
        pools = {pool_of[c] for c in feeds if c in pool_of}
        body["placements"] = {p: v for p, v in placements.items() if p in pools}
        body["member_loads"] = {p: v for p, v in (member_loads or {}).items() if p in pools}
    return body
