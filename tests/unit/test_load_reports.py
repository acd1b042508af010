"""The per-tick loads report: each stage gets the loads of the stages it feeds, nothing more."""

from __future__ import annotations

from alto_bus.control.load_reports import reports_by_stage


def test_each_stage_gets_only_its_consumers_loads_and_pools():
    loads = {1: 5, 2: 0, 3: 7, 4: 1, 5: 2}
    stage_of = {1: "a", 2: "b", 3: "b", 4: "c", 5: "lm"}
    consumers = {"a": ("b", "c"), "b": ("lm",), "c": ("lm",), "lm": ()}
    placements = {"pool": {"prompts": {"q": ["m0"]}}, "other": {"prompts": {}}}
    member_loads = {"pool": {"m0": 3}, "other": {"m9": 1}}
    common = {"epoch": 4, "ended": [11], "oldest": 3}
    out = reports_by_stage(common, loads, stage_of, consumers, {"lm": "pool"}, placements, member_loads)
    assert out["a"]["loads"] == {2: 0, 3: 7, 4: 1} and out["a"]["placements"] == {}
    assert out["b"]["loads"] == {5: 2} and out["b"]["placements"] == {"pool": placements["pool"]}
    assert out["b"]["member_loads"] == {"pool": {"m0": 3}}
    assert out["lm"]["loads"] == {} and out["lm"]["epoch"] == 4 and out["lm"]["ended"] == [11]
    # Without pools the body has no pool fields at all.
    plain = reports_by_stage(common, loads, stage_of, consumers, {})
    assert "placements" not in plain["a"] and plain["c"]["loads"] == {5: 2}


def _decoded(frames):
    return {iid: wire_decoded(f)[1] for iid, f in frames}


def wire_decoded(frame: bytes):
    from alto_bus.protocol import wire

    return wire.decode_control(frame)


def test_reports_carry_only_changed_loads_except_to_newcomers_and_every_full_every_ticks():
    from alto_bus.control.load_reports import LoadReports

    reports = LoadReports({"a": ("b",), "b": ()}, {}, full_every=4)
    stage_of = {1: "a", 2: "b", 3: "b"}
    common = {"epoch": 1, "ended": [], "oldest": 1}
    first = _decoded(reports.frames(common, {1: 0, 2: 4, 3: 4}, stage_of))
    assert first[1]["loads"] == {2: 4, 3: 4} and first[2]["loads"] == {}
    second = _decoded(reports.frames(common, {1: 0, 2: 5, 3: 4}, stage_of))
    assert second[1]["loads"] == {2: 5}  # only what changed
    # Instance 4 joins stage a: it gets the whole picture, its peer only the change.
    third = _decoded(reports.frames(common, {1: 0, 2: 5, 3: 6, 4: 0}, {**stage_of, 4: "a"}))
    assert third[4]["loads"] == {2: 5, 3: 6} and third[1]["loads"] == {3: 6}
    # Every fourth tick is a whole one (a lost report heals).
    fourth = _decoded(reports.frames(common, {1: 0, 2: 5, 3: 6, 4: 0}, {**stage_of, 4: "a"}))
    assert fourth[1]["loads"] == {2: 5, 3: 6} == fourth[4]["loads"]
    assert reports.bytes_last_tick > 0


def test_a_sender_merges_changes_into_the_loads_it_knows():
    from alto_bus.routing.choice import LoadView

    view = LoadView()
    view.update({2: 4, 3: 4})
    view.note_sent(2)
    view.update({2: 5})
    assert (view.load(2), view.load(3)) == (5, 4)  # 3 unchanged; own sends since the report reset


# -- load subsetting ----------------------------------------------------------------------

CHAIN = {"a": ("b",), "b": ("c",), "c": ()}
COMMON = {"epoch": 1, "ended": [], "oldest": 1}


