"""Shared LM pools through real processes: placements follow a demand shift, rebalancing
loses and duplicates nothing, and every scheduling policy serves a pipeline end to end.

The workload (``tests/integration/pool_script.py``, ``test``): ``intake -> a -> b`` on one
pool of sim engines. In phase 1 prompt ``b`` gets one item per request and answers it in
a few tokens (about a fifth of the pool's token work); in phase 2 it gets six items per
request and answers each at length (most of the work). Every request's exact result is
known from the script.

Waits are bounded: requests have deadlines, and placements are read by polling ``alto
status`` until a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from alto_bus import Client
from alto_bus.scheduling import available_policies
from alto_bus.deploy.topology import TopologyError, load
from tests.integration import pool_script as ps
from tests.support import running, status, write_topology

W = "test"


class Load:
    """Requests of the current ``phase`` at a steady rate from a background thread, at
    most ``limit`` of them; ``finish()`` waits for every result (bounded)."""

    def __init__(self, client: Client, rate: float, limit: int, timeout: float = 60.0) -> None:
        self.client = client
        self.period = 1.0 / rate
        self.limit = limit
        self.timeout = timeout
        self.phase = 1
        self.sent: list[tuple[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        t = time.monotonic()
        for n in range(self.limit):
            rid = ps.rid(n, self.phase)
            self.sent.append((rid, self.client.submit(rid, timeout=self.timeout)))
            t += self.period
            if self._stop.wait(max(0.0, t - time.monotonic())):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def finish(self) -> list[tuple[str, Any]]:
        """Stop sending; every request's (id, result), failing the test on any error."""
        self.stop()
        return [(rid, fut.result(timeout=self.timeout + 10)) for rid, fut in self.sent]


