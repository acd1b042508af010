"""The one-host plan of ``alto launch FILE`` and the worker command lines a supervisor builds (no processes)."""

from __future__ import annotations

import io
from pathlib import Path

from alto_bus.deploy import plan as plans
from alto_bus.deploy.gpu_placement import Placed
from alto_bus.deploy.supervisor import Child, Supervisor
from alto_bus.deploy.topology import load
from tests.support import write_topology

H = "tests.integration.handlers"
ROOT = Path(__file__).resolve().parents[2]


def chain(hosts: bool = False) -> dict:
    topo = {"stage": [{"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 2},
                      {"name": "upper", "kind": "function", "handler": f"{H}:upper", "input": "split",
                       "replicas": 3}]}
    if hosts:
        topo["host"] = [{"name": "a", "address": "198.18.0.1", "gpus": 0},
                        {"name": "b", "address": "198.18.0.2", "gpus": 0}]
    return topo


def test_the_local_plan_runs_the_broker_and_every_replica_here(tmp_path):
    p = plans.local_plan(load(write_topology(tmp_path, chain())))
    assert p.local and p.runs_broker and p.host_names == [plans.LOCAL_HOST]
    assert [(i.stage, i.replica, i.what) for i in p.instances] == [
        ("split", 0, "stage"), ("split", 1, "stage"), ("upper", 0, "stage"), ("upper", 1, "stage"),
        ("upper", 2, "stage")]
    assert not plans.plan(load(write_topology(tmp_path, chain(hosts=True), "h.toml")), "a").local


def test_the_local_plan_starts_pool_members_instead_of_their_stages():
    topo = load(ROOT / "topology" / "factool.toml")
    p = plans.local_plan(topo)
    pooled = {s for pool in topo.pools for s in pool.stages}
    assert pooled
    members = [i for i in p.instances if i.what == "pool"]
    assert len(members) == sum(pool.replicas for pool in topo.pools)
    assert p.instances[:len(members)] == members  # the pools first
    assert not any(i.stage in pooled for i in p.instances if i.what == "stage")
    assert sum(1 for i in p.instances if i.what == "stage") == sum(
        s.replicas for s in topo.stages if s.name not in pooled)


def test_a_local_worker_keeps_the_files_addresses(tmp_path):
    path = write_topology(tmp_path, chain())
    sup = Supervisor(str(path), plans.local_plan(load(path)), broker="tcp://127.0.0.1:7000", out=io.StringIO())
    assert sup._worker_args(Placed("upper", 1, plans.LOCAL_HOST)) == [
        "worker", "--broker", "tcp://127.0.0.1:7000", "--stage", "upper"]
    assert sup._who == ""


def test_a_nodes_worker_binds_and_advertises_on_its_host(tmp_path):
    path = write_topology(tmp_path, chain(hosts=True))
    topo = load(path)
    sup = Supervisor(str(path), plans.plan(topo, "b"), broker="tcp://198.18.0.1:7000", out=io.StringIO())
    args = sup._worker_args(Placed("split", 0, "b"))
    assert args[:5] == ["worker", "--broker", "tcp://198.18.0.1:7000", "--stage", "split"]
    assert args[args.index("--host-name") + 1] == "b"
    assert args[args.index("--advertise") + 1] == "198.18.0.2"
    assert args[args.index("--inbox") + 1] == plans.rehost(topo.stage("split").inbox, "198.18.0.2")
    assert sup._who == "host 'b': "


def test_a_child_names_its_stage_but_not_a_pools_or_the_brokers():
    assert Child("split#0", None, Placed("split", 0, "a")).stage == "split"  # type: ignore[arg-type]
    assert Child("pool lm#0", None, Placed("lm", 0, "a", what="pool")).stage is None  # type: ignore[arg-type]
    assert Child("broker", None).stage is None  # type: ignore[arg-type]


def test_rehost_moves_loopback_only():
    assert plans.rehost("tcp://127.0.0.1:0", "10.0.0.1", 9000) == "tcp://10.0.0.1:9000"
    assert plans.rehost("tcp://localhost:5000", "10.0.0.1", 9000) == "tcp://10.0.0.1:5000"
    assert plans.rehost("tcp://10.9.9.9:0", "10.0.0.1") == "tcp://10.9.9.9:0"
