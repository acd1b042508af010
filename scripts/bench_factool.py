"""FacTool pipeline on the sim engine: streaming (ALTO) against FacTool's stage-by-stage baseline.

    python scripts/bench_factool.py            # full sweep, ~15 min
    python scripts/bench_factool.py --quick    # ~4 min
    python scripts/bench_factool.py --modes stream,baseline,item   # with the ablation
    python scripts/bench_factool.py --rates 2,6,8 --requests 100 --time-scale 2 --out DIR

For each Poisson arrival rate of the sweep and each mode, this launches the mode's
topology as real processes (the same pool of LM instances and sim parameters in every
mode), replays the same seeded Poisson trace of workload questions through a ``Client``
and records each request's end-to-end latency. The modes:

* ``stream``: ``topology/factool.toml``; every sentence, claim and query moves on as
  soon as the splitter has it (ALTO);
* ``baseline``: ``topology/factool_baseline.toml``, the pipeline run the way FacTool runs
  it, which is what the paper's baseline is: whole outputs only, claims extracted from
  the whole answer in one call, and barrier stages so that a stage starts on a request
  only when the previous stage has finished all of that request's calls (calls within a
  stage still run in parallel);
* ``item`` (ablation, only with ``--modes``): ``factool.toml`` with ``stream = false`` on
  every LM stage: whole outputs per call, but each item still moves on alone.

The topology is relaunched for every point, so no point finds another's prompts in the
prefix caches; two warm-up requests (not measured, not in the measured set) fill the
shared prompt prefixes first. Every result is compared with
``alto_workers.factool.reference`` (the mismatch count must be 0; the exit code is 1 if not).

Time: the sim's ``time_scale`` slows the emulated GPU clock uniformly (wall = emulated
x time_scale). Rates are given and reported in emulated requests/s and latencies in
emulated seconds, so the bus's own CPU time is divided by the same factor. The default
is 1: the processes of this benchmark use ~10-15% of this 2-core machine at the highest
rate and the measured latencies match the bus-less model (below) within ~1%, so the CPU
is not what saturates; on a busier machine, ``--time-scale 2`` gives the emulated GPUs
twice the wall time per step (check the "model mean" column either way).

Next to the measurements, a virtual-time model of the same pipeline (``PipelineModel``:
one pure ``SimCore`` per LM instance, the same prompts, outputs and splitters, no bus)
replays the very same arrival traces, and a finer sweep with more requests. The gap
between the two is what the processes, the bus and this machine add.

Output (``--out``, default ``out/bench_factool``): ``results.md`` (also printed),
``results.json`` (every point, per-request latencies, per-stage in-flight counts and CPU
use), ``latency_throughput.png``. Progress: one stderr line per rate point.

Definitions:
  achieved throughput  completions per emulated second, the least-squares slope of the
                       cumulative completion count over time: the offered rate when the
                       pipeline keeps up, its service rate when it does not
  throughput at target the achieved throughput at which the mean latency crosses the
                       target (4 s), linearly interpolated between the two sweep points
                       around the crossing
  p99 at common rate   both modes' p99 at the highest swept rate at which the baseline
                       still meets the mean-latency target (or --common-rate)
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import io
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus import Client, RequestError  # noqa: E402
from alto_bus.deploy.supervisor import LaunchError, StatusProbe, Supervisor  # noqa: E402
from benchkit import machine_cpu, percentile, proc_cpu  # noqa: E402  (scripts/benchkit.py)
from tests.support import to_toml  # noqa: E402
from alto_workers.factool.reference import Reference  # noqa: E402
from alto_workers.factool.workload import DEFAULT_PATH, Workload  # noqa: E402
from alto_workers.lm.sim_model import SimCore, SimParams, SimSeq, tokenize  # noqa: E402

# mode -> (topology file, stream = ... forced on every LM stage, or None to keep the file's)
TOPOLOGIES = {
    "stream": ("factool.toml", True),            # ALTO: every item moves on as soon as it exists
    "baseline": ("factool_baseline.toml", None), # FacTool's way: whole outputs, stage by stage
    "item": ("factool.toml", False),             # ablation: whole outputs, items still move on alone
}
MODES = ("stream", "baseline")                   # the two the report compares; "item" is optional
LM_STAGES = ("answer", "claims", "queries", "verify")

QUICK = dict(rates="2,6,10", requests=90, min_requests=20, duration=10.0, time_scale=1.0,
             max_send_s=20.0, model_seeds=1)
FULL = dict(rates="1.5,3,4.5,6,8,10,11,12", requests=180, min_requests=30, duration=24.0, time_scale=1.0,
            max_send_s=40.0, model_seeds=2)


# ------------------------------------------------------------------------------ topology


def variant(base: dict[str, Any], *, stream: bool | None, time_scale: float, engine_args: dict[str, Any],
            replicas: dict[str, int], policy: str | None = None) -> dict[str, Any]:
    """A topology with ``stream`` (unless None) on every LM stage, the sim overrides on every
    engine (pool or stage), and ``replicas`` by stage or pool name."""
    topo = json.loads(json.dumps(base))          # deep copy
    # A shared 2-core machine can starve a worker's heartbeat thread for a few seconds;
    # this benchmark is not about failure detection, so the broker waits 10 s, not 2 s.
    topo.setdefault("broker", {})["heartbeat_liveness"] = 20
    for pool in topo.get("pool", []):
        pool["engine_args"] = {**(pool.get("engine_args") or {}), **engine_args, "time_scale": time_scale}
        if pool["name"] in replicas:
            pool["replicas"] = replicas[pool["name"]]
        if policy is not None:
            pool["policy"] = policy
    for st in topo["stage"]:
        if st["kind"] == "lm":
            if stream is not None:
                st["stream"] = stream
            if "pool" not in st:
                st["engine_args"] = {**(st.get("engine_args") or {}), **engine_args, "time_scale": time_scale}
        if st["name"] in replicas:
            st["replicas"] = replicas[st["name"]]
        opts = st.get("options")
        if opts and isinstance(opts.get("corpus"), str) and not os.path.isabs(opts["corpus"]):
            opts["corpus"] = str(ROOT / opts["corpus"])
    return topo


# ---------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Every ``period`` s (wall): machine CPU use and each stage's reported depth."""

    def __init__(self, control: str, stages: list[str], period: float = 0.5) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.control = control
        self.stages = stages
        self.period = period
        self.stop_flag = threading.Event()
        self.cpu: list[float] = []               # machine busy fraction (0..1) per period
        self.depth: list[tuple[float, dict[str, int]]] = []   # (monotonic time, stage -> depth)
        self.member_loads: list[tuple[float, dict[str, int]]] = []   # (time, pool member -> load)
        self.placement: dict[str, list[str]] = {}                # the pools' last placement

    def run(self) -> None:
        busy0, tot0 = machine_cpu()
        with StatusProbe(self.control) as probe:
            while not self.stop_flag.wait(self.period):
                busy1, tot1 = machine_cpu()
                if tot1 > tot0:
                    self.cpu.append((busy1 - busy0) / (tot1 - tot0))
                busy0, tot0 = busy1, tot1
                st = probe.query(timeout=1.0)
                if st is not None:
                    self.depth.append((time.monotonic(), {
                        s: sum(int(i.get("depth", 0)) for i in st["stages"][s]["instances"])
                        for s in self.stages}))
                    for name, pool in (st.get("pools") or {}).items():
                        self.member_loads.append((time.monotonic(), {
                            f"{name}/{m}": int(v) for m, v in pool.get("member_loads", {}).items()}))
                        self.placement = {f"{name}/{p}": ms for p, ms in pool.get("placement", {}).items()}

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(5.0)


