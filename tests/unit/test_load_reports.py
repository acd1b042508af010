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
    from alto_bus.protocol import wire

    return {iid: wire.decode_control(f)[1] for iid, f in frames}


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
