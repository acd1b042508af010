"""The per-tick "loads" report, cut to what each stage's instances route by. Pure.

A sender chooses among the instances of the stages it feeds (and the members of their
pools), so it needs only their loads. Sending every instance the loads of every instance
is N messages of O(N): O(N^2) bytes a tick, and as many encodings. Here each stage gets
one body with its consumers' loads, encoded once and sent to each of its instances:
per tick, bytes grow with the instances times the size of their consumer stages, and
encodings with the number of stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reports_by_stage(common: Mapping[str, Any], loads: Mapping[int, int], stage_of: Mapping[int, str],
                     consumers: Mapping[str, tuple[str, ...]], pool_of: Mapping[str, str],
                     placements: Mapping[str, Any] | None = None,
                     member_loads: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """stage -> the "loads" body for its instances: ``common`` (epoch, ended, oldest), the
    loads of its consumers' instances, and the placements and member loads of their pools."""
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