# ------------------------------------------------------------------- virtual-time model


@dataclasses.dataclass
class CallSpec:
    """One LM call of one request, precomputed: what the sim engine would be given."""

    stage: str
    prompt_len: int
    hashes: list[int]
    n_steps: int
    emit_at: list[int]           # token index after which each item is out (streaming)


class PipelineModel:
    """The same pipeline in virtual time: one pure ``SimCore`` per LM instance, no bus.

    Every LM call gets the prompt the LM worker renders (so the prefix cache sees the
    same blocks) and the scripted output (so it takes the same number of steps); the
    real splitters, fed one token at a time, say after which token each item is out.
    Modes:

    * ``stream``: an item moves on when the splitter yields it (ALTO);
    * ``item``: an item moves on when its call ends, but every item on its own
      (``stream = false`` on the streaming topology: the ablation);
    * ``baseline``: FacTool's stage-by-stage run (``factool_baseline.toml``): one claims
      call over the whole answer, and each stage starts on a request only when the
      previous stage has finished all of that request's calls.

    Each bus hop costs ``hop_s``; retrieve, the aggregates and the barriers cost only
    their hops. A call goes to the instance (of its stage, or of the pool when the
    topology has one) holding the fewest sequences. Left out: the CPU time of the bus,
    the workers and the client, the wall-clock lag of the real engines' loops, and the
    pool's placement (with ample KV every member keeps every prefix).
    """

    def __init__(self, wl: Workload, ref: Reference, topo: dict[str, Any], hop_s: float = 0.001,
                 baseline: dict[str, Any] | None = None) -> None:
        from alto_workers.factool import prompts
        from alto_workers.factool.handlers import build_verify_input
        from alto_workers.lm.engine import SamplingParams
        from alto_workers.lm.sim import plan_output
        from alto_workers.lm.sim_model import BOS_ID, block_hashes
        from alto_workers.lm.splitters import make_splitter
        from alto_workers.lm.worker import Template

        self.hop = hop_s
        lm = {st["name"]: st for st in topo["stage"] if st["kind"] == "lm"}
        pools = {p["name"]: p for p in topo.get("pool", [])}
        def engine_args(st: dict) -> dict:
            args = pools[st["pool"]].get("engine_args") if st.get("pool") else st.get("engine_args")
            return {k: v for k, v in (args or {}).items() if k != "time_scale"}
        self.params = {n: SimParams.from_dict(engine_args(st)) for n, st in lm.items()}
        # Engine groups: a stage's own instances, or its pool's members (shared).
        self.group_of = {n: st.get("pool") or n for n, st in lm.items()}
        self.replicas = {self.group_of[n]: int(pools[st["pool"]].get("replicas", 1) if st.get("pool")
                                                else st.get("replicas", 1)) for n, st in lm.items()}
        self.group_params = {self.group_of[n]: self.params[n] for n in lm}
        sp = {n: SamplingParams(max_tokens=int(st.get("max_tokens", 256))) for n, st in lm.items()}
        # The baseline's claims call reads the whole answer; its max_tokens is its topology's.
        whole = next((st for st in (baseline or {}).get("stage", []) if st["name"] == "claims"), lm["claims"])
        sp["claims_answer"] = SamplingParams(max_tokens=int(whole.get("max_tokens", 256)))
        tmpl = {n: Template(prompts.PROMPTS[n]) for n in ("answer", "claims", "claims_answer", "queries", "verify")}

        def spec(template: str, item: dict, key: str, emit: str) -> CallSpec:
            stage = "claims" if template == "claims_answer" else template
            ids = [BOS_ID, *tokenize(tmpl[template].render(item))[1]]
            plan = plan_output(wl.script_lookup(stage, key) or "", sp[template])
            at: list[int] = []
            if emit == "text":
                at = [plan.n_steps - 1]
            else:
                splitter = make_splitter(emit)
                for k in range(plan.n_steps):
                    delta = plan.text[plan.ends[k]:plan.ends[k + 1]]
                    at += [k] * (len(splitter.feed(delta)) if delta else 0)
                at += [plan.n_steps - 1] * len(splitter.finish())
            return CallSpec(stage, len(ids), block_hashes(ids, self.params[stage].block_size),
                            plan.n_steps, at)

        emit = {n: st.get("emit", "sentences") for n, st in lm.items()}
        # Per question: the answer call; per sentence its claims call; per claim its
        # queries call and its verify call (over the evidence the reference retrieved);
        # and the baseline's claims call over the whole answer.
        self.requests: dict[str, tuple[CallSpec, list]] = {}
        self.whole_claims: dict[str, CallSpec] = {}
        for q in wl.questions:
            question = q["question"]
            tr = ref.trace(question)
            sentences, g = [], 0
            for si, sentence in enumerate(tr.sentences):
                per_claim = []
                for claim in tr.claims[si]:
                    v_in = build_verify_input([tr.result["claims"][g]["evidence"]], claim=claim)
                    g += 1
                    per_claim.append((spec("queries", {"claim": claim}, claim, emit["queries"]),
                                      spec("verify", v_in, claim, emit["verify"])))
                sentences.append((spec("claims", {"question": question, "sentence": sentence}, sentence,
                                       emit["claims"]), per_claim))
            self.requests[q["id"]] = (spec("answer", {"question": question}, question, emit["answer"]), sentences)
            answer = wl.script_lookup("answer", question) or ""
            self.whole_claims[q["id"]] = spec("claims_answer", {"answer": answer}, answer, "lines")

    def calls_per_request(self, qid: str, mode: str = "stream") -> dict[str, int]:
        _, sentences = self.requests[qid]
        n_claims = sum(len(c) for _, c in sentences)
        claims = 1 if mode == "baseline" else len(sentences)
        return {"answer": 1, "claims": claims, "queries": n_claims, "verify": n_claims}

    def run(self, arrivals: list[tuple[float, str]], mode: str, warm: list[str] = ()) -> dict[int, float]:
        """Latency of each arrival (index -> s); ``warm`` requests run first, unmeasured."""
        if mode not in ("stream", "item", "baseline"):
            raise ValueError(f"unknown mode {mode!r}")
        stream = mode == "stream"
        h = self.hop
        heap: list = []
        tie = itertools.count()
        groups = {g: [SimCore(self.group_params[g]) for _ in range(r)] for g, r in self.replicas.items()}
        engines = {n: groups[g] for n, g in self.group_of.items()}
        busy: set[int] = set()
        pending: dict[int, dict[int, list]] = {}      # engine -> step index -> emissions
        names = itertools.count()
        out: dict[int, float] = {}
        self.call_time: dict[str, list[float]] = {n: [] for n in engines}   # submit -> last token

        def at(t: float, fn: Callable, *a: Any) -> None:
            heapq.heappush(heap, (t, next(tie), fn, a))

        def submit(t: float, spec: CallSpec, on_item: Callable, on_end: Callable) -> None:
            core = min(engines[spec.stage], key=lambda c: c.running() + len(c.waiting))
            seq = SimSeq(f"c{next(names)}", spec.stage, spec.prompt_len, spec.hashes, spec.n_steps)
            seq.payload = (spec, on_item, on_end, t)
            core.add(seq)
            if id(core) not in busy:
                busy.add(id(core))
                step(t, core)

        def step(t: float, core: SimCore) -> None:
            res = core.step()
            if res is None:
                busy.discard(id(core))
            else:
                at(t + res.duration, step_end, core, res)

        def step_end(t: float, core: SimCore, res: Any) -> None:
            table = pending.setdefault(id(core), {})
            for seq in res.started:
                spec, on_item, on_end, t_in = seq.payload
                last = seq.first_step + spec.n_steps - 1
                table.setdefault(last, []).append((lambda t, s=spec.stage, t_in=t_in:
                                                   self.call_time[s].append(t - t_in), -1))
                for j, k in enumerate(spec.emit_at):
                    table.setdefault(seq.first_step + k if stream else last, []).append((on_item, j))
                table.setdefault(last, []).append((on_end, -1))
            for fn, j in table.pop(core.steps - 1, ()):
                fn(t) if j < 0 else fn(j, t)
            step(t, core)

        def done(t0: float, index: int | None) -> Callable[[float], None]:
            def finish(t: float) -> None:
                if index is not None:
                    out[index] = t + 2 * h - t0             # verdict aggregate, gateway
            return finish

        def pipelined(t0: float, qid: str, index: int | None) -> None:
            answer, sentences = self.requests[qid]
            left = [1 + len(sentences) + sum(len(c) for _, c in sentences)]
            finish = done(t0, index)

            def one_done(t: float) -> None:
                left[0] -= 1
                if left[0] == 0:
                    finish(t)

            def sentence(j: int, t: float) -> None:
                claims_call, per_claim = sentences[j]

                def claim(c: int, t: float) -> None:
                    queries_call, verify_call = per_claim[c]

                    def evidence_done(t: float) -> None:    # retrieve, evidence, verify hops
                        at(t + 3 * h, submit, verify_call, lambda j, t: None, one_done)

                    at(t + h, submit, queries_call, lambda j, t: None, evidence_done)

                at(t + h, submit, claims_call, claim, one_done)

            at(t0 + h, submit, answer, sentence, one_done)

        def all_of(t: float, calls: list[CallSpec], then: Callable[[float], None]) -> None:
            """Submit ``calls`` together; ``then`` when the last one has ended (a barrier)."""
            if not calls:
                then(t)
                return
            left = [len(calls)]

            def one(t: float) -> None:
                left[0] -= 1
                if left[0] == 0:
                    then(t)
            for call in calls:
                submit(t, call, lambda j, t: None, one)

        def staged(t0: float, qid: str, index: int | None) -> None:
            answer, sentences = self.requests[qid]
            per_claim = [pc for _, claims in sentences for pc in claims]
            finish = done(t0, index)
            # answer -> claims (whole answer) -> barrier -> queries -> barrier -> retrieve
            # -> evidence -> barrier -> verify -> verdict: a hop each.
            verify = lambda t: all_of(t + 4 * h, [v for _, v in per_claim], finish)  # noqa: E731
            queries = lambda t: all_of(t + 2 * h, [q for q, _ in per_claim], verify)  # noqa: E731
            claims = lambda t: at(t + h, all_of, [self.whole_claims[qid]], queries)  # noqa: E731
            at(t0 + h, all_of, [answer], claims)

        request = staged if mode == "baseline" else pipelined
        t_first = min((t for t, _ in arrivals), default=0.0)
        for k, qid in enumerate(warm):
            at(t_first - 60.0 + k, request, qid, None)
        for i, (t, qid) in enumerate(arrivals):
            at(t, request, qid, i)
        while heap:
            t, _, fn, a = heapq.heappop(heap)
            fn(t, *a)
        return out


