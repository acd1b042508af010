"""A pool of remote OpenAI-compatible servers through real processes: two fake servers are
the two members of one pool with two LM stages on it. Requests are placed on both members,
each member's figures (a vLLM-style /metrics on one, requests in flight on the other) reach
``alto status``, and a member that fails gives an error naming the stage and the member.

Waits are bounded: requests have deadlines, and figures are read by polling the broker's
status until a deadline.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from alto_bus import Client, RequestError
from tests.integration.fake_openai_server import DELTAS, FakeOpenAIServer
from tests.support import running, status, wait_for

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "".join(DELTAS)
N = 8


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    # Member 0 looks like vLLM (KV 25% of 100 blocks of 16 tokens, 300 of 1200 prefix
    # tokens hit, 3 running, 2 waiting); member 1 has no /metrics (e.g. TGI, a hosted API).
    with FakeOpenAIServer() as vllm_like, FakeOpenAIServer(metrics=None) as plain:
        yield vllm_like, plain


def pool_topology(members: list[str], policy: str = "round-robin") -> dict[str, Any]:
    """``ask`` (entry) and ``again`` on one pool: ``ask`` sends the request as its prompt;
    ``again`` asks again with ask's answer, so each server sees which stage a call is from."""
    return {
        "broker": {"request_timeout": 60.0, "heartbeat_interval": 0.2},
        "pool": [{"name": "llm", "engine": "openai", "model": "tiny", "members": members, "policy": policy,
                  "engine_args": {"retries": 1, "retry_base_s": 0.01, "metrics_interval": 0.25}}],
        "stage": [
            {"name": "ask", "kind": "lm", "pool": "llm", "prompt": "{q}", "emit": "text", "stream": False,
             "max_tokens": 16},
            {"name": "again", "kind": "lm", "pool": "llm", "prompt": "again: {q}", "emit": "text",
             "input": "ask", "max_tokens": 16},
        ],
    }


def wait_pool(sup: Any, what: str, cond: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    """The pool's status once ``cond`` holds; fail naming ``what`` and the last status after ``timeout``."""
    last: dict = {}

    def check() -> dict | None:
        last["pool"] = status(sup)["pools"]["llm"]
        return last["pool"] if cond(last["pool"]) else None

    try:
        return wait_for(check, timeout, what)
    except AssertionError:
        pytest.fail(f"{what} within {timeout:g} s; last pool status: {last.get('pool')}")


def on_both(pool: dict) -> bool:
    return all(len(pool["placement"].get(p, ())) == 2 for p in ("ask", "again"))


def prompts(server: FakeOpenAIServer) -> set[str]:
    return {r["prompt"] for r in server.requests}


def test_requests_are_placed_on_both_servers_and_their_figures_reach_alto_status(servers):
    vllm_like, plain = servers
    with running(pool_topology([vllm_like.base_url, plain.base_url])) as sup, \
            Client(sup.addresses["gateway"], timeout=60) as client:
        wait_pool(sup, "both prompts were not placed on both members", on_both)
        results = [f.result(timeout=60) for f in [client.submit("normal") for _ in range(N)]]
        assert results == [ANSWER] * N
        # Both stages' calls reached both servers (round-robin over the two members).
        for server in servers:
            assert prompts(server) == {"normal", f"again: {ANSWER}"}, server.base_url
        assert len(vllm_like.requests) + len(plain.requests) == 2 * N
        # Requests in flight are counted per member while the servers hold them.
        held = [client.submit("slow") for _ in range(2)]
        wait_pool(sup, "two held requests were not counted in flight, one per member",
                  lambda p: sorted(p.get("in_flight", {}).values()) == [1, 1])
        for server in servers:
            server.release("slow")
        assert [f.result(timeout=60) for f in held] == [ANSWER] * 2

        def figures(pool: dict) -> bool:   # and heartbeats sent after the last request ended
            return (len(pool.get("servers", {})) == 2 and any(s["vllm"] for s in pool["servers"].values())
                    and sorted(pool["in_flight"].values()) == [0, 0])

        pool = wait_pool(sup, "the members' servers and figures did not reach the status", figures)
        by_url = {s["url"]: (m, s) for m, s in pool["servers"].items()}
        m0, s0 = by_url[vllm_like.base_url]
        m1, s1 = by_url[plain.base_url]
        assert s0 == {"url": vllm_like.base_url, "vllm": True, "running": 3, "waiting": 2}
        assert s1 == {"url": plain.base_url, "vllm": False}
        # KV room and prefix hits, as the policy sees them, from member 0's /metrics only.
        assert pool["kv"] == {m0: {"capacity": 1600, "used": 400}}
        assert pool["hit_rates"] == {m0: 0.25}
        text = subprocess.run([sys.executable, "-m", "alto_bus", "status", "--broker", sup.addresses["control"]],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert (f"member {m0}: load 0, prefix-cache hit rate 25%, KV 25% of 1,600 tokens, "
            f"server {vllm_like.base_url} (vLLM: 3 running, 2 waiting)") in text.stdout, text.stdout
    assert f"member {m1}: load 0, server {plain.base_url} (0 in flight; no vLLM /metrics)" in text.stdout, \
        text.stdout


@pytest.mark.parametrize("fault, words", [
    ("500", ["the server answered 500", "the engine fell over"]),
    ("cut", ["the stream ended after 2 deltas before the generation finished"]),
])
def test_a_failing_member_gives_an_error_naming_the_stage_and_the_member(servers, fault: str, words: list[str]):
    good, bad = servers
    bad.fail_with = fault
    with running(pool_topology([good.base_url, bad.base_url])) as sup, \
            Client(sup.addresses["gateway"], timeout=60) as client:
        wait_pool(sup, "both prompts were not placed on both members", on_both)
        futures = [client.submit("normal") for _ in range(N)]
        ok, errors = [], []
        for f in futures:   # each request ends in one result or one error
            try:
                ok.append(f.result(timeout=60))
            except RequestError as exc:
                errors.append(exc)
    assert ok and all(r == ANSWER for r in ok), ok       # member 0 went on serving
    assert errors, "no request reached the failing member"
    for exc in errors:
        msg = str(exc)
        assert exc.stage in ("ask", "again")
        assert msg.startswith(f"stage {exc.stage!r}: ")
        for w in [f"pool 'llm' member 1 ({bad.base_url})", *words]:
            assert w in msg, msg
    assert len(ok) + len(errors) == N
