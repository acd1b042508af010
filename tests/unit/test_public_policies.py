"""The policies modelled on public routers: SGLang's cache-aware, Preble's E2. No sockets."""

from __future__ import annotations

import pytest

from alto_bus.scheduling import (
    Placement,
    Preble,
    PromptFigures,
    RoundInput,
    SGLangCacheAware,
    available_policies,
    make_policy,
)
from alto_bus.scheduling.radix import RadixTree

POOL = ["i0", "i1", "i2", "i3"]
LONG = {"a": 2048, "b": 2048, "c": 3072, "d": 1024}
IDLE = dict.fromkeys(POOL, 0.0)


def everywhere_placement(policy, prefixes=LONG) -> Placement:
    return policy.place(RoundInput(instances=POOL, prefix_tokens=prefixes,
                                   prompts=sorted(prefixes)))


# -- the approximate radix tree ----------------------------------------------------------------


def test_tree_matches_the_longest_stored_prefix_and_counts_shared_runs_once():
    t = RadixTree()
    t.insert((1, 2, 3, 4))
    t.insert((1, 2, 7))
    assert t.match((1, 2, 3, 4, 5)) == 4
    assert t.match((1, 2, 9)) == 2
    assert t.match((1, 2, 3, 9)) == 3       # stops inside an edge
    assert t.match((5,)) == 0
    assert t.size == 5                       # 1 2 shared, then 3 4 and 7


def test_tree_eviction_keeps_the_bound_and_drops_least_recently_used_leaves_first():
    t = RadixTree()
    t.insert(("p", 1, "x"))
    t.insert(("p", 1, "y"))
    t.insert(("p", 1, "z"))
    t.insert(("p", 1, "x"))                  # x used again: y is now the oldest leaf
    assert t.evict_to(t.size - 1) == 1
    assert t.match(("p", 1, "y")) == 2 and t.match(("p", 1, "x")) == 3
    for k in range(200):
        t.insert(("q", k, k, k))
    t.evict_to(50)
    assert t.size <= 50
    assert t.match(("q", 199, 199, 199)) == 4   # the newest survives


def test_tree_is_deterministic():
    def build():
        t = RadixTree()
        for k in range(300):
            t.insert((k % 7, k % 3, k))
        t.evict_to(120)
        keys = [(a, b, c) for a in range(7) for b in range(3) for c in range(0, 300, 17)]
        return [t.match(k) for k in keys], t.size

    assert build() == build()


# -- SGLang-style cache-aware ------------------------------------------------------------------


def test_both_are_registered_and_survive_the_placement_round_trip():
    assert {"sglang-cache-aware", "preble"} <= set(available_policies())
    for name in ("sglang-cache-aware", "preble"):
        policy = make_policy(name)
        pl = everywhere_placement(policy)
        back = Placement.from_dict(pl.to_dict())
        assert back.policy == name and back.params["prefix_tokens"] == LONG
        assert make_policy(back.policy, **back.params).params() == policy.params()


def test_sglang_routes_by_prefix_match_and_new_prefixes_to_the_smallest_tree():
    router = SGLangCacheAware()
    pl = everywhere_placement(router)
    first_a = router.choose("a", pl, IDLE)
    assert all(router.choose("a", pl, IDLE) == first_a for _ in range(5))
    first_b = router.choose("b", pl, IDLE)
    assert first_b != first_a                # an empty tree is smaller than a's
    assert router.choose("b", pl, IDLE) == first_b
    assert router.routed["smallest_tree"] == 2 and router.routed["matched"] == 6


def test_sglang_falls_back_to_the_shortest_queue_only_when_both_thresholds_are_passed():
    router = SGLangCacheAware()
    pl = everywhere_placement(router)
    home = router.choose("a", pl, IDLE)
    others = [i for i in POOL if i != home]
    # 60 apart: under the absolute threshold (64), stay with the cached prefix.
    assert router.choose("a", pl, {**IDLE, home: 60.0}) == home
    # 250 vs 200: 50 apart and 1.25x, neither threshold: stay.
    assert router.choose("a", pl, {home: 250.0, **dict.fromkeys(others, 200.0)}) == home
    # 100 vs 10: 90 apart and 10x: the shortest queue.
    loads = {home: 100.0, others[0]: 30.0, others[1]: 10.0, others[2]: 40.0}
    assert router.choose("a", pl, loads) == others[1]
    assert router.routed["imbalanced"] == 1


