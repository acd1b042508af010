"""Placement of instances on hosts and GPUs: pure, deterministic, refusals name the stage."""

from __future__ import annotations

import itertools

import pytest

from alto_bus.deploy.gpu_placement import Demand, Host, PlacementError, describe, place

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


# -- the topology's [[host]], hosts/gpus fields and [security] ----------------------------------

from pathlib import Path  # noqa: E402

from alto_bus.deploy import plan as plans  # noqa: E402
from alto_bus.deploy import slurm  # noqa: E402
from alto_bus.deploy.errors import NodeError  # noqa: E402
from alto_bus.deploy.topology import TopologyError, gpus_per_instance, load, place_instances  # noqa: E402
from alto_bus.net import curve as keys  # noqa: E402
from tests.support import write_topology  # noqa: E402

H = "tests.integration.handlers"


def cluster(tables=None, **stage_fields) -> dict:
    return {
        "host": tables if tables is not None else [{"name": "a", "address": "198.18.0.1", "gpus": 2},
                                                 {"name": "b", "address": "198.18.0.2", "gpus": 2, "ssh_user": "u",
                                                  "ssh_port": 2222}],
        "stage": [{"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
                  {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split", "replicas": 2,
                   **stage_fields}],
    }


def test_a_file_without_hosts_is_what_it_was(tmp_path):
    topo = load(write_topology(tmp_path, {"stage": cluster()["stage"]}))
    assert topo.hosts == () and topo.security is None
    assert topo.stage("upper").hosts is None and topo.stage("upper").gpus is None


def test_hosts_and_placement_load_with_the_file(tmp_path):
    topo = load(write_topology(tmp_path, cluster(gpus=1, hosts=["b"])))
    assert [(h.name, h.address, h.gpus, h.ssh_user, h.ssh_port) for h in topo.hosts] == [
        ("a", "198.18.0.1", 2, None, None), ("b", "198.18.0.2", 2, "u", 2222)]
    placed = place_instances(topo)
    assert [(p.stage, p.gpus) for p in placed["b"] if p.stage == "upper"] == [("upper", (0,)), ("upper", (1,))]
    assert [p.host for insts in placed.values() for p in insts if p.stage == "split"] == ["a", "b"]
    assert list(place_instances(topo, ["b", "a"])) == ["b", "a"]
    with pytest.raises(TopologyError, match="no \\[\\[host\\]\\] named 'c'"):
        place_instances(topo, ["a", "c"])


@pytest.mark.parametrize("change, words", [
    ({"hosts": ["gpu9"]}, ["stage 'upper'", "field 'hosts'", "no host named 'gpu9'", "a, b"]),
    ({"gpus": 2, "replicas": 3}, ["stage 'upper'", "asks 6 GPU(s)", "have 4 in all"]),
    ({"gpus": 4}, ["stage 'upper'", "takes 4 GPU(s) on one host", "has 2"]),
    ({"gpus": -1}, ["stage 'upper'", "field 'gpus'", ">= 0"]),
    ({"hosts": "a"}, ["stage 'upper'", "field 'hosts' must be list"]),
])
def test_placement_is_refused_naming_the_file_and_stage(tmp_path, change, words):
    topo = cluster()
    topo["stage"][1].update(change)
    path = write_topology(tmp_path, topo)
    with pytest.raises(TopologyError) as err:
        load(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("hosts, words", [
    ([{"name": "a", "address": "198.18.0.1"}, {"name": "a", "address": "198.18.0.2"}],
     ["host 'a'", "two [[host]] tables are named 'a'"]),
    ([{"name": "a", "address": "tcp://198.18.0.1:22"}], ["host 'a'", "field 'address'", "not a host name"]),
    ([{"name": "a", "address": "198.18.0.1", "cores": 2}], ["host 'a'", "unknown field 'cores'"]),
    ([{"name": "a"}], ["host 'a'", "missing required field 'address'"]),
    ([{"name": "a", "address": "198.18.0.1", "gpus": -2}], ["host 'a'", "field 'gpus'"]),
    ([{"name": "a", "address": "198.18.0.1", "key": "k.key"}], ["host 'a'", "field 'key'", "[security]"]),
])
def test_bad_host_tables_are_refused_naming_the_host(tmp_path, hosts, words):
    path = write_topology(tmp_path, cluster(hosts))
    with pytest.raises(TopologyError) as err:
        load(path)
    for w in [str(path), *words]:
        assert w in str(err.value)


def test_stage_hosts_need_host_tables(tmp_path):
    topo = cluster(hosts=["a"])
    del topo["host"]
    with pytest.raises(TopologyError, match="stage 'upper': field 'hosts': the file has no \\[\\[host\\]\\] tables"):
        load(write_topology(tmp_path, topo))


def test_a_vllm_instance_takes_its_tensor_parallel_size_in_gpus(tmp_path):
    from alto_bus.deploy.topology import StageConfig

    base = dict(name="lm", kind="lm", input=None, replicas=1, inbox="", advertise=None, queue=1, concurrency=1,
                flush_ms=1.0, batch_bytes=1)
    tp4 = {"engine": "vllm", "engine_args": {"tensor_parallel_size": 4}}
    assert gpus_per_instance(StageConfig(**base, fields=tp4)) == 4
    assert gpus_per_instance(StageConfig(**base, fields={"engine": "vllm"})) == 1
    assert gpus_per_instance(StageConfig(**base, fields={"engine": "sim"})) == 0
    assert gpus_per_instance(StageConfig(**base, fields={"engine": "vllm"}, gpus=0)) == 0


def make_keys(folder: Path) -> None:
    for name in ("broker", "worker", "b"):
        keys.create(folder / "keys", name)
    keys.create(folder / "keys/allowed", "client")


def secure(**security) -> dict:
    topo = cluster()
    topo["security"] = {"broker_key": "keys/broker.key", "worker_key": "keys/worker.key",
                        "allowed_keys": "keys/allowed", **security}
    return topo


def test_security_names_key_files_relative_to_the_topology(tmp_path):
    make_keys(tmp_path)
    topo = secure()
    topo["host"][1]["key"] = "keys/b.key"
    loaded = load(write_topology(tmp_path, topo))
    sec = loaded.security
    assert sec.broker_key == str(tmp_path / "keys/broker.key") and sec.allowed_keys == str(tmp_path / "keys/allowed")
    assert sec.host_key(loaded.hosts[0]) == str(tmp_path / "keys/worker.key")
    assert sec.host_key(loaded.hosts[1]) == str(tmp_path / "keys/b.key")
    broker = keys.topology_curve(loaded, "broker")
    worker_b = keys.topology_curve(loaded, "worker", "b")
    assert broker.pair.public == keys.load_public(tmp_path / "keys/broker.key")
    assert worker_b.pair.public == keys.load_public(tmp_path / "keys/b.key")
    # Allowed: the directory's keys and every key the file names.
    named = {keys.load_public(tmp_path / f"keys/{n}.key") for n in ("broker", "worker", "b")}
    assert broker.allowed == named | {keys.load_public(tmp_path / "keys/allowed/client.key")}


@pytest.mark.parametrize("damage, words", [
    ({"broker_key": "keys/nope.key"}, ["[security] field 'broker_key'", "nope.key: no such key file"]),
    ({"allowed_keys": "keys/none"}, ["[security] field 'allowed_keys'", "no such directory"]),
    ({"colour": "x"}, ["[security]", "unknown field 'colour'"]),
])
def test_bad_security_is_refused_naming_the_field_and_file(tmp_path, damage, words):
    make_keys(tmp_path)
    path = write_topology(tmp_path, secure(**damage))
    with pytest.raises(TopologyError) as err:
        load(path)
    for w in [str(path), *words]:
        assert w in str(err.value)


def test_a_missing_secret_is_named_with_the_host_before_anything_starts(tmp_path):
    make_keys(tmp_path)
    (tmp_path / "keys/worker.key_secret").unlink()
    topo = load(write_topology(tmp_path, secure()))
    with pytest.raises(NodeError) as err:
        plans.load_keys(plans.plan(topo, "b"))
    assert "host 'b'" in str(err.value) and "worker.key_secret: no such key file" in str(err.value)


# -- alto node's pure parts: addresses, Slurm ----------------------------------------------------


def test_slurm_host_lists_expand():
    assert slurm.expand_hostlist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]
    assert slurm.expand_hostlist("n1") == ["n1"]
    assert slurm.expand_hostlist("a[1-2]-ib[0-1]") == ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]


