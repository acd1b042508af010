#!/usr/bin/env python3
"""The control plane at scale: a real broker, thousands of simulated instances.

Simulated instances speak the real control protocol (hello, ready, heartbeats) from a
few processes, many DEALER sockets each; they do no data-plane work. A 3-stage chain
(entry -> b -> c, 1% / half / half of the instances). Measured, per instance count:

* broker CPU per second and bytes of "loads" reports per tick, in steady state with
  10% of the instances changing their reported depth every heartbeat;
* time to a new epoch: one more instance registers; until every instance has its table,
  and the bytes of "table" messages that one join cost, against the whole table the
  broker sent every instance on every epoch before deltas (its size computed in the run);
* time to notice a dead instance: one stops its heartbeats; until every instance has a
  table that lists it dead (the broker's liveness is heartbeat_liveness x heartbeat_interval);
* time to register all N instances (each turn of the broker's loop is one epoch).

Each count runs up to three times in the same run: loads as deltas with load subsetting
(the default, [broker] load_subset = 32), as deltas to every sender of a stage
(load_subset = 0, the default before subsetting), and whole every tick without subsets
([broker] loads_full_every = 1, the reference; --loads deltas leaves it out).

    .venv/bin/python scripts/bench_control_plane.py --instances 250,1000,5000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus.deploy.topology import BROKER_FIELDS  # noqa: E402
from alto_bus.protocol import wire  # noqa: E402

HB = 0.5
LIVENESS = 4


def topology(path: Path, full_every: int | None, load_subset: int | None = None) -> None:
    stage = 'kind = "function"\nhandler = "words_handlers:upper"\n'
    full = f"loads_full_every = {full_every}\n" if full_every else ""
    if load_subset is not None:
        full += f"load_subset = {load_subset}\n"
    path.write_text(f'[broker]\nheartbeat_interval = {HB}\nheartbeat_liveness = {LIVENESS}\n{full}'
                    f'[[stage]]\nname = "a"\n{stage}'
                    f'[[stage]]\nname = "b"\ninput = "a"\n{stage}'
                    f'[[stage]]\nname = "c"\ninput = "b"\n{stage}')


def sim_instances(control: str, stages: list[str], seconds: float, out: mp.Queue, go: mp.Event,
                  victim: bool, registered: Any = None, stop: Any = None) -> None:
    """Run len(stages) simulated instances for at most ``seconds`` (until ``stop`` is set);
    report what they received. ``registered``: a shared count of registered instances."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(stages) + 100)   # the default is 1,023 a context
    socks, iids = [], {}
    poller = zmq.Poller()
    for k, stage in enumerate(stages):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(control)
        s.send(wire.encode_control("hello", {"stage": stage, "pid": os.getpid(), "host": "sim"}))
        socks.append(s)
        poller.register(s, zmq.POLLIN)
    rng = random.Random(os.getpid())
    depth = [0] * len(socks)
    loads_bytes = 0
    table_bytes: list[tuple[float, int]] = []  # (time, bytes) of every table message
    views: dict[Any, dict] = {}
    tables: list[tuple[float, int, set]] = []   # (time, epoch, dead ids) of the last socket
    seen_epoch: dict[int, float] = {}           # epoch -> when the last of our sockets got it
    got: dict[int, int] = {}                    # epoch -> how many of our sockets got it
    dead_at = None
    next_beat = time.monotonic() + HB
    end = time.monotonic() + seconds
    measuring = False
    while time.monotonic() < end and not (stop is not None and stop.is_set()):
        for s, _ in poller.poll(20):
            while True:
                try:
                    frame = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                op, body = wire.decode_control(frame)
                if op == "welcome":
                    s.send(wire.encode_control("ready", {"stage": body["config"]["name"],
                                                         "address": f"tcp://127.0.0.1:{rng.randint(20000, 60000)}",
                                                         "pid": os.getpid(), "host": "sim"}))
                elif op == "registered":
                    iids[s] = int(body["iid"])
                    if registered is not None:
                        with registered.get_lock():
                            registered.value += 1
                elif op == "loads":
                    if measuring:
                        loads_bytes += len(frame)
                elif op in ("table", "table_delta"):
                    table_bytes.append((time.time(), len(frame)))
                    if op == "table_delta":  # what a worker checks before it applies one
                        view = views.get(s)
                        if view is None or view["epoch"] != int(body["base"]):
                            s.send(wire.encode_control("resync", {}))
                            continue
                        # A real instance rebuilds its view (table_views.apply_delta, O(its
                        # view)); thousands in one process only keep what is measured.
                        body = {"epoch": int(body["epoch"]), "dead": body.get("dead", view["dead"])}
                    views[s] = {"epoch": int(body["epoch"]), "dead": body.get("dead", ())}
                    e = int(body["epoch"])
                    got[e] = got.get(e, 0) + 1
                    if got[e] == len(socks):
                        seen_epoch[e] = time.time()
                    if s is socks[-1]:  # not the victim (socks[0]): it gets no table once dead
                        tables.append((time.time(), e, {int(i) for i in body.get("dead", ())}))
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + HB
            for k, s in enumerate(socks):
                if victim and k == 0 and dead_at is not None:
                    continue
                if rng.random() < 0.1:
                    depth[k] = rng.randint(0, 50)
                s.send(wire.encode_control("heartbeat", {"depth": depth[k]}))
        if not measuring and go.is_set():
            measuring = True
            t_measure = time.time()
            loads_bytes = 0
        if victim and dead_at is None and os.path.exists(go_file(control)):
            dead_at = time.time()
    out.put({"registered": len(iids), "loads_bytes": loads_bytes, "seen_epoch": seen_epoch,
             "table_bytes": table_bytes,
             "tables": [(t, e, sorted(ids)) for t, e, ids in tables],
             "victim_iid": iids.get(socks[0]) if victim else None, "dead_at": dead_at,
             "t_measure": t_measure if measuring else None})
    ctx.destroy(linger=0)


