"""Power-of-two choices on reported load plus what this sender sent since."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alto_bus.routing.choice import LoadView, pow2_choice


def test_single_candidate_and_empty():
    assert pow2_choice([5], LoadView(), random.Random(0)) == 5
    with pytest.raises(ValueError):
        pow2_choice([], LoadView(), random.Random(0))


def test_never_picks_the_most_loaded_of_several():
    loads = LoadView()
    loads.update({1: 100, 2: 0, 3: 0})
    rng = random.Random(1)
    picks = Counter(pow2_choice([1, 2, 3], loads, rng) for _ in range(3000))
    assert picks[1] == 0


def test_spreads_evenly_when_it_counts_what_it_sent():
    loads = LoadView()
    rng = random.Random(2)
    picks = Counter()
    for _ in range(8000):
        i = pow2_choice([1, 2, 3, 4], loads, rng)
        loads.note_sent(i)
        picks[i] += 1
    assert max(picks.values()) - min(picks.values()) <= 2  # two choices keep the gap tiny


def test_a_new_report_resets_what_was_sent():
    loads = LoadView()
    loads.note_sent(1, 10)
    assert loads.load(1) == 10
    loads.update({1: 3})
    assert loads.load(1) == 3


def test_a_pool_route_counts_its_sends_for_every_sender_that_gets_work():
    from alto_bus.routing.pool_route import PoolRoute
    from alto_bus.scheduling import Placement

    class Recording:
        """A policy that always picks m0 and records the loads it was shown."""

        def __init__(self) -> None:
            self.seen: list[dict] = []

        def choose(self, prompt, placement, loads):
            self.seen.append(dict(loads))
            return "m0"

    placement = Placement(prompts={"claims": ("m0",), "queries": ("m0", "m1")}, policy="least-loaded")
    # 4 instances of the sending stage; when it is the pool's prompt "claims", only the
    # one on m0 gets work, so a send stands for one, not four.
    for own, weight in ((None, 4), ("claims", 1)):
        policy = Recording()
        route = PoolRoute("queries", policy, own=own)
        route.members({10: "m0", 11: "m1"}, [10, 11], senders=4)
        route.update(placement.to_dict(), {"m0": 50, "m1": 50})
        assert [route.pick() for _ in range(3)] == [10, 10, 10]
        assert [s["m0"] for s in policy.seen] == [50, 50 + weight, 50 + 2 * weight], own
        route.update(None, {"m0": 60, "m1": 50})       # a new report resets what was sent
        route.pick()
        assert policy.seen[-1] == {"m0": 60, "m1": 50}
