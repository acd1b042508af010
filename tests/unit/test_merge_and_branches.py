"""The pure parts of graphs: merging inputs into one tree, and what each consumer gets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from alto_bus.protocol.ancestry import GroupTracker
from alto_bus.protocol.merge import InputMerge
from alto_bus.protocol.messages import Data, Drop, End, Error
from alto_bus.routing.branches import Branches, RouteError


def tree_messages(root: list, shape) -> list:
    """The messages of one input's tree below ``root``: shape is 'leaf', 'drop' or a list of shapes."""
    if shape == "leaf":
        return [Data(root, 0, tuple(root), True, 0)]
    if shape == "drop":
        return [Drop(root, 0)]
    out = [End(root, len(shape), 0)]
    for i, child in enumerate(shape):
        out += tree_messages([*root, i], child)
    return out


shapes = st.recursive(st.sampled_from(["leaf", "drop"]), lambda kids: st.lists(kids, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(fork_items=st.integers(0, 3), inputs=st.integers(2, 4), data=st.data())
def test_merged_inputs_complete_the_request_exactly_once_in_any_order(fork_items, inputs, data):
    # The entry (path [7]) fans out into fork items [7, j] (f = 2); every input carries the
    # same fork items, each with its own subtree below, and the entry's END on every input.
    merge = InputMerge(depth=2, inputs=inputs)
    msgs = []
    for i in range(inputs):
        trees = [data.draw(shapes) for _ in range(fork_items)]
        raw = [End([7], fork_items, 0)] + [m for j, t in enumerate(trees) for m in tree_messages([7, j], t)]
        for m in raw:
            out = merge.remap(m, i)
            msgs += out
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(msgs)
    tracker, done = GroupTracker((7,)), []
    for n, m in enumerate(msgs):
        complete = tracker.leaf(tuple(m.path)) if type(m) in (Data, Drop) else tracker.end(tuple(m.path), m.n)
        if complete:
            done.append(n)
    assert done == [len(msgs) - 1]
    # Input i's leaf at [7, j, ...] is [7, j, i, ...] in the merged tree: none lost, none mixed up.
    assert all(m.payload == (p[0], p[1], *p[3:]) for m in msgs if type(m) is Data for p in [m.path])


def test_a_merge_passes_markers_above_the_fork_once_and_refuses_an_item_shorter_than_it():
    merge = InputMerge(depth=2, inputs=2, stage="m")
    assert merge.remap(End([7], 3, 0), 0) == [End([7], 3, 0)]
    assert merge.remap(End([7], 3, 0), 1) == []
    assert merge.remap(Data([7, 1], 0, "x", True, 0), 1) == [Data([7, 1, 1], 0, "x", True, 0)]
    assert merge.remap(Data([7, 1], 0, "x", False, 0), 0) == [Data([7, 1, 0], 0, "x", False, 0), End([7, 1], 2, 0)]
    assert merge.remap(Data([7, 1], 1, "y", True, 0), 0) == [Data([7, 1, 0], 1, "y", True, 0)]  # END once
    (err,) = merge.remap(Data([7], 0, "x", True, 0), 0)
    assert type(err) is Error and err.stage == "m" and "shorter than the fork depth 2" in err.message
    assert merge.remap(Data([7, 1], 0, "x", True, 0, None, 2), None) == [Data([7, 1], 0, "x", True, 0, None, 2)]


def routes(word: str) -> list[str] | str | None:
    return {"a": "left", "b": ["left", "right"], "c": None, "d": "nowhere", "e": 5}.get(word, "right")


def test_a_route_sends_the_item_to_the_named_consumers_and_drop_to_the_others():
    b = Branches("s", ["left", "right"], route=routes)
    item = Data([1, 0], 0, "a", True, 0)
    assert b.item(item, "a") == [(0, item), (1, Drop([1, 0], 0))]
    assert b.item(item, "b") == [(0, item), (1, item)]
    assert b.item(item, "c") == [(0, Drop([1, 0], 0)), (1, Drop([1, 0], 0))]
    streamed = Data([1, 0], 3, "tail", True, 0)  # the last chunk of a streamed item: sent whole
    assert b.item(streamed, "ax") == [(0, Drop([1, 0], 0)), (1, Data([1, 0], 0, "ax", True, 0))]
    with pytest.raises(RouteError, match="named 'nowhere', which does not take its items"):
        b.item(item, "d")
    with pytest.raises(RouteError, match="returned 5"):
        b.item(item, "e")
    assert b.markers(End([1], 2, 0)) == [(0, End([1], 2, 0)), (1, End([1], 2, 0))]


def test_a_loop_route_sends_an_item_round_with_one_more_turn_and_never_a_marker():
    b = Branches("think", ["tool", "answer"], loop_consumer="tool",
                 route=lambda state, path: "tool" if state < 3 else "answer")
    item = Data([1], 0, 1, True, 0, None, 1)
    assert b.item(item, 1) == [(0, Data([1], 0, 1, True, 0, None, 2))]
    assert b.item(item, 3) == [(1, item)]
    assert b.markers(End([1], 2, 0)) == [(1, End([1], 2, 0))]
    both = Branches("think", ["tool", "answer"], loop_consumer="tool", route=lambda s: ["tool", "answer"])
    with pytest.raises(RouteError, match="both round the loop and out of it"):
        both.item(item, 1)


def test_a_route_that_raises_fails_with_its_exception_named():
    b = Branches("s", ["x"], route=lambda item: 1 / 0)
    with pytest.raises(RouteError, match="route of stage 's' raised ZeroDivisionError"):
        b.item(Data([1], 0, "a", True, 0), "a")
