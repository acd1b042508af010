"""Graph topologies: what validation derives for forks, merges, joins and loops, and what
it refuses, naming the stage and the field (DESIGN.md, "Graphs")."""

from __future__ import annotations

import pytest

from alto_bus.deploy.topology import TopologyError, parse

H = "tests.integration.handlers"
G = "tests.integration.graph_handlers"


def fn(name: str, handler: str = "upper", **kw) -> dict:
    return {"name": name, "kind": "function", "handler": f"{H}:{handler}", **kw}


def agg(name: str, input, key: str = "request", op: str = "collect", **kw) -> dict:
    return {"name": name, "kind": "aggregate", "input": input, "key": key, "op": op, **kw}


def graph(*stages: dict):
    return parse({"stage": list(stages)}, source="g.toml")


def test_a_diamond_forks_every_item_to_both_branches_and_the_join_merges_at_the_fork_depth():
    topo = graph(agg("join", ["b", "c"], key="a"), fn("a", "split"), fn("b", input="a"),
                 fn("c", "letters", input="a"))
    by = {s.name: s for s in topo.stages}
    assert [s.name for s in topo.stages][0] == "a" and topo.stages[-1].name == "join"
    assert by["a"].consumers == ("b", "c") and by["a"].next is None
    assert by["join"].inputs == ("b", "c") and by["join"].merge_depth == 2
    # b keeps a's paths (length 2), c fans out (3); the join groups by a's items.
    assert (by["b"].out_depth, by["c"].out_depth, by["join"].key_depth) == (2, 3, 2)
    assert by["join"].consumers == () and by["join"].out_depth == 2


def test_a_loop_is_ordered_from_where_it_is_entered_and_its_route_stage_knows_the_way_back():
    topo = graph(fn("answer", input="think"), fn("tool", input="think"),
                 fn("think", input=["start", "tool"], route=f"{G}:decide", max_turns=3), fn("start"))
    assert [s.name for s in topo.stages] == ["start", "think", "tool", "answer"]
    by = {s.name: s for s in topo.stages}
    assert by["think"].loop_consumer == "tool" and by["think"].loop_inputs == ("tool",)
    assert by["think"].in_loop and by["tool"].in_loop and not by["answer"].in_loop
    assert by["think"].merge_depth is None  # items coming round are not a second branch


def test_a_loop_that_fans_out_makes_path_lengths_vary_and_a_key_after_it_must_come_before_it():
    stages = [fn("start"), fn("think", "split", input=["start", "tool"], route=f"{G}:decide", max_turns=3),
              fn("tool", input="think"), fn("answer", input="think")]
    topo = graph(*stages, agg("all", "answer", key="start"))
    assert {s.name: s.depth_varies for s in topo.stages}["answer"] is True
    with pytest.raises(TopologyError, match="stage 'all': field 'key': stage 'think' emits paths of varying"):
        graph(*stages[:3], fn("answer", input="think"), agg("all", "answer", key="think"))


LOOP = [fn("start"), fn("think", input=["start", "tool"], route=f"{G}:decide", max_turns=3),
        fn("tool", input="think"), fn("answer", input="think")]


def _without(stage: dict, field: str) -> dict:
    return {k: v for k, v in stage.items() if k != field}


@pytest.mark.parametrize("stages, words", [
    ([fn("a"), fn("b", input="a"), fn("c", input="a")], ["stages ['b', 'c'] feed no stage"]),
    ([fn("a"), fn("b", input=["a", "zz"])], ["stage 'b': field 'input'", "no stage named 'zz'"]),
    ([fn("a"), fn("b", input=["a", "a"])], ["stage 'b': field 'input'", "names a stage twice"]),
    ([fn("a"), fn("b", input=[])], ["stage 'b': field 'input'", "non-empty list"]),
    ([fn("a"), fn("b", input=["a", 3])], ["stage 'b': field 'input'"]),
    ([fn("a", route=f"{G}:decide")], ["stage 'a': field 'route'", "the sink feeds no stage"]),
    ([LOOP[0], _without(LOOP[1], "route"), *LOOP[2:]], ["field 'route'", "form a loop", "needs 'route'"]),
    ([LOOP[0], _without(LOOP[1], "max_turns"), *LOOP[2:]], ["field 'max_turns'", "form a loop"]),
    ([*LOOP[:2], agg("tool", "think"), LOOP[3]], ["stage 'tool': field 'kind'", "keyed stage cannot be in the loop"]),
    ([fn("a", "split"), fn("b", input="a"), fn("c", input="a"), agg("j", ["b", "c"], key="b")],
     ["stage 'j': field 'key'", "not 'request' or a stage every input of 'j'"]),
    ([fn("a", "split"), fn("b", "letters", input="a"), agg("bb", "b", key="request"), fn("c", input="a"),
      fn("m", input=["bb", "c"])], ["stage 'm': field 'input'", "stage 'bb'", "groups by paths of length 1"]),
    ([fn("a", "split"), fn("b", input=["a", "c"], route=f"{G}:decide", max_turns=2), fn("c", input="b")],
     ["stage 'b': field 'route'", "no way out"]),
    ([fn("a", max_turns=0)], ["stage 'a': field 'max_turns'", ">= 1"]),
    ([fn("a", route="nomodule_xyz:f"), fn("b", input="a")], ["stage 'a': field 'route'", "cannot import"]),
])
def test_graphs_the_runtime_cannot_run_exactly_are_refused_naming_stage_and_field(stages, words):
    with pytest.raises(TopologyError) as err:
        graph(*stages)
    assert str(err.value).startswith("g.toml: ")
    for w in words:
        assert w in str(err.value)


def test_a_loop_entered_from_two_places_is_refused():
    with pytest.raises(TopologyError, match="a loop is entered by one input"):
        graph(fn("a", "split"), fn("b", input="a"), fn("c", input="a"),
              fn("think", input=["b", "c", "tool"], route=f"{G}:decide", max_turns=2),
              fn("tool", input="think"), fn("answer", input="think"))
