"""The barrier (aggregate op "barrier"): a group's events are released unchanged, all at
once, exactly when the group completes, in any arrival order; topology rules for it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_bus.deploy.topology import TopologyError, parse
from tests.unit.test_aggregate import workloads
from alto_workers.barrier import Barrier, BarrierError

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed(barrier: Barrier, event: tuple) -> list[tuple]:
    kind, path = event[0], list(event[1])
    if kind == "data":
        released = barrier.data(path, event[2], 5)
    elif kind == "end":
        released = barrier.end(path, event[2], 5)
    else:
        released = barrier.drop(path, 5)
    return [(k, tuple(p), v) if k != "drop" else (k, tuple(p)) for k, p, v, epoch in released
            if epoch == 5]


@SETTINGS
@given(st.data())
def test_a_group_is_released_whole_and_once_when_its_last_event_arrives(data: st.DataObject) -> None:
    levels, events = data.draw(workloads())
    depth = data.draw(st.integers(1, levels + 1))
    barrier = Barrier(depth)
    order = data.draw(st.permutations(events))
    released: dict[tuple, list] = {}
    for i, event in enumerate(order):
        if event[0] != "data" and barrier.passes_through(event[1]):
            continue
        root = event[1][:depth]
        out = feed(barrier, event)
        # Nothing before the group's last event, everything at it.
        last = max(j for j, e in enumerate(order) if e[1][:depth] == root and len(e[1]) >= depth)
        assert bool(out) == (i == last), (event, out)
        if out:
            assert root not in released
            released[root] = out
    for root, out in released.items():
        mine = [e for e in order if e[1][:depth] == root and len(e[1]) >= depth]
        assert out == mine            # unchanged and in arrival order
    assert len(barrier) == 0 and barrier.held() == set()


def test_a_dropped_group_root_is_released_as_a_drop() -> None:
    barrier = Barrier(2)
    assert barrier.drop([9, 0], 1) == [("drop", [9, 0], None, 1)]


def test_a_contradiction_frees_the_group_and_names_it() -> None:
    barrier = Barrier(1)
    assert barrier.end([4], 2, 1) == []
    assert barrier.data([4, 0], "a", 1) == []
    with pytest.raises(BarrierError, match=r"group \[4\].*announced 2 children") as err:
        barrier.data([4, 2], "c", 1)
    assert err.value.path == (4,) and len(barrier) == 0
    with pytest.raises(BarrierError, match="shallower than the key depth"):
        Barrier(2).data([4], "x", 1)


def test_cancel_frees_the_groups_of_those_requests() -> None:
    barrier = Barrier(1)
    barrier.end([1], 2, 1)
    barrier.end([2], 2, 1)
    assert barrier.held() == {1, 2}
    barrier.cancel({1})
    assert barrier.held() == {2}


def _topology(**barrier: object) -> dict:
    return {"stage": [
        {"name": "split", "kind": "function", "handler": "tests.integration.handlers:split"},
        {"name": "letters", "kind": "function", "handler": "tests.integration.handlers:letters",
         "input": "split"},
        {"name": "wait", "kind": "aggregate", "input": "letters", "op": "barrier", **barrier},
        {"name": "all", "kind": "aggregate", "input": "wait", "key": "split", "op": "collect"},
    ]}


def test_a_barrier_keeps_the_paths_and_routes_by_its_key() -> None:
    topo = parse(_topology(key="request"))
    wait = topo.stage("wait")
    assert (wait.key_depth, wait.out_depth) == (1, 3)       # grouped by request, paths kept
    assert topo.stage("all").key_depth == 2


def test_barrier_refusals_name_the_field() -> None:
    with pytest.raises(TopologyError, match="stage 'wait': missing required field 'key'"):
        parse(_topology())
    with pytest.raises(TopologyError, match="stage 'wait': field 'options'.*barrier: unknown option"):
        parse(_topology(key="request", options={"k": 1}))
    deep = _topology(key="request")
    deep["stage"][3]["key"] = "wait"   # after the barrier: fine, depth 3 == its input's
    assert parse(deep).stage("all").key_depth == 3


def test_a_key_deeper_than_the_items_is_refused() -> None:
    topo = _topology(key="request")
    topo["stage"][2] = {"name": "wait", "kind": "aggregate", "input": "letters", "key": "request",
                        "op": "count"}
    topo["stage"][3]["key"] = "letters"    # groups of depth 3 over items of depth 1
    with pytest.raises(TopologyError, match="stage 'all': field 'key': stage 'letters' emits paths of length 3"):
        parse(topo)
