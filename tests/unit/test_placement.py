"""Placement of instances on hosts and GPUs: pure, deterministic, refusals name the stage."""

from __future__ import annotations

import itertools

import pytest

from alto_bus.placement import Demand, Host, PlacementError, describe, place

THREE = [Host("a", 4), Host("b", 4), Host("c", 0)]


def where(placement, stage):
    return sorted((p.host, p.gpus) for insts in placement.values() for p in insts if p.stage == stage)


def test_replicas_without_gpus_spread_over_every_host_in_order():
    out = place(THREE, [Demand("split", 3), Demand("upper", 4)])
    assert [p.stage for p in out["a"]] == ["split", "upper", "upper"]
    assert sorted(p.host for insts in out.values() for p in insts if p.stage == "upper") == ["a", "a", "b", "c"]
    assert all(p.gpus == () and p.cuda_visible_devices == "" for insts in out.values() for p in insts)


def test_a_tensor_parallel_instance_takes_k_gpus_of_one_host_and_replicas_spread():
    out = place(THREE, [Demand("lm", 2, gpus=2), Demand("small", 2, gpus=1)])
    assert where(out, "lm") == [("a", (0, 1)), ("b", (0, 1))]
    assert where(out, "small") == [("a", (2,)), ("b", (2,))]
    assert [p.cuda_visible_devices for p in out["a"]] == ["0,1", "2"]


def test_no_gpu_is_given_twice_and_every_replica_is_placed():
    hosts = [Host("a", 8), Host("b", 8)]
    demands = [Demand("x", 3, gpus=2), Demand("y", 5, gpus=1), Demand("z", 1, gpus=4), Demand("f", 7)]
    out = place(hosts, demands)
    for host, insts in out.items():
        used = [g for p in insts for g in p.gpus]
        assert len(used) == len(set(used)) and all(0 <= g < 8 for g in used), host
    for d in demands:
        mine = [p for insts in out.values() for p in insts if p.stage == d.stage]
        assert sorted(p.replica for p in mine) == list(range(d.replicas))
        assert all(len(p.gpus) == d.gpus for p in mine)


def test_pinned_hosts_are_respected():
    out = place(THREE, [Demand("lm", 2, gpus=1, hosts=("b",)), Demand("cpu", 2, hosts=("c",))])
    assert where(out, "lm") == [("b", (0,)), ("b", (1,))]
    assert where(out, "cpu") == [("c", ()), ("c", ())]
    assert out["a"] == []


def test_the_answer_is_a_pure_function_of_the_input():
    demands = [Demand("a", 3, gpus=1), Demand("b", 2, gpus=2), Demand("c", 4)]
    first = place(THREE, demands)
    for _ in range(3):
        assert place(THREE, demands) == first


@pytest.mark.parametrize("hosts, demands, words", [
    (THREE, [Demand("lm", 5, gpus=2)], ["stage 'lm'", "asks 10 GPU(s)", "5 replica(s) x 2", "have 8"]),
    (THREE, [Demand("lm", 1, gpus=8)], ["stage 'lm'", "takes 8 GPU(s) on one host", "largest", "has 4"]),
    (THREE, [Demand("lm", 1, gpus=1, hosts=("c",))], ["stage 'lm'", "has 0"]),
    (THREE, [Demand("a", 2, gpus=3), Demand("b", 1, gpus=2)], ["stage 'b'", "none is left", "a 1, b 1, c 0"]),
    (THREE, [Demand("x", 1, hosts=("gpu9",))], ["stage 'x'", "field 'hosts'", "no host named 'gpu9'", "a, b, c"]),
    (THREE, [Demand("x", 1, hosts=())], ["stage 'x'", "'hosts' is empty"]),
    ([Host("a"), Host("a")], [Demand("x", 1)], ["two hosts are named 'a'"]),
    ([], [Demand("x", 1)], ["no hosts"]),
])
def test_what_does_not_fit_is_refused_naming_the_stage(hosts, demands, words):
    with pytest.raises(PlacementError) as err:
        place(hosts, demands)
    for w in words:
        assert w in str(err.value)


def test_every_feasible_small_case_of_equal_instances_fits():
    # With every instance of the same width, placing greedily never refuses what fits.
    for gpus_a, gpus_b, width, replicas in itertools.product(range(5), range(5), (1, 2), range(1, 5)):
        hosts = [Host("a", gpus_a), Host("b", gpus_b)]
        fits = gpus_a // width + gpus_b // width >= replicas
        if fits:
            out = place(hosts, [Demand("s", replicas, gpus=width)])
            assert sum(len(v) for v in out.values()) == replicas
        else:
            with pytest.raises(PlacementError, match="stage 's'"):
                place(hosts, [Demand("s", replicas, gpus=width)])


def test_describe_names_every_host():
    lines = describe(place(THREE, [Demand("lm", 1, gpus=2), Demand("f", 1)]))
    assert lines == ["host a: lm#0 (GPUs 0,1)", "host b: f#0", "host c: (nothing)"]