def test_the_slurm_environment_says_which_node_this_is():
    env = {"SLURM_JOB_NODELIST": "gpu[1-3]", "SLURM_JOB_ID": "77", "SLURMD_NODENAME": "gpu2", "SLURM_NODEID": "1"}
    sn = slurm.slurm_node(env)
    assert (sn.nodes, sn.name, sn.job_id) == (["gpu1", "gpu2", "gpu3"], "gpu2", "77")
    assert slurm.slurm_node({**env, "SLURMD_NODENAME": "x"}).name == "gpu2"  # by SLURM_NODEID
    with pytest.raises(NodeError, match="run it under srun"):
        slurm.slurm_node({})
    assert slurm.slurm_port_base("77") == slurm.slurm_port_base(77) == 20000 + 3 * 77


def test_slurm_nodes_become_the_hosts(tmp_path):
    topo = load(write_topology(tmp_path, {"stage": cluster()["stage"]}))
    sn = slurm.SlurmNode(["n1", "n2"], "n2", "5")
    hosts = slurm.slurm_topology(topo, sn, None, {"SLURM_GPUS_ON_NODE": "4"}).hosts
    assert [(h.name, h.address, h.gpus) for h in hosts] == [("n1", "n1", 4), ("n2", "n2", 4)]
    named = load(write_topology(tmp_path, cluster(), "named.toml"))
    with pytest.raises(TopologyError, match="Slurm node 'n1' is not a \\[\\[host\\]\\]"):
        slurm.slurm_topology(named, sn, None, {})
    sub = slurm.slurm_topology(named, slurm.SlurmNode(["b"], "b", "5"), None, {})
    assert [h.name for h in sub.hosts] == ["b"]


