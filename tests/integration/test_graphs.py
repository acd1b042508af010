"""Graphs as real processes: forks joined, routes merged, a loop (DESIGN.md, "Graphs")."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from alto_bus import Client, RequestError, Worker
from tests.support import running, status, wait_for

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


EXAMPLES = Path(__file__).resolve().parents[2] / "topology" / "examples"


def test_the_readme_graph_examples_give_what_the_readme_says():
    with running(EXAMPLES / "join.toml") as sup, Client(sup.addresses["gateway"]) as client:
        assert client.submit("to be or").result(timeout=30) == {"upper": ["TO", "BE", "OR"], "length": [2, 2, 2]}
    with running(EXAMPLES / "agent.toml") as sup, Client(sup.addresses["gateway"]) as client:
        assert client.submit("weather").result(timeout=30) == "weather: 3 steps"
        assert client.submit("weather?").result(timeout=30) == "weather?: 0 steps"


def slow_diamond() -> dict:
    return {"broker": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3}, "stage": [
        fn("fan", "fan"),
        {"name": "slow", "kind": "function", "handler": "tests.integration.handlers:slow_echo",
         "input": "fan", "replicas": 2},
        fn("index", "index", "fan"),
        {"name": "join", "kind": "aggregate", "input": ["slow", "index"], "key": "request", "op": "collect"},
    ]}


def test_a_dead_branch_instance_fails_the_requests_it_held_naming_it_and_the_rest_stay_exact():
    with running(slow_diamond()) as sup, Client(sup.addresses["gateway"]) as client:
        # Mostly one item per request, so that about half the requests never meet the victim.
        futures = [client.submit({"sleep": 2.0, "n": 1 + (i % 5 == 0)}) for i in range(30)]

        def both_busy():
            insts = status(sup)["stages"]["slow"]["instances"]
            return insts if all(i["depth"] > 0 for i in insts) else None

        victim = wait_for(both_busy, 10, "both slow instances to hold work")[0]
        os.kill(victim["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        ok, failed = [], []
        for i, f in enumerate(futures):
            try:
                ok.append((i, f.result(timeout=20)))
            except RequestError as exc:
                failed.append(exc)
        assert ok and failed, (len(ok), [str(e) for e in failed][:3])
        assert time.monotonic() - t0 < 10  # within a few heartbeats, not at the deadline
        for exc in failed:
            assert exc.stage == "slow" and f"pid {victim['pid']}" in exc.message
        for i, result in ok:
            n = 1 + (i % 5 == 0)
            assert result == {"slow": [{"sleep": 2.0, "i": j} for j in range(n)], "index": list(range(n))}
        after = client.submit({"sleep": 0.0, "n": 2}).result(timeout=10)
        assert after == {"slow": [{"sleep": 0.0, "i": 0}, {"sleep": 0.0, "i": 1}], "index": [0, 1]}


def test_join_instances_that_join_and_drain_while_requests_flow_keep_every_result_exact():
    topo = slow_diamond()
    topo["broker"] = {"heartbeat_interval": 0.2}
    topo["stage"][3]["replicas"] = 2
    waves = [[{"sleep": 0.05 * (i % 4), "n": i % 4} for i in range(100)] for _ in range(4)]
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        control = sup.addresses["control"]
        futures = [client.submit(p, timeout=30) for p in waves[0]]
        joined = Worker(stage="join", broker=control).start()  # built from the topology: a join
        try:
            futures += [client.submit(p, timeout=30) for p in waves[1]]
            leaving = Worker(stage="join", broker=control).start()
            try:
                futures += [client.submit(p, timeout=30) for p in waves[2]]
                wait_for(lambda: leaving.logic.depth() > 0, 10, "the new join instance to hold open groups")
                leaving.request_stop()  # drain: finish the groups of the epochs it owned keys in
                futures += [client.submit(p, timeout=30) for p in waves[3]]
                results = [f.result(timeout=40) for f in futures]
            finally:
                leaving.stop()
        finally:
            joined.stop()
    for p, result in zip([p for w in waves for p in w], results):
        n = p["n"]
        assert result == {"slow": [{"sleep": p["sleep"], "i": j} for j in range(n)], "index": list(range(n))}
    assert joined.stats["messages_in"] > 0 and leaving.stats["messages_in"] > 0
