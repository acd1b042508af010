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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from alto_bus.protocol import wire

FULL_EVERY = 120  # ticks between whole reports (a minute at the default heartbeat interval; [broker] loads_full_every)


def reports_by_stage(common: Mapping[str, Any], loads: Mapping[int, int], stage_of: Mapping[int, str],
                     consumers: Mapping[str, tuple[str, ...]], pool_of: Mapping[str, str],
                     placements: Mapping[str, Any] | None = None,
                     member_loads: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """stage -> the "loads" body for its instances: ``common`` (epoch, ended, oldest), the
    ``loads`` of its consumers' instances, and the placements and member loads of their pools."""
    by_stage: dict[str, dict[int, int]] = {}
    for iid, load in loads.items():
        by_stage.setdefault(stage_of[iid], {})[iid] = load
    out = {}
    for stage, feeds in consumers.items():
        body = dict(common)
        body["loads"] = {iid: load for c in feeds for iid, load in by_stage.get(c, {}).items()}
        if placements is not None:
            pools = {pool_of[c] for c in feeds if c in pool_of}
            body["placements"] = {p: v for p, v in placements.items() if p in pools}
            body["member_loads"] = {p: v for p, v in (member_loads or {}).items() if p in pools}
        out[stage] = body
    return out


class LoadReports:
    """The frames of one tick: per stage, the changes (for instances that had the last
    report) and the whole (for the others)."""

    def __init__(self, consumers: Mapping[str, tuple[str, ...]], pool_of: Mapping[str, str],
                 full_every: int = FULL_EVERY) -> None:
        self.consumers = consumers
        self.pool_of = pool_of
        self.full_every = full_every
        self._sent: dict[int, int] = {}   # the loads as of the last report
        self._had: set[int] = set()       # instances that got it
        self._tick = 0
        self.bytes_last_tick = 0          # what this tick sent, for status and the benchmark

    def frames(self, common: Mapping[str, Any], loads: Mapping[int, int], stage_of: Mapping[int, str],
               placements: Mapping[str, Any] | None = None,
               member_loads: Mapping[str, Any] | None = None) -> Iterable[tuple[int, bytes]]:
        """(instance, frame) for every instance in ``stage_of``."""
        self._tick += 1
        whole_tick = self._tick % self.full_every == 0
        common = {**common, "tick": self._tick}
        changed = loads if whole_tick else {i: v for i, v in loads.items() if self._sent.get(i) != v}
        delta = _encoded(reports_by_stage({**common, "whole": True} if whole_tick else common, changed,
                                          stage_of, self.consumers, self.pool_of, placements, member_loads))
        whole = delta if whole_tick else None
        self._sent = dict(loads)
        out, nbytes = [], 0
        for iid, stage in stage_of.items():
            frame = delta.get(stage)
            if iid not in self._had and not whole_tick:
                if whole is None:
                    whole = _encoded(reports_by_stage({**common, "whole": True}, loads, stage_of, self.consumers, self.pool_of,
                                                      placements, member_loads))
                frame = whole.get(stage)
            if frame is not None:
                out.append((iid, frame))
                nbytes += len(frame)
        self._had = set(stage_of)
        self.bytes_last_tick = nbytes
        return out


    def resync(self, iid: int) -> None:
        """The instance missed a report: the whole of its loads next tick."""
        self._had.discard(iid)


def _encoded(bodies: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    return {stage: wire.encode_control("loads", body) for stage, body in bodies.items()}
