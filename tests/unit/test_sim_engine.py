"""The asyncio sim engine, on a virtual clock: no sockets, no real sleeping."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from alto_workers.lm.engine import Engine, EngineOutput, EngineStats, SamplingParams
from alto_workers.lm.sim import SimEngine, fallback_text, plan_output
from alto_workers.lm.sim_model import EOS_ID, split_pieces, tokenize

SCRIPT = {
    ("answer", "q1"): "The Eiffel Tower is in Paris. It was completed in 1889.",
    ("answer", "q2"): "Water boils at 100 degrees Celsius at sea level.",
    ("claims", "q1"): '["The tower is in Paris.", "It opened in 1889."]',
}


def script(prompt_name: str, key: str | None) -> str | None:
    return SCRIPT.get((prompt_name, key))


class VirtualClock:
    """Time moves only when the engine sleeps; each sleep yields to the loop once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay
        self.sleeps += 1
        await asyncio.sleep(0)


def make(clock: VirtualClock | None = None, **params) -> SimEngine:
    clock = clock or VirtualClock()
    return SimEngine(params, script=script, seed=7, clock=clock.time, sleep=clock.sleep)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def collect(engine, rid, prompt="Answer the question.", params=None, **kw) -> list:
    params = params or SamplingParams(max_tokens=256)
    return [out async for out in engine.generate(rid, prompt, params, **kw)]


def joined(outs: list[EngineOutput]) -> tuple[str, tuple[int, ...]]:
    return "".join(o.text for o in outs), tuple(i for o in outs for i in o.token_ids)


# ----------------------------------------------------------------------- text


def test_is_an_engine():
    engine: Engine = make()                   # type-checks against the protocol
    for name in ("start", "abort", "shutdown"):
        assert inspect.iscoroutinefunction(getattr(engine, name))
    assert inspect.isasyncgenfunction(engine.generate)
    assert isinstance(engine.stats(), EngineStats)


def test_empty_prompt_and_empty_script():
    async def main():
        engine = SimEngine({}, script=lambda name, key: "", clock=VirtualClock().time,
                           sleep=VirtualClock().sleep)
        return await collect(engine, "r", "")

    assert run(main()) == [EngineOutput("", (EOS_ID,), True, "stop")]


def test_scripted_text_is_reproduced_exactly():
    async def main():
        engine = make()
        outs = await collect(engine, "r1", prompt_name="answer", script_key="q1")
        await engine.shutdown()
        return outs

    outs = run(main())
    text, ids = joined(outs)
    assert text == SCRIPT[("answer", "q1")]
    assert ids == (*tokenize(text)[1], EOS_ID)
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    assert outs[-1].finish_reason == "stop" and all(o.finish_reason is None for o in outs[:-1])
    assert len(outs) > 3                                   # streamed, not in one piece


def test_key_defaults_to_the_prompt():
    async def main():
        return await collect(make(), "r", prompt="q2", prompt_name="answer")

    assert joined(run(main()))[0] == SCRIPT[("answer", "q2")]


def test_fallback_text_is_plausible_and_deterministic():
    async def main(seed, prompt):
        engine = SimEngine({}, seed=seed, clock=VirtualClock().time, sleep=VirtualClock().sleep)
        return joined(await collect(engine, "r", prompt, SamplingParams(max_tokens=120)))[0]

    a = run(main(1, "Tell me about bridges."))
    assert a == run(main(1, "Tell me about bridges."))
    assert a != run(main(2, "Tell me about bridges."))
    assert a != run(main(1, "Tell me about rivers."))
    assert a[0].isupper() and a.endswith(".")
    assert len(split_pieces(a)) <= 120


def test_fallback_length_is_bounded_and_varies():
    lengths = {len(split_pieces(fallback_text(f"k{i}", 200))) for i in range(50)}
    assert max(lengths) <= 200 and min(lengths) >= 20 and len(lengths) > 10
    assert len(split_pieces(fallback_text("k", 300, fill=True))) >= 300


def test_max_tokens_cuts_with_length():
    async def main():
        sp = SamplingParams(max_tokens=5)
        return await collect(make(), "r", params=sp, prompt_name="answer", script_key="q1")

    outs = run(main())
    text, ids = joined(outs)
    assert len(ids) == 5 and outs[-1].finish_reason == "length"
    assert text == "".join(split_pieces(SCRIPT[("answer", "q1")])[:5])


