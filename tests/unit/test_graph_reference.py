"""The reference interpreter (alto_bus/graph/reference.py) on hand-written graphs, with
the results worked out by hand from DESIGN.md ("Graphs")."""

from __future__ import annotations

import dataclasses

import pytest

from alto_bus.deploy.topology import parse
from alto_bus.graph.reference import GraphRunError, Reference, run_reference
from tests.graph_strategies import function_stage

G = "tests.integration.graph_handlers"
H = "tests.integration.handlers"


fn = function_stage


def agg(name: str, input, key: str | None = "request", op: str = "collect", **more) -> dict:
    stage = {"name": name, "kind": "aggregate", "input": input, "op": op, **more}
    if key is not None:
        stage["key"] = key
    return stage


def ref(*stages: dict) -> Reference:
    return Reference(parse({"stage": list(stages)}))


def test_a_one_to_one_request_gives_its_own_item_and_a_fan_out_the_list_of_its_leaves():
    assert ref(fn("up", "upper")).run("ab") == "AB"
    fanned = ref(fn("words", "words"), fn("up", "upper", "words"))
    assert fanned.run("ab c") == ["AB", "C"]
    assert fanned.run("x") == ["X"]          # one child is still a list
    assert fanned.run("") == []              # END(request, 0)
    nested = ref(fn("words", "words"), fn("letters", "letters", "words", module=H), fn("up", "upper", "letters"))
    assert nested.run("ab c") == ["A", "B", "C"]


def test_a_handler_returning_none_drops_the_item_and_a_dropped_request_gives_an_empty_list():
    r = ref(fn("s0", "g_drop"))
    assert r.run(5) == 5
    assert r.run(4) == []   # digest 4 % 4 == 0: dropped, no leaf
    words = ref(fn("words", "words"), fn("keep", "keep_short", "words", module=H))
    assert words.run("to elephant be") == ["to", "be"]


def test_a_fork_then_a_plain_merge_gives_each_fork_item_one_child_per_input_in_input_order():
    # words -> (upper, short) -> long: path [r, j] becomes [r, j, i] for input i.
    r = ref(fn("words", "words"), fn("upper", "upper", "words"), fn("short", "short", "words"),
            fn("long", "long", ["upper", "short"]))
    assert r.run("ab cd") == ["l:AB", "l:s:ab", "l:CD", "l:s:cd"]
    # The entry is the fork (fork depth 1): the request's item gets one child per input.
    r = ref(fn("a", "upper"), fn("b", "short", "a"), fn("c", "long", "a"), fn("m", "short", ["c", "b"]))
    assert r.run("x") == ["s:l:X", "s:s:X"]


def test_a_join_collects_by_input_name_at_the_request_or_at_the_fork_item():
    diamond = [fn("words", "words"), fn("upper", "upper", "words"), fn("length", "length", "words")]
    by_request = ref(*diamond, agg("join", ["upper", "length"]))
    assert by_request.run("to be") == {"upper": ["TO", "BE"], "length": [2, 2]}
    assert by_request.run("") == {"upper": [], "length": []}
    by_word = ref(*diamond, agg("join", ["upper", "length"], key="words"))
    assert by_word.run("ab c") == [{"upper": ["AB"], "length": [2]}, {"upper": ["C"], "length": [1]}]
    assert ref(*diamond, agg("join", ["upper", "length"], op="count")).run("ab c") == 4
    summary = ref(*diamond, agg("join", ["upper", "length"], op=f"{G}:g_summary"))
    # g_summary(map, group): [len(map), digest(map), len(group)]; digest of {"length": [2],
    # "upper": ["A"]} = (digest("length") * 7 + 1) + (digest("upper") * 7 + 65) mod 997.
    d = lambda s: sum(map(ord, s)) % 997  # noqa: E731
    assert summary.run("A") == [2, (d("length") * 7 + 1 + d("upper") * 7 + 65) % 997, 1]


def test_a_route_sends_each_item_one_way_and_a_join_at_the_route_stage_sees_the_drops():
    routed = [fn("words", "words"), fn("pick", "upper", "words", route=f"{G}:by_length"),
              fn("short", "short", "pick"), fn("long", "long", "pick")]
    merged = ref(*routed, fn("merge", "upper", ["short", "long"]))
    assert merged.run("ab abcd x") == ["S:AB", "L:ABCD"]   # 'X' is routed nowhere
    joined = ref(*routed, agg("join", ["short", "long"], key="pick"))
    # A fork item routed away from a branch is a DROP there; the group of the fork item
    # completes all the same, with nothing from that branch (and 'X' with nothing at all).
    assert joined.run("ab abcd x") == [{"short": ["s:AB"], "long": []}, {"short": [], "long": ["l:ABCD"]},
                                       {"short": [], "long": []}]