def synthetic(n: int, seed: int = 0) -> tuple[dict[int, str], dict[int, int]]:
    """The benchmark's chain a -> b -> c with 1% / half / half of ``n`` instances, ids interleaved."""
    import random

    rng = random.Random(seed)
    n_a = max(1, n // 100)
    names = ["a"] * n_a + ["b"] * ((n - n_a) // 2) + ["c"] * (n - n_a - (n - n_a) // 2)
    rng.shuffle(names)
    stage_of = {iid: s for iid, s in enumerate(names, start=1)}
    return stage_of, {iid: rng.randint(0, 50) for iid in stage_of}


def routable(stage_of: dict[int, str]) -> dict[str, list[int]]:
    return {s: sorted(i for i, st in stage_of.items() if st == s) for s in CHAIN}


def subsetted(subset: int = 32, full_every: int = 1000):
    from alto_bus.control.load_reports import LoadReports

    return LoadReports(CHAIN, {}, full_every=full_every, subset=subset, subsettable=set(CHAIN))


def test_a_subsetted_sender_gets_only_its_groups_loads_and_every_instance_is_in_some_subset():
    from alto_bus.routing.subsetting import block

    stage_of, loads = synthetic(1000)
    listed = routable(stage_of)
    frames = subsetted().frames(COMMON, loads, stage_of, routable=listed)
    bodies = _decoded(frames)
    covered = set()
    for iid, body in bodies.items():
        if stage_of[iid] == "b":
            g, n = body["groups"]["c"]
            assert set(body["loads"]) == set(block(listed["c"], g, n))
            assert len(body["loads"]) <= 32
            covered |= set(body["loads"])
    assert covered == set(listed["c"]), "every c instance is some b sender's"
    # One encoding per group, not per sender.
    b_frames = {id(f) for iid, f in frames if stage_of[iid] == "b"}
    assert len(b_frames) == -(-len(listed["c"]) // 32)


def test_a_sender_always_knows_its_whole_subsets_loads_through_changes_joins_and_leaves():
    import random

    from alto_bus.routing.route_table import RouteTable

    rng = random.Random(3)
    stage_of, loads = synthetic(400)
    reports = subsetted(subset=8)
    senders: dict[int, RouteTable] = {}
    next_id = max(stage_of) + 1
    for tick in range(12):
        if tick == 4:   # a consumer joins (the newest id)
            stage_of[next_id], loads[next_id] = "c", 7
            next_id += 1
        if tick == 6:   # a consumer in the middle leaves, and a sender
            cs, bs = routable(stage_of)["c"], routable(stage_of)["b"]
            for gone in (cs[len(cs) // 2], bs[len(bs) // 3]):
                del stage_of[gone], loads[gone]
                senders.pop(gone, None)
        for iid in loads:
            if rng.random() < 0.1:
                loads[iid] = rng.randint(0, 50)
        listed = routable(stage_of)
        table = {"epoch": tick + 1, "stages": {s: [[i, f"tcp://h:{i}"] for i in ids] for s, ids in listed.items()}}
        for iid, (op, body) in ((i, wire_decoded(f)) for i, f in reports.frames(COMMON, loads, stage_of,
                                                                               routable=listed)):
            if stage_of[iid] != "b":
                continue
            rt = senders.setdefault(iid, RouteTable("b", "c", None))
            rt.apply(table)
            rt.apply_loads(body)
            assert rt.group is not None and len(rt.subset) <= 9
            for member in rt.subset:
                assert rt.loads.load(member) == loads[member], f"tick {tick}: sender {iid} is stale on {member}"
        cover = set().union(*(set(rt.subset) for rt in senders.values()))
        assert cover == set(listed["c"]), f"tick {tick}: every instance is in some subset"


def test_keyed_and_pool_consumers_and_load_subset_0_keep_the_reports_they_had():
    from types import SimpleNamespace

    from alto_bus.control.load_reports import LoadReports
    from alto_bus.routing.subsetting import eligible

    stage_of, loads = synthetic(1000)
    listed = routable(stage_of)
    stages = [SimpleNamespace(name="a", key_depth=None), SimpleNamespace(name="b", key_depth=2),
              SimpleNamespace(name="c", key_depth=None)]
    pool_of = {"c": "pool"}
    placements, member_loads = {"pool": {"prompts": {}}}, {"pool": {"m0": 1}}
    assert eligible(stages, pool_of) == {"a"}  # b is keyed, c on a pool: neither is cut
    for subset, allowed in ((32, eligible(stages, pool_of)), (0, set(CHAIN))):
        plain, cut = LoadReports(CHAIN, pool_of), LoadReports(CHAIN, pool_of, subset=subset, subsettable=allowed)
        for tick in range(3):
            loads = {i: (v + tick * (i % 10 == 0)) for i, v in loads.items()}
            args = (COMMON, loads, stage_of, placements, member_loads)
            assert dict(cut.frames(*args, routable=listed)) == dict(plain.frames(*args))
            assert cut.bytes_last_tick == plain.bytes_last_tick


def steady_tick_bytes(n: int, subset: int) -> int:
    """Bytes of one steady tick (a tenth of the instances changed) after every instance had a whole report."""
    import random

    stage_of, loads = synthetic(n)
    listed = routable(stage_of)
    reports = subsetted(subset)
    reports.frames(COMMON, loads, stage_of, routable=listed)
    rng = random.Random(1)
    for iid in rng.sample(sorted(loads), n // 10):
        loads[iid] = loads[iid] + 1
    reports.frames(COMMON, loads, stage_of, routable=listed)
    return reports.bytes_last_tick


def test_loads_bytes_a_tick_grow_about_linearly_with_subsetting_and_quadratically_without():
    on = {n: steady_tick_bytes(n, 32) for n in (1000, 5000)}
    off = {n: steady_tick_bytes(n, 0) for n in (1000, 5000)}
    assert on[5000] / on[1000] < 6.5, on       # 5x the instances: about 5x the bytes
    assert off[5000] / off[1000] > 15, off     # without: about 25x
    assert on[5000] * 5 < off[5000]