def test_stop_strings_cut_the_text():
    async def main(stop):
        sp = SamplingParams(max_tokens=100, stop=stop)
        return await collect(make(), "r", params=sp, prompt_name="answer", script_key="q1")

    outs = run(main((" It was", "1889")))
    assert joined(outs)[0] == "The Eiffel Tower is in Paris."
    assert outs[-1].finish_reason == "stop"
    assert joined(run(main(("Tow",))))[0] == "The Eiffel "            # stop inside a token


def test_plan_output_stop_beyond_max_tokens_is_length():
    plan = plan_output("one two three four five six", SamplingParams(max_tokens=2, stop=("six",)))
    assert plan.reason == "length" and plan.text == "one two"


def test_ignore_eos_runs_to_max_tokens():
    async def main():
        sp = SamplingParams(max_tokens=60, ignore_eos=True)
        return await collect(make(), "r", params=sp, prompt_name="answer", script_key="q2")

    outs = run(main())
    text, ids = joined(outs)
    assert len(ids) == 60 and outs[-1].finish_reason == "length"
    assert text.startswith(SCRIPT[("answer", "q2")] + " ")


# -------------------------------------------------------------------- batching


def test_concurrent_requests_share_steps():
    async def steps_for(n):
        engine = make()
        sp = SamplingParams(max_tokens=40, ignore_eos=True)
        await asyncio.gather(*(collect(engine, f"r{i}", f"prompt {i}", sp) for i in range(n)))
        return engine.stats().steps

    one, many = run(steps_for(1)), run(steps_for(16))
    assert one == 40 and many <= one + 2


def test_emulated_time_follows_the_step_model():
    clock = VirtualClock()

    async def main():
        engine = make(clock, time_scale=2.0)
        outs = await collect(engine, "r", "x" * 8000, SamplingParams(max_tokens=1, ignore_eos=True))
        return engine, outs

    engine, _ = run(main())
    st = engine.stats()
    assert clock.now == pytest.approx(2.0 * st.busy_s)
    # BOS + 1,600 prompt tokens: 3 chunks of 512 at 15K tokens/s, then 65 in a base-time
    # step, plus 0.07 ms per 1,000 tokens of context already in the cache
    assert st.prefill_tokens == 1601 and st.steps == 4
    assert st.busy_s == pytest.approx(3 * 512 / 15_000 + 0.012045 + 0.07e-6 * (512 + 1024 + 1536))


def test_kv_figures_count_what_running_sequences_hold():
    async def main():
        engine = make(kv_capacity_tokens=4096, block_size=16)
        sp = SamplingParams(max_tokens=40, ignore_eos=True)
        used = [engine.stats().kv_used_tokens]
        async for _ in engine.generate("a", "word " * 200, sp):
            used.append(engine.stats().kv_used_tokens)
        st = engine.stats()
        await engine.shutdown()
        return used, st

    used, st = run(main())
    assert st.kv_capacity_tokens == 4096
    assert used[0] == 0 and max(used) >= 200 and max(used) % 16 == 0
    assert st.kv_used_tokens == 0          # its prefix stays cached, but nobody holds it


