"""GroupTracker: completion exactly at the last marker in any order; contradictions raise."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_bus.protocol.ancestry import AncestryError, GroupTracker

Event = tuple  # ("leaf", path) | ("drop", path) | ("end", path, n)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def subtrees(draw, max_depth: int = 4, budget: int = 120) -> tuple[tuple[int, ...], list[Event]]:
    """A root path and the markers of one random subtree below it (fan-out 0..5)."""
    root = tuple(draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=3)))
    events: list[Event] = []

    def grow(path: tuple[int, ...], depth: int) -> None:
        if depth >= max_depth or len(events) >= budget or draw(st.integers(0, 3)) == 0:
            events.append(("drop" if draw(st.integers(0, 4)) == 0 else "leaf", path))
            return
        n = draw(st.integers(0, 5))
        events.append(("end", path, n))
        for i in range(n):
            grow(path + (i,), depth + 1)

    grow(root, 0)
    return root, events


def apply(tracker: GroupTracker, event: Event) -> bool:
    if event[0] == "end":
        return tracker.end(event[1], event[2])
    return getattr(tracker, event[0])(event[1])


def assert_empty(tracker: GroupTracker) -> None:
    assert tracker.open_nodes() == 0
    assert not tracker._ends and not tracker._done


@SETTINGS
@given(st.data())
def test_completes_exactly_at_the_last_marker_in_any_order(data: st.DataObject) -> None:
    root, events = data.draw(subtrees())
    order = data.draw(st.permutations(events))
    tracker = GroupTracker(root)
    results = [apply(tracker, e) for e in order]
    assert results == [False] * (len(order) - 1) + [True]
    assert tracker.complete
    assert_empty(tracker)


@SETTINGS
@given(st.data())
def test_a_duplicate_marker_raises_where_it_arrives(data: st.DataObject) -> None:
    root, events = data.draw(subtrees())
    order = list(data.draw(st.permutations(events)))
    original = data.draw(st.integers(0, len(order) - 1))
    at = data.draw(st.integers(original + 1, len(order)))
    order.insert(at, order[original])
    tracker = GroupTracker(root)
    results = [apply(tracker, e) for e in order[:at]]
    # Never complete early; complete only when the duplicate comes after everything.
    assert results == [False] * (at - 1) + [at == len(order) - 1]
    with pytest.raises(AncestryError):
        apply(tracker, order[at])


@SETTINGS
@given(st.data())
def test_an_understated_end_raises_before_the_stream_ends(data: st.DataObject) -> None:
    root, events = data.draw(subtrees())
    ends = [i for i, e in enumerate(events) if e[0] == "end" and e[2] > 0]
    if not ends:
        return
    i = data.draw(st.sampled_from(ends))
    kind, path, n = events[i]
    events[i] = (kind, path, data.draw(st.integers(0, n - 1)))
    tracker = GroupTracker(root)
    with pytest.raises(AncestryError):
        for e in data.draw(st.permutations(events)):
            apply(tracker, e)


@SETTINGS
@given(st.data())
def test_an_overstated_end_never_completes_and_never_raises(data: st.DataObject) -> None:
    root, events = data.draw(subtrees())
    ends = [i for i, e in enumerate(events) if e[0] == "end"]
    if not ends:
        return
    i = data.draw(st.sampled_from(ends))
    kind, path, n = events[i]
    events[i] = (kind, path, n + data.draw(st.integers(1, 3)))
    tracker = GroupTracker(root)
    assert not any(apply(tracker, e) for e in data.draw(st.permutations(events)))
    assert not tracker.complete
    assert tracker.open_nodes() > 0


@SETTINGS
@given(st.data())
def test_a_leaf_that_also_has_children_raises(data: st.DataObject) -> None:
    root, events = data.draw(subtrees())
    internal = [e for e in events if e[0] == "end"]
    if not internal:
        return
    target = data.draw(st.sampled_from(internal))[1]
    order = list(data.draw(st.permutations(events + [("leaf", target)])))
    tracker = GroupTracker(root)
    with pytest.raises(AncestryError):
        for e in order:
            apply(tracker, e)


def test_root_alone() -> None:
    t = GroupTracker((5,))
    assert t.leaf((5,)) and t.complete
    t = GroupTracker((5, 1))
    assert t.end((5, 1), 0) and t.complete
    t = GroupTracker((5,))
    assert t.drop((5,))


@pytest.mark.parametrize(
    "events, message",
    [
        ([("end", (1,), 2), ("leaf", (1, 2))], "announced 2 children"),
        ([("leaf", (1, 3)), ("end", (1,), 2)], "child 3 arrived"),
        ([("end", (1,), 2), ("leaf", (1, 0)), ("leaf", (1, 0))], "already complete"),
        ([("end", (1,), 3), ("end", (1, 0), 0), ("end", (1, 0), 0)], "already complete"),
        ([("end", (1,), 2), ("end", (1,), 2)], "second END"),
        ([("end", (1,), -1)], "announces -1"),
        ([("end", (1,), 1.5)], "announces 1.5"),
        ([("leaf", (1, -1))], "negative child index"),
        ([("leaf", (2, 0))], "outside group"),
        ([("leaf", ())], "outside group"),
        ([("leaf", (1,)), ("leaf", (1,))], r"after group \[1\] completed"),
        ([("end", (1,), 1), ("end", (1, 0), 1), ("leaf", (1, 0, 0)), ("drop", (1, 0, 0))],
         "completed"),
        ([("end", (1,), 2), ("end", (1, 0), 1), ("leaf", (1, 0, 0)), ("end", (1, 0, 0), 1)],
         "already complete"),
        ([("end", (1,), 1), ("leaf", (1, 0, 3, 1)), ("leaf", (1, 0))], "still open"),
        ([("end", (1, 0), 2), ("leaf", (1, 0))], "has children"),
    ],
)
def test_contradictions_raise(events: list[Event], message: str) -> None:
    tracker = GroupTracker((1,))
    with pytest.raises(AncestryError, match=message):
        for e in events:
            apply(tracker, e)


def test_diagnostics_name_what_a_group_waits_on() -> None:
    t = GroupTracker((1,))
    assert t.waiting_on() == [([1], -1, 0)]
    t.end((1,), 3)
    t.leaf((1, 0))
    t.leaf((1, 2, 0))
    assert t.open_nodes() == 2
    assert t.waiting_on() == [([1], 3, 1), ([1, 2], -1, 1)]
    assert t.waiting_on(limit=1) == [([1], 3, 1)]


def test_a_wide_fan_out_completes() -> None:
    t = GroupTracker((1,))
    n = 20_000
    for i in reversed(range(1, n)):
        assert not t.leaf((1, i))
    assert not t.end((1,), n)
    assert t.leaf((1, 0))