def test_the_aggregate_operators_over_a_request():
    base = [fn("words", "words"), fn("length", "length", "words")]
    cases = [("collect", None, [1, 2, 3]), ("count", None, 3), ("sum", None, 6), ("all", None, True),
             ("any", None, True), ("top_k", {"k": 2}, [3, 2]), ("barrier", None, [1, 2, 3]),
             (f"{G}:g_summary", None, [3, 1 * 1 + 2 * 2 + 3 * 3, 1])]
    for op, options, want in cases:
        more = {"options": options} if options else {}
        assert ref(*base, agg("a", "length", op=op, **more)).run("a bb ccc") == want, op
    assert ref(*base, agg("a", "length", op="count")).run("") == 0
    assert ref(*base, agg("a", "length", op="top_k", options={"k": 5})).run("bb a cc") == [2, 2, 1]  # ties: path order
    kept = ref(*base, agg("f", "length", key=None, op="filter", options={"where": f"{G}:g_keep"}))
    assert kept.run("a bb ccc dddd") == [1, 2, 4]  # 3 % 3 == 0 is dropped
    by_word = ref(fn("words", "words"), fn("letters", "letters", "words", module=H),
                  agg("n", "letters", key="words", op="count"))
    assert by_word.run("ab c") == [2, 1]


def test_a_loop_goes_round_until_its_route_sends_the_item_out_and_max_turns_ends_it():
    def agent(**turns) -> Reference:
        return ref(fn("start", "start"), fn("think", "think", ["start", "tool"], route=f"{G}:decide",
                                           **turns.get("think", {})),
                   fn("tool", "tool", "think", **turns.get("tool", {})), fn("answer", "answer", "think"))

    assert agent(think={"max_turns": 3}).run("q") == "q: step0 step1 step2"
    assert agent(tool={"max_turns": 3}).run("q") == "q: step0 step1 step2"
    # Three rounds: think sees the item with 0, 1, 2, 3 turns, the tool with 1, 2, 3.
    for where in ("think", "tool"):
        with pytest.raises(GraphRunError) as err:
            agent(**{where: {"max_turns": 2}}).run("q", rid=9)
        assert err.value.stage == where and err.value.message == \
            "item [9] went round the loop more than max_turns 2 times"


def test_a_loop_that_fans_out_keeps_the_children_going_round_and_the_exits_get_each_once():
    # loop_l1_1 sends a digest that is not a multiple of 3 round to l1_body (+1 each side).
    r = ref(fn("s0", "g_fan_pair"), fn("l1", "g_inc", ["s0", "l1_body"], route=f"{G}:loop_l1_1", max_turns=3),
            fn("l1_body", "g_fan_pair", "l1"), fn("l1_x0", "g_inc", "l1"))
    # 1 -> s0 fans [2, 3] (1 + 1 % 2 = 2 children of 1 * 2 + i); l1: 2 -> 3 (out: 4),
    # 3 -> 4 (round: body fans 4 into [8], l1: 8 -> 9 (out: 10)).
    assert r.run(1) == [4, 10]


def test_errors_name_the_stage_and_every_error_of_the_request_is_listed():
    with pytest.raises(GraphRunError) as err:
        run_reference(parse({"stage": [fn("s0", "g_boom")]}), 5)
    assert err.value.stage == "s0" and err.value.message == "handler raised ValueError: boom on 5"
    many = ref(fn("words", "words"), fn("b", "g_boom", "words"))
    with pytest.raises(GraphRunError) as err:
        many.run("AAF x AAF")  # digest("AAF") = 65 + 65 + 70 = 200, 5 mod 13: boom
    assert [e.stage for e in err.value.errors] == ["b", "b"]
    assert err.value.errors[0].matches("b", "handler raised ValueError: boom on 200")
    assert not err.value.errors[0].matches("words", "handler raised ValueError: boom on 200")
    bad = ref(fn("words", "words", route=f"{G}:bad_route"), fn("upper", "upper", "words"))
    with pytest.raises(GraphRunError) as err:
        bad.run("a b")
    assert err.value.stage == "words" and "'nowhere'" in err.value.message
    assert bad.run("") == []  # no item: nothing to route


def test_the_reference_refuses_kinds_it_cannot_run():
    topo = parse({"stage": [fn("r", "upper")]})
    lm = dataclasses.replace(topo, stages=(dataclasses.replace(topo.stages[0], kind="lm"),))
    with pytest.raises(ValueError, match="stage 'r': the reference interpreter runs function and aggregate"):
        Reference(lm)
