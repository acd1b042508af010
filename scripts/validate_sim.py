"""Check the sim engine's step model against published figures (sources: workers/lm/sim_model.py).

Runs the pure model (workers/lm/sim_model.py) on a virtual clock, no sleeping, and
prints a markdown table: figure, published, sim, ratio (sim / published).

    .venv/bin/python scripts/validate_sim.py                     # A100 defaults
    .venv/bin/python scripts/validate_sim.py --set step_per_seq_ms=0.19
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alto_workers.lm.sim_model import SimCore, SimParams, SimSeq  # noqa: E402

SHAREGPT_IN, SHAREGPT_OUT = 202, 179   # mean ShareGPT lengths of the vLLM v0.6.0 runs


@dataclass
class Req:
    arrival: float
    seq: SimSeq
    first: float = math.nan
    end: float = math.nan


def make_seq(rid: str, prompt_len: int, out_len: int, shared: int = 0, block: int = 16) -> SimSeq:
    # Synthetic block hashes: the blocks of the first ``shared`` tokens are common to all.
    n, common = prompt_len // block, shared // block
    hashes = [hash(("shared", i)) if i < common else hash((rid, i)) for i in range(n)]
    return SimSeq(rid, "bench", prompt_len, hashes, out_len)


def run(params: SimParams, reqs: list[Req]) -> float:
    """Drive the core on a virtual clock; fills first/end times, returns the makespan."""
    core = SimCore(params)
    reqs = sorted(reqs, key=lambda r: r.arrival)
    by_seq = {id(r.seq): r for r in reqs}
    now, i = 0.0, 0
    while i < len(reqs) or core.has_work():
        if not core.has_work():
            now = max(now, reqs[i].arrival)
        while i < len(reqs) and reqs[i].arrival <= now:
            core.add(reqs[i].seq)
            i += 1
        res = core.step()
        if res is None:
            continue
        now += res.duration
        for seq in res.started:
            by_seq[id(seq)].first = now
        for seq in res.finished:
            by_seq[id(seq)].end = now
    return now


def tpot(r: Req) -> float:
    return (r.end - r.first) / (r.seq.n_steps - 1)


def poisson(params: SimParams, rate: float, n: int, seed: int = 0) -> list[Req]:
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for k in range(n):
        if rate != math.inf:
            t += rng.expovariate(rate)
        reqs.append(Req(t, make_seq(f"r{k}", SHAREGPT_IN, SHAREGPT_OUT, 0, params.block_size)))
    run(params, reqs)
    return reqs


Row = tuple[str, float, float, str]
MS = 1000.0


def rows(params: SimParams, n: int) -> list[Row]:
    out: list[Row] = []

    # vLLM v0.6.0 blog, A100_8B: mean TPOT against Poisson request rate.
    src = "vLLM 0.6.0 blog"
    for rate, pub in ((2, 14), (4, 15), (8, 17), (16, 26), (32, 40)):
        reqs = poisson(params, rate, n)
        mean_tpot = statistics.mean(map(tpot, reqs))
        out.append((f"mean TPOT, {rate} req/s (ms)", pub, MS * mean_tpot, src))
    reqs = poisson(params, math.inf, n)
    out.append(("mean TPOT, all at once (ms)", 120, MS * statistics.mean(map(tpot, reqs)), src))
    out.append(("max throughput (req/s)", 19, n / max(r.end for r in reqs), src))

    # sglang benchmark_vllm_060 README: medians at 4 and 8 req/s.
    src = "sglang vllm_060"
    for rate, pub_ttft, pub_tpot in ((4, 100, 14.1), (8, 120, 17.1)):
        reqs = poisson(params, rate, n)
        ttft = statistics.median(r.first - r.arrival for r in reqs)
        out.append((f"median TTFT, {rate} req/s (ms)", pub_ttft, MS * ttft, src))
        median_tpot = statistics.median(map(tpot, reqs))
        out.append((f"median TPOT, {rate} req/s (ms)", pub_tpot, MS * median_tpot, src))

    # TensorRT-LLM performance.md: TTFT at batch 1.
    for prompt, pub in ((128, 16), (2048, 133)):
        reqs = [Req(0.0, make_seq("one", prompt, 1, 0, params.block_size))]
        run(params, reqs)
        name = f"TTFT, {prompt}-token prompt, batch 1 (ms)"
        out.append((name, pub, MS * reqs[0].first, "TensorRT-LLM"))

    # Sarathi-Serve Table 3: one decode iteration, batch 32, 4k context.
    step = params.step_time(32, 32, 32 * 4096)
    out.append(("decode step, batch 32 x 4k ctx (ms)", 20, MS * step, "Sarathi-Serve"))

    # vLLM V1 alpha blog: throughput with prefix caching on / off, 2,048 in / 128 out,
    # all requests submitted at once; the first hit_% of every prompt is shared.
    m = max(64, n // 5)
    for hit, pub in ((0, 0.99), (25, 1.23), (50, 1.71), (75, 2.91)):
        shared = 2048 * hit // 100
        tput = {}
        for caching in (False, True):
            p = dataclasses.replace(params, enable_prefix_caching=caching)
            reqs = [Req(0.0, make_seq(f"r{k}", 2048, 128, shared, p.block_size)) for k in range(m)]
            tput[caching] = m / run(p, reqs)
        gain = tput[True] / tput[False]
        out.append((f"prefix caching gain, {hit}% hits (x)", pub, gain, "vLLM V1 blog (H100)"))
    return out


def parse_overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        low = value.lower()
        out[key] = low == "true" if low in ("true", "false") else float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=1000, help="requests per load point")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a SimParams field"
    )
    args = ap.parse_args(argv)
    params = SimParams.from_dict(parse_overrides(args.set))
    t0 = time.perf_counter()
    table = rows(params, args.requests)
    print("| figure | published | sim | ratio | source |")
    print("|---|---:|---:|---:|---|")
    for name, pub, sim, source in table:
        print(f"| {name} | {pub:g} | {sim:.3g} | {sim / pub:.2f} | {source} |")
    elapsed = time.perf_counter() - t0
    print(f"\n({args.requests} requests per load point, {elapsed:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
