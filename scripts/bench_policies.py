"""LM-pool scheduling policies on one arrival trace, through the whole system (sim engine).

    .venv/bin/python scripts/bench_policies.py            # ~10 minutes
    .venv/bin/python scripts/bench_policies.py --quick    # ~5 minutes (phase 2 too short to separate policies)
    .venv/bin/python scripts/bench_policies.py --policies prompt-aware,round-robin --kv-tokens 410000

For each policy (``round-robin``, ``least-loaded``, ``affinity``, ``prompt-aware``) this
launches the same topology as real processes -- an ``intake`` function stage and four LM
stages on one ``[[pool]]`` of sim engines (``tests/integration/pool_script.py``, the
``bench`` workload) -- and replays the same seeded Poisson arrival trace against it
through a Client. The workload is a chain ``triage -> plan -> expand -> check`` whose
prompts have fixed prefixes of 450 / 550 / 350 / 600 tokens; a request makes 1 / 1 / 2 /
3 calls of them, and halfway through the measured part ``expand``'s fan-out triples, so
``check`` gets 9 calls per request instead of 3 (skewed demand that shifts). Every result
is compared with the script's exact expectation (``pool_script.expected``).

Time is emulated time: the sim's ``time_scale`` slows the emulated GPU clock uniformly
(wall = emulated x time_scale) so that this 2-core machine's CPU, which also runs the
bus, the other stages, the client and whatever else runs on it, is not what saturates.
Rates are emulated requests/s and latencies emulated seconds (wall / time_scale); the
bus's own delays are divided by the same factor, and so are the broker's rounds (one a
second of wall time) and load reports (every heartbeat), which the report states.

Figures per policy (requests that arrive after the warm-up):
  mean / p50 / p99 / max latency   end to end, submit to result; a request without a
                       result when the drain deadline passes counts as infinitely late
  throughput           completed requests / (last completion - first arrival)
  goodput at target    requests that completed within ``--target`` s / measured span:
                       the throughput the policy delivers at that latency objective
  hit rate             prefix-cache hit rate (prompt tokens served from the cache /
                       prompt tokens), pool-wide, over the measured part (from each
                       member's cumulative hit rate in ``alto status`` at the start and the
                       end, weighted by its LM calls x prompt tokens: an estimate, see
                       ``hit_rate_window``)
  max/mean load        time-averaged load per instance (``member_loads`` of ``alto status``:
                       the depth its stage instances report, queued + running generations,
                       each generation counted twice today), most loaded over the mean,
                       sampled every 0.5 s wall

Output (``--out``, default out/bench_policies): ``results.md`` (the table, also printed),
``results.json`` (everything, with the status samples), ``load_per_instance.png`` (load
per instance over time, prompt-aware and round-robin first) and
``placement_prompt_aware.png`` (instances per prompt over time).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import random
import shlex
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus import Client  # noqa: E402
from alto_bus.deploy.supervisor import StatusProbe, Supervisor  # noqa: E402
from benchkit import machine_cpu, percentile, proc_cpu  # noqa: E402  (scripts/benchkit.py)
from alto_bus.scheduling import make_policy  # noqa: E402
from tests.integration import pool_script as ps  # noqa: E402
from tests.support import write_topology  # noqa: E402
from alto_workers.lm.sim_model import SimParams, tokenize  # noqa: E402

POLICIES = ("round-robin", "least-loaded", "affinity", "prompt-aware")
WORKLOAD = "bench"


# ------------------------------------------------------------------------------ the trace


def arrival_trace(seed: int, rate: float, warmup: float, duration: float) -> list[tuple[float, str]]:
    """(emulated arrival time, request id) for Poisson arrivals over warm-up + measured
    time; requests arriving in the second half of the measured part are phase 2."""
    rng = random.Random(f"bench_policies:{seed}:{rate:.6f}")
    shift = warmup + duration / 2
    out, t, n = [], 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= warmup + duration:
            return out
        out.append((t, ps.rid(n, 2 if t >= shift else 1)))
        n += 1


def prompt_tokens() -> dict[str, float]:
    """Mean prompt length of each prompt in sim tokens (its prefix plus a typical input)."""
    out = {}
    for p in ps.WORKLOADS[WORKLOAD]:
        sample = []
        for n in range(20):
            ident = ps.rid(n, 1 + n % 2)
            value = ident if p.reads == "rid" else ps.output_text(WORKLOAD, p, ident + ".0").split("\n")[0]
            sample.append(len(tokenize(ps.template(WORKLOAD, p).format(**{p.reads: value}))[1]) + 1)
        out[p.name] = statistics.fmean(sample)
    return out


# ----------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Every ``period`` s of wall time: the pool's status (placement, member loads, hit
    rates, demand, decisions), LM calls per member and prompt, and machine CPU use."""

    def __init__(self, control: str, period: float = 0.5) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.control = control
        self.period = period
        self.stop_flag = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.decisions: dict[tuple[int, str], dict] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        busy0, tot0 = machine_cpu()
        with StatusProbe(self.control) as probe:
            while not self.stop_flag.wait(self.period):
                busy1, tot1 = machine_cpu()
                cpu = (busy1 - busy0) / (tot1 - tot0) if tot1 > tot0 else 0.0
                busy0, tot0 = busy1, tot1
                st = probe.query(timeout=2.0)
                if st is None:
                    continue
                self.add(st, cpu)

    def add(self, st: dict, cpu: float = 0.0) -> dict:
        pool = st["pools"]["llm"]
        calls: dict[str, dict[str, int]] = {}
        for p in ps.WORKLOADS[WORKLOAD]:
            for inst in st["stages"][p.name]["instances"]:
                member = f"{inst['host']}:{inst['pid']}"
                calls.setdefault(member, {})[p.name] = int(inst.get("stats", {}).get("messages_in", 0))
        sample = {"t": time.monotonic(), "cpu": cpu, "loads": dict(pool["member_loads"]),
                  "placement": pool["placement"], "hit_rates": dict(pool["hit_rates"]),
                  "demand": pool["demand_tokens_per_s"], "calls": calls,
                  "completed": st["gateway"]["completed"], "failed": st["gateway"]["failed"]}
        with self.lock:
            self.samples.append(sample)
            for d in pool["decisions"]:
                self.decisions[(int(d["round"]), str(d["prompt"]))] = d
        return sample

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10.0)


