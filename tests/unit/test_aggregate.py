"""The aggregate stage's logic: random fan-out trees delivered in random orders.

Run as a script to print the memory held per open group:
``python tests/unit/test_aggregate.py``.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_workers.aggregate import DROPPED, AggregateError, Aggregator, Operator, make_operator

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# User callables, reachable as "alto_test_user_ops:<name>" like any module:function.
_user = types.ModuleType("alto_test_user_ops")
_user.summary = lambda payloads, group: [list(group), [p["v"] for p in payloads]]
_user.total = lambda payloads: sum(p["v"] for p in payloads)
_user.positive = lambda payload: payload["v"] > 0
_user.even_index = lambda payload, path: path[-1] % 2 == 0


async def _async_op(payloads: list) -> int:
    return 0


_user.async_op = _async_op
sys.modules[_user.__name__] = _user

Items = list  # [(path, payload)] ordered by path


def _by_score(item: tuple) -> tuple:
    return -item[1]["s"], item[0]


# (operator, options, reference computed directly from the group's leaves)
OPERATORS: list[tuple[str, dict, Callable[[Items, tuple], Any]]] = [
    ("collect", {}, lambda items, g: [p for _, p in items]),
    ("count", {}, lambda items, g: len(items)),
    ("sum", {"field": "v"}, lambda items, g: sum(p["v"] for _, p in items)),
    ("all", {"field": "v"}, lambda items, g: all(p["v"] != 0 for _, p in items)),
    ("any", {"field": "s"}, lambda items, g: any(p["s"] != 0 for _, p in items)),
    ("top_k", {"k": 2, "score": "s"},
     lambda items, g: [p for _, p in sorted(items, key=_by_score)[:2]]),
    ("alto_test_user_ops:summary", {}, lambda items, g: [list(g), [p["v"] for _, p in items]]),
    ("alto_test_user_ops:total", {}, lambda items, g: sum(p["v"] for _, p in items)),
]


@st.composite
def workloads(draw) -> tuple[int, list[tuple]]:
    """Requests fanned out ``levels`` times (0..5 children each), some nodes dropped.

    Events: ("data", path, payload), ("end", path, n), ("drop", path).
    """
    levels = draw(st.integers(0, 4))
    events: list[tuple] = []

    def grow(path: tuple[int, ...], level: int) -> None:
        if draw(st.integers(0, 7)) == 0:
            events.append(("drop", path))
        elif level == levels:
            payload = {"v": draw(st.integers(-3, 3)), "s": draw(st.integers(0, 3))}
            events.append(("data", path, payload))
        else:
            n = draw(st.integers(0, 5)) if len(events) < 150 else 0
            events.append(("end", path, n))
            for i in range(n):
                grow(path + (i,), level + 1)

    for rid in range(draw(st.integers(1, 3))):
        grow((7000 + rid,), 0)
    return levels, events


def expected_groups(events: list[tuple], depth: int, reduce: Callable[[Items, tuple], Any]) -> dict:
    """Each group's output, straight from the tree (not from the aggregator's bookkeeping)."""
    roots = {e[1][:depth] for e in events if len(e[1]) >= depth}
    out = {}
    for root in roots:
        if ("drop", root) in events:
            out[root] = DROPPED
            continue
        items = sorted((e[1], e[2]) for e in events if e[0] == "data" and e[1][: len(root)] == root)
        out[root] = reduce(items, root)
    return out


def feed(agg: Aggregator, event: tuple) -> list:
    kind, path = event[0], list(event[1])  # the runtime hands over decoded msgpack lists
    if kind == "data":
        return agg.data(path, event[2])
    if kind == "end":
        return agg.end(path, event[2])
    return agg.drop(path)


@SETTINGS
@given(st.data())
def test_each_group_reduces_once_to_the_reference_in_any_order(data: st.DataObject) -> None:
    levels, events = data.draw(workloads())
    depth = data.draw(st.integers(1, levels + 1))
    name, options, reference = data.draw(st.sampled_from(OPERATORS))
    agg = Aggregator(depth, make_operator(name, options))
    outputs, forwarded = [], []
    for event in data.draw(st.permutations(events)):
        if event[0] != "data" and agg.passes_through(event[1]):
            forwarded.append(event)
        outputs += feed(agg, event)
    groups = [g for g, _ in outputs]
    assert len(groups) == len(set(groups))  # exactly once
    assert dict(outputs) == expected_groups(events, depth, reference)
    assert sorted(forwarded) == sorted(e for e in events if e[0] != "data" and len(e[1]) < depth)
    assert len(agg) == 0 and agg.open_groups() == []


@SETTINGS
@given(st.data())
def test_a_filter_decides_per_item_and_keeps_no_state(data: st.DataObject) -> None:
    levels, events = data.draw(workloads())
    depth = data.draw(st.integers(1, levels + 1))
    agg = Aggregator(depth, make_operator("filter", {"field": "v", "gt": 0}))
    for event in data.draw(st.permutations(events)):
        out = feed(agg, event)
        if event[0] == "data":
            assert out == [(event[1], event[2] if event[2]["v"] > 0 else DROPPED)]
        else:
            assert out == [] and agg.passes_through(event[1])
        assert len(agg) == 0


@SETTINGS
@given(st.data())
def test_a_lost_marker_leaves_the_group_open_until_it_expires(data: st.DataObject) -> None:
    levels, events = data.draw(workloads())
    depth = data.draw(st.integers(1, levels + 1))
    inside = [e for e in events if len(e[1]) >= depth]
    if not inside:
        return
    lost = data.draw(st.sampled_from(inside))
    agg = Aggregator(depth, make_operator("collect"))
    outputs = []
    for event in data.draw(st.permutations(events)):
        if event is not lost:
            outputs += feed(agg, event)
    group = lost[1][:depth]
    assert group not in dict(outputs)  # never a partial aggregate
    opened = any(e is not lost and e[1][:depth] == group for e in events)
    assert len(agg) == opened
    def deadline(g: tuple) -> float | None:
        return 10.0 if g == group else None

    assert agg.expire(deadline, now=5.0) == []
    assert agg.expire(deadline, now=10.0) == ([group] if opened else [])
    assert len(agg) == 0


def test_groups_of_one_and_empty_groups() -> None:
    agg = Aggregator(2, make_operator("collect"))
    assert agg.data([1, 0], "only") == [((1, 0), ["only"])]
    assert agg.end([1, 1], 0) == [((1, 1), [])]
    assert agg.drop([1, 2]) == [((1, 2), DROPPED)]
    empty = {"count": 0, "sum": 0, "all": True, "any": False}
    for name, value in empty.items():
        assert Aggregator(1, make_operator(name)).end([3], 0) == [((3,), value)]
    assert Aggregator(1, make_operator("top_k", {"k": 3})).end([3], 0) == [((3,), [])]


def test_float_sums_do_not_depend_on_arrival_order() -> None:
    values = [1e16, 1.0, -1e16, 1.0]
    results = set()
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        agg = Aggregator(1, make_operator("sum"))
        agg.end([1], 4)
        for i in order:
            out = agg.data([1, i], values[i])
        results.add(out[0][1])
    assert len(results) == 1


def test_top_k_breaks_ties_by_path_and_accepts_plain_scores() -> None:
    agg = Aggregator(1, make_operator("top_k", {"k": 2}))
    agg.end([1], 4)
    for i, score in [(3, 5), (1, 9), (2, 5), (0, 5)]:
        out = agg.data([1, i], score)
    assert out == [((1,), [9, 5])]
    agg = Aggregator(1, make_operator("top_k", {"k": 3, "score": "s"}))
    agg.end([1], 3)
    for i in (2, 0, 1):
        out = agg.data([1, i], {"s": 1, "i": i})
    assert out == [((1,), [{"s": 1, "i": 0}, {"s": 1, "i": 1}, {"s": 1, "i": 2}])]


def test_markers_above_the_key_depth_pass_through() -> None:
    agg = Aggregator(2, make_operator("count"))
    assert agg.passes_through([1]) and not agg.passes_through([1, 0])
    assert agg.end([1], 3) == [] and agg.drop([2]) == [] and len(agg) == 0


def test_failures_free_the_group_and_name_it() -> None:
    agg = Aggregator(2, make_operator("sum", {"field": "v"}))
    agg.end([1, 0], 2)
    agg.data([1, 0, 0], {"v": 1})
    with pytest.raises(AggregateError, match="no field 'v'") as err:
        agg.data([1, 0, 1], {"w": 2})
    assert err.value.path == (1, 0) and len(agg) == 0

    agg.end([1, 1], 2)
    agg.data([1, 1, 0], {"v": 1})
    with pytest.raises(AggregateError, match="already complete"):
        agg.data([1, 1, 0], {"v": 1})
    assert len(agg) == 0
    agg.end([1, 2], 1)
    with pytest.raises(AggregateError, match="announced 1 children") as err:
        agg.data([1, 2, 5], {"v": 1})
    assert err.value.path == (1, 2) and len(agg) == 0

    with pytest.raises(AggregateError, match="shallower than the key depth"):
        agg.data([1], {"v": 1})
    with pytest.raises(AggregateError) as err:
        agg.data([1, 3, "x"], {"v": 1})
    assert err.value.path == (1, 3) and len(agg) == 0

    crash = Aggregator(1, make_operator("alto_test_user_ops:total"))
    crash.end([4], 1)
    with pytest.raises(AggregateError, match="KeyError") as err:
        crash.data([4, 0], {"nope": 1})
    assert err.value.path == (4,) and len(crash) == 0


def test_expire_cancel_and_diagnostics() -> None:
    agg = Aggregator(2, make_operator("collect"))
    agg.end([1, 0], 3)
    agg.data([1, 0, 1], "x")
    agg.end([2, 0], 2)
    agg.end([2, 1], 2)
    assert agg.open_groups()[0] == {"group": [1, 0], "items": 1, "waiting_on": [([1, 0], 3, 1)]}
    deadlines = {1: 5.0, 2: 50.0}
    assert agg.held() == {1, 2}
    assert agg.expire(lambda g: deadlines[g[0]], now=6.0) == [(1, 0)]
    assert agg.cancel({2, 3}) == [(2, 0), (2, 1)]
    assert len(agg) == 0 and agg.held() == set()


def test_user_callables_get_the_group_path_when_they_take_two_parameters() -> None:
    op = make_operator("alto_test_user_ops:summary")
    assert op.group([((1, 0), {"v": 4})], (1,)) == [[1], [4]]
    assert make_operator("alto_test_user_ops:total").group([((1, 0), {"v": 4})], (1,)) == 4
    assert make_operator("builtins:len").group([((1, 0), "a")], (1,)) == 1


def test_filter_forms() -> None:
    def run(options: dict, payload: Any, path: tuple = (1, 0)) -> Any:
        op = make_operator("filter", options)
        assert op.per_item
        return op.item(path, payload)

    assert run({"where": "alto_test_user_ops:positive"}, {"v": 1}) == {"v": 1}
    assert run({"where": "alto_test_user_ops:positive"}, {"v": 0}) is DROPPED
    assert run({"where": "alto_test_user_ops:even_index"}, "x", (1, 3)) is DROPPED
    assert run({"field": "ok"}, {"ok": True}) == {"ok": True}
    assert run({"field": "ok"}, {"ok": 0}) is DROPPED
    label = {"label": "supported"}
    assert run({"field": "label", "equals": "supported"}, label) == label
    assert run({"field": "label", "in": ["a", "b"]}, {"label": "c"}) is DROPPED
    assert run({"field": "score", "ge": 0.5}, {"score": 0.5}) == {"score": 0.5}


@pytest.mark.parametrize(
    "op, options, message",
    [
        ("median", {}, "unknown aggregate operator 'median'"),
        ("collect", {"k": 1}, "collect: unknown option 'k'"),
        ("sum", {"feild": "v"}, "sum: unknown option 'feild'"),
        ("sum", {"field": 3}, "sum: option 'field' must be a field name"),
        ("top_k", {"score": "s"}, "top_k: option 'k' is required"),
        ("top_k", {"k": 0}, "top_k: option 'k' must be an int >= 1"),
        ("top_k", {"k": True}, "top_k: option 'k' must be an int >= 1"),
        ("filter", {}, "filter: needs option 'where'"),
        ("filter", {"where": "nomodule"}, "option 'where' must be 'module:function'"),
        ("filter", {"where": "alto_test_user_ops:nope"}, "'where': module .* no attribute 'nope'"),
        ("filter", {"where": "alto_no_such_module:f"}, "option 'where': cannot import module"),
        ("filter", {"where": "alto_test_user_ops:positive", "field": "v"}, "'where' excludes"),
        ("filter", {"field": "v", "gt": 1, "lt": 3}, "one test per filter"),
        ("filter", {"field": "v", "in": 3}, "option 'in' must be a list"),
        ("filter", {"field": "v", "like": 3}, "filter: unknown option 'like'"),
        ("alto_test_user_ops:async_op", {}, "is async"),
        ("alto_test_user_ops:total", {"x": 1}, "unknown option 'x'"),
        ("alto_test_user_ops:_user", {}, "has no attribute"),
    ],
)
def test_bad_operators_raise_naming_the_option(op: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_operator(op, options)


def test_bad_aggregators_raise() -> None:
    with pytest.raises(ValueError, match="key_depth"):
        Aggregator(0, make_operator("count"))
    with pytest.raises(ValueError, match="Operator"):
        Aggregator(1, lambda items: items)  # type: ignore[arg-type]
    assert isinstance(make_operator("count"), Operator)


def bytes_per_open_group(items: int = 10, groups: int = 2000, payload: Any = None) -> float:
    """Bytes the aggregator holds per open group of ``items`` items (payloads excluded
    unless given as a factory), measured with tracemalloc over ``groups`` groups."""
    agg = Aggregator(2, make_operator("collect"))
    shared = {"claim": "c"}
    events = [[[rid, 0, i] for i in range(items)] for rid in range(groups)]  # decoded msgpack lists
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rid, paths in enumerate(events):
            agg.end([rid, 0], items + 1)  # one item short: the group stays open
            for path in paths:
                agg.data(path, payload() if payload else shared)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(agg) == groups
    return held / groups


def test_an_open_group_of_ten_items_stays_small() -> None:
    assert bytes_per_open_group() < 2000


if __name__ == "__main__":
    print(f"bytes per open group, 10 items, payloads excluded: {bytes_per_open_group():.0f}")
    print(f"bytes per open group, 10 items, with {{'claim': 'c'}} payloads: "
          f"{bytes_per_open_group(payload=lambda: {'claim': 'c'}):.0f}")
    print(f"bytes per open group, no items yet: {bytes_per_open_group(items=0):.0f}")
