"""The ``openai`` engine against a small local fake server: streaming, faults, retries,
early close, figures, field checks, and an LM stage on it in a running topology."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest
from alto_workers.lm.engine import EngineOutput, SamplingParams
from alto_workers.lm.openai_engine import (
    ClientOptions,
    EngineError,
    OpenAIEngine,
    make_openai_engine,
)
from alto_workers.lm.worker import check_engine

from alto_bus import Client
from alto_bus.deploy.topology import TopologyError
from tests.integration.fake_openai_server import DELTAS, FakeOpenAIServer
from tests.support import running

CALL_TIMEOUT = 30.0
# Retries fast: the backoff is the engine's own waiting, not a test's synchronisation.
FAST = ClientOptions(retries=3, retry_base_s=0.01, retry_max_s=5.0, metrics_interval=0)
PARAMS = SamplingParams(max_tokens=16, temperature=0.5, stop=("\n\n",), seed=7)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as server:
        yield server


def run(coro: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def engine_on(url: str, **kw: Any) -> OpenAIEngine:
    kw.setdefault("options", FAST)
    return OpenAIEngine(url, "tiny", label="stage 'gen'", **kw)


async def generate(eng: OpenAIEngine, prompt: str, rid: str = "r1",
                   params: SamplingParams = PARAMS) -> list[EngineOutput]:
    await eng.start()
    try:
        return [out async for out in eng.generate(rid, prompt, params, prompt_name="p")]
    finally:
        await eng.shutdown()


def text_of(outs: list[EngineOutput]) -> str:
    return "".join(o.text for o in outs)


@pytest.mark.parametrize("chat", [False, True])
def test_normal_stream_is_the_concatenated_deltas(fake: FakeOpenAIServer, chat: bool):
    outs = run(generate(engine_on(fake.base_url, chat=chat), "normal"))
    assert text_of(outs) == "".join(DELTAS)
    assert [o.text for o in outs if o.text] == DELTAS      # one output per delta, as they came
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert all(not o.finished for o in outs[:-1])
    if not chat:   # token ids the server sends (vLLM's return_token_ids) are passed on
        assert [t for o in outs for t in o.token_ids] == [10, 11, 12, 13]
    sent = fake.requests[-1]
    assert sent["path"] == ("/v1/chat/completions" if chat else "/v1/completions")
    assert sent["stream"] is True and sent["model"] == "tiny"
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["seed"]) == (16, 0.5, ["\n\n"], 7)
    if chat:
        assert sent["messages"] == [{"role": "user", "content": "normal"}]


def test_usage_fills_the_prompt_counters(fake: FakeOpenAIServer):
    async def go():
        eng = engine_on(fake.base_url)
        await eng.start()
        try:
            [_ async for _ in eng.generate("u1", "normal", PARAMS, prompt_name="ask")]
            return eng.stats().prompts["ask"]
        finally:
            await eng.shutdown()

    s = run(go())
    assert (s.prefill_tokens, s.cached_tokens, s.decode_tokens) == (4, 3, len(DELTAS))
    assert s.running == 0 and s.waiting == 0


def test_slow_stream_hands_on_the_first_delta_before_the_server_ends(fake: FakeOpenAIServer):
    async def go():
        eng = engine_on(fake.base_url)
        await eng.start()
        seen: list[str] = []
        try:
            async for out in eng.generate("s1", "slow", PARAMS, prompt_name="p"):
                if out.text == "first":
                    # The server holds the rest until released: this delta came while it ran.
                    assert ("finished", "slow") not in fake.events
                    assert eng.stats().prompts["p"].running == 1
                    fake.release("slow")
                seen.append(out.text)
        finally:
            await eng.shutdown()
        return seen

    assert run(go())[:2] == ["first", " second"]
    assert fake.wait_for("finished", "slow")
    events = [e for e in fake.events if e[1] == "slow"]
    assert events.index(("sent first", "slow")) < events.index(("finished", "slow"))


@pytest.mark.parametrize("scenario, words", [
    ("cut", ["stage 'gen'", "ended after 2 deltas", "before the generation finished"]),
    ("broken", ["stage 'gen'", "the stream broke after 2 deltas"]),
])
def test_a_cut_stream_is_a_clear_error(fake: FakeOpenAIServer, scenario: str, words: list[str]):
    with pytest.raises(EngineError) as info:
        run(generate(engine_on(fake.base_url), scenario))
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("scenario", ["429-once", "503-once"])
def test_429_and_503_are_retried(fake: FakeOpenAIServer, scenario: str):
    before = fake.count(scenario)
    outs = run(generate(engine_on(fake.base_url), scenario))
    assert text_of(outs) == "".join(DELTAS) and outs[-1].finish_reason == "stop"
    assert fake.count(scenario) - before == 2


def test_retries_are_bounded(fake: FakeOpenAIServer):
    before = fake.count("429-always")
    with pytest.raises(EngineError) as info:
        run(generate(engine_on(fake.base_url), "429-always"))
    assert fake.count("429-always") - before == FAST.retries + 1
    msg = str(info.value)
    assert "stage 'gen'" in msg and "gave up after 4 attempt(s)" in msg and "429" in msg
    assert "slow down" in msg


def test_500_is_an_error_naming_stage_status_and_message(fake: FakeOpenAIServer):
    before = fake.count("500")
    with pytest.raises(EngineError) as info:
        run(generate(engine_on(fake.base_url), "500"))
    msg = str(info.value)
    assert "stage 'gen'" in msg and "500" in msg and "the engine fell over" in msg
    assert fake.count("500") - before == 1


def test_400_is_not_retried(fake: FakeOpenAIServer):
    before = fake.count("400")
    with pytest.raises(EngineError) as info:
        run(generate(engine_on(fake.base_url), "400"))
    msg = str(info.value)
    assert "stage 'gen'" in msg and "400" in msg and "max_tokens is too large" in msg
    assert fake.count("400") - before == 1


def test_connect_errors_are_retried_then_named():
    with socket.socket() as s:     # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError) as info:
        run(generate(engine_on(f"http://127.0.0.1:{port}/v1"), "normal"))
    msg = str(info.value)
    assert "stage 'gen'" in msg and "cannot connect" in msg and "after 4 attempt(s)" in msg


def test_closing_the_stream_early_disconnects_from_the_server(fake: FakeOpenAIServer):
    async def go():
        eng = engine_on(fake.base_url)
        await eng.start()
        try:
            stream = eng.generate("h1", "hold", PARAMS, prompt_name="held")
            async for out in stream:
                assert out.text == "first"
                break
            await stream.aclose()      # what the LM worker does when its request is cancelled
            return eng.stats().prompts["held"].running
        finally:
            await eng.shutdown()

    assert run(go()) == 0
    assert fake.wait_for("disconnected", "hold"), fake.events
    assert ("finished", "hold") not in fake.events


def test_abort_ends_the_stream_and_disconnects(fake: FakeOpenAIServer):
    fake.events[:] = [e for e in fake.events if e[1] != "hold"]

    async def go():
        eng = engine_on(fake.base_url)
        await eng.start()
        outs = []
        try:
            async for out in eng.generate("a1", "hold", PARAMS, prompt_name="p"):
                outs.append(out)
                if out.text == "first":
                    await eng.abort("a1")
        finally:
            await eng.shutdown()
        return outs

    outs = run(go())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert fake.wait_for("disconnected", "hold"), fake.events


def test_vllm_metrics_become_the_engine_figures(fake: FakeOpenAIServer):
    async def go():
        eng = engine_on(fake.base_url)
        await eng.start()
        try:
            figures = await eng.poll_metrics()
            return figures, eng.stats()
        finally:
            await eng.shutdown()

    figures, st = run(go())
    assert figures is not None
    assert (st.cache_queries, st.cache_hits) == (1200, 300)
    assert (st.kv_capacity_tokens, st.kv_used_tokens) == (1600, 400)
    assert (st.requests_running, st.requests_waiting) == (3, 2)


def test_a_server_without_vllm_metrics_gives_in_flight_figures_only():
    async def go(url: str):
        eng = engine_on(url)
        await eng.start()
        try:
            return await eng.poll_metrics(), eng.stats()
        finally:
            await eng.shutdown()

    with FakeOpenAIServer(metrics=None) as plain:
        figures, st = run(go(plain.base_url))
    assert figures is None
    assert st.kv_capacity_tokens == 0 and st.cache_queries == 0


def test_api_key_comes_from_the_named_variable(fake: FakeOpenAIServer, monkeypatch):
    fields = {"base_url": fake.base_url, "model": "tiny", "api_key_env": "FAKE_OPENAI_KEY",
              "engine_args": {"metrics_interval": 0}}
    monkeypatch.delenv("FAKE_OPENAI_KEY", raising=False)
    with pytest.raises(EngineError, match=r"stage 'gen': field 'api_key_env': environment variable "
                                          r"'FAKE_OPENAI_KEY' is not set"):
        make_openai_engine(fields, "stage 'gen'")
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-test-123")
    run(generate(make_openai_engine(fields, "stage 'gen'"), "normal"))
    assert fake.requests[-1]["authorization"] == "Bearer sk-test-123"


@pytest.mark.parametrize("change, words", [
    ({"base_url": None}, ["missing required field 'base_url'"]),
    ({"base_url": "127.0.0.1:8000/v1"}, ["field 'base_url'", "http://"]),
    ({"model": None}, ["missing required field 'model'"]),
    ({"api_key_env": "MY-KEY"}, ["field 'api_key_env'", "environment variable"]),
    ({"engine_args": {"retries": -1}}, ["field 'engine_args'", "'retries'"]),
    ({"engine_args": {"metrics_interval": 0.01}}, ["field 'engine_args'", "metrics_interval"]),
    ({"engine_args": {"tensor_parallel_size": 2}}, ["field 'engine_args'", "unknown argument 'tensor_parallel_size'"]),
])
def test_fields_are_checked_naming_stage_and_field(change: dict, words: list[str]):
    fields = {"engine": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "tiny", **change}
    with pytest.raises(TopologyError) as info:
        check_engine({k: v for k, v in fields.items() if v is not None}, "t.toml: stage 'gen'", TopologyError)
    for w in ["t.toml: stage 'gen'", *words]:
        assert w in str(info.value)


def test_openai_fields_are_refused_on_other_engines():
    with pytest.raises(TopologyError, match="field 'base_url' is for engine 'openai' only"):
        check_engine({"engine": "sim", "base_url": "http://127.0.0.1:1/v1"}, "stage 'gen'", TopologyError)


def test_a_pool_member_talks_to_its_own_server():
    # The pool's topology and processes: tests/unit/test_pool_members.py, test_remote_pool.py.
    pool = {"name": "llm", "engine": "openai", "model": "tiny", "policy": "prompt-aware",
            "members": ["http://127.0.0.1:8001/v1", "http://127.0.0.2:8001/v1"],
            "engine_args": {"metrics_interval": 0}}
    check_engine(pool, "pool 'llm'", TopologyError)
    eng = make_openai_engine({**pool, "member_index": 1}, "pool 'llm'")
    assert eng.url == "http://127.0.0.2:8001/v1/completions"
    assert eng.label == "pool 'llm' member 1 (http://127.0.0.2:8001/v1)"
    with pytest.raises(TopologyError, match=r"pool 'llm': field 'members': must be an http"):
        check_engine({**pool, "members": ["127.0.0.1:8001"]}, "pool 'llm'", TopologyError)
    with pytest.raises(TopologyError, match=r"pool 'llm': field 'engine': .* needs field 'members'"):
        check_engine({k: v for k, v in pool.items() if k != "members"}, "pool 'llm'", TopologyError)


def lm_topology(base_url: str, prompt: str) -> dict:
    return {"broker": {"request_timeout": 60.0}, "stage": [
        {"name": "gen", "kind": "lm", "engine": "openai", "base_url": base_url, "model": "tiny",
         "engine_args": {"retries": 2, "retry_base_s": 0.01, "metrics_interval": 0},
         "prompt": prompt, "emit": "text", "max_tokens": 16},
    ]}


def test_an_lm_stage_streams_from_the_server_in_a_topology(fake: FakeOpenAIServer):
    with running(lm_topology(fake.base_url, "{q}")) as sup, Client(sup.addresses["gateway"]) as client:
        assert client.submit("normal").result(timeout=60) == "".join(DELTAS)
        with pytest.raises(Exception) as info:
            client.submit("500").result(timeout=60)
    msg = str(info.value)
    assert "gen" in msg and "500" in msg and "the engine fell over" in msg
