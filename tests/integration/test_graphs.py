"""Graphs as real processes: forks joined, routes merged, a loop (DESIGN.md, "Graphs")."""

from __future__ import annotations

import pytest

from alto_bus import Client, RequestError
from tests.support import running

G = "tests.integration.graph_handlers"


def fn(name: str, handler: str, input=None, **more) -> dict:
    stage = {"name": name, "kind": "function", "handler": f"{G}:{handler}", **more}
    if input is not None:
        stage["input"] = input
    return stage


def diamond() -> dict:
    # words fans out; each word goes to both branches; the join collects per request.
    return {"stage": [
        fn("words", "words"),
        fn("upper", "upper", "words", replicas=2),
        fn("length", "length", "words", replicas=2),
        {"name": "join", "kind": "aggregate", "input": ["upper", "length"], "key": "request",
         "op": "collect", "replicas": 2},
    ]}


def test_a_join_collects_every_branch_of_every_request_by_input():
    texts = [" ".join(f"w{j}" * (1 + j % 3) for j in range(i % 7)) + f" r{i}" for i in range(300)]
    with running(diamond()) as sup, Client(sup.addresses["gateway"]) as client:
        results = [f.result(timeout=60) for f in [client.submit(t) for t in texts]]
    for text, result in zip(texts, results):
        words = text.split()
        assert result == {"upper": [w.upper() for w in words], "length": [len(w) for w in words]}


def routed() -> dict:
    return {"stage": [
        fn("words", "words"),
        fn("pick", "upper", "words", route=f"{G}:by_length"),
        fn("short", "short", "pick", replicas=2),
        fn("long", "long", "pick"),
        fn("merge", "upper", ["short", "long"]),
    ]}


def test_a_route_sends_each_item_one_way_and_the_merge_keeps_counts_exact():
    topo = routed()
    texts = ["ab abcd x", "", "x x", "abcdef a", "one three five"]
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        results = [client.submit(t).result(timeout=30) for t in texts]
    for text, result in zip(texts, results):
        # Each word is one fork item with two children (short, long): the one it was routed
        # to, and a DROP; "X" was routed nowhere. The result lists the leaves in path order.
        expected = [("S:" if len(w) <= 3 else "L:") + w.upper() for w in text.split() if w != "x"]
        assert result == expected


def agent(max_turns: int = 5) -> dict:
    return {"stage": [
        fn("start", "start"),
        fn("think", "think", ["start", "tool"], route=f"{G}:decide", max_turns=max_turns),
        fn("tool", "tool", "think", replicas=2),
        fn("answer", "answer", "think"),
    ]}


def test_a_loop_goes_round_until_its_route_sends_the_item_out():
    with running(agent()) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit(f"q{i}") for i in range(50)]
        assert [f.result(timeout=30) for f in futures] == [f"q{i}: step0 step1 step2" for i in range(50)]
        with pytest.raises(RequestError) as err:
            client.submit("forever").result(timeout=30)
    assert err.value.stage == "think" and "max_turns 5" in str(err.value)


def test_a_route_that_names_a_stage_it_does_not_feed_fails_the_request_naming_both():
    topo = {"stage": [fn("words", "words", route=f"{G}:bad_route"), fn("upper", "upper", "words")]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        with pytest.raises(RequestError) as err:
            client.submit("a b").result(timeout=30)
        assert client.submit("").result(timeout=30) == []  # no item: nothing to route
    assert err.value.stage == "words" and "'nowhere'" in str(err.value) and "upper" in str(err.value)
