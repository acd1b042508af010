"""The Python API's pure parts: declaring a Graph, its TOML both ways, and its errors
(which must be the topology file's own). No sockets, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from alto_bus import Graph
from alto_bus.deploy.topology import TopologyError, load, parse
from alto_bus.graph.toml_text import dumps
from tests.integration import graph_handlers as gh

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("topology/*.toml"), *ROOT.glob("topology/examples/*.toml")])
G = "tests.integration.graph_handlers"


def test_there_are_shipped_topology_files_to_round_trip():
    assert {"join.toml", "agent.toml", "factool.toml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_topology_file_round_trips_through_a_graph_to_an_equal_topology(path: Path):
    from_file = load(path)
    g = Graph.from_toml(path)
    text = g.to_toml()
    assert tomllib.loads(text) == tomllib.loads(path.read_text())
    again = parse(tomllib.loads(text), source=str(path), base_dir=str(path.parent))
    assert again == from_file
    assert Graph.from_toml(text).to_toml() == text  # from text as well, and stable


def test_toml_text_keeps_strings_numbers_and_nested_tables_exactly():
    raw = {"broker": {"request_timeout": 1.5, "max_inflight": 10},
           "stage": [{"name": "a", "kind": "lm", "prompt": 'say "hi" \\ then\nnewline\ttab é \x7f \x01',
                      "options": {"k": 3, "tiny": -1e-09, "big": 1e300, "on": False, "odd key": [1, "x", [2.0]],
                                  "nested": {"deep": {"x": "y"}}}, "stop": []},
                     {"name": "b", "kind": "function"}],
           "http": {"listen": "127.0.0.1:0"}}
    assert tomllib.loads(dumps(raw)) == raw


def diamond(g: Graph) -> None:
    w = g.function("words", gh.words)
    u = g.function("upper", gh.upper, input=w, replicas=2)
    n = g.function("length", gh.length, input=w)
    g.aggregate("both", input=[u, n], key="request", op="collect")


def test_importable_functions_become_module_and_name_and_stage_handles_become_names():
    g = Graph()
    diamond(g)
    raw = g.to_dict()
    assert raw == {"stage": [
        {"name": "words", "kind": "function", "handler": f"{G}:words"},
        {"name": "upper", "kind": "function", "handler": f"{G}:upper", "input": "words", "replicas": 2},
        {"name": "length", "kind": "function", "handler": f"{G}:length", "input": "words"},
        {"name": "both", "kind": "aggregate", "input": ["upper", "length"], "op": "collect", "key": "request"},
    ]}
    topo = g.check()
    assert topo.stage("words").fans_out and topo.stage("both").merge_depth == 2
    assert parse(tomllib.loads(g.to_toml()), source="graph") == topo  # the same as its file


def test_a_loop_with_a_callable_route_checks_like_the_file():
    g = Graph()
    g.function("start", gh.start)
    g.function("think", gh.think, input=["start", "tool"], route=gh.decide, max_turns=5)
    g.function("tool", gh.tool, input="think")
    g.function("answer", gh.answer, input="think")
    assert g.to_dict()["stage"][1]["route"] == f"{G}:decide"
    think = g.check().stage("think")
    assert think.loop_consumer == "tool" and think.max_turns == 5 and think.in_loop


def test_lambdas_and_closures_check_in_this_process_and_fan_out_when_they_are_generators():
    g = Graph()
    w = g.function("words", lambda text: (yield from text.split()))
    g.function("upper", lambda word: word.upper(), input=w)
    topo = g.check()
    assert topo.stage("words").fans_out and not topo.stage("upper").fans_out


def test_a_lambda_cannot_go_to_toml_and_the_error_names_the_stage_and_the_field():
    g = Graph()
    w = g.function("words", gh.words)
    g.function("upper", lambda word: word.upper(), input=w)
    with pytest.raises(TopologyError, match=r"^graph: stage 'upper': field 'handler': .*it is a lambda"):
        g.to_toml()


def test_a_closure_route_and_a_main_function_are_refused_for_processes_naming_them():
    def make_route(limit):
        def route(word):
            return "short" if len(word) <= limit else "long"
        return route

    g = Graph("mine")
    w = g.function("words", gh.words, route=make_route(3))
    g.function("short", gh.short, input=w)
    g.function("long", gh.long, input=w)
    g.function("both", gh.upper, input=["short", "long"])
    with pytest.raises(TopologyError, match=r"^mine: stage 'words': field 'route': .*closure"):
        g.to_dict()

    def main_fn(x):
        return x
    main_fn.__module__, main_fn.__qualname__ = "__main__", "main_fn"
    g2 = Graph()
    g2.function("only", main_fn)
    with pytest.raises(TopologyError, match=r"stage 'only': field 'handler': .*__main__"):
        g2.to_toml()


def test_a_callable_inside_options_is_named_with_its_table_field():
    g = Graph()
    w = g.function("words", gh.words)
    g.aggregate("long", input=w, op="filter", options={"where": lambda word: len(word) > 2})
    assert g.check().stage("long").fields["op"] == "filter"
    with pytest.raises(TopologyError, match=r"stage 'long': field 'options.where': .*lambda"):
        g.to_dict()


@pytest.mark.parametrize("declare, as_dict", [
    # the README's own example of a refused file
    (lambda g: (g.function("split", gh.words), g.function("upper", gh.upper, input="spilt")),
     [{"name": "split", "kind": "function", "handler": f"{G}:words"},
      {"name": "upper", "kind": "function", "handler": f"{G}:upper", "input": "spilt"}]),
    # two sinks
    (lambda g: (g.function("a", gh.words), g.function("b", gh.upper, input="a"),
                g.function("c", gh.upper, input="a")),
     [{"name": "a", "kind": "function", "handler": f"{G}:words"},
      {"name": "b", "kind": "function", "handler": f"{G}:upper", "input": "a"},
      {"name": "c", "kind": "function", "handler": f"{G}:upper", "input": "a"}]),
    # a loop without route or max_turns
    (lambda g: (g.function("a", gh.start), g.function("b", gh.think, input=["a", "c"]),
                g.function("c", gh.tool, input="b"), g.function("d", gh.answer, input="b")),
     [{"name": "a", "kind": "function", "handler": f"{G}:start"},
      {"name": "b", "kind": "function", "handler": f"{G}:think", "input": ["a", "c"]},
      {"name": "c", "kind": "function", "handler": f"{G}:tool", "input": "b"},
      {"name": "d", "kind": "function", "handler": f"{G}:answer", "input": "b"}]),
    # an unknown field, a bad kind, a bad type
    (lambda g: g.function("a", gh.words, replica=2),
     [{"name": "a", "kind": "function", "handler": f"{G}:words", "replica": 2}]),
    (lambda g: g.stage("a", "functon", gh.words),
     [{"name": "a", "kind": "functon", "handler": f"{G}:words"}]),
    (lambda g: g.function("a", gh.words, replicas="2"),
     [{"name": "a", "kind": "function", "handler": f"{G}:words", "replicas": "2"}]),
    (lambda g: g.aggregate("a", input=None, op="collect"),
     [{"name": "a", "kind": "aggregate", "op": "collect"}]),
])
def test_a_bad_declaration_is_refused_with_the_same_message_as_the_same_file(declare, as_dict):
    g = Graph("g.toml")
    declare(g)
    with pytest.raises(TopologyError) as from_file:
        parse({"stage": as_dict}, source="g.toml")
    for check in (g.check, g.to_dict, g.to_toml):
        with pytest.raises(TopologyError) as from_graph:
            check()
        assert str(from_graph.value) == str(from_file.value)


def test_an_input_must_be_a_stage_of_the_same_graph():
    other = Graph("other")
    elsewhere = other.function("words", gh.words)
    g = Graph()
    with pytest.raises(TopologyError, match=r"stage 'upper': field 'input': 'words' is a stage of another Graph"):
        g.function("upper", gh.upper, input=elsewhere)
    with pytest.raises(TopologyError, match=r"stage 'upper': field 'input': must be a stage name"):
        g.function("upper", gh.upper, input=3)


def test_broker_fields_and_pools_go_to_their_tables():
    g = Graph().broker(request_timeout=5.0, heartbeat_interval=0.2)
    g.pool("p", engine="sim", replicas=2)
    g.lm("a", pool="p", prompt="{text}")
    raw = g.to_dict()
    assert raw["broker"] == {"request_timeout": 5.0, "heartbeat_interval": 0.2}
    assert raw["pool"] == [{"name": "p", "engine": "sim", "replicas": 2}]
    topo = g.check()
    assert topo.broker.request_timeout == 5.0 and topo.pool("p").stages == ("a",)


def test_from_toml_says_what_is_wrong_with_the_text_or_the_path(tmp_path):
    with pytest.raises(TopologyError, match="no such topology file"):
        Graph.from_toml(tmp_path / "missing.toml")
    with pytest.raises(TopologyError, match="graph: not valid TOML"):
        Graph.from_toml("[[stage]\nname = 1\n")
