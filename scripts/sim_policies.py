#!/usr/bin/env python3
"""Compare the LM-pool scheduling policies on one arrival trace, in simulated time.

A design aid for tuning the prompt-aware policy, not the benchmark (that runs the whole
system). No sockets, no real time: a discrete-event model of

* a pool of LM instances, each the ``sim`` engine's pure core (workers/lm/sim_model.py):
  continuous batching with chunked prefill, the sim engine's step model
  ``max(a + b*B, (D + P)/R) + c*ctx/1000`` with its A100 / Llama-3-8B defaults, KV
  admission, and a block-hashed prefix cache (hits skip prefill; a block in use cannot
  be evicted; idle ones go least recently released first);
* FacTool-like prompts (FacTool's prompt sizes) whose calls arrive in fan-out bursts:
  each pipeline request brings one answer and one claim-extraction call, about 2 query
  calls per claim and one verification call per claim; halfway through, the claims per
  answer triple for the verification stage (its fan-out triples);
* ``--senders`` senders (upstream stage instances), each with its own policy object,
  routing the calls that come through it with ``choose`` from loads refreshed every
  ``--load-period`` plus its own sends since (it cannot see the others'); a broker with
  one more policy object runs ``place`` every ``--round`` seconds from the figures the
  instances report and the spills the senders counted.

Prints a markdown table: latency (arrival at the instance to last token), prefix-cache
hit rate (prompt tokens served from cache / prompt tokens) and load balance (time-averaged
queue + running per instance, max over mean).

    .venv/bin/python scripts/sim_policies.py                      # both scenarios
    .venv/bin/python scripts/sim_policies.py --scenario pressured --seeds 3 --rate 10
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alto_bus.scheduling import (  # noqa: E402
    Placement,
    Policy,
    PromptFigures,
    RoundInput,
    available_policies,
    make_policy,
)
from alto_workers.lm.sim_model import SimCore, SimParams, SimSeq, StepResult  # noqa: E402


@dataclass(frozen=True)
class PromptSpec:
    name: str
    prefix: int      # shared fixed part, tokens (FacTool's templates, ~4 chars/token)
    var: int         # mean variable part, tokens
    out: int         # mean output, tokens


# FacTool's three prompts plus the chatbot's own (its prefix size is an assumption).
PROMPTS = [
    PromptSpec("answer", 448, 40, 180),
    PromptSpec("claims", 576, 180, 120),
    PromptSpec("queries", 288, 30, 40),
    PromptSpec("verify", 336, 350, 100),
]


@dataclass(eq=False)  # identity comparison: requests are removed from lists
class Req:
    prompt: str
    t_arr: float
    prefix: int
    var: int
    out: int
    t_first: float = -1.0
    t_done: float = -1.0
    cached: int = 0


# -- the trace ----------------------------------------------------------------------------


def make_trace(rate: float, duration: float, shift: float, seed: int,
               specs: list[PromptSpec], variants: int = 1) -> list[Req]:
    """Pipeline requests arrive Poisson; each fans out into LM calls that arrive in
    bursts (a streamed JSON array emits its items a few tens of ms apart). With
    ``variants`` > 1, each request belongs to one of that many pipelines sharing the
    pool, whose prompts have the same sizes but different prefixes."""
    rng = random.Random(seed)
    by = {s.name: s for s in specs}
    calls: list[Req] = []
    tag = ""

    def call(name: str, t: float) -> None:
        s = by.get(name)
        if s is None:  # a stage left out with --prompts
            return
        name += tag
        var = max(4, int(rng.gammavariate(4.0, s.var / 4.0)))
        out = max(2, int(rng.gammavariate(2.0, s.out / 2.0)))
        calls.append(Req(name, t, s.prefix, var, out))

    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        tag = f"#{rng.randrange(variants)}" if variants > 1 else ""
        claims = 1 + _poisson(rng, 2.0)                    # claims in the answer
        verify_claims = claims if t < shift else 3 * claims  # the shift: fan-out x3
        call("answer", t)
        call("claims", t + rng.uniform(0.5, 2.0))
        t_q = t + rng.uniform(1.0, 3.0)
        for k in range(2 * claims):
            call("queries", t_q + 0.03 * k)
        t_v = t + rng.uniform(2.0, 4.0)
        for k in range(verify_claims):
            call("verify", t_v + 0.03 * k)
    calls = [c for c in calls if c.t_arr < duration]
    calls.sort(key=lambda c: c.t_arr)
    return calls


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# -- one LM instance ------------------------------------------------------------------------


class Instance:
    """The sim engine's pure core (``workers/lm/sim_model.py``: step model, chunked
    prefill, KV admission, block-hashed prefix cache) on the simulation's clock."""

    def __init__(self, name: str, params: SimParams, prefix_hashes: dict[str, list[int]]):
        self.name = name
        self.core = SimCore(params)
        self.block = params.block_size
        self.prefix_hashes = prefix_hashes
        self.busy = False
        self.load_area = 0.0                     # integral of (queued + running) dt
        self._seen: dict[str, tuple[int, int, int]] = {}   # counters at the last report
        self._serial = 0

    def load(self) -> int:
        return len(self.core.waiting) + self.core.running()

    def add(self, r: Req) -> None:
        # Prefix blocks hash the same for every call of a prompt; the rest are unique.
        self._serial += 1
        own = (r.prefix + r.var) // self.block - len(self.prefix_hashes[r.prompt])
        hashes = self.prefix_hashes[r.prompt] + [
            hash((self.name, self._serial, k)) for k in range(max(0, own))]
        self.core.add(SimSeq(rid=f"{self.name}/{self._serial}", prompt_name=r.prompt,
                             prompt_len=r.prefix + r.var, hashes=hashes, n_steps=r.out,
                             payload=r))

    def figures(self, interval: float) -> dict[str, PromptFigures]:
        out = {}
        steps = self.core.steps
        for p, c in self.core.prompts.items():
            prefill, cached, decoded = c.prefill, c.cached, c.decode_tokens(steps)
            p0, c0, d0 = self._seen.get(p, (0, 0, 0))
            self._seen[p] = (prefill, cached, decoded)
            prompt_tokens = (prefill - p0) + (cached - c0)
            out[p] = PromptFigures(
                prefill_tps=prompt_tokens / interval, decode_tps=(decoded - d0) / interval,
                queued=c.waiting, running=c.running,
                hit_rate=(cached - c0) / prompt_tokens if prompt_tokens > 0 else 0.0)
        return out


