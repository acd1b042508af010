"""The runtime's own pure pieces (stage logic, merges, forks, routes, turns, the gateway's
request book) on random graphs, with messages in random interleavings over several
replicas, give exactly what the reference interpreter gives (tests/graph_sim.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_bus.deploy.topology import parse
from alto_bus.graph.reference import Reference
from tests.graph_sim import Simulation, mismatch, outcome
from tests.graph_strategies import function_stage, graphs, payloads


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(max_stages=14), requests=st.lists(payloads, min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_random_graphs_in_random_orders_give_what_the_reference_gives(graph, requests, seed):
    topo = parse(graph)
    sim = Simulation(topo, seed)
    rids = sim.submit(requests)
    answers = sim.run()
    ref = Reference(topo)
    wrong = [m for cid, (rid, p) in enumerate(zip(rids, requests, strict=True))
             if (m := mismatch(ref, p, rid, outcome(answers.get(cid)))) is not None]
    assert not wrong, "\n".join(wrong)


G = "tests.integration.graph_handlers"
fn = function_stage


def same_as_reference(topo, requests: list, seeds=range(5)) -> None:
    ref = Reference(topo)
    for seed in seeds:
        sim = Simulation(topo, seed)
        rids = sim.submit(requests)
        answers = sim.run()
        wrong = [m for cid, (rid, p) in enumerate(zip(rids, requests, strict=True))
                 if (m := mismatch(ref, p, rid, outcome(answers.get(cid)))) is not None]
        assert not wrong, "\n".join(wrong)


def test_regression_a_loop_entered_at_its_body_knows_the_path_length_of_its_route_stage():
    # Found by the property test: the route stage, with no input from outside the loop,
    # was given paths of length 1 (not the fan-out's 2), so a key at s0 after the loop was
    # refused and a merge of the loop's exits re-rooted at the wrong depth.
    stages = [fn("s0", "g_fan_pair"),
              fn("l1", "g_triple", ["l1_body"], route=f"{G}:loop_l1_2", max_turns=3),
              fn("l1_body", "g_inc", ["s0", "l1"]),
              fn("l1_x0", "g_inc", "l1"), fn("l1_x1", "g_triple", "l1"),
              fn("m", "g_inc", ["l1_x0", "l1_x1"])]
    topo = parse({"stage": stages})
    assert {s.name: s.out_depth for s in topo.stages}["l1"] == 2
    assert {s.name: s.merge_depth for s in topo.stages}["m"] == 2
    same_as_reference(topo, list(range(12)))
    joined = parse({"stage": [*stages[:5], {"name": "j", "kind": "aggregate", "input": ["l1_x0", "l1_x1"],
                                            "key": "s0", "op": "collect"}]})
    same_as_reference(joined, list(range(12)))


def test_regression_an_item_leaving_one_loop_straight_into_another_starts_its_turns_again():
    # Found by the reference: the first loop's turns came with the item into the second,
    # whose max_turns then failed items that had not gone round it yet.
    topo = parse({"stage": [
        fn("s0", "g_inc"),
        fn("l1", "g_inc", ["s0", "l1_body"], route=f"{G}:loop_l1_1", max_turns=3),
        fn("l1_body", "g_inc", "l1"),
        fn("l1_x0", "g_inc", ["l1", "l2_body"], route=f"{G}:loop_l2_1", max_turns=1),  # loop 2's route
        fn("l2_body", "g_inc", "l1_x0"),
        fn("l2_x0", "g_inc", "l1_x0"),
    ]})
    # 0 -> s0: 1 -> l1: 2, round (body 3, l1 4), round (5, l1 6): out after 2 turns;
    # l1_x0: 7, round (l2_body 8, l1_x0 9): out after 1 turn (max_turns 1) -> l2_x0: 10.
    assert Reference(topo).run(0) == 10
    same_as_reference(topo, [-1, 0, 1, 2])