def go_file(control: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"alto_cp_kill_{control.rsplit(':', 1)[1]}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(n: int, procs: int, steady: float, full_every: int | None, load_subset: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        topo = Path(tmp) / "cp.toml"
        topology(topo, full_every, load_subset)
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'topology' / 'examples'}:{ROOT}")
        broker = subprocess.Popen([sys.executable, "-m", "alto_bus.deploy.cli", "broker", str(topo), "--announce"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        workers: list[mp.Process] = []
        stop = mp.Event()
        try:
            addresses = json.loads(broker.stdout.readline())
            control = addresses["control"]
            n_a = max(1, n // 100)
            names = ["a"] * n_a + ["b"] * ((n - n_a) // 2) + ["c"] * (n - n_a - (n - n_a) // 2)
            random.Random(0).shuffle(names)
            chunks = [names[k::procs] for k in range(procs)]
            q: mp.Queue = mp.Queue()
            go = mp.Event()
            registered = mp.Value("i", 0)
            limit = 900.0   # no run may take longer than this
            t_start = time.monotonic()
            workers = [mp.Process(target=sim_instances, args=(control, chunk, limit, q, go, k == 0, registered, stop))
                       for k, chunk in enumerate(chunks)]
            for w in workers:
                w.start()
            while registered.value < n and time.monotonic() - t_start < limit / 2:
                time.sleep(0.1)   # polling a shared counter (a benchmark, not a test)
            t_register = time.monotonic() - t_start if registered.value >= n else None
            time.sleep(2 * HB)    # the last tables and the first whole loads reports settle
            go.set()
            c0, t0 = cpu_seconds(broker.pid), time.monotonic()
            time.sleep(steady)
            cpu = (cpu_seconds(broker.pid) - c0) / (time.monotonic() - t0)
            ticks = (time.monotonic() - t0) / HB
            # A new instance joins: the time until every instance has the new epoch.
            joined_at = time.time()
            extra = mp.Process(target=sim_instances, args=(control, ["b"], limit, q, mp.Event(), False, None, stop))
            extra.start()
            workers.append(extra)
            time.sleep(4.0)
            join_window = time.time()
            Path(go_file(control)).touch()     # the victim stops beating
            time.sleep(HB * LIVENESS + 4.0)    # the broker's liveness, and the new table everywhere
            stop.set()
            results = [q.get(timeout=120) for _ in range(len(workers))]
            for w in workers:
                w.join(10)
        finally:
            stop.set()
            for w in workers:
                if w.is_alive():
                    w.terminate()
            broker.terminate()
            broker.wait(10)
            Path(go_file(control)).unlink(missing_ok=True)
    main = [r for r in results if r["registered"] != 1 or len(results) == 1]
    registered_n = sum(r["registered"] for r in results)
    loads_bytes = sum(r["loads_bytes"] for r in main)
    join_bytes = sum(b for r in main for t, b in r["table_bytes"] if joined_at <= t < join_window)
    epochs_after_join = [min((t for e, t in r["seen_epoch"].items() if t >= joined_at), default=None) for r in main]
    t_join = max(t for t in epochs_after_join if t is not None) - joined_at if all(epochs_after_join) else None
    victim = next(r for r in results if r["victim_iid"] is not None)
    gone = [t for t, e, dead in victim["tables"] if victim["dead_at"] and t > victim["dead_at"]
            and victim["victim_iid"] in dead]
    t_dead = (min(gone) - victim["dead_at"]) if gone else None
    return {"instances": n, "registered": registered_n, "broker_cpu": cpu, "t_register": t_register,
            "loads_bytes_per_tick": loads_bytes / ticks, "t_new_epoch": t_join, "t_notice_dead": t_dead,
            "join_table_bytes": join_bytes, "whole_table_bytes": n * whole_table_size(n),
            "full_every": full_every or "default", "load_subset": "default" if load_subset is None else load_subset}


def whole_table_size(n: int) -> int:
    """Bytes of the one table every instance got on every epoch before views and deltas:
    every instance of every stage (with the same kind of addresses as here)."""
    rng = random.Random(1)
    stages = {"a": [], "b": [], "c": []}
    for iid in range(1, n + 2):
        stages["abc"[iid % 3]].append([iid, f"tcp://127.0.0.1:{rng.randint(20000, 60000)}"])
    return len(wire.encode_control("table", {"epoch": n, "stages": stages, "keys": {}, "members": {},
                                             "dead": [], "results": "tcp://127.0.0.1:50000"}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default="250,1000,5000")
    ap.add_argument("--loads", choices=["both", "deltas"], default="both",
                    help="both: also the whole-loads-every-tick reference (no subsets) for each count")
    ap.add_argument("--load-subset", default="default,0",
                    help="[broker] load_subset values to run the deltas with (default: the topology's default, 32)")
    ap.add_argument("--procs", type=int, default=4, help="processes the simulated instances run in")
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of the steady-state window")
    ap.add_argument("--out", default="out/bench_control_plane/results.json")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # thousands of sockets
    rows = []
    subsets = [None if x == "default" else int(x) for x in args.load_subset.split(",")]
    configs = [(None, k) for k in subsets] + ([(1, 0)] if args.loads == "both" else [])
    for n in [int(x) for x in args.instances.split(",")]:
        for full, subset in configs:
            t = time.monotonic()
            row = run_one(n, args.procs, args.steady, full, subset)
            rows.append(row)
            print(f"[{time.monotonic() - t:5.0f} s] {n:5d} instances ({row['registered']} registered in "
                  f"{_s(row['t_register'])}), loads {_label(full, subset)}: broker CPU "
                  f"{row['broker_cpu']:.2f} s/s, {row['loads_bytes_per_tick'] / 1e3:,.0f} kB of loads a tick, "
                  f"one join: {row['join_table_bytes'] / 1e3:,.0f} kB of tables (whole tables to all: "
                  f"{row['whole_table_bytes'] / 1e3:,.0f} kB), new epoch everywhere in {_s(row['t_new_epoch'])}, "
                  f"dead instance known to every sender in {_s(row['t_notice_dead'])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    _plot(rows, Path(args.out).with_suffix(".png"))
    return 0


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _label(full: int | str | None, subset: int | str | None) -> str:
    if full not in (None, "default"):
        return "whole every tick"
    if subset in (None, "default"):
        subset = BROKER_FIELDS["load_subset"][1]
    return "deltas, no subsets" if subset == 0 else f"deltas, subsets of {subset}"


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for config in dict.fromkeys((r["full_every"], r["load_subset"]) for r in rows):
        rs = [r for r in rows if (r["full_every"], r["load_subset"]) == config and r["t_new_epoch"] is not None]
        ns = [r["instances"] for r in rs]
        axes[0].plot(ns, [r["broker_cpu"] for r in rs], "o-", label=f"loads {_label(*config)}")
        axes[1].plot(ns, [r["loads_bytes_per_tick"] / 1e6 for r in rs], "o-", label=f"loads {_label(*config)}")
    rs = [r for r in rows if r["full_every"] == "default" and r["load_subset"] == "default"
          and r["t_new_epoch"] is not None]
    ns = [r["instances"] for r in rs]
    axes[2].plot(ns, [r["join_table_bytes"] / 1e6 for r in rs], "o-", label="views and deltas")
    axes[2].plot(ns, [r["whole_table_bytes"] / 1e6 for r in rs], "o--", label="whole table to every instance")
    axes[0].set(xlabel="instances", ylabel="broker CPU (s/s)", xscale="log")
    axes[1].set(xlabel="instances", ylabel="loads MB per tick", xscale="log", yscale="log")
    axes[2].set(xlabel="instances", ylabel="table MB for one join", xscale="log", yscale="log")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