# -- the event loop ---------------------------------------------------------------------------


ARRIVE, STEP, ROUND, REFRESH = 0, 1, 2, 3


def simulate(make: Callable[[], Policy], trace: list[Req], n_instances: int,
             kv_tokens: int, prefix_tokens: dict[str, int], round_s: float,
             load_period: float, n_senders: int, report_kv: bool = False, stagger: bool = False) -> dict:
    """One policy on one trace. ``report_kv``: instances report their KV cache (capacity,
    held by sequences) to ``place`` as the sim engine's workers do in the real system.
    ``stagger``: each sender's near-tie rotation starts at its own random offset, as the
    real senders' do (ConsumerRoutes); without it they start in step (before that fix)."""
    pool = [f"i{k}" for k in range(n_instances)]
    params = SimParams(kv_capacity_tokens=kv_tokens)
    hashes = {p: [hash((p, k)) for k in range(n // params.block_size)]
              for p, n in prefix_tokens.items()}
    inst = {name: Instance(name, params, hashes) for name in pool}
    broker = make()
    senders = [make() for _ in range(n_senders)]
    if stagger:
        for k, sender in enumerate(senders):
            sender.start_turn(random.Random(k).randrange(1 << 16))
    placement = broker.place(RoundInput(instances=pool, prefix_tokens=prefix_tokens,
                                        prompts=sorted(prefix_tokens)))
    views = [{name: 0.0 for name in pool} for _ in senders]   # each sender's loads
    events: list = []
    order = 0

    def push(t: float, kind: int, payload: object) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, payload))

    for k, r in enumerate(trace):
        push(r.t_arr, ARRIVE, (k % n_senders, r))
    end = trace[-1].t_arr if trace else 0.0
    push(round_s, ROUND, None)
    push(load_period, REFRESH, None)
    pending: dict[str, StepResult] = {}      # instance -> the step it is running
    finished: list[Req] = []
    last_t = 0.0
    changes = 0
    spills = 0

    def kick(i: Instance, now: float) -> None:
        res = i.core.step()
        i.busy = res is not None
        if res is not None:
            pending[i.name] = res
            push(now + res.duration, STEP, i)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        for i in inst.values():
            i.load_area += i.load() * (now - last_t)
        last_t = now
        if kind == ARRIVE:
            k, r = payload
            name = senders[k].choose(r.prompt, placement, views[k])
            views[k][name] += 1
            i = inst[name]
            i.add(r)
            if not i.busy:
                kick(i, now)
        elif kind == STEP:
            i = payload
            res = pending.pop(i.name)
            for seq in res.started:
                seq.payload.t_first = now
            for seq in res.finished:
                seq.payload.t_done = now
                seq.payload.cached = seq.cached_tokens
                finished.append(seq.payload)
            kick(i, now)
        elif kind == REFRESH:
            fresh = {name: float(i.load()) for name, i in inst.items()}
            views = [dict(fresh) for _ in senders]
            if now < end or any(i.busy for i in inst.values()):
                push(now + load_period, REFRESH, None)
        elif kind == ROUND:
            figures = {name: i.figures(round_s) for name, i in inst.items()}
            drained: dict[str, dict[str, int]] = {}
            for sender in senders:
                for p, per in sender.drain_spills().items():
                    for name, c in per.items():
                        drained.setdefault(p, {})[name] = drained.get(p, {}).get(name, 0) + c
            spills += sum(sum(v.values()) for v in drained.values())
            kv = {name: (i.core.kv.num_blocks * i.block,
                         (i.core.kv.num_blocks - i.core.kv.available()) * i.block)
                  for name, i in inst.items()} if report_kv else {}
            placement = broker.place(RoundInput(
                instances=pool, figures=figures, prefix_tokens=prefix_tokens,
                previous=placement, spills=drained, prompts=sorted(prefix_tokens), kv=kv))
            changes += sum(len(d.added) + len(d.removed) for d in placement.decisions)
            if now < end or any(i.busy for i in inst.values()):
                push(now + round_s, ROUND, None)

    lat = sorted(r.t_done - r.t_arr for r in finished)
    ttft = sorted(r.t_first - r.t_arr for r in finished)
    areas = [i.load_area / last_t for i in inst.values()] if last_t else [0.0]
    tok = sum(r.prefix + r.var for r in finished)
    cached = sum(r.cached for r in finished)
    return {
        "n": len(finished), "unfinished": len(trace) - len(finished),
        "mean": sum(lat) / len(lat), "p50": _pct(lat, 50), "p99": _pct(lat, 99),
        "ttft_p99": _pct(ttft, 99), "hit": cached / tok if tok else 0.0,
        "imbalance": max(areas) / (sum(areas) / len(areas)) if sum(areas) else 1.0,
        "mean_load": sum(areas) / len(areas), "changes": changes, "spills": spills,
        "placement": placement,
    }


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


