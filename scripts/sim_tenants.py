#!/usr/bin/env python3
"""Placement policies on a multi-tenant serving trace, in simulated time (issue 15, item 4).

The simulation is scripts/sim_policies.py's (``simulate``): each member is the sim engine's
pure core (workers/lm/sim_model.py: continuous batching, chunked prefill, KV admission,
block-hashed prefix cache, A100 / Llama-3-8B step model), ``--senders`` senders each with
their own policy object and their own view of the loads, and a broker running ``place``
every second from the members' figures and KV reports. Only the trace is new:

* ``--prompts`` tenants' prompts, each with a shared prefix of 1,024-4,096 tokens (fixed
  per prompt: evenly spread over that range, in a seeded order), a variable part of
  ``--var`` tokens on average (gamma, shape 4) and ``--output-tokens`` output tokens
  (gamma, shape 2);
* Poisson arrivals at ``--rate`` requests/s; each request's prompt drawn by Zipf
  popularity (``--zipf`` exponent) whose ranking is re-drawn every ``--shift`` seconds
  (the hot tenant of one minute is the cold one of the next);
* ``--instances`` members with ``--kv-tokens`` of KV each: an 80 GB GPU serving an 8B
  model (Llama-3-8B fp16: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes =
  131,072 B a token; vLLM reports 410,128 tokens of KV on an H100-80GB at
  gpu_memory_utilization 0.9, i.e. ~54 GB of KV next to ~16 GB of weights).

Every policy runs on the same trace in the same run, for ``--seeds`` seeds (one trace
each). Printed: per policy the median and the range over seeds of p50 / p99 latency
(arrival at a member to last token), p99 time to first token, prefix-cache hit rate
(prompt tokens served from the cache / prompt tokens), max/mean time-averaged load.
Written under ``--out-dir`` (default out/sim_tenants): results.md, results.json, compare.png.

    .venv/bin/python scripts/sim_tenants.py                     # 5 seeds x 600 s, ~3 min
    .venv/bin/python scripts/sim_tenants.py --seeds 1 --duration 120   # a quick look

A policy may carry parameters: ``prompt-aware:ample_kv=0`` (a label of its own).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim_policies import Req, simulate  # noqa: E402  (scripts/sim_policies.py)

from alto_bus.scheduling import Policy, make_policy  # noqa: E402

POLICIES = "prompt-aware,sglang-cache-aware,preble,least-loaded,round-robin"


def tenant_prefixes(n: int) -> dict[str, int]:
    """Prompt -> shared prefix tokens: evenly spread over 1,024-4,096, in a fixed order."""
    sizes = [1024 + round(k * 3072 / max(1, n - 1)) for k in range(n)]
    random.Random("tenants").shuffle(sizes)
    return {f"t{k:02d}": s for k, s in enumerate(sizes)}


def zipf_weights(n: int, s: float) -> list[float]:
    w = [1.0 / (r + 1) ** s for r in range(n)]
    total = sum(w)
    return [x / total for x in w]


def make_trace(prefixes: dict[str, int], rate: float, duration: float, shift: float,
               zipf: float, var: int, out: int, seed: int) -> list[Req]:
    """Poisson arrivals; each picks a prompt by Zipf rank, the ranking re-drawn every
    ``shift`` seconds."""
    rng = random.Random(f"sim_tenants:{seed}")
    names = sorted(prefixes)
    weights = zipf_weights(len(names), zipf)
    ranking = names[:]
    epoch = -1
    calls: list[Req] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return calls
        if int(t // shift) != epoch:
            epoch = int(t // shift)
            rng.shuffle(ranking)              # the popularity shift
        p = rng.choices(ranking, weights)[0]
        calls.append(Req(p, t, prefixes[p], max(4, int(rng.gammavariate(4.0, var / 4.0))),
                         max(2, int(rng.gammavariate(2.0, out / 2.0)))))


def parse_policy(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    kw: dict = {}
    for item in filter(None, rest.split(";")):
        k, _, v = item.partition("=")
        try:
            kw[k] = int(v)
        except ValueError:
            try:
                kw[k] = float(v)
            except ValueError:
                kw[k] = v
    return name, kw


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default=POLICIES,
                    help="comma-separated; name:key=value;key=value for parameters")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--instances", type=int, default=6)
    ap.add_argument("--kv-tokens", type=int, default=410_000)
    ap.add_argument("--rate", type=float, default=90.0, help="requests/s, whole pool")
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--shift", type=float, default=60.0, help="seconds between popularity shifts")
    ap.add_argument("--var", type=int, default=250, help="mean variable prompt part, tokens")
    ap.add_argument("--output-tokens", dest="out_tokens", type=int, default=150,
                    help="mean output tokens")
    ap.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--load-period", type=float, default=0.05)
    ap.add_argument("--round", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=float, default=1800.0,
                    help="wall seconds: no new seed starts after this")
    ap.add_argument("--out-dir", default="out/sim_tenants")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--in-step", action="store_true",
                    help="start every sender's near-tie rotation at 0, as before the fix "
                         "(BENCHMARKS.md: in step, the senders herd)")
    args = ap.parse_args(argv)

    specs = [s for s in args.policies.split(",") if s]
    for spec in specs:
        name, kw = parse_policy(spec)
        make_policy(name, **kw)   # fail early on a typo
    prefixes = tenant_prefixes(args.prompts)
    rows: dict[str, list[dict]] = {s: [] for s in specs}
    t0 = time.perf_counter()
    seeds_done = 0
    for k in range(args.seeds):
        if time.perf_counter() - t0 > args.budget:
            print(f"budget of {args.budget:g} s spent: stopping after {seeds_done} seed(s)",
                  file=sys.stderr)
            break
        seed = args.seed + k
        trace = make_trace(prefixes, args.rate, args.duration, args.shift, args.zipf,
                           args.var, args.out_tokens, seed)
        for spec in specs:
            name, kw = parse_policy(spec)
            made: list[Policy] = []

            def make(name: str = name, kw: dict = kw, made: list = made) -> Policy:
                policy = make_policy(name, **kw)
                made.append(policy)
                return policy

            t1 = time.perf_counter()
            fresh = [Req(r.prompt, r.t_arr, r.prefix, r.var, r.out) for r in trace]
            res = simulate(make, fresh, args.instances, args.kv_tokens, prefixes, args.round,
                           args.load_period, args.senders, report_kv=True, stagger=not args.in_step)
            res.pop("placement")
            res["seed"] = seed
            res["routed"] = _routed(made)
            rows[spec].append(res)
            print(f"[{time.perf_counter() - t0:6.0f} s] seed {seed} {spec:<22} "
                  f"p50 {res['p50'] * 1e3:7,.0f} ms  p99 {res['p99'] * 1e3:7,.0f} ms  "
                  f"hit {res['hit']:.1%}  max/mean load {res['imbalance']:.2f}  "
                  f"({time.perf_counter() - t1:.0f} s)", file=sys.stderr, flush=True)
        seeds_done += 1

    n_calls = len(trace)
    head = (f"{args.instances} members, KV {args.kv_tokens:,} tokens each, {args.prompts} "
            f"prompts (prefixes {min(prefixes.values()):,}-{max(prefixes.values()):,} tokens, "
            f"variable part ~{args.var}, output ~{args.out_tokens}), Zipf {args.zipf:g} "
            f"re-ranked every {args.shift:g} s, {args.rate:g} req/s for {args.duration:g} s "
            f"(~{n_calls:,} requests a seed), {args.senders} senders, loads every "
            f"{args.load_period * 1e3:g} ms, rounds every {args.round:g} s; {seeds_done} seed(s) "
            f"from {args.seed}; median [min-max] over seeds; simulated engine"
            + ("; senders' rotations in step (before the fix)" if args.in_step else ""))
    table = _table(specs, rows)
    print(f"\n{head}\n\n{table}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"{head}\n\n{table}\n")
    (out / "results.json").write_text(json.dumps(
        {"args": vars(args), "prefixes": prefixes, "rows": rows}, indent=1, default=str))
    if not args.no_plot and seeds_done:
        _plot(specs, rows, out / "compare.png", head)
        print(f"plot: {out / 'compare.png'}")
    return 0


def _routed(made: list[Policy]) -> dict[str, int]:
    """SGLang-style routing reasons summed over the senders (empty for other policies)."""
    out: dict[str, int] = {}
    for p in made:
        for k, v in getattr(p, "routed", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _fmt(s: dict[str, float], scale: float, pattern: str) -> str:
    return (f"{pattern.format(s['median'] * scale)} "
            f"[{pattern.format(s['min'] * scale)}-{pattern.format(s['max'] * scale)}]")


def _table(specs: list[str], rows: dict[str, list[dict]]) -> str:
    lines = ["| policy | p50 ms | p99 ms | p99 TTFT ms | prefix-hit rate | max/mean load "
             "| placement changes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for spec in specs:
        rs = rows[spec]
        if not rs:
            continue
        unfinished = sum(r["unfinished"] for r in rs)
        warn = f" ({unfinished} unfinished)" if unfinished else ""
        col = {k: summary([r[k] for r in rs]) for k in ("p50", "p99", "ttft_p99", "hit",
                                                        "imbalance", "changes")}
        lines.append(f"| {spec}{warn} | {_fmt(col['p50'], 1e3, '{:,.0f}')} "
                     f"| {_fmt(col['p99'], 1e3, '{:,.0f}')} "
                     f"| {_fmt(col['ttft_p99'], 1e3, '{:,.0f}')} "
                     f"| {_fmt(col['hit'], 100, '{:.1f}')} % "
                     f"| {_fmt(col['imbalance'], 1, '{:.2f}')} "
                     f"| {_fmt(col['changes'], 1, '{:.0f}')} |")
    return "\n".join(lines)


def _plot(specs: list[str], rows: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [s for s in specs if rows[s]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, key, scale, label in ((axes[0], "p50", 1e3, "p50 latency, ms"),
                                  (axes[1], "p99", 1e3, "p99 latency, ms"),
                                  (axes[2], "hit", 100, "prefix-cache hit rate, %")):
        for x, spec in enumerate(specs):
            vals = [r[key] * scale for r in rows[spec]]
            med = statistics.median(vals)
            ax.bar(x, med, color="#4c72b0" if spec.startswith("prompt-aware") else "#999999")
            ax.scatter([x] * len(vals), vals, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(specs)))
        ax.set_xticklabels(specs, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        if key == "hit":
            lo = min(r["hit"] for s in specs for r in rows[s]) * 100
            ax.set_ylim(max(0.0, math.floor(lo / 5) * 5 - 5), 100)
    fig.suptitle("bars: median over seeds, dots: each seed (simulated engine)", fontsize=9)
    fig.text(0.5, 0.005, title[:220], ha="center", fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
