"""The broker's "table" messages: per stage, one view, encoded once, sent whole or as a delta.
Pure (it makes frames; the broker sends them).

An instance that got the previous epoch's view of its stage gets the delta to the new one
(:mod:`alto_bus.routing.table_views`); an instance that never had a view, had an older
one, or asked again (``resync``: it missed a message) gets the whole view. Each body is
encoded once per stage, whatever the number of its instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alto_bus.protocol import wire
from alto_bus.routing.table_views import View, make_delta, view_for


class TableReports:
    def __init__(self, consumers: Mapping[str, tuple[str, ...]]) -> None:
        self.consumers = consumers
        self.views: dict[str, View] = {}   # stage -> its view as last published
        self._had: dict[int, int] = {}     # instance -> epoch of the view it was sent last
        self.bytes_last = 0                # what the last publication sent (status, benchmark)

    def frames(self, table: Mapping[str, Any], stage_of: Mapping[int, str]) -> list[tuple[int, bytes]]:
        """(instance, frame) for every instance in ``stage_of`` that lacks this epoch's view."""
        epoch = int(table["epoch"])
        bodies: dict[str, tuple[int | None, bytes | None]] = {}  # stage -> base epoch, delta
        for stage in set(stage_of.values()):
            old = self.views.get(stage)
            new = self.views[stage] = view_for(table, stage, self.consumers.get(stage, ()))
            base = None if old is None else int(old["epoch"])
            delta = None
            if old is not None and base != epoch:
                delta = wire.encode_control("table_delta", make_delta(old, new))
            bodies[stage] = (base, delta)
        whole: dict[str, bytes] = {}  # encoded only for a stage with an instance that needs it
        out, nbytes = [], 0
        for iid, stage in stage_of.items():
            base, delta = bodies[stage]
            had = self._had.get(iid)
            if had == epoch:
                continue  # the same epoch again (a draining instance said bye): it has this view
            if delta is not None and had == base:
                frame = delta
            else:
                frame = whole.get(stage) or whole.setdefault(stage, wire.encode_control("table", self.views[stage]))
            out.append((iid, frame))
            nbytes += len(frame)
        self._had = {iid: epoch for iid in stage_of}
        self.bytes_last = nbytes
        return out

    def resync(self, iid: int, stage: str) -> bytes | None:
        """The whole view for an instance that could not apply a delta (None: none published yet)."""
        view = self.views.get(stage)
        if view is None:
            return None
        self._had[iid] = int(view["epoch"])
        return wire.encode_control("table", view)