def wait_for(sup: Any, what: str, cond: Callable[[dict], bool], timeout: float) -> dict:
    """Poll the broker's status until ``cond(pool status)`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pool: dict = {}
    while time.monotonic() < deadline:
        pool = status(sup)["pools"]["llm"]
        if cond(pool):
            return pool
        time.sleep(0.25)
    pytest.fail(f"{what} within {timeout:g} s; last pool status: placement {pool.get('placement')}, "
                f"demand {pool.get('demand_tokens_per_s')}, held {pool.get('held')}, "
                f"decisions {pool.get('decisions')}")


def placed(pool: dict, prompt: str) -> int:
    return len(pool["placement"].get(prompt, ()))


def check_results(results: list[tuple[str, Any]]) -> None:
    wrong = [(rid, got) for rid, got in results if got != ps.expected(W, rid)]
    assert not wrong, (f"{len(wrong)} of {len(results)} results differ from the script's expectation; "
                       f"first: {wrong[0][0]}: got {wrong[0][1]!r:.300}, want {ps.expected(W, wrong[0][0])!r:.300}")


def test_placement_follows_a_shift_of_demand():
    # ample_kv = 0: placements sized by demand even though the sim's KV cache (410,000
    # tokens) would hold every prefix everywhere (then every prompt goes everywhere).
    topo = ps.topology(W, policy="prompt-aware", replicas=4, engine_args={"time_scale": 0.5},
                       policy_args={"ample_kv": 0},
                       broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 25})
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=60) as client:
        with Load(client, rate=25, limit=2000) as load:
            # Phase 1: b has about a fifth of the work, so the policy gives it one instance,
            # or keeps a second one and says why (its recent peak, or the other instances'
            # headroom), for two status reads in a row, not a passing state.
            ones = [0]

            def small(p: dict) -> bool:
                return placed(p, "b") == 1 or (placed(p, "b") == 2 and "b" in p["held"])

            def share_of_b(p: dict) -> float:
                demand = p["demand_tokens_per_s"]
                return demand.get("b", 0) / (sum(demand.values()) or 1)

            def settled(p: dict) -> bool:   # b's demand is low (its phase-1 share) and so is its count
                ones[0] = ones[0] + 1 if small(p) and 0 < share_of_b(p) < 0.4 else 0
                return ones[0] >= 2

            p1 = wait_for(sup, "b did not settle on one instance (or two, held with a reason)", settled, 30)
            share1 = share_of_b(p1)
            load.phase = 2
            # Phase 2: six long answers of b per request; its placement grows with its demand.
            p2 = wait_for(sup, "b's placement did not grow to 3 or more instances",
                          lambda p: placed(p, "b") >= 3, 25)
            share2 = share_of_b(p2)
        results = load.finish()
        st = status(sup)
    assert share1 < 0.4 < 0.6 < share2, (share1, share2)
    grew = [d for d in st["pools"]["llm"]["decisions"] if d["prompt"] == "b" and d["added"]]
    assert grew and all("demand" in d["reason"] or "spilled" in d["reason"] or "load" in d["reason"]
                        for d in grew), grew
    assert len(results) >= 20 and {ps.phase_of(r) for r, _ in results} == {1, 2}
    check_results(results)
    assert st["gateway"]["failed"] == 0 and st["gateway"]["late_messages"] == 0, st["gateway"]


def test_rebalancing_drops_or_duplicates_no_request():
    # A jumpy prompt-aware policy (no smoothing, no hysteresis, no cooldown) and demand
    # that flips every 1.5 s: placements change every few rounds while requests are in flight.
    jumpy = {"smoothing": 1.0, "resize_margin": 0.5, "cooldown": 0, "imbalance": 0.05,
             "min_gain": 0.01, "min_spills": 1, "ample_kv": 0}
    topo = ps.topology(W, policy="prompt-aware", replicas=3, policy_args=jumpy,
                       engine_args={"time_scale": 0.5}, broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 25})
    seen: set[tuple[int, str]] = set()
    removed_under_load = 0
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=60) as client:
        with Load(client, rate=30, limit=420) as load:
            deadline = time.monotonic() + 30
            flip = time.monotonic() + 1.5
            while load._thread.is_alive() and time.monotonic() < deadline:
                st = status(sup)
                for d in st["pools"]["llm"]["decisions"]:
                    key = (d["round"], d["prompt"])
                    if d["round"] > 1 and key not in seen:
                        seen.add(key)
                        removed_under_load += bool(d["removed"]) and st["gateway"]["in_flight"] > 0
                if time.monotonic() >= flip:
                    load.phase = 3 - load.phase
                    flip += 1.5
                time.sleep(0.2)
        results = load.finish()
        st = status(sup)
    assert len(results) == 420
    check_results(results)
    g = st["gateway"]
    assert g["completed"] >= 420 and g["failed"] == 0 and g["late_messages"] == 0, g
    assert len(seen) >= 4 and removed_under_load >= 1, (
        f"placements changed {len(seen)} times ({removed_under_load} removals with requests "
        f"in flight): not enough rebalancing to test")


@pytest.mark.parametrize("policy", available_policies())
def test_every_policy_serves_the_pipeline(policy):
    topo = ps.topology(W, policy=policy, replicas=2, engine_args={"time_scale": 0.2},
                       broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 25})
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=30) as client:
        ids = [ps.rid(n, 1 + n % 2) for n in range(24)]
        futures = [(rid, client.submit(rid)) for rid in ids]
        check_results([(rid, fut.result(timeout=40)) for rid, fut in futures])
        pool = wait_for(sup, "the placement did not cover both prompts",
                        lambda p: {"a", "b"} <= set(p["placement"]) and len(p["member_loads"]) == 2, 10)
        if policy == "prompt-aware":
            # The members report their KV (410,000 tokens, prefixes of ~1,000): ample, so
            # every prompt goes on every member, and the decision says why.
            pool = wait_for(sup, "prompt-aware did not place every prompt everywhere with ample KV",
                            lambda p: all(len(ms) == 2 for ms in p["placement"].values()) and p["kv"], 10)
            assert any("free KV" in d["reason"] for d in pool["decisions"]), pool["decisions"]
    members = set(pool["member_loads"])
    assert pool["policy"] == policy
    for prompt, ms in pool["placement"].items():
        assert ms and set(ms) <= members, (prompt, ms, members)
        if policy in ("round-robin", "least-loaded"):
            assert set(ms) == members
        if policy == "affinity":
            assert len(ms) == 1


def test_an_entry_stage_on_a_pool_is_routed_by_the_pools_policy():
    # The first LM stage takes client requests: the gateway routes them by the pool's
    # policy too. With affinity its prompt sits on one member: the other never gets one.
    topo = ps.topology(W, policy="affinity", replicas=2, engine_args={"time_scale": 0.2},
                       broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 25})
    topo["stage"] = topo["stage"][1:]
    entry = topo["stage"][0]
    del entry["input"]
    with running(topo) as sup, Client(sup.addresses["gateway"], timeout=30) as client:
        pool = wait_for(sup, "the placement did not cover the entry prompt",
                        lambda p: len(p["placement"].get(entry["name"], ())) == 1, 10)

        def received() -> dict[int, int]:
            insts = status(sup)["stages"][entry["name"]]["instances"]
            return {i["iid"]: i["stats"].get("messages_in", 0) for i in insts}

        before = received()
        ids = [ps.rid(n, 1) for n in range(30)]
        futures = [(rid, client.submit({"rid": rid})) for rid in ids]
        check_results([(rid, fut.result(timeout=40)) for rid, fut in futures])
        deadline = time.monotonic() + 10
        while sum(received().values()) < sum(before.values()) + len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)    # the counters come with the next heartbeats
        after = received()
    got = sorted(after[i] - before.get(i, 0) for i in after)
    assert got == [0, len(ids)], (got, pool["placement"])


def test_an_unknown_policy_is_refused_before_anything_starts(tmp_path):
    path = write_topology(tmp_path, ps.topology(W, policy="fastest"))
    with pytest.raises(TopologyError, match=r"pool 'llm'.*field 'policy'.*fastest"):
        load(path)
