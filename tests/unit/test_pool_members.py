"""A pool of remote OpenAI-compatible servers (``members = [...]``): the topology fields, the
member index each member process is started with, the engine it makes, and the figures
the broker's pool scheduler keeps per member (no sockets, no processes)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from alto_bus.deploy import plan as plans
from alto_bus.deploy.cli import _member_figures
from alto_bus.deploy.supervisor import Supervisor
from alto_bus.deploy.topology import TopologyError, load, parse
from alto_bus.runtime.kinds import stage_kind
from alto_bus.runtime.pool_member import engine_fields
from alto_bus.runtime.worker import WorkerError
from alto_bus.scheduling.pool_scheduler import PoolScheduler
from tests.support import write_topology

A = "http://127.0.0.1:8001/v1"
B = "http://127.0.0.2:8001/v1"


def topology(pool: dict[str, Any] | None = None, stage: dict[str, Any] | None = None) -> dict:
    pool = {"name": "llm", "engine": "openai", "model": "tiny", "members": [A, B], "policy": "round-robin",
            **(pool or {})}
    return {"pool": [{k: v for k, v in pool.items() if v is not None}], "stage": [
        {"name": "a", "kind": "lm", "pool": "llm", "prompt": "{q}", "emit": "text", "stream": False,
         **(stage or {})},
        {"name": "b", "kind": "lm", "pool": "llm", "prompt": "{q}", "emit": "text", "input": "a"},
    ]}


def test_remote_members_make_the_pools_replicas_and_its_stages():
    topo = parse(topology({"api_key_env": "LLM_KEY", "chat": True}), source="t.toml")
    pool = topo.pool("llm")
    assert pool.members == [A, B] and pool.replicas == 2
    assert (pool.api_key_env, pool.chat) == ("LLM_KEY", True)
    assert [topo.stage(s).replicas for s in ("a", "b")] == [2, 2]


def test_replicas_that_agree_with_the_members_are_accepted():
    assert parse(topology({"replicas": 2}), source="t.toml").pool("llm").replicas == 2


@pytest.mark.parametrize("change, words", [
    ({"replicas": 3}, ["field 'replicas'", "3 disagrees with the 2 server(s) of field 'members'"]),
    ({"members": [A, "127.0.0.1:8002"]}, ["field 'members'", "http:// or https:// URL", "'127.0.0.1:8002'"]),
    ({"members": ["ftp://127.0.0.1/v1"]}, ["field 'members'", "http:// or https://"]),
    ({"members": [A, A + "/"]}, ["field 'members'", "listed twice"]),
    ({"members": []}, ["field 'members'", "non-empty list"]),
    ({"members": [A, 7]}, ["field 'members'", "non-empty list of base URLs"]),
    ({"members": A}, ["field 'members' must be list"]),
    ({"members": None}, ["field 'engine'", "needs field 'members'"]),
    ({"engine": "sim", "model": None}, ["field 'members'", "engine = \"openai\"", "not 'sim'"]),
    ({"engine": "sim", "model": None, "members": None, "chat": True}, ["field 'chat' is for engine 'openai'"]),
    ({"api_key_env": "LLM-KEY"}, ["field 'api_key_env'", "environment variable"]),
    ({"engine_args": {"retries": -1}}, ["field 'engine_args'", "'retries'"]),
    ({"base_url": A}, ["unknown field 'base_url'", "members"]),
])
def test_bad_remote_pools_are_refused_naming_file_pool_and_field(change: dict, words: list[str]):
    raw = topology()
    raw["pool"][0].update(change)
    raw["pool"][0] = {k: v for k, v in raw["pool"][0].items() if v is not None}
    with pytest.raises(TopologyError) as info:
        parse(raw, source="t.toml")
    for w in ["t.toml: pool 'llm'", *words]:
        assert w in str(info.value)


@pytest.mark.parametrize("field, value", [("base_url", A), ("api_key_env", "KEY"), ("chat", True)])
def test_a_stage_on_the_pool_takes_the_servers_from_the_pool(field: str, value: Any):
    with pytest.raises(TopologyError) as info:
        parse(topology(stage={field: value}), source="t.toml")
    assert f"t.toml: stage 'a': field '{field}': a stage on pool 'llm' takes it from the pool" in str(info.value)


def test_each_member_process_is_told_which_server_it_talks_to(tmp_path):
    path = write_topology(tmp_path, topology())
    p = plans.local_plan(load(path))
    members = [i for i in p.instances if i.what == "pool"]
    assert [(i.stage, i.replica) for i in members] == [("llm", 0), ("llm", 1)]
    sup = Supervisor(str(path), p, broker="tcp://127.0.0.1:7000", out=io.StringIO())
    assert [sup._worker_args(i) for i in members] == [
        ["worker", "--broker", "tcp://127.0.0.1:7000", "--pool", "llm", "--member-index", str(n)] for n in (0, 1)]


def test_on_several_hosts_every_member_index_is_started_once(tmp_path):
    raw = topology()
    raw["host"] = [{"name": "a", "address": "198.18.0.1", "gpus": 0}, {"name": "b", "address": "198.18.0.2", "gpus": 0}]
    path = write_topology(tmp_path, raw)
    topo = load(path)
    indices = []
    for host in ("a", "b"):
        p = plans.plan(topo, host)
        sup = Supervisor(str(path), p, broker="tcp://198.18.0.1:7000", out=io.StringIO())
        for placed in (i for i in p.instances if i.what == "pool"):
            args = sup._worker_args(placed)
            indices.append(int(args[args.index("--member-index") + 1]))
    assert sorted(indices) == [0, 1]


def test_a_pool_of_local_engines_gets_no_member_index(tmp_path):
    raw = topology({"engine": "sim", "model": None, "members": None, "replicas": 2})
    path = write_topology(tmp_path, raw)
    p = plans.local_plan(load(path))
    sup = Supervisor(str(path), p, broker="tcp://127.0.0.1:7000", out=io.StringIO())
    assert "--member-index" not in sup._worker_args(p.instances[0])


def test_member_i_makes_an_engine_on_server_i():
    pool = parse(topology({"engine_args": {"metrics_interval": 0}}), source="t.toml").pool("llm")
    make = stage_kind("lm").make_engine
    engines = [make(engine_fields(pool, i)) for i in (0, 1)]
    assert [e.url for e in engines] == [A + "/completions", B + "/completions"]
    assert [e.member_index for e in engines] == [0, 1]
    assert engines[1].label == f"pool 'llm' member 1 ({B})"   # what its errors start with
    for bad in (None, 2, -1):
        with pytest.raises(WorkerError, match=r"pool 'llm' lists 2 remote member\(s\).*--member-index 0\.\.1"):
            engine_fields(pool, bad)


def counters(index: int, vllm: bool, **kw: Any) -> dict[str, Any]:
    return {"member_index": index, "server_metrics": int(vllm), "running": 0, **kw}


def test_the_scheduler_names_each_members_server_and_its_figures():
    sched = PoolScheduler("llm", "round-robin", {}, ("a", "b"), servers=(A, B))
    vllm = counters(0, True, running=2, requests_running=5, requests_waiting=1, kv_capacity=1600, kv_used=400,
                    cache_queries=1200, cache_hits=300)
    for t in (1.0, 2.0):
        sched.observe("h:1", "a", vllm, depth=2, now=t)
        sched.observe("h:1", "b", {**vllm, "running": 1}, depth=1, now=t)
        sched.observe("h:2", "a", counters(1, False, running=3), depth=3, now=t)
    sched.round(["h:1", "h:2"])
    st = sched.status()
    assert st["servers"] == {"h:1": {"url": A, "vllm": True, "running": 5, "waiting": 1},
                             "h:2": {"url": B, "vllm": False}}
    assert st["in_flight"] == {"h:1": 3, "h:2": 3}            # this pool's requests, per member
    assert st["kv"] == {"h:1": {"capacity": 1600, "used": 400}}   # what the policy's KV room comes from
    assert st["hit_rates"] == {"h:1": 0.25}
    assert _member_figures(st, "h:1") == f", KV 25% of 1,600 tokens, server {A} (vLLM: 5 running, 1 waiting)"
    assert _member_figures(st, "h:2") == f", server {B} (3 in flight; no vLLM /metrics)"
    sched.forget("h:2")   # a member that leaves takes its figures with it
    assert "h:2" not in sched.status()["servers"] and "h:2" not in sched.status()["in_flight"]


def test_a_member_index_outside_the_servers_is_ignored():
    sched = PoolScheduler("llm", "round-robin", {}, ("a",), servers=(A,))
    sched.observe("h:1", "a", counters(3, True), depth=0, now=1.0)
    assert sched.status()["servers"] == {}
