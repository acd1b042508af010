"""Choosing the downstream instance of an item. Pure: no sockets, seeded randomness.

* Stateless stage: power of two choices on load (the depth the instance last reported
  plus what this sender has sent it since that report), so senders that cannot see
  each other still spread load evenly without herding onto one "least loaded" instance.
* Keyed stage: a pure function of (key, epoch) evaluated on the table the broker
  published for that epoch (see :mod:`alto_bus.routing.keytable`).
* Stage on an LM pool: the pool's scheduling policy (:mod:`alto_bus.routing.pool_route`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class LoadView:
    """What one sender believes about the load of the instances it sends to."""

    __slots__ = ("reported", "sent")

    def __init__(self) -> None:
        self.reported: dict[int, int] = {}   # instance -> queue depth in the last broker report
        self.sent: dict[int, int] = {}       # instance -> items this sender sent since then

    def update(self, reported: dict[int, int]) -> None:
        """A broker report: the loads that changed since the last one (control/load_reports.py)."""
        self.reported.update(reported)
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