def test_sglang_below_the_cache_threshold_goes_to_the_smallest_tree():
    router = SGLangCacheAware(cache_threshold=0.5)
    pl = everywhere_placement(router, {"short": 64, "a": 2048})
    home = router.choose("a", pl, IDLE)
    # "short" shares 4 of its 20 units with nothing anyway; after one call its own
    # prefix matches 4/20 = 0.2 < 0.5, so it keeps going to the smallest tree.
    picks = {router.choose("short", pl, IDLE) for _ in range(3)}
    assert home not in picks


def test_sglang_trees_stay_under_their_size_bound():
    router = SGLangCacheAware(max_tree_tokens=16 * 300, tail_tokens=16 * 20)
    pl = everywhere_placement(router)
    for k in range(400):
        router.choose("abcd"[k % 4], pl, IDLE)
        assert all(t.size <= 300 for t in router.trees.values())


def test_sglang_is_deterministic_and_its_tie_order_differs_between_prompts():
    def run() -> list[str]:
        router = SGLangCacheAware()
        pl = everywhere_placement(router)
        loads = dict(IDLE)
        out = []
        for k in range(200):
            inst = router.choose("abcd"[k % 4], pl, loads)
            loads[inst] += 1.0
            out.append(inst)
        return out

    assert run() == run()
    # every member holds every prefix (equal match): "first" follows a per-prompt order
    router = SGLangCacheAware()
    pl = everywhere_placement(router)
    for p in LONG:
        for i in POOL:
            router.trees.setdefault(i, RadixTree()).insert(router.request_key(p, pl)[:-16])
    homes = {p: router.choose(p, pl, IDLE) for p in LONG}
    assert len(set(homes.values())) > 1, homes


def test_sglang_rejects_bad_parameters():
    with pytest.raises(ValueError):
        make_policy("sglang-cache-aware", cache_threshold=1.5)
    with pytest.raises(ValueError):
        make_policy("sglang-cache-aware", match_tie="random")


# -- Preble-style --------------------------------------------------------------------------------


def figs(per_instance: dict[str, dict[str, tuple[float, int]]]) -> dict:
    """{instance: {prompt: (token-work/s, queued)}} as workers report it (all computed)."""
    return {i: {p: PromptFigures(prefill_tps=w, decode_tps=0.0, queued=q, hit_rate=0.0)
                for p, (w, q) in per.items()} for i, per in per_instance.items()}


def test_preble_explores_new_prompts_onto_separate_members_and_exploits_them():
    policy = Preble()
    pl = everywhere_placement(policy)
    homes = [pl.prompts[p] for p in sorted(LONG)]
    assert all(len(h) == 1 for h in homes) and len({h[0] for h in homes}) == 4
    sender = Preble()
    home = pl.prompts["c"][0]
    assert all(sender.choose("c", pl, IDLE) == home for _ in range(5))
    assert sender.drain_spills() == {}


def test_preble_redirects_from_an_overloaded_member_and_reports_it():
    policy = Preble()
    pl = everywhere_placement(policy)
    home = pl.prompts["c"][0]
    light = [i for i in POOL if i != home]
    assert policy.choose("c", pl, {**IDLE, home: 16.0}) == home      # 16 <= 2 x 0 + 16
    loads = {home: 60.0, light[0]: 20.0, light[1]: 5.0, light[2]: 30.0}
    assert policy.choose("c", pl, loads) == light[1]                   # 60 > 2 x 5 + 16
    assert policy.drain_spills() == {"c": {light[1]: 1}}


