"""What a gateway beside the broker knows of the membership: the broker's "view". Pure.

The broker (alto_bus.control.broker) owns the membership table; a gateway process of a
topology with ``gateways > 1`` (alto_bus.control.gateway_process) needs only the part
it admits and settles by: the epoch, which stages have no instance, the entry stage's
instances, addresses and loads, the request ids of its own that live instances hold, and
which departed instances came back. The broker sends it each tick and with each new
epoch; this mirror answers the questions the broker's own gateway asks of ``Membership``.
A view older than ``stale_after`` counts as no view: the gateway then refuses new
requests rather than route by a table the broker may have replaced long ago.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from alto_bus.protocol.gateway_bodies import View


class MembershipMirror:
    def __init__(self, entry: str, stale_after: float) -> None:
        self.entry = entry
        self.stale_after = stale_after
        self.view: View | None = None
        self.received = float("-inf")
        self.instances: dict[int, Any] = {}  # the broker's Instance objects: none here
        self.table: dict[str, Any] = {"epoch": 0, "stages": {entry: []}}
        self.by_identity: frozenset[bytes] = frozenset()  # departed identities that came back

    def update(self, view: View, now: float) -> bool:
        """Take a new view; True if the entry stage's instances changed."""
        old = self.table["stages"][self.entry]
        self.view = view
        self.received = now
        entry = [[iid, address] for iid, address in view.entry]
        self.table = {"epoch": view.epoch, "stages": {self.entry: entry}}
        self.by_identity = frozenset(bytes.fromhex(i) for i in view.returned)
        return entry != old

    def fresh(self, now: float) -> bool:
        return self.view is not None and now - self.received <= self.stale_after

    @property
    def epoch(self) -> int:
        return self.view.epoch if self.view is not None else 0

    @property
    def complete(self) -> bool:
        return self.view is not None and not self.view.missing

    def count(self, stage: str) -> int:
        """Live instances of ``stage``, as far as admission cares: 0 for a stage the broker
        named as missing, else 1."""
        return 0 if self.view is None or stage in self.view.missing else 1

    def routable(self, stage: str) -> list[int]:
        return [iid for iid, _ in self.view.entry] if self.view is not None and stage == self.entry else []

    @property
    def member_ids(self) -> Container[int]:
        """Entry-stage instances still members (draining ones too): their retired links stay."""
        return set(self.view.entry_members) if self.view is not None else set()

    def loads(self) -> dict[int, int]:
        return dict(self.view.loads) if self.view is not None else {}

    def held(self) -> set[int]:
        return set(self.view.held) if self.view is not None else set()
