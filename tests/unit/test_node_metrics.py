"""One host's share of the broker's status, as ``--metrics-port`` serves it (pure)."""

from __future__ import annotations

import pytest

from alto_bus.service.node_metrics import node_view, parse_metrics_port


def inst(iid: int, host: str, pid: int) -> dict:
    return {"iid": iid, "host": host, "pid": pid, "depth": 1, "stats": {}}


STATUS = {
    "gateway": {"completed": 5},
    "stages": {"intake": {"replicas": 2, "instances": [inst(1, "n1", 11), inst(2, "n2", 21)]},
               "a": {"replicas": 2, "instances": [inst(3, "n1", 12), inst(4, "n2", 22)]}},
    "pools": {"llm": {"member_loads": {"n1:12": 3, "n2:22": 4}, "running": {"n1:12": 1, "n2:22": 2},
                      "waiting": {"n1:12": 0, "n2:22": 5}, "kv": {"n2:22": {"capacity": 10, "used": 1}},
                      "hit_rates": {}, "placement": {"a": ["n1:12", "n2:22"]}, "demand_tokens_per_s": {"a": 9.0}}},
}


def test_a_worker_host_sees_only_its_own_instances_and_members():
    v = node_view(STATUS, pids={21, 22}, host="n2", with_gateway=False)
    assert [i["iid"] for i in v["stages"]["intake"]["instances"]] == [2]
    assert [i["iid"] for i in v["stages"]["a"]["instances"]] == [4]
    assert v["stages"]["a"]["replicas"] == 2
    pool = v["pools"]["llm"]
    assert pool["member_loads"] == {"n2:22": 4}
    assert pool["running"] == {"n2:22": 2} and pool["waiting"] == {"n2:22": 5}
    assert "placement" not in pool and "gateway" not in v  # the pool's and the gateway's: the broker's host


def test_the_broker_host_adds_the_gateway_and_the_pools_placement():
    v = node_view(STATUS, pids={11, 12}, host="n1", with_gateway=True)
    assert v["gateway"] == {"completed": 5}
    assert v["pools"]["llm"]["placement"] == {"a": ["n1:12", "n2:22"]}
    assert v["pools"]["llm"]["member_loads"] == {"n1:12": 3}


def test_a_pid_from_another_host_is_not_mine():
    v = node_view(STATUS, pids={11, 21}, host="n1", with_gateway=False)
    assert [i["iid"] for i in v["stages"]["intake"]["instances"]] == [1]


def test_the_port_takes_a_default_host():
    assert parse_metrics_port("9100", "10.0.0.2") == ("10.0.0.2", 9100)
    assert parse_metrics_port("127.0.0.1:0", "10.0.0.2") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_metrics_port("nine", "10.0.0.2")