def test_preble_explores_by_load_when_the_cached_part_is_shorter_than_the_rest():
    policy = Preble(tail_tokens=256)
    pl = everywhere_placement(policy, {"tiny": 128, "a": 2048})
    loads = {"i0": 9.0, "i1": 3.0, "i2": 0.0, "i3": 5.0}
    assert policy.choose("tiny", pl, loads) == "i2"


def test_preble_moves_the_cheapest_prompts_off_the_heaviest_member():
    policy = Preble()
    prev = Placement(prompts={"a": ("i0",), "b": ("i0",), "c": ("i0",), "d": ("i1",)})
    pl = policy.place(RoundInput(instances=["i0", "i1"], previous=prev, prefix_tokens=LONG,
                                 figures=figs({"i0": {"a": (6000, 0), "b": (1000, 0),
                                                      "c": (1000, 0)},
                                               "i1": {"d": (500, 0)}})))
    assert pl.prompts["a"] == ("i0",)            # the expensive one stays
    assert pl.prompts["b"] == ("i1",) and pl.prompts["c"] == ("i1",)
    assert any("rebalance" in d.reason for d in pl.decisions)


def test_preble_replicates_a_hot_prompt_whose_queue_doubled():
    policy = Preble(window=8)
    pl = Placement(prompts={"a": ("i0",), "b": ("i1",), "c": ("i2",), "d": ("i3",)})
    grew = None
    for rnd, q in enumerate([1, 1, 1, 1, 4, 6, 8, 10]):
        pl = policy.place(RoundInput(instances=POOL, previous=pl, prefix_tokens=LONG,
                                     figures=figs({"i0": {"a": (8000, q)},
                                                   "i1": {"b": (2000, 0)},
                                                   "i2": {"c": (2000, 0)},
                                                   "i3": {"d": (2000, 0)}})))
        if len(pl.prompts["a"]) > 1 and grew is None:
            grew = rnd
            assert any("autoscale" in d.reason or "overloaded" in d.reason for d in pl.decisions)
    assert grew is not None and grew >= 4
    assert len(pl.prompts["a"]) >= 2


def test_preble_adds_members_senders_redirected_to():
    policy = Preble(min_spills=10)
    pl = Placement(prompts={"a": ("i0",), "b": ("i1",), "c": ("i2",), "d": ("i3",)})
    pl = policy.place(RoundInput(instances=POOL, previous=pl, prefix_tokens=LONG,
                                 spills={"a": {"i3": 12, "i2": 3}}))
    assert pl.prompts["a"] == ("i0", "i3")


def test_preble_is_deterministic():
    def run() -> list[dict]:
        policy = Preble(window=6)
        pl = None
        out = []
        for rnd in range(12):
            q = rnd
            pl = policy.place(RoundInput(instances=POOL, previous=pl, prefix_tokens=LONG,
                                         figures=figs({"i0": {"a": (5000 + 100 * rnd, q)},
                                                       "i1": {"b": (900, 0)}})))
            out.append(pl.to_dict())
        return out

    assert run() == run()


# -- through the broker's pool scheduler and a sender's route, as the system runs them --------


@pytest.mark.parametrize("name", ["sglang-cache-aware", "preble"])
def test_pool_scheduler_and_pool_route_run_the_policy(name):
    import msgpack

    from alto_bus.routing.pool_route import PoolRoute
    from alto_bus.scheduling.pool_scheduler import PoolScheduler

    members = ["m0", "m1", "m2"]
    sched = PoolScheduler("llm", name, {}, ("a", "b"), {"a": 2048, "b": 1500})
    placement = sched.round(members)
    wire = msgpack.unpackb(msgpack.packb(placement.to_dict()))   # as published
    route = PoolRoute("a", make_policy(name))
    route.members({k: m for k, m in enumerate(members)}, [0, 1, 2])
    route.update(wire, dict.fromkeys(members, 0))
    picks = [route.pick() for _ in range(6)]
    assert all(p in (0, 1, 2) for p in picks)
    assert len(set(picks)) == 1      # idle pool, long prefix: every request to one member
    assert route.placement.params["prefix_tokens"] == {"a": 2048, "b": 1500}