def test_waiting_for_kv_capacity():
    async def main():
        engine = make(kv_capacity_tokens=128, enable_prefix_caching=False)
        sp = SamplingParams(max_tokens=100, ignore_eos=True)
        order = []

        async def one(rid):
            async for out in engine.generate(rid, "short prompt", sp):
                if out.finished:
                    order.append((rid, engine.stats().steps))

        a = asyncio.ensure_future(one("a"))
        b = asyncio.ensure_future(one("b"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        mid = engine.stats()
        await asyncio.gather(a, b)
        return mid, order

    mid, order = run(main())
    assert mid.running == 1 and mid.waiting == 1           # 103 tokens each, 128 in the cache
    assert [r for r, _ in order] == ["a", "b"]
    assert order[1][1] >= 2 * 100                          # b ran after a, not beside it


def test_prefix_cache_hits_reduce_prefill():
    system = "You are a careful assistant. Answer briefly and cite sources. " * 20
    async def main():
        engine = make()
        sp = SamplingParams(max_tokens=4)
        await collect(engine, "a", system + "First question?", sp, prompt_name="qa")
        first = engine.stats().prompts["qa"].prefill_tokens
        await collect(engine, "b", system + "Second, different question?", sp, prompt_name="qa")
        return first, engine.stats()

    first, st = run(main())
    second = st.prompts["qa"].prefill_tokens - first
    assert first > 250 and second <= 32
    assert st.prompts["qa"].cached_tokens == st.cache_hits >= first - 32
    assert st.cache_queries > 2 * 250


# ------------------------------------------------------------------- streaming


def test_slow_consumer_gets_multi_token_deltas():
    async def main():
        engine = make()
        outs = []
        sp = SamplingParams(max_tokens=50)
        async for out in engine.generate("r", "p", sp, prompt_name="answer", script_key="q1"):
            outs.append(out)
            for _ in range(6):                           # let the engine run ahead
                await asyncio.sleep(0)
        return outs

    outs = run(main())
    assert joined(outs)[0] == SCRIPT[("answer", "q1")]
    assert max(len(o.token_ids) for o in outs) > 1


def test_abort_ends_the_stream_and_frees_kv():
    async def main():
        engine = make()
        total = engine.stats().kv_free_blocks
        sp = SamplingParams(max_tokens=500, ignore_eos=True)
        outs = []
        async for out in engine.generate("r", "p" * 100, sp):
            outs.append(out)
            if len(outs) == 3:
                await engine.abort("r")
        waiting = asyncio.ensure_future(collect(engine, "w", "q", sp))
        await asyncio.sleep(0)
        await engine.abort("w")
        late = await waiting
        await engine.abort("unknown")
        return total, engine.stats(), outs, late

    total, st, outs, late = run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert sum(len(o.token_ids) for o in outs) < 500
    assert late == [EngineOutput("", (), True, "abort")]
    assert st.kv_free_blocks == total and st.running == 0 and st.waiting == 0


def test_consumer_leaving_early_frees_kv():
    async def main():
        engine = make()
        total = engine.stats().kv_free_blocks
        gen = engine.generate("r", "prompt", SamplingParams(max_tokens=300, ignore_eos=True))
        await gen.__anext__()
        await gen.aclose()
        return total, engine.stats()

    total, st = run(main())
    assert st.kv_free_blocks == total and st.running == 0


def test_idle_engine_does_not_step():
    clock = VirtualClock()

    async def main():
        engine = make(clock)
        await collect(engine, "r", params=SamplingParams(max_tokens=5))
        steps, sleeps = engine.stats().steps, clock.sleeps
        for _ in range(50):
            await asyncio.sleep(0)
        assert (engine.stats().steps, clock.sleeps) == (steps, sleeps)
        await collect(engine, "r", params=SamplingParams(max_tokens=5))   # id reusable
        return engine.stats()

    assert run(main()).finished == 2


def test_per_prompt_stats():
    async def main():
        engine = make()
        sp = SamplingParams(max_tokens=10, ignore_eos=True)
        await asyncio.gather(collect(engine, "a", "alpha " * 50, sp, prompt_name="x"),
                             collect(engine, "b", "beta " * 50, sp, prompt_name="y"),
                             collect(engine, "c", "gamma " * 50, sp, prompt_name="y"))
        return engine.stats()

    st = run(main())
    assert st.prompts["x"].decode_tokens == 10 and st.prompts["y"].decode_tokens == 20
    assert st.prompts["x"].prefill_tokens == 1 + len(tokenize("alpha " * 50)[1])   # BOS
    assert st.prompts["y"].running == st.prompts["y"].waiting == 0
    assert st.decode_tokens == 30 and st.finished == 3 and st.steps >= 10 and st.busy_s > 0


def test_determinism():
    async def main():
        engine = make()
        sp = SamplingParams(max_tokens=64)
        res = await asyncio.gather(*(collect(engine, f"r{i}", f"prompt {i}", sp) for i in range(5)))
        return [joined(r) for r in res], engine.stats().steps, engine.stats().busy_s

    assert run(main()) == run(main())


def test_errors():
    async def main():
        engine = make(kv_capacity_tokens=64)
        with pytest.raises(ValueError, match="KV cache"):
            await collect(engine, "big", "word " * 200)
        gen = engine.generate("dup", "p", SamplingParams(max_tokens=50))
        await gen.__anext__()
        with pytest.raises(ValueError, match="already running"):
            await collect(engine, "dup", "p")
        with pytest.raises(ValueError, match="max_tokens"):
            await collect(engine, "zero", "p", SamplingParams(max_tokens=0))
        rest = [out async for out in gen]
        await engine.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await collect(engine, "late", "p")
        return rest

    assert run(main())[-1].finished


def test_shutdown_aborts_open_generations():
    async def main():
        engine = make()
        sp = SamplingParams(max_tokens=1000, ignore_eos=True)
        tasks = [asyncio.ensure_future(collect(engine, f"r{i}", "p", sp)) for i in range(3)]
        for _ in range(10):
            await asyncio.sleep(0)
        await engine.shutdown()
        return await asyncio.gather(*tasks)

    for outs in run(main()):
        assert outs[-1].finish_reason == "abort"
