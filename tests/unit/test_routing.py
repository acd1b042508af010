"""Power-of-two choices on reported load plus what this sender sent since."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alto_bus.routing import LoadView, pow2_choice


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