# ------------------------------------------------------------------------------ one point


@dataclasses.dataclass
class Point:
    mode: str
    rate: float                   # offered, emulated req/s
    sent: int = 0
    done: int = 0
    errors: int = 0
    timeouts: int = 0
    mismatches: int = 0
    throughput: float = 0.0       # achieved, emulated req/s
    mean: float = math.nan        # latencies: emulated seconds
    p50: float = math.nan
    p90: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    model_mean: float = math.nan  # the virtual-time model on the same trace
    model_p99: float = math.nan
    wall_s: float = 0.0           # wall time from the first arrival to the end of the drain
    launch_s: float = 0.0         # wall time to launch the topology
    warm_s: float = 0.0           # and to run the warm-up requests
    cpu_mean: float = 0.0         # machine CPU busy fraction (all cores), mean and max of 0.5 s samples
    cpu_max: float = 0.0
    own_cpu: float = 0.0          # this benchmark's processes, fraction of all cores
    loadavg: float = 0.0          # 1-minute load average at the end
    cpu_by_role: dict[str, float] = dataclasses.field(default_factory=dict)   # CPU s per request
    in_flight: dict[str, float] = dataclasses.field(default_factory=dict)     # mean, arrival window
    member_load: dict[str, float] = dataclasses.field(default_factory=dict)   # pool member -> mean load
    placement: dict[str, list[str]] = dataclasses.field(default_factory=dict) # prompt -> members, at the end
    load_series: list[list[float]] = dataclasses.field(default_factory=list)  # [wall s from t0, load per member]
    stage_time: dict[str, float] = dataclasses.field(default_factory=dict)    # s per LM call (Little)
    latencies: dict[str, float] = dataclasses.field(default_factory=dict)     # question id -> s
    error_samples: list[str] = dataclasses.field(default_factory=list)


def achieved_rate(done: list[float]) -> float:
    """Completions per second: the least-squares slope of the cumulative completion count
    over time. The arrival rate when the pipeline keeps up, its service rate when it does
    not; unlike a count over a window or a span, it is not swayed by the latency of the
    first or last requests or by one burst of the trace (``done``: completion times)."""
    if len(done) < 3:
        return math.nan
    xs = sorted(done)
    mx, my = statistics.fmean(xs), (len(xs) + 1) / 2
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (k - my) for k, x in enumerate(xs, 1)) / sxx if sxx > 0 else math.nan


def permutation(seed: int, pool: int) -> list[int]:
    order = list(range(pool))
    random.Random(seed).shuffle(order)
    return order