# ------------------------------------------------------------------------------ one run


@dataclass
class Run:
    policy: str
    sent: int = 0
    measured: int = 0
    done: int = 0
    errors: int = 0
    unfinished: int = 0
    mismatches: int = 0
    mean: float = math.nan
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    p99_phase: dict[str, float] = field(default_factory=dict)
    mean_phase: dict[str, float] = field(default_factory=dict)
    throughput: float = 0.0
    goodput: float = 0.0
    met_target: float = 0.0
    hit_rate: float = math.nan
    hit_rate_run: float = math.nan
    load_mean: dict[str, float] = field(default_factory=dict)
    imbalance: float = math.nan
    prompts_per_instance: float = math.nan   # prompts placed on an instance, time-averaged
    prefix_kv: float = math.nan              # their prefixes' share of its KV, time-averaged
    changes: int = 0
    spill_rounds: int = 0
    cpu_machine: float = 0.0
    cpu_machine_max: float = 0.0
    cpu_ours: float = 0.0
    loadavg: list[float] = field(default_factory=list)
    send_lag_p99: float = 0.0
    wall_s: float = 0.0
    startup_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    latencies: list[list] = field(default_factory=list)   # [arrival emulated s, latency or None, phase]


def wait_ready(probe: StatusProbe, members: int, deadline: float) -> dict:
    """Until the pool has its members and every prompt a placement (bounded)."""
    prompts = {p.name for p in ps.WORKLOADS[WORKLOAD]}
    while time.monotonic() < deadline:
        st = probe.query(timeout=2.0)
        if st is not None:
            pool = st["pools"]["llm"]
            if len(pool["member_loads"]) >= members and prompts <= set(pool["placement"]):
                return st
        time.sleep(0.2)
    raise RuntimeError(f"the pool did not get {members} members and a placement in time")


