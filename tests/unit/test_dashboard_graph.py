"""The dashboard's graph layout: every stage drawn once, every edge pointing right, any shape."""

from __future__ import annotations

import pytest

from alto_bus.service.dashboard_graph import CLIENTS, RESULTS, inputs_of, layout


def cols(g: dict) -> dict[str, int]:
    return {n["name"]: n["col"] for n in g["nodes"]}


def test_a_chain_is_one_row_from_the_clients_to_the_results():
    g = layout({"split": {"input": None}, "upper": {"input": "split"}, "tag": {"input": "upper"}})
    assert cols(g) == {CLIENTS: 0, "split": 1, "upper": 2, "tag": 3, RESULTS: 4}
    assert g["edges"] == [[CLIENTS, "split"], ["split", "upper"], ["upper", "tag"], ["tag", RESULTS]]
    assert g["cols"] == 5 and g["rows"] == 1


def test_a_diamond_puts_the_join_right_of_both_branches():
    # a -> b -> c -> join, a -> join: the join goes right of its furthest input.
    g = layout({"a": {"input": None}, "b": {"input": "a"}, "c": {"input": ["b"]}, "join": {"input": ["a", "c"]}})
    c = cols(g)
    assert c["join"] == 4 and c["c"] == 3
    assert sorted(map(tuple, g["edges"])) == sorted([(CLIENTS, "a"), ("a", "b"), ("b", "c"), ("a", "join"),
                                                     ("c", "join"), ("join", RESULTS)])
    assert all(c[a] < c[b] for a, b in g["edges"])


def test_fan_out_to_two_sinks_stacks_them_in_one_column():
    g = layout({"a": {"input": None}, "left": {"input": "a"}, "right": {"input": "a"}})
    rows = {n["name"]: (n["col"], n["row"]) for n in g["nodes"]}
    assert rows["left"] == (2, 0) and rows["right"] == (2, 1)
    assert [e for e in g["edges"] if e[1] == RESULTS] == [["left", RESULTS], ["right", RESULTS]]
    assert g["rows"] == 2


def test_a_cycle_or_an_unknown_input_does_not_hang_or_lose_a_stage():
    g = layout({"a": {"input": "b"}, "b": {"input": "a"}, "c": {"input": "nowhere"}})
    assert {n["name"] for n in g["nodes"]} == {CLIENTS, "a", "b", "c", RESULTS}
    assert [CLIENTS, "c"] in g["edges"]


@pytest.mark.parametrize("raw, expected", [(None, []), ("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, "a"], ["a"])])
def test_inputs_read_every_spelling(raw, expected):
    assert inputs_of({"input": raw}) == expected
