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