def arrival_trace(seed: int, rate: float, n: int, order: list[int]) -> tuple[list[float], list[int]]:
    """Poisson arrival times (emulated s) and question indices, a pure function of
    (seed, rate, n): both modes replay the very same trace.

    One unit-rate trace per seed serves every rate (common random numbers, so the
    curves are not made jagged by each rate drawing its own bursts), and it is
    conditioned on its n-th arrival falling at n / rate (the arrivals before it are then
    distributed as in a Poisson process): the offered rate is exactly ``rate``. The
    questions are the head of a seeded permutation: none repeats within a point.
    """
    rng = random.Random(f"arrivals:{seed}")
    t, cum = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1.0)
        cum.append(t)
    span = n / rate
    return [c / cum[-1] * span for c in cum] if cum else [], order[:n]


def requests_for(rate: float, args: argparse.Namespace) -> int:
    return min(args.requests, max(args.min_requests, round(rate * args.duration)))


def run_point(topo_path: Path, stages: list[str], mode: str, rate: float, args: argparse.Namespace,
              questions: list[dict], expected: list[Any], order: list[int], warm: list[dict],
              calls: Callable[[str, str], dict[str, int]]) -> Point:
    scale = args.time_scale
    n = requests_for(rate, args)
    times, idx = arrival_trace(args.seed, rate, n, order)
    pt = Point(mode, rate)
    sup = Supervisor(str(topo_path), out=io.StringIO(), log_level="WARNING")
    t_launch = time.monotonic()
    sampler: Sampler | None = None
    try:
        sup.start()
        roles = {c.proc.pid: (c.stage or c.role.split("#")[0]) for c in sup.children}
        with Client(sup.addresses["gateway"], timeout=args.timeout * scale) as client:
            pt.launch_s = time.monotonic() - t_launch
            for fut in [client.submit({"question": w["question"]}) for w in warm]:
                try:
                    fut.result(args.timeout * scale + 10)
                except Exception as exc:  # noqa: BLE001
                    raise RuntimeError(f"warm-up request failed: {exc}") from exc
            pt.warm_s = time.monotonic() - t_launch - pt.launch_s
            cpu0 = {pid: proc_cpu(pid) for pid in roles}
            self0 = os.times()
            sampler = Sampler(sup.addresses["control"], stages)
            sampler.start()
            lock = threading.Lock()
            sent_at = [math.nan] * n
            done_at = [math.nan] * n
            outcome: list[Any] = [None] * n
            remaining = [n]
            all_done = threading.Event()

            def finished(i: int, fut: Any) -> None:
                t = time.monotonic()
                try:
                    res: tuple = ("ok", fut.result())
                except Exception as exc:  # noqa: BLE001
                    res = ("error", exc)
                with lock:
                    done_at[i], outcome[i] = t, res
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        all_done.set()

            t0 = time.monotonic()
            sent = 0
            for i in range(n):                       # bounded in count (n) and in time
                due = t0 + times[i] * scale
                if due - t0 > args.max_send_s:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent_at[i] = time.monotonic()
                fut = client.submit({"question": questions[idx[i]]["question"]}, timeout=args.timeout * scale)
                fut.add_done_callback(lambda f, i=i: finished(i, f))
                sent += 1
            t_last_arrival = time.monotonic()
            with lock:
                remaining[0] -= n - sent
                if remaining[0] == 0:
                    all_done.set()
            drained = all_done.wait((args.drain_s + args.timeout) * scale)
            t_end = time.monotonic()
            sampler.stop()
            self1 = os.times()
            cpu1 = {pid: proc_cpu(pid) for pid in roles}
            with lock:                           # late callbacks must not change what is read
                results, finish = list(outcome), list(done_at)
    finally:
        if sampler is not None:
            sampler.stop()
        sup.stop()

    pt.sent = sent
    lat: list[float] = []
    pairs: list[tuple[float, float]] = []
    for i in range(sent):
        if results[i] is None:
            pt.timeouts += 1
            continue
        kind, val = results[i]
        if kind == "error":
            if isinstance(val, RequestError) and "deadline" in val.message:
                pt.timeouts += 1
            else:
                pt.errors += 1
            if len(pt.error_samples) < 3:
                pt.error_samples.append(str(val)[:200])
            continue
        pt.done += 1
        lat.append((finish[i] - sent_at[i]) / scale)
        pairs.append((sent_at[i], finish[i]))
        pt.latencies[questions[idx[i]]["id"]] = lat[-1]
        if val != expected[idx[i]]:
            pt.mismatches += 1
    if not drained:
        pt.error_samples.append("drain deadline passed")
    if pairs:
        pt.throughput = achieved_rate([d / scale for _, d in pairs])
    if lat:
        pt.mean = statistics.fmean(lat)
        pt.p50, pt.p90, pt.p99 = (percentile(lat, q) for q in (50, 90, 99))
        pt.max = max(lat)
    pt.wall_s = t_end - t0
    pt.cpu_mean = statistics.fmean(sampler.cpu) if sampler.cpu else 0.0
    pt.cpu_max = max(sampler.cpu, default=0.0)
    by_role: dict[str, float] = {}
    for pid, role in roles.items():
        by_role[role] = by_role.get(role, 0.0) + cpu1[pid] - cpu0[pid]
    by_role["client"] = (self1.user + self1.system) - (self0.user + self0.system)
    pt.own_cpu = sum(by_role.values()) / max(1e-9, pt.wall_s) / (os.cpu_count() or 1)
    pt.loadavg = os.getloadavg()[0]
    pt.cpu_by_role = {k: v / max(1, pt.sent) for k, v in by_role.items()}
    # In-flight per stage while arrivals go on (the first 2 s wall excluded). An LM
    # generation is reported twice in a worker's depth (the runtime's spawned task and
    # the LM stage's running request), so LM depths are halved here.
    window = [d for t, d in sampler.depth if t0 + 2.0 <= t <= t_last_arrival] or [d for _, d in sampler.depth]
    for s in stages:
        vals = [d[s] for d in window]
        pt.in_flight[s] = (statistics.fmean(vals) if vals else 0.0) / (2 if s in LM_STAGES else 1)
    loads = [d for t, d in sampler.member_loads if t0 + 2.0 <= t <= t_last_arrival] or \
        [d for _, d in sampler.member_loads]
    for m in sorted({m for d in loads for m in d}):
        pt.member_load[m] = statistics.fmean(d.get(m, 0) for d in loads)
    pt.placement = sampler.placement
    names = sorted(pt.member_load)
    pt.load_series = [[round(t - t0, 2), *(d.get(m, 0) for m in names)] for t, d in sampler.member_loads]
    sent_ids = [questions[idx[i]]["id"] for i in range(sent)]
    if sent_ids:
        for s in LM_STAGES:
            per_req = statistics.fmean(calls(q, mode)[s] for q in sent_ids)
            if rate * per_req > 0:
                pt.stage_time[s] = pt.in_flight[s] / (min(rate, pt.throughput or rate) * per_req)
    return pt


# ------------------------------------------------------------------------------ analysis


def crossing(pts: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """x where y crosses ``target`` going up, from (x, y) pairs sorted by sweep order."""
    if not pts:
        return None, "no data"
    if pts[0][1] > target:
        return None, "above the target at the lowest rate"
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 <= target < y1:
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0), "interpolated"
    return pts[-1][0], "lower bound: never crossed"


