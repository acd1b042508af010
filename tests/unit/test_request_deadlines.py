"""A worker's deadlines: from the time left its messages carry, freed by itself past them."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from alto_bus.runtime.parked_items import ParkedItems
from alto_bus.runtime.request_deadlines import RequestDeadlines
from alto_bus.protocol import wire


def test_a_request_expires_grace_after_its_deadline_on_the_receivers_own_clock():
    d = RequestDeadlines(grace=1.0)
    d.note(5, 2000, now=100.0)   # 2 s left when it arrived at t=100
    d.note(5, 9000, now=100.5)   # a later stamp of the same request does not move it
    assert d.left_ms(5, now=100.5) == 1500 and d.left_ms(6, now=100.5) is None
    assert d.left_ms(5, now=103.0) == 0  # past it: what is stamped downstream is 0, never negative
    assert d.expired(now=102.9) == []    # the deadline passed, the grace has not
    assert d.expired(now=103.0) == [5]
    assert d.expired(now=200.0) == [] and len(d) == 0 and d.next_expiry() is None


def test_a_request_that_ended_is_never_expired_and_the_heap_does_not_outgrow_the_requests():
    d = RequestDeadlines(grace=0.0)
    for rid in range(5000):
        d.note(rid, 10_000_000, now=0.0)
    d.forget(range(5000))
    assert len(d) == 0 and len(d._heap) <= 1024 and d.expired(now=1e9) == []


def test_past_memory_new_requests_are_not_clocked_and_the_caller_is_told():
    d = RequestDeadlines(memory=2)
    assert d.note(1, 10, 0.0) and d.note(2, 10, 0.0)
    assert not d.note(3, 10, 0.0) and d.left_ms(3, 0.0) is None
    assert d.note(1, 10, 0.0)  # known already: fine


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5000), st.floats(0, 10)), max_size=60),
       st.sets(st.integers(0, 30)), st.floats(0, 20))
def test_expired_names_exactly_the_clocked_requests_past_deadline_and_grace(notes, ended, now):
    d = RequestDeadlines(grace=0.5)
    first: dict[int, float] = {}
    for rid, left, at in notes:
        d.note(rid, left, at)
        first.setdefault(rid, at + left / 1000)
    d.forget(ended)
    want = sorted(r for r, t in first.items() if r not in ended and t + 0.5 <= now)
    assert sorted(d.expired(now)) == want
    assert sorted(d.at) == sorted(r for r in first if r not in ended and r not in want)


def test_parked_items_past_memory_all_go_and_name_their_requests():
    p = ParkedItems(memory=2)
    assert p.add(0, wire.data([1, 0], 0, "a", True, 0), [1, 0]) == set()
    assert p.add(0, wire.data([2, 0], 0, "b", True, 0), [2, 0]) == set()
    p.drop_requests([2])
    assert len(p) == 1
    p.add(0, wire.data([3, 0], 0, "c", True, 0), [3, 0])
    assert p.add(0, wire.data([4, 0], 0, "d", True, 0), [4, 0]) == {1, 3, 4} and not p
    p.add(1, wire.end([5], 1, 0), [5])
    assert [(c, path) for c, _, path in p.take()] == [(1, [5])] and not p