def test_the_broker_binds_where_its_host_is_reached(tmp_path):
    topo = load(write_topology(tmp_path, cluster()))
    moved = plans.bind_broker_on(topo, "198.18.0.1", None).broker
    assert (moved.control, moved.advertise) == ("tcp://198.18.0.1:0", "198.18.0.1")
    fixed = plans.bind_broker_on(topo, "198.18.0.1", 20030).broker
    assert (fixed.control, fixed.gateway, fixed.results) == (
        "tcp://198.18.0.1:20030", "tcp://198.18.0.1:20031", "tcp://198.18.0.1:20032")
    assert plans.broker_control(topo, topo.hosts[0], 20030) == "tcp://198.18.0.1:20030"
    with pytest.raises(NodeError, match="a fixed port is needed"):
        plans.broker_control(topo, topo.hosts[0], None)
    assert plans.rehost("tcp://0.0.0.0:5555", "198.18.0.1") == "tcp://0.0.0.0:5555"  # the user's choice stays
    assert plans.rehost("ipc:///tmp/x", "198.18.0.1") == "ipc:///tmp/x"


def test_a_node_plan_is_its_hosts_share(tmp_path):
    topo = load(write_topology(tmp_path, cluster(gpus=1)))
    a, b = plans.plan(topo, "a"), plans.plan(topo, "b", ["b", "a"])
    assert a.runs_broker and not plans.plan(topo, "b").runs_broker and b.runs_broker
    assert sorted(p.stage for p in a.instances) == ["split", "upper"]
    with pytest.raises(TopologyError, match="no \\[\\[host\\]\\] named 'c'"):
        plans.plan(topo, "c")