def _fresh(trace: list[Req]) -> list[Req]:
    return [Req(r.prompt, r.t_arr, r.prefix, r.var, r.out) for r in trace]


# Named set-ups; explicit flags override them.
SCENARIOS = {
    # The brief: FacTool's prompts on a pool of A100/H100-class instances (KV is ample).
    "factool": {"instances": 6, "prompts": 4, "variants": 1, "kv_tokens": 410_000,
                "rate": 14.0},
    # Eight pipelines (32 prefixes) on instances with little KV: an 8B model on a 24 GB
    # GPU keeps ~5 GB of KV, about 40k tokens at 128 KiB/token (an inference).
    "pressured": {"instances": 6, "prompts": 4, "variants": 8, "kv_tokens": 40_000,
                  "rate": 14.0},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="both", choices=[*SCENARIOS, "both"])
    ap.add_argument("--instances", type=int)
    ap.add_argument("--prompts", type=int, choices=range(1, len(PROMPTS) + 1),
                    metavar=f"1..{len(PROMPTS)}")
    ap.add_argument("--variants", type=int,
                    help="pipelines sharing the pool, each with its own prefixes")
    ap.add_argument("--rate", type=float, help="pipeline requests/s")
    ap.add_argument("--kv-tokens", type=int, help="KV cache per instance, tokens")
    ap.add_argument("--duration", type=float, default=120.0, help="simulated seconds")
    ap.add_argument("--load-period", type=float, default=0.05,
                    help="seconds between the senders' load refreshes")
    ap.add_argument("--senders", type=int, default=4,
                    help="senders routing calls, each with its own view of the loads")
    ap.add_argument("--round", type=float, default=1.0, help="seconds between placements")
    ap.add_argument("--seeds", type=int, default=1, help="traces to average over")
    ap.add_argument("--seed", type=int, default=1)
    # The original four by default (scripts/sim_tenants.py compares the public ones too).
    ap.add_argument("--policies", default=",".join(p for p in available_policies()
                                                   if p not in ("sglang-cache-aware", "preble")))
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="prompt-aware tuning, e.g. --param spill_ratio=2")
    ap.add_argument("--show-placement", action="store_true")
    args = ap.parse_args(argv)
    params: dict[str, float] = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = float(v) if "." in v else int(v)
    for name in (SCENARIOS if args.scenario == "both" else [args.scenario]):
        setup = {k: (getattr(args, k) if getattr(args, k) is not None else v)
                 for k, v in SCENARIOS[name].items()}
        run_scenario(name, args, params, **setup)
    return 0


