"""Routing to a stage served by an LM pool: the pool's policy, on the broker's member loads.

Used by every sender of such a stage, and by the gateway when the entry stage is on a pool.
"""

from __future__ import annotations

from typing import Any

from alto_bus.scheduling import Placement


class PoolRoute:
    """Routing to a next stage served by an LM pool: the pool's scheduling policy picks
    among the instances the broker placed this prompt on (spilling when they are all
    loaded), with loads summed per pool member (one engine serves several prompts).

    The member loads come from the broker once a heartbeat interval; between two updates
    each sender adds what it sent since, counted once per instance of the sending stage
    that gets work (they send at about the same rate, and each sees only its own sends):
    ``senders`` instances, or, when the sending stage is itself a prompt of the pool
    (``own``), the members that prompt is placed on. Counting
    only its own sends, every sender would keep choosing the member that looked lightest
    in the last update: they herd onto it for a whole interval, then onto the other."""

    __slots__ = ("prompt", "policy", "placement", "member_of", "iid_of", "member_loads", "sent", "senders",
                 "own", "_weight")

    def __init__(self, prompt: str, policy: Any, own: str | None = None) -> None:
        self.prompt = prompt
        self.policy = policy
        self.placement: Any = None
        self.member_of: dict[int, str] = {}   # next-stage instance -> pool member
        self.iid_of: dict[str, int] = {}      # pool member -> next-stage instance
        self.member_loads: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.senders = 1                      # instances of the sending stage
        self.own = own                        # the sending stage's prompt, when it is on this pool
        self._weight = 1                      # what one own send stands for

    def update(self, placement: dict | None, member_loads: dict | None) -> None:
        if placement is not None:
            self.placement = Placement.from_dict(placement)
        self._reweigh()
        if member_loads is not None:
            self.member_loads = {str(m): int(v) for m, v in member_loads.items()}
            self.sent = {}

    def members(self, members: dict, ids: list[int], senders: int = 1) -> None:
        self.senders = max(1, senders)
        self._reweigh()
        self.member_of = {i: str(members[i]) for i in ids if i in members}
        self.iid_of = {m: i for i, m in self.member_of.items()}

    def _reweigh(self) -> None:
        placed = len(self.placement.prompts.get(self.own, ())) if self.placement and self.own else 0
        self._weight = min(placed, self.senders) if placed else self.senders

    def pick(self) -> int | None:
        if self.placement is None or not self.iid_of:
            return None
        w = self._weight
        loads = {m: self.member_loads.get(m, 0) + w * self.sent.get(m, 0) for m in self.iid_of}
        member = self.policy.choose(self.prompt, self.placement, loads)
        iid = self.iid_of.get(member)
        if iid is not None:
            self.sent[member] = self.sent.get(member, 0) + 1
        return iid