def at_target(points: list[Point], target: float) -> tuple[float | None, str]:
    pts = sorted((p for p in points if p.done), key=lambda p: p.rate)
    return crossing([(p.throughput, p.mean) for p in pts], target)


def common_rate(points: dict[str, list[Point]], target: float, forced: float | None) -> float | None:
    if forced is not None:
        return forced
    ok = {p.rate for p in points["baseline"] if p.done and p.mean <= target and not p.timeouts}
    ok &= {p.rate for p in points["stream"] if p.done}
    return max(ok) if ok else None


def fmt(x: float | None, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def model_sweep(model: PipelineModel, rates: list[float], seeds: int, order: list[int],
                qids: list[str], warm: list[str], n: int, modes: tuple[str, ...] = MODES
                ) -> dict[str, list[dict[str, float]]]:
    """The model over ``rates``: ``n`` requests per rate and seed, pooled."""
    out: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for mode in modes:
        for rate in rates:
            lat, tput = [], []
            calls: dict[str, list[float]] = {s: [] for s in LM_STAGES}
            for seed in range(1, seeds + 1):
                times, idx = arrival_trace(seed, rate, n, order)
                res = model.run([(t, qids[i]) for t, i in zip(times, idx)], mode, warm)
                lat += list(res.values())
                for s_, v in model.call_time.items():
                    calls[s_] += v
                tput.append(achieved_rate([times[i] + v for i, v in res.items()]))
            out[mode].append({"rate": rate, "throughput": statistics.fmean(tput), "mean": statistics.fmean(lat),
                              "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                              "call_s": {s_: statistics.fmean(v) for s_, v in calls.items() if v}})
    return out


def model_part(model: PipelineModel, rates: list[float], args: argparse.Namespace, order: list[int],
               qids: list[str], warm: list[str], modes: tuple[str, ...] = MODES
               ) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """The model: every question alone (zero load), and a sweep finer than ``rates``."""
    zero: dict[str, Any] = {"n": len(qids)}
    for mode in modes:
        res = model.run([(60.0 * i, q) for i, q in enumerate(qids)], mode, warm)
        zero[mode] = {"mean": statistics.fmean(res.values()), "p99": percentile(list(res.values()), 99)}
    top = max(rates) * 1.15
    extra = [round(x * top / 10, 2) for x in range(1, 11)]
    grid = sorted({*rates, *(x for x in extra if all(abs(x - r) > top / 40 for r in rates))})
    return zero, model_sweep(model, grid, args.model_seeds, order, qids, warm, len(order), modes)


def model_report(zero: dict[str, Any], model: dict[str, list[dict]], args: argparse.Namespace,
                 describe: dict[str, str]) -> str:
    """``--model-only``: the virtual-time model's figures, no processes."""
    target = args.target
    mt = {m: crossing([(r["throughput"], r["mean"]) for r in model[m]], target) for m in MODES}
    ok = [a["rate"] for a, b in zip(model["stream"], model["baseline"]) if b["mean"] <= target]
    lines = ["## FacTool pipeline, virtual-time model only (no processes, no bus)\n",
             f"Command: `python scripts/bench_factool.py {' '.join(sys.argv[1:])}`\n",
             f"| figure | stream | baseline | ratio |", "|---|---|---|---|",
             f"| zero-load mean / p99 (s) | {fmt(zero['stream']['mean'])} / {fmt(zero['stream']['p99'])} | "
             f"{fmt(zero['baseline']['mean'])} / {fmt(zero['baseline']['p99'])} | "
             f"{fmt(ratio(zero['baseline']['mean'], zero['stream']['mean']))}x lower |",
             f"| throughput at {target:g} s mean (req/s) | {fmt(mt['stream'][0])} ({mt['stream'][1]}) | "
             f"{fmt(mt['baseline'][0])} ({mt['baseline'][1]}) | {fmt(ratio(mt['stream'][0], mt['baseline'][0]))}x |"]
    if ok:
        cr = max(ok)
        a = next(r for r in model["stream"] if r["rate"] == cr)
        b = next(r for r in model["baseline"] if r["rate"] == cr)
        lines.append(f"| p99 at {cr:g} req/s (s) | {fmt(a['p99'])} | {fmt(b['p99'])} | "
                     f"{fmt(ratio(b['p99'], a['p99']))}x lower |")
    lines += ["", "| rate | stream achieved | mean | p99 | baseline achieved | mean | p99 | "
              + " | ".join(f"{s} s/call" for s in LM_STAGES) + " |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, b in zip(model["stream"], model["baseline"]):
        lines.append(f"| {a['rate']:g} | {fmt(a['throughput'])} | {fmt(a['mean'])} | {fmt(a['p99'])} | "
                     f"{fmt(b['throughput'])} | {fmt(b['mean'])} | {fmt(b['p99'])} | "
                     + " | ".join(f"{fmt(a['call_s'].get(s))} / {fmt(b['call_s'].get(s))}" for s in LM_STAGES) + " |")
    lines += ["", "Set-up:\n", *(f"- {k}: {v}" for k, v in describe.items()), ""]
    return "\n".join(lines)


def report(points: dict[str, list[Point]], model: dict[str, list[dict]], zero: dict[str, dict],
           args: argparse.Namespace, setup: dict[str, Any]) -> tuple[str, dict]:
    target = args.target
    lines = ["## FacTool pipeline: streaming vs. FacTool's stage-by-stage baseline (sim engine)\n",
             f"Command: `{setup['command']}`  ",
             f"Run {setup['date']} on {setup['cpus']} CPUs, {setup['wall_s']:.0f} s wall; commit {setup['commit']}.  ",
             f"Latencies in emulated s, rates in emulated req/s: time_scale {args.time_scale:g} "
             f"(wall = emulated x {args.time_scale:g}).\n",
             "| mode | offered | achieved | sent | ok | err | t/o | mismatch | mean | p50 | p90 | p99 | max "
             "| model mean | model p99 | machine CPU mean/max % | ours % | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in points:
        for p in sorted(points[mode], key=lambda p: p.rate):
            lines.append(
                f"| {mode} | {p.rate:g} | {fmt(p.throughput)} | {p.sent} | {p.done} | {p.errors} | {p.timeouts} | "
                f"{p.mismatches} | {fmt(p.mean)} | {fmt(p.p50)} | {fmt(p.p90)} | {fmt(p.p99)} | {fmt(p.max)} | "
                f"{fmt(p.model_mean)} | {fmt(p.model_p99)} | {100 * p.cpu_mean:.0f}/{100 * p.cpu_max:.0f} | "
                f"{100 * p.own_cpu:.0f} | {p.loadavg:.1f} |")
    summary: dict[str, Any] = {}
    tput = {m: at_target(points[m], target) for m in MODES}
    mt = {m: crossing([(r["throughput"], r["mean"]) for r in model[m]], target) for m in MODES}
    ts, tb = tput["stream"][0], tput["baseline"][0]
    lines += ["", "| figure | stream | baseline | stream vs baseline | model: stream, baseline, ratio | paper |",
              "|---|---|---|---|---|---|",
              f"| throughput at {target:g} s mean latency (req/s) | {fmt(ts)} ({tput['stream'][1]}) | "
              f"{fmt(tb)} ({tput['baseline'][1]}) | **{fmt(ratio(ts, tb))}x** | {fmt(mt['stream'][0])}, "
              f"{fmt(mt['baseline'][0])}, {fmt(ratio(mt['stream'][0], mt['baseline'][0]))}x | 3x |"]
    summary["throughput_at_target"] = {"stream": ts, "baseline": tb, "ratio": ratio(ts, tb),
                                       "how": {m: tput[m][1] for m in MODES},
                                       "model": {m: mt[m][0] for m in MODES}}
    cr = common_rate(points, target, args.common_rate)
    ps = next((p for p in points["stream"] if p.rate == cr), None)
    pb = next((p for p in points["baseline"] if p.rate == cr), None)
    if ps and pb:
        ms = next((r for r in model["stream"] if r["rate"] == cr), None)
        mb = next((r for r in model["baseline"] if r["rate"] == cr), None)
        mtxt = (f"{fmt(ms['p99'])}, {fmt(mb['p99'])}, {fmt(ratio(mb['p99'], ms['p99']))}x lower"
                if ms and mb else "-")
        lines.append(f"| p99 latency at {cr:g} req/s (s) | {fmt(ps.p99)} | {fmt(pb.p99)} | "
                     f"**{fmt(ratio(pb.p99, ps.p99))}x lower** | {mtxt} | 1.8x lower |")
        lines.append(f"| mean latency at {cr:g} req/s (s) | {fmt(ps.mean)} | {fmt(pb.mean)} | "
                     f"{fmt(ratio(pb.mean, ps.mean))}x lower | | |")
        summary["p99_at_common_rate"] = {"rate": cr, "stream": ps.p99, "baseline": pb.p99,
                                         "baseline_over_stream": ratio(pb.p99, ps.p99)}
    if points.get("item"):
        # The ablation: whole outputs per call, but no stage barriers and claims per sentence.
        ti = at_target(points["item"], target)[0]
        pi = next((p for p in points["item"] if p.rate == cr), None)
        lines.append(f"| ablation, stream = false on factool.toml: throughput at {target:g} s; p99 at "
                     f"{cr:g} req/s | {fmt(ti)} req/s; {fmt(pi.p99 if pi else None)} s | | stream vs it: "
                     f"{fmt(ratio(ts, ti))}x; {fmt(ratio(pi.p99 if pi else None, ps.p99 if ps else None))}x lower | | |")
        summary["ablation_item"] = {"throughput_at_target": ti, "p99_at_common_rate": pi.p99 if pi else None}
    low = {m: min(points[m], key=lambda p: p.rate) for m in MODES}
    if low["stream"].rate != cr:
        lines.append(f"| mean latency at {low['stream'].rate:g} req/s (s) | {fmt(low['stream'].mean)} | "
                     f"{fmt(low['baseline'].mean)} | {fmt(ratio(low['baseline'].mean, low['stream'].mean))}x lower | | |")
    lines.append(f"| zero-load model, mean / p99 over all {zero['n']} questions (s) | "
                 f"{fmt(zero['stream']['mean'])} / {fmt(zero['stream']['p99'])} | "
                 f"{fmt(zero['baseline']['mean'])} / {fmt(zero['baseline']['p99'])} | "
                 f"{fmt(ratio(zero['baseline']['mean'], zero['stream']['mean']))}x lower | | |")
    summary["zero_load_model"] = zero
    n_mis = sum(p.mismatches for m in points for p in points[m])
    n_bad = sum(p.errors + p.timeouts for m in points for p in points[m])
    n_ok = sum(p.done for m in points for p in points[m])
    lines += ["", f"Every result checked against alto_workers.factool.reference: {n_ok} results, "
                  f"**{n_mis} mismatches**, {n_bad} errors or timeouts.\n"]
    summary.update(mismatches=n_mis, errors=n_bad, checked=n_ok)

    lines += [f"Throughput at a mean-latency target, other targets (measured; model in brackets):\n",
              "| target s | stream req/s | baseline req/s | ratio |", "|---|---|---|---|"]
    for tgt in (2.5, 3.0, 3.5, 4.0, 5.0):
        a = at_target(points["stream"], tgt)[0]
        b = at_target(points["baseline"], tgt)[0]
        ma = crossing([(r["throughput"], r["mean"]) for r in model["stream"]], tgt)[0]
        mb = crossing([(r["throughput"], r["mean"]) for r in model["baseline"]], tgt)[0]
        lines.append(f"| {tgt:g} | {fmt(a)} ({fmt(ma)}) | {fmt(b)} ({fmt(mb)}) | "
                     f"{fmt(ratio(a, b))}x ({fmt(ratio(ma, mb))}x) |")
    lines.append("")

    stages = setup["stages"]
    lines += ["Mean in flight per stage while requests arrive (broker status every 0.5 s wall), and "
              "for LM stages the time per call it implies (Little's law, emulated s):\n",
              "| mode | req/s | " + " | ".join(stages) + " | " + " | ".join(f"{s} s/call" for s in LM_STAGES) + " |",
              "|---|---|" + "---|" * (len(stages) + len(LM_STAGES))]
    for mode in points:
        for p in sorted(points[mode], key=lambda p: p.rate):
            lines.append(f"| {mode} | {p.rate:g} | " + " | ".join(fmt(p.in_flight.get(s), 1) for s in stages)
                         + " | " + " | ".join(fmt(p.stage_time.get(s)) for s in LM_STAGES) + " |")
    seen = {r for m in points for p in points[m] for r in p.cpu_by_role}
    roles = [s for s in ["broker", *sorted(seen - {"broker", "client", *stages}), *stages, "client"] if s in seen]
    lines += ["", "CPU seconds per request (all processes of a role; wall-clock CPU time, so not divided "
                  "by time_scale):\n",
              "| mode | req/s | " + " | ".join(roles) + " | total |", "|---|---|" + "---|" * (len(roles) + 1)]
    for mode in points:
        for p in sorted(points[mode], key=lambda p: p.rate):
            lines.append(f"| {mode} | {p.rate:g} | " + " | ".join(fmt(p.cpu_by_role.get(r), 3) for r in roles)
                         + f" | {fmt(sum(p.cpu_by_role.values()), 3)} |")
    lines += ["", "Model sweep (virtual time, no bus; " + f"{setup['model_n']} requests x {args.model_seeds} "
              "seeds per rate; s/call: mean time from a call's arrival at its engine to its last token, stream / baseline):\n",
              "| rate | stream achieved | mean | p99 | baseline achieved | mean | p99 | "
              + " | ".join(f"{s} s/call" for s in LM_STAGES) + " |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, b in zip(model["stream"], model["baseline"]):
        lines.append(f"| {a['rate']:g} | {fmt(a['throughput'])} | {fmt(a['mean'])} | {fmt(a['p99'])} | "
                     f"{fmt(b['throughput'])} | {fmt(b['mean'])} | {fmt(b['p99'])} | "
                     + " | ".join(f"{fmt(a['call_s'].get(s))} / {fmt(b['call_s'].get(s))}" for s in LM_STAGES) + " |")
    lines += ["", "Set-up:\n", *(f"- {k}: {v}" for k, v in setup["describe"].items()), ""]
    return "\n".join(lines), summary


def plot(points: dict[str, list[Point]], model: dict[str, list[dict]], args: argparse.Namespace,
         path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    colors = {"stream": "tab:blue", "baseline": "tab:red", "item": "tab:gray"}
    labels = {"stream": "streaming (ALTO)", "baseline": "stage by stage (FacTool baseline)",
              "item": "stream = false, no barriers (ablation)"}
    top = 0.0
    for ax, stat in zip(axes, ("p50", "mean", "p99")):
        for mode in points:
            pts = sorted((p for p in points[mode] if p.done), key=lambda p: p.rate)
            ys = [getattr(p, stat) for p in pts]
            top = max([top, *ys])
            ax.plot([p.throughput for p in pts], ys, "o-", color=colors[mode], label=f"{labels[mode]}, measured")
            ax.plot([r["throughput"] for r in model[mode]], [r[stat] for r in model[mode]], "--",
                    color=colors[mode], alpha=0.5, label=f"{labels[mode]}, model (no bus)")
        ax.axhline(args.target, color="gray", ls=":", lw=1)
        if stat == "mean":
            for mode in MODES:
                x = summary["throughput_at_target"][mode]
                if x is not None:
                    ax.axvline(x, color=colors[mode], ls=":", lw=1)
        ax.set_title(f"{stat} latency")
        ax.set_xlabel("achieved throughput (emulated req/s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency (emulated s)")
    axes[0].set_ylim(0, min(top * 1.1, 4 * args.target))
    xmax = max(p.throughput for m in points for p in points[m])
    for ax in axes:
        ax.set_xlim(0, xmax * 1.15)
    axes[0].legend(loc="upper left", fontsize=7)
    r = summary["throughput_at_target"]["ratio"]
    p99 = summary.get("p99_at_common_rate", {})
    fig.suptitle(f"FacTool pipeline, sim engine (time_scale {args.time_scale:g}): throughput at {args.target:g} s "
                 f"mean latency stream/baseline = {fmt(r)}x; p99 at {p99.get('rate', '-')} req/s "
                 f"baseline/stream = {fmt(p99.get('baseline_over_stream'))}x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ main


def describe_setup(topos: dict[str, dict[str, Any]], wl: Workload, model: PipelineModel,
                   args: argparse.Namespace) -> dict[str, str]:
    from alto_workers.factool import prompts

    out: dict[str, str] = {}
    for m, topo in topos.items():
        pools = [f"pool {p['name']}: {p.get('replicas', 1)} members, policy {p.get('policy', 'prompt-aware')}"
                 for p in topo.get("pool", [])]
        own = [f"{s['name']} {s.get('replicas', 1)}" for s in topo["stage"] if "pool" not in s]
        out[f"instances, {m} ({TOPOLOGIES[m][0]})"] = "; ".join([*pools, ", ".join(own)])
    p = dataclasses.asdict(SimParams.from_dict({**args.engine_args, "time_scale": args.time_scale}))
    out["sim parameters (every LM instance)"] = ", ".join(f"{k}={v}" for k, v in p.items())
    lens = []
    for name in LM_STAGES:
        xs = [c.n_steps for q in wl.questions for c in _calls_of(model, q["id"], name, "stream")]
        lens.append(f"{name} {statistics.fmean(xs):.0f} (min {min(xs)}, max {max(xs)})")
    whole = [model.whole_claims[q["id"]].n_steps for q in wl.questions]
    lens.append(f"baseline's claims over the whole answer {statistics.fmean(whole):.0f} "
                f"(min {min(whole)}, max {max(whole)})")
    out["output tokens per LM call, mean"] = "; ".join(lens)
    plen = {s: [c.prompt_len for q in wl.questions for c in _calls_of(model, q["id"], s, "stream")]
            for s in LM_STAGES}
    fixed = {n: len(tokenize(getattr(prompts, n.upper()).split("{", 1)[0])[1]) for n in LM_STAGES}
    out["prompt tokens per LM call, mean (shared template prefix)"] = "; ".join(
        f"{s} {statistics.fmean(plen[s]):.0f} ({fixed[s]})" for s in LM_STAGES)
    for m in ("stream", "baseline"):
        per = [model.calls_per_request(q["id"], m) for q in wl.questions]
        out[f"LM calls per request, mean, {m}"] = ", ".join(
            f"{s} {statistics.fmean(c[s] for c in per):.2f}" for s in LM_STAGES)
    out["max_tokens"] = ", ".join(f"{s['name']} {s.get('max_tokens')}" for s in topos["stream"]["stage"]
                                  if s["kind"] == "lm")
    out["workload"] = (f"{os.path.relpath(args.workload, ROOT)}, {len(wl.questions)} questions; per point "
                       f"{args.warmup} warm-up requests (unmeasured), then rate x {args.duration:g} s requests "
                       f"(at least {args.min_requests}, at most {args.requests}), Poisson arrivals (seed {args.seed}; one "
                       f"unit-rate trace scaled to each rate, the n-th arrival at n / rate), questions without repeats")
    out["bounds"] = (f"arrivals stop after {args.max_send_s:g} s wall; then at most "
                     f"{args.drain_s + args.timeout:g} emulated s of drain; request deadline {args.timeout:g} emulated s")
    return out


def _calls_of(model: PipelineModel, qid: str, stage: str, mode: str) -> list[CallSpec]:
    answer, sentences = model.requests[qid]
    if stage == "answer":
        return [answer]
    if stage == "claims":
        return [model.whole_claims[qid]] if mode == "baseline" else [c for c, _ in sentences]
    return [qv[0 if stage == "queries" else 1] for _, per in sentences for qv in per]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/bench_factool", help="output folder (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="3 rates, fewer requests (~2 min)")
    ap.add_argument("--rates", help=f"offered rates, emulated req/s (default {FULL['rates']})")
    ap.add_argument("--modes", default="stream,baseline", help="run only some modes (no report)")
    ap.add_argument("--requests", type=int, help=f"most requests per point ({FULL['requests']})")
    ap.add_argument("--min-requests", type=int, help=f"fewest requests per point ({FULL['min_requests']})")
    ap.add_argument("--duration", type=float, help=f"emulated s of arrivals per point ({FULL['duration']:g})")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests per point before the trace")
    ap.add_argument("--time-scale", type=float, help=f"sim time_scale, wall/emulated ({FULL['time_scale']:g})")
    ap.add_argument("--replicas", action="append", default=[], metavar="NAME=N",
                    help="instances of a stage, or members of a pool (llm=N)")
    ap.add_argument("--stream-topology", help="topology file of the stream and item modes "
                    "(default topology/factool.toml; e.g. topology/factool_stages.toml)")
    ap.add_argument("--policy", help="the pools' scheduling policy (default: the topology's, prompt-aware)")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a sim parameter for every LM stage (a JSON value or a bare string)")
    ap.add_argument("--target", type=float, default=4.0, help="mean-latency target, emulated s (4)")
    ap.add_argument("--common-rate", type=float, help="rate of the p99 comparison")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="request deadline, emulated s")
    ap.add_argument("--drain-s", type=float, default=30.0, help="emulated s to wait after the last arrival")
    ap.add_argument("--max-send-s", type=float, help="wall s of arrivals per point, at most")
    ap.add_argument("--model-seeds", type=int, help="seeds per rate of the model sweep")
    ap.add_argument("--model-only", action="store_true",
                    help="only the virtual-time model over the rates (seconds, no processes): what-ifs")
    ap.add_argument("--workload", default=DEFAULT_PATH)
    args = ap.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    rates = [float(x) for x in args.rates.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text                  # a bare string, e.g. preset=h100-llama3-8b

    args.engine_args = {k: value(v) for k, _, v in (a.partition("=") for a in args.engine_arg)}
    replicas = {k: int(v) for k, _, v in (a.partition("=") for a in args.replicas)}
    SimParams.from_dict({**args.engine_args, "time_scale": args.time_scale})   # refuse bad values now
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)                       # the workers import handlers relative to the launch folder

    started = time.monotonic()
    wl = Workload.load(args.workload)
    ref = Reference(wl, k=3)
    questions = list(wl.questions)
    qids = [q["id"] for q in questions]
    expected = [ref.result(q["question"]) for q in questions]
    # Warm-up questions: the tail of the permutation, never in a measured trace.
    order = permutation(args.seed, len(questions))
    warm_idx = order[len(order) - args.warmup:] if args.warmup else []
    order = order[:len(order) - args.warmup] if args.warmup else order
    args.requests = min(args.requests, len(order))
    warm = [questions[i] for i in warm_idx]

    unknown = [m for m in modes if m not in TOPOLOGIES]
    if unknown:
        ap.error(f"--modes: unknown mode {unknown[0]!r} (known: {', '.join(TOPOLOGIES)})")
    report_modes = tuple(dict.fromkeys([*MODES, *modes]))
    topos = {}
    for m in report_modes:
        file, stream = TOPOLOGIES[m]
        path = ROOT / "topology" / file
        if args.stream_topology and m != "baseline":
            path = Path(args.stream_topology).resolve()
        topos[m] = variant(tomllib.loads(path.read_text()), stream=stream,
                           time_scale=args.time_scale, engine_args=args.engine_args, replicas=replicas,
                           policy=args.policy)
    stages_of = {m: [s["name"] for s in topos[m]["stage"]] for m in report_modes}
    stages = list(dict.fromkeys(n for m in report_modes for n in stages_of[m]))
    model = PipelineModel(wl, ref, topos["stream"], baseline=topos["baseline"])
    if args.model_only:
        zero, msweep = model_part(model, rates, args, order, qids, [q["id"] for q in warm], report_modes)
        text = model_report(zero, msweep, args, describe_setup(topos, wl, model, args))
        print(text)
        (out / "model_only.md").write_text(text + "\n")
        return 0
    points: dict[str, list[Point]] = {m: [] for m in report_modes}
    with tempfile.TemporaryDirectory(prefix="bench_factool_") as tmp:
        paths = {}
        for m in report_modes:
            paths[m] = Path(tmp) / f"factool_{m}.toml"
            paths[m].write_text(to_toml(topos[m]))
        print(f"bench_factool: rates {rates} x modes {modes}, time_scale {args.time_scale:g}, "
              f"topologies in {tmp}", file=sys.stderr, flush=True)
        for rate in rates:
            for mode in modes:
                t = time.monotonic()
                for attempt in range(3):
                    try:
                        pt = run_point(paths[mode], stages_of[mode], mode, rate, args, questions, expected, order,
                                       warm, model.calls_per_request)
                        break
                    except (LaunchError, RuntimeError) as exc:   # launch or warm-up on a starved machine
                        print(f"[{time.monotonic() - started:5.0f} s] {mode} {rate:g} req/s: {exc}; "
                              f"{'retrying' if attempt < 2 else 'giving up'}", file=sys.stderr, flush=True)
                        if attempt == 2:
                            raise
                times, idx = arrival_trace(args.seed, rate, requests_for(rate, args), order)
                res = model.run([(tt, qids[i]) for tt, i in zip(times[:pt.sent], idx)], mode,
                                [q["id"] for q in warm])
                pt.model_mean = statistics.fmean(res.values()) if res else math.nan
                pt.model_p99 = percentile(list(res.values()), 99)
                points[mode].append(pt)
                print(f"[{time.monotonic() - started:5.0f} s] {mode:8s} {rate:5.2f} req/s: {pt.done}/{pt.sent} ok, "
                      f"{pt.errors} err, {pt.timeouts} timeout, {pt.mismatches} mismatch | achieved "
                      f"{pt.throughput:.2f}/s, mean {fmt(pt.mean)} s (model {fmt(pt.model_mean)}), p50 "
                      f"{fmt(pt.p50)}, p99 {fmt(pt.p99)} | CPU machine {100 * pt.cpu_mean:.0f}% (max "
                      f"{100 * pt.cpu_max:.0f}%), ours {100 * pt.own_cpu:.0f}%, load {pt.loadavg:.1f} | "
                      f"{time.monotonic() - t:.0f} s (launch {pt.launch_s:.1f}, warm-up {pt.warm_s:.1f}) | member "
                f"loads {', '.join(f'{v:.0f}' for v in pt.member_load.values()) or '-'}"
                      + (f" | e.g. {pt.error_samples[0]}" if pt.error_samples else ""),
                      file=sys.stderr, flush=True)
    if not all(points[m] for m in MODES):
        print(json.dumps({m: [dataclasses.asdict(p) for p in points[m]] for m in MODES}, indent=1))
        return 1 if any(p.mismatches for m in MODES for p in points[m]) else 0

    zero, msweep = model_part(model, rates, args, order, qids, [q["id"] for q in warm], report_modes)
    model_n = len(order)
    print(f"[{time.monotonic() - started:5.0f} s] model sweep done", file=sys.stderr, flush=True)

    commit = (os.popen(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null").read().strip()
              or os.environ.get("BENCH_COMMIT", "?"))     # BENCH_COMMIT: for an exported tree
    dirty = os.popen(f"git -C {ROOT} status --porcelain --untracked-files=no 2>/dev/null").read().strip()
    setup = {
        "command": "python scripts/bench_factool.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "wall_s": time.monotonic() - started,
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "stages": stages,
        "model_n": model_n,
        "describe": describe_setup(topos, wl, model, args),
    }
    text, summary = report(points, msweep, zero, args, setup)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(
        {"setup": setup, "args": vars(args), "summary": summary, "model_sweep": msweep,
         "points": {m: [dataclasses.asdict(p) for p in points[m]] for m in points}}, indent=1, default=str))
    plot(points, msweep, args, out / "latency_throughput.png", summary)
    print(f"wrote {out}/results.md, results.json, latency_throughput.png", file=sys.stderr)
    return 1 if summary["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
