"""A worker's side of the broker's table and loads reports: are they in sequence? Pure.

The broker sends each instance its routing-table view once whole, then as deltas
(:mod:`alto_bus.routing.table_views`), and its loads report each tick as the loads that
changed. Both are sent without blocking and may be lost: a delta that names another base
epoch, a loads report that skips a tick, or one that names an epoch newer than our view
means something went missing, and the worker asks for both again whole (``resync``).
"""

from __future__ import annotations

from typing import Any

from alto_bus.routing.table_views import apply_delta


class TableFeed:
    __slots__ = ("view", "tick")

    def __init__(self) -> None:
        self.view: dict[str, Any] | None = None   # the last view: what the next delta applies to
        self.tick: int | None = None              # the last loads report's tick

    def table(self, op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The whole view a "table" or "table_delta" message makes; None: ask again."""
        if op == "table":
            self.view = body
            return body
        if self.view is None:
            return None
        try:
            view = apply_delta(self.view, body)
        except (KeyError, TypeError, ValueError):
            return None
        if view is not None:
            self.view = view
        return view

    def loads_in_sequence(self, body: dict[str, Any]) -> bool:
        """False when a report (or a table) went missing before this loads report."""
        tick = body.get("tick")
        last, self.tick = self.tick, tick
        if isinstance(tick, int) and not body.get("whole") and last is not None and tick != last + 1:
            return False
        epoch = body.get("epoch", 0)
        return self.view is None or not isinstance(epoch, int) or epoch <= int(self.view["epoch"])