def run_scenario(scenario: str, args: argparse.Namespace, params: dict, *, instances: int,
                 prompts: int, variants: int, kv_tokens: int, rate: float) -> None:
    specs = PROMPTS[-prompts:]
    prefix_tokens = {s.name + (f"#{v}" if variants > 1 else ""): s.prefix
                     for s in specs for v in range(variants)}
    names = [p for p in args.policies.split(",") if p]
    rows: dict[str, list[dict]] = {p: [] for p in names}
    t0 = time.perf_counter()
    n_calls = 0
    for s in range(args.seeds):
        trace = make_trace(rate, args.duration, args.duration / 2, args.seed + s, specs,
                           variants)
        n_calls += len(trace)
        for name in names:
            kw = params if name == "prompt-aware" else {}
            rows[name].append(simulate(lambda name=name, kw=kw: make_policy(name, **kw),
                                       _fresh(trace), instances, kv_tokens, prefix_tokens,
                                       args.round, args.load_period, args.senders))
    wall = time.perf_counter() - t0

    print(f"### {scenario}: {instances} instances, {len(specs)} prompts x {variants} "
          f"pipeline(s) ({', '.join(f'{s.name} {s.prefix}' for s in specs)} prefix tokens), "
          f"{rate:g} pipeline req/s, {args.duration:g} s, verify fan-out x3 at "
          f"{args.duration / 2:g} s, KV {kv_tokens:,} tokens/instance, "
          f"{args.senders} senders, loads every {args.load_period * 1e3:g} ms, "
          f"{args.seeds} seed(s), {n_calls // args.seeds:,} LM calls/seed "
          f"(simulated in {wall:.1f} s)\n")
    print("| policy | mean (ms) | p50 (ms) | p99 (ms) | p99 TTFT (ms) | prefix-cache hit rate "
          "| max/mean load | mean load | placement changes | spills |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rs = rows[name]

        def avg(key: str, rs: list[dict] = rs) -> float:
            return sum(r[key] for r in rs) / len(rs)

        unfinished = sum(r["unfinished"] for r in rs)
        warn = f" ({unfinished} unfinished)" if unfinished else ""
        print(f"| {name}{warn} | {avg('mean') * 1e3:,.0f} | {avg('p50') * 1e3:,.0f} "
              f"| {avg('p99') * 1e3:,.0f} | {avg('ttft_p99') * 1e3:,.0f} | {avg('hit'):.1%} "
              f"| {avg('imbalance'):.2f} | {avg('mean_load'):.1f} | {avg('changes'):.0f} "
              f"| {avg('spills'):.0f} |")
    print()
    if args.show_placement:
        for name in names:
            pl: Placement = rows[name][-1]["placement"]
            print(f"{name}: {dict(pl.prompts)}\n")


if __name__ == "__main__":
    raise SystemExit(main())