def parse_policy(spec: str) -> tuple[str, dict[str, Any]]:
    """``"prompt-aware"`` or ``"prompt-aware:spill_ratio=4,cooldown=30"`` -> (name, params)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        params[k.strip()] = json.loads(v)
    return name, params


def run_policy(spec: str, trace: list[tuple[float, str]], args: argparse.Namespace,
               tokens: dict[str, float]) -> Run:
    scale = args.time_scale
    policy, policy_args = parse_policy(spec)
    topo = ps.topology(WORKLOAD, policy=policy, replicas=args.instances, policy_args=policy_args,
                       engine_args={"time_scale": scale, "kv_capacity_tokens": args.kv_tokens},
                       broker={"heartbeat_interval": args.heartbeat, "heartbeat_liveness": 20,
                               "request_timeout": 3600.0,
                               "max_inflight": 100_000},
                       max_tokens=256)
    run = Run(spec)
    tmp = Path(args.out) / "topologies"
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_topology(tmp, topo, f"{spec.replace(':', '_').replace(',', '_').replace('=', '-')}.toml")
    sup = Supervisor(str(path), out=io.StringIO(), log_level="WARNING")
    t_launch = time.monotonic()
    n = len(trace)
    sent_at = [math.nan] * n
    done_at = [math.nan] * n
    outcome: list[Any] = [None] * n
    lock = threading.Lock()
    remaining = [n]
    all_done = threading.Event()
    try:
        sup.start()
        pids = [c.proc.pid for c in sup.children]
        with StatusProbe(sup.addresses["control"]) as probe:
            wait_ready(probe, args.instances, time.monotonic() + 60)
        run.startup_s = time.monotonic() - t_launch
        sampler = Sampler(sup.addresses["control"], period=args.sample_period)
        drain_wall = args.drain * scale
        client_timeout = (trace[-1][0] if trace else 0.0) * scale + drain_wall + 60.0
        with Client(sup.addresses["gateway"], timeout=client_timeout) as client:
            cpu0 = sum(proc_cpu(p) for p in pids)
            self0 = os.times()
            sampler.start()

            def finished(i: int, fut: Any) -> None:
                t = time.monotonic()
                with lock:
                    done_at[i] = t
                    try:
                        outcome[i] = ("ok", fut.result())
                    except Exception as exc:  # noqa: BLE001
                        outcome[i] = ("error", exc)
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        all_done.set()

            t0 = time.monotonic()
            for i, (t, rid) in enumerate(trace):
                due = t0 + t * scale
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent_at[i] = time.monotonic()
                fut = client.submit(rid, timeout=client_timeout)
                fut.add_done_callback(lambda f, i=i: finished(i, f))
            run.sent = n
            t_last = t0 + (trace[-1][0] if trace else 0.0) * scale
            all_done.wait(max(0.0, t_last + drain_wall - time.monotonic()))
            t_end = time.monotonic()
            sampler.stop()
            self1 = os.times()
            cpu1 = sum(proc_cpu(p) for p in pids)
        with lock:
            results = list(outcome)
            done = list(done_at)
    finally:
        sup.stop()

    warm = args.warmup
    shift = args.warmup + args.duration / 2
    lat_all: list[float] = []
    lat_phase: dict[str, list[float]] = {"1": [], "2": []}
    ends: list[float] = []
    met = 0
    for i, (t, rid) in enumerate(trace):
        phase = str(ps.phase_of(rid))
        o = results[i]
        lat = None
        if o is not None and o[0] == "ok":
            lat = (done[i] - sent_at[i]) / scale
            if o[1] != ps.expected(WORKLOAD, rid):
                run.mismatches += 1
                if len(run.error_samples) < 3:
                    run.error_samples.append(f"{rid}: result differs from the script's expectation")
        elif o is not None and "client was closed" in str(o[1]):
            o = None                   # still running when the drain deadline passed
        elif o is not None:
            run.errors += 1
            if len(run.error_samples) < 3:
                run.error_samples.append(f"{rid}: {str(o[1])[:200]}")
        run.latencies.append([round(t, 4), None if lat is None else round(lat, 4), int(phase)])
        if t < warm:
            continue
        run.measured += 1
        if lat is None:
            if o is None:
                run.unfinished += 1
            lat_all.append(math.inf)
            lat_phase[phase].append(math.inf)
            continue
        run.done += 1
        lat_all.append(lat)
        lat_phase[phase].append(lat)
        ends.append(done[i])
        if lat <= args.target:
            met += 1
    finite = [x for x in lat_all if math.isfinite(x)]
    if finite:
        run.mean = statistics.fmean(finite)
        run.max = max(lat_all)
    run.p50, run.p99 = percentile(lat_all, 50), percentile(lat_all, 99)
    run.p99_phase = {k: percentile(v, 99) for k, v in lat_phase.items()}
    run.mean_phase = {k: statistics.fmean([x for x in v if math.isfinite(x)] or [math.nan])
                      for k, v in lat_phase.items()}
    first_arrival = t0 + warm * scale
    if ends:
        run.throughput = len(ends) / ((max(ends) - first_arrival) / scale)
    run.goodput = met / args.duration
    run.met_target = met / max(1, run.measured)
    run.send_lag_p99 = percentile([(sent_at[i] - (t0 + t * scale)) / scale
                                   for i, (t, _) in enumerate(trace)], 99)

    # Status samples: loads over the measured part, hit rate, CPU.
    samples = sampler.samples
    run.samples = [{**s, "t": round((s["t"] - t0) / scale, 3)} for s in samples]
    run.decisions = [sampler.decisions[k] for k in sorted(sampler.decisions)]
    members = sorted({m for s in samples for m in s["loads"]})
    run.members = members
    window = [s for s in run.samples if warm <= s["t"] <= args.warmup + args.duration]
    if window and members:
        run.load_mean = {m: statistics.fmean(s["loads"].get(m, 0) for s in window) for m in members}
        mean = statistics.fmean(run.load_mean.values())
        run.imbalance = max(run.load_mean.values()) / mean if mean > 0 else math.nan
        run.prompts_per_instance, run.prefix_kv = placed_prefixes(window, members, args.kv_tokens)
        run.cpu_machine = statistics.fmean(s["cpu"] for s in window)
        run.cpu_machine_max = max(s["cpu"] for s in window)
    start = min(run.samples, key=lambda s: abs(s["t"] - warm), default=None)
    end = run.samples[-1] if run.samples else None
    if start and end:
        run.hit_rate = hit_rate_window(start, end, tokens)
        run.hit_rate_run = hit_rate_window(None, end, tokens)
    run.changes = sum(len(d["added"]) + len(d["removed"]) for d in run.decisions
                      if d["round"] > 1)
    run.spill_rounds = sum("spilled" in d["reason"] for d in run.decisions)
    run.wall_s = t_end - t0
    ours = (cpu1 - cpu0) + (self1.user + self1.system) - (self0.user + self0.system)
    run.cpu_ours = ours / max(1e-9, run.wall_s) / (os.cpu_count() or 1)
    run.loadavg = [round(x, 2) for x in os.getloadavg()]
    return run


def placed_prefixes(window: list[dict], members: list[str], kv_tokens: int) -> tuple[float, float]:
    """Prompts placed per instance and the share of its KV their prefixes take (whole
    16-token blocks), averaged over samples and instances: what placement saves when the
    prefix cache cannot hold every prefix next to the running batch."""
    prefix = {p.name: p.prefix // 16 * 16 for p in ps.WORKLOADS[WORKLOAD]}
    counts, shares = [], []
    for s in window:
        for m in members:
            mine = [p for p, ms in s["placement"].items() if m in ms]
            counts.append(len(mine))
            shares.append(sum(prefix.get(p, 0) for p in mine) / kv_tokens)
    return statistics.fmean(counts), statistics.fmean(shares)


def hit_rate_window(a: dict | None, b: dict, tokens: dict[str, float]) -> float:
    """Pool-wide prefix-cache hit rate between two status samples (from the start when
    ``a`` is None).

    ``alto status`` gives each member's cumulative hit rate (hits / prompt tokens looked
    up since its engine started) but not the token counts, so each member's prompt
    tokens are estimated as the messages its stage instances took in (LM calls, plus the
    END markers of upstream fan-outs, a few per cent) times each prompt's mean length.
    """
    def volume(s: dict | None, m: str) -> float:
        if s is None:
            return 0.0
        return sum(c * tokens[p] for p, c in s["calls"].get(m, {}).items())

    hits = looked = 0.0
    for m, rate in b["hit_rates"].items():
        qb, qa = volume(b, m), volume(a, m)
        ra = a["hit_rates"].get(m, 0.0) if a is not None else 0.0
        hits += rate * qb - ra * qa
        looked += qb - qa
    return hits / looked if looked > 0 else math.nan


# ------------------------------------------------------------------------------ report


def fmt(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:,.{nd}f}"


def report(runs: dict[str, Run], args: argparse.Namespace, setup: dict[str, Any]) -> str:
    L: list[str] = []
    L.append(f"## LM-pool scheduling policies, one arrival trace (sim engine)\n")
    L.append(f"Command: `{setup['command']}`  ")
    L.append(f"Date: {setup['date']}; code: {setup['code']}; machine: {setup['cpus']} CPUs; wall time "
             f"{setup['wall_s']:.0f} s; load average at the start {setup['loadavg_start']}.\n")
    L.append(f"Latencies in emulated seconds, rates in emulated requests/s (time_scale "
             f"{args.time_scale:g}: wall = emulated x {args.time_scale:g}). {args.instances} instances, "
             f"KV {args.kv_tokens:,} tokens each; {args.rate:g} req/s for {args.warmup:g} s of warm-up "
             f"+ {args.duration:g} s measured; expand's fan-out triples at {args.warmup + args.duration / 2:g} s. "
             f"Target: p99 <= {args.target:g} s.\n")
    L.append("| policy | done / measured | mean s | p50 s | p99 s | p99 phase 1 / 2 s | throughput req/s "
             f"| goodput <= {args.target:g} s req/s | hit rate | max/mean load | placement changes | "
             "mismatches | errors / unfinished | CPU machine % (max) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        L.append(f"| {name} | {r.done} / {r.measured} | {fmt(r.mean)} | {fmt(r.p50)} | {fmt(r.p99)} | "
                 f"{fmt(r.p99_phase.get('1'))} / {fmt(r.p99_phase.get('2'))} | {fmt(r.throughput)} | "
                 f"{fmt(r.goodput)} ({r.met_target:.0%}) | {fmt(100 * r.hit_rate, 1)}% | {fmt(r.imbalance)} | "
                 f"{r.changes} | {r.mismatches} | {r.errors} / {r.unfinished} | "
                 f"{100 * r.cpu_machine:.0f} ({100 * r.cpu_machine_max:.0f}) |")
    L.append("")
    pa = runs.get("prompt-aware")
    if pa is not None:
        L.append("Target check (issue 5): prompt-aware has the lowest p99, at least 1.3x lower than "
                 "round-robin and least-loaded, with a hit rate within 10% of affinity.\n")
        others = {k: v for k, v in runs.items() if k != "prompt-aware"}
        lowest = all(pa.p99 < o.p99 for o in others.values())
        L.append(f"- lowest p99 of all policies: {'yes' if lowest else 'no'} "
                 f"({', '.join(f'{k} {fmt(v.p99)} s' for k, v in runs.items())})")
        for k in ("round-robin", "least-loaded"):
            if k in runs:
                ratio = runs[k].p99 / pa.p99 if pa.p99 else math.nan
                L.append(f"- p99 {k} / prompt-aware = {fmt(ratio)}x (target >= 1.3x): "
                         f"{'met' if ratio >= 1.3 else 'not met'}")
        if "affinity" in runs:
            a = runs["affinity"].hit_rate
            rel = (a - pa.hit_rate) / a if a else math.nan
            L.append(f"- hit rate prompt-aware {fmt(100 * pa.hit_rate, 1)}% vs affinity {fmt(100 * a, 1)}% "
                     f"({fmt(100 * rel, 1)}% lower; target within 10%): {'met' if rel <= 0.10 else 'not met'}")
        L.append("")
    L.append("Per policy: mean reported load per instance over the measured part (alto status "
             "member_loads), prefix-cache hit rate over the whole run, CPU:\n")
    L.append("| policy | mean load per instance | prompts per instance | their prefixes / KV | hit rate whole run "
             "| mean s phase 1 / 2 | spill rounds | our CPU % of machine | load avg | send lag p99 s | start-up s |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        loads = " / ".join(f"{v:.1f}" for v in r.load_mean.values())
        L.append(f"| {name} | {loads} | {fmt(r.prompts_per_instance)} | {fmt(100 * r.prefix_kv, 0)}% | "
                 f"{fmt(100 * r.hit_rate_run, 1)}% | {fmt(r.mean_phase.get('1'))} / "
                 f"{fmt(r.mean_phase.get('2'))} | {r.spill_rounds} | {100 * r.cpu_ours:.0f} | "
                 f"{r.loadavg[0] if r.loadavg else '-'} | {fmt(r.send_lag_p99, 3)} | {r.startup_s:.1f} |")
    L.append("")
    if pa is not None and pa.samples:
        last = pa.samples[-1]["placement"]
        L.append("Prompt-aware's last placement: " + "; ".join(
            f"{p}: {len(ms)} ({', '.join(short(pa.members, m) for m in ms)})" for p, ms in sorted(last.items())))
        L.append("")
    L.append("Set-up:\n")
    for k, v in setup["describe"].items():
        L.append(f"- {k}: {v}")
    errs = [f"{k}: {e}" for k, r in runs.items() for e in r.error_samples]
    if errs:
        L.append("\nErrors (samples):\n")
        L += [f"- {e}" for e in errs]
    return "\n".join(L) + "\n"


def short(members: list[str], m: str) -> str:
    return f"i{members.index(m)}" if m in members else m


def plot(runs: dict[str, Run], args: argparse.Namespace, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [p for p in ("prompt-aware", "round-robin", "least-loaded", "affinity") if p in runs]
    order += [p for p in runs if p not in order]
    paths = []
    fig, axes = plt.subplots(len(order), 1, figsize=(10, 2.6 * len(order)), sharex=True, squeeze=False)
    ymax = max((max(s["loads"].values(), default=0) for r in runs.values() for s in r.samples), default=1)
    for ax, name in zip(axes[:, 0], order):
        r = runs[name]
        ts = [s["t"] for s in r.samples]
        for k, m in enumerate(r.members):
            ax.plot(ts, [s["loads"].get(m, 0) for s in r.samples], lw=1.2, label=f"i{k}")
        ax.axvline(args.warmup, color="grey", ls=":", lw=1)
        ax.axvline(args.warmup + args.duration / 2, color="k", ls="--", lw=1)
        ax.set_ylim(0, ymax * 1.05)
        ax.set_ylabel("reported load")
        ax.set_title(f"{name}: p99 {fmt(r.p99)} s, hit rate {fmt(100 * r.hit_rate, 1)}%, "
                     f"max/mean load {fmt(r.imbalance)}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7, ncol=len(r.members))
    axes[-1, 0].set_xlabel("emulated seconds (dotted: end of warm-up; dashed: expand's fan-out triples)")
    fig.suptitle(f"Load per instance (alto status member_loads), {args.instances} sim instances, "
                 f"KV {args.kv_tokens:,} tokens, {args.rate:g} req/s", fontsize=10)
    fig.tight_layout()
    p = out / "load_per_instance.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    if "prompt-aware" in runs and runs["prompt-aware"].samples:
        r = runs["prompt-aware"]
        fig, ax = plt.subplots(figsize=(10, 3))
        ts = [s["t"] for s in r.samples]
        for p_ in ps.WORKLOADS[WORKLOAD]:
            ax.step(ts, [len(s["placement"].get(p_.name, ())) for s in r.samples], where="post",
                    label=p_.name)
        ax.axvline(args.warmup + args.duration / 2, color="k", ls="--", lw=1)
        ax.set_ylabel("instances")
        ax.set_xlabel("emulated seconds (dashed: expand's fan-out triples)")
        ax.set_ylim(0, args.instances + 0.5)
        ax.legend(loc="upper left", fontsize=8, ncol=4)
        ax.set_title("prompt-aware: instances placed per prompt", fontsize=10)
        fig.tight_layout()
        p = out / "placement_prompt_aware.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def describe(args: argparse.Namespace, trace: list[tuple[float, str]], tokens: dict[str, float]) -> dict[str, str]:
    params = SimParams.from_dict({"time_scale": args.time_scale, "kv_capacity_tokens": args.kv_tokens})
    prompts = ps.WORKLOADS[WORKLOAD]
    measured = [rid for t, rid in trace if t >= args.warmup]
    per_phase = {}
    for ph in (1, 2):
        ids = [r for r in measured if ps.phase_of(r) == ph]
        c = [ps.calls(WORKLOAD, r) for r in ids]
        per_phase[ph] = {p.name: statistics.fmean(x[p.name] for x in c) if c else 0.0 for p in prompts}
    prefixes = sum(p.prefix for p in prompts)
    return {
        "pool": f"{args.instances} sim engines (A100 / Llama-3-8B defaults of workers/lm/sim_model.py) "
                f"with kv_capacity_tokens = {args.kv_tokens:,} ({params.num_blocks():,} blocks of "
                f"{params.block_size}) and time_scale = {args.time_scale:g}",
        "prompts": ", ".join(f"{p.name} ({p.prefix} prefix tokens, ~{tokens[p.name]:.0f} in all)" for p in prompts)
                   + f"; all prefixes together: {prefixes:,} tokens = {prefixes / args.kv_tokens:.0%} of one "
                     f"instance's KV",
        "calls per request": "; ".join(f"phase {ph}: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items())
                                       for ph, c in per_phase.items()),
        "trace": f"Poisson, {args.rate:g} req/s, seed {args.seed}: {len(trace)} requests "
                 f"({len(measured)} measured)",
        "control loop": f"heartbeat (load reports) every {args.heartbeat:g} s wall = "
                        f"{args.heartbeat / args.time_scale:.3f} s emulated; pool rounds every "
                        f"{max(1.0, args.heartbeat):g} s wall = {max(1.0, args.heartbeat) / args.time_scale:.3f} s emulated",
        "policies": "default parameters of each (alto_bus/scheduling)",
    }


def code_version() -> str:
    """The commit the engine ran from, and whether alto_bus/ or workers/ had local changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "alto_bus", "workers"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' with local changes in alto_bus/ or workers/' if dirty else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter run (~5 minutes)")
    ap.add_argument("--out", default="out/bench_policies")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated, or ';'-separated when a policy has parameters: "
                         "'round-robin;prompt-aware:spill_ratio=4,cooldown=30'")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--rate", type=float, default=None, help="emulated requests/s")
    ap.add_argument("--warmup", type=float, default=None, help="emulated s before the measured part")
    ap.add_argument("--duration", type=float, default=None, help="emulated s measured")
    ap.add_argument("--drain", type=float, default=None, help="emulated s to wait after the last arrival")
    ap.add_argument("--time-scale", type=float, default=None, help="sim time_scale (wall / emulated)")
    ap.add_argument("--kv-tokens", type=int, default=4000, help="sim kv_capacity_tokens per instance")
    ap.add_argument("--target", type=float, default=None, help="latency target, emulated s")
    ap.add_argument("--heartbeat", type=float, default=0.5, help="broker heartbeat_interval, wall s")
    ap.add_argument("--sample-period", type=float, default=0.5, help="status polling, wall s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    defaults = (dict(rate=16.0, warmup=3.0, duration=14.0, drain=10.0, time_scale=3.0, target=6.0)
                if args.quick else
                dict(rate=16.0, warmup=6.0, duration=34.0, drain=15.0, time_scale=3.0, target=6.0))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    names = [p for p in args.policies.split(";" if ";" in args.policies else ",") if p]
    for p in names:
        name, params = parse_policy(p)
        try:
            make_policy(name, **params)
        except ValueError as exc:
            ap.error(str(exc))
    SimParams.from_dict({"time_scale": args.time_scale, "kv_capacity_tokens": args.kv_tokens})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    trace = arrival_trace(args.seed, args.rate, args.warmup, args.duration)
    tokens = prompt_tokens()
    setup: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench_policies.py",
                                                       *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
        "loadavg_start": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "code": code_version(),
        "describe": describe(args, trace, tokens),
    }
    t_start = time.monotonic()
    runs: dict[str, Run] = {}
    for name in names:
        print(f"[{time.monotonic() - t_start:6.0f} s] {name}: {len(trace)} requests ...", file=sys.stderr, flush=True)
        r = run_policy(name, trace, args, tokens)
        runs[name] = r
        print(f"[{time.monotonic() - t_start:6.0f} s] {name}: mean {fmt(r.mean)} p99 {fmt(r.p99)} s, "
              f"hit {fmt(100 * r.hit_rate, 1)}%, max/mean load {fmt(r.imbalance)}, done {r.done}/{r.measured}, "
              f"mismatches {r.mismatches}, errors {r.errors + r.unfinished}; machine CPU "
              f"{100 * r.cpu_machine:.0f}%, ours {100 * r.cpu_ours:.0f}%, load {r.loadavg[0] if r.loadavg else '-'}",
              file=sys.stderr, flush=True)
    setup["wall_s"] = time.monotonic() - t_start
    text = report(runs, args, setup)
    print(text)
    (out / "results.md").write_text(text)
    doc = {"args": vars(args), "setup": setup, "runs": {k: asdict(v) for k, v in runs.items()}}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    for p in plot(runs, args, out):
        print(f"plot: {p}")
    return 0 if all(r.mismatches == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
