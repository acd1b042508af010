"""Choosing the downstream instance of an item. Pure: no sockets, seeded randomness.

* Stateless stage: power of two choices on load (the depth the instance last reported
  plus what this sender has sent it since that report), so senders that cannot see
  each other still spread load evenly without herding onto one "least loaded" instance.
* Keyed stage: a pure function of (key, epoch) evaluated on the table the broker
  published for that epoch (see :mod:`alto_bus.hashring`).
* Stage on an LM pool: the pool's scheduling policy (:class:`PoolRoute`), in every
  sender and in the gateway for an entry stage on a pool.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


class LoadView:
    """What one sender believes about the load of the instances it sends to."""

    __slots__ = ("reported", "sent")

    def __init__(self) -> None:
        self.reported: dict[int, int] = {}   # instance -> queue depth in the last broker report
        self.sent: dict[int, int] = {}       # instance -> items this sender sent since then

    def update(self, reported: dict[int, int]) -> None:
        self.reported = reported
        self.sent = {}

    def load(self, instance: int) -> int:
        return self.reported.get(instance, 0) + self.sent.get(instance, 0)

    def note_sent(self, instance: int, n: int = 1) -> None:
        self.sent[instance] = self.sent.get(instance, 0) + n


def pow2_choice(candidates: Sequence[int], loads: LoadView, rng: random.Random) -> int:
    """The less loaded of two distinct random candidates (ties: the first drawn)."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    if n == 0:
        raise ValueError("no instance to choose from")
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    return b if loads.load(b) < loads.load(a) else a


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
        from alto_bus.scheduling import Placement

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
