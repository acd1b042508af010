"""Requests/s, latency and the gateway tier's CPU with 1, 2 and 4 gateways (issue 15, item 2).

    .venv/bin/python scripts/bench_gateways.py --requests 3000 --concurrency 256 --repeats 3

For each of ``topology/examples/words.toml`` (fan-out, three stages) and ``fan.toml``
(fan-out and keyed fan-in), launches the topology with ``[broker] gateways = N`` (a copy
of the file with that one field set) and drives a closed loop: ``--concurrency`` requests
in flight from one ``Client`` given every gateway's address (it spreads them: the
gateway with the fewest pending), ``--requests`` in all after a warm-up. Gateway counts run alternately within each repeat, so a change in the
machine's load hits all of them. Reported per run: requests/s, p50 and p99 latency, and
the CPU seconds per second of the busiest process of the gateway tier (the broker and
the gateways beside it): the one that caps the rate when the machine has cores to spare.
``ceiling`` = requests/s / that busiest share is the rate at which it would be saturated.
Writes ``results.json`` and ``results.png`` under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alto_bus import Client
from alto_bus.deploy.status_probe import StatusProbe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import launch_until_ready, percentile, proc_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "topology" / "examples"
TEXT = "the quick brown fox jumps over the lazy dog"


def with_gateways(source: Path, n: int, folder: Path) -> Path:
    """A copy of ``source`` whose [broker] table says ``gateways = n``."""
    lines = source.read_text().splitlines()
    at = lines.index("[broker]") + 1
    path = folder / f"{source.stem}-{n}.toml"
    path.write_text("\n".join([*lines[:at], f"gateways = {n}", *lines[at:]]) + "\n")
    return path


class Launched:
    def __init__(self, topology: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
        self.proc, self.printed = launch_until_ready(["launch", str(topology)], env)

    def tier_pids(self) -> list[int]:
        """The broker's pid and each gateway's beside it."""
        with StatusProbe(self.printed["control"]) as probe:
            st = probe.query(timeout=10)
        workers = {i["pid"] for s in st["stages"].values() for i in s["instances"]}
        gateways = [g["pid"] for g in st["gateways"][1:]]
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = {int(p) for p in f.read().split()}
        return sorted(children - workers - set(gateways)) + gateways

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def closed_loop(client: Client, n: int, concurrency: int) -> list[float]:
    """``n`` requests, ``concurrency`` in flight: their latencies (s)."""
    latencies: list[float] = []
    inflight: dict = {}
    sent = 0
    import concurrent.futures as cf

    while sent < n or inflight:
        while sent < n and len(inflight) < concurrency:
            fut = client.submit(TEXT, timeout=60)
            inflight[fut] = time.perf_counter()
            sent += 1
        done, _ = cf.wait(list(inflight), timeout=60, return_when=cf.FIRST_COMPLETED)
        if not done:
            raise SystemExit("no request completed within 60 s")
        now = time.perf_counter()
        for fut in done:
            fut.result()  # a failure ends the benchmark: it measures a working system
            latencies.append(now - inflight.pop(fut))
    return latencies


def run_one(topology: Path, requests: int, concurrency: int) -> dict:
    launched = Launched(topology)
    try:
        addresses = launched.printed["gateway"].split(",")
        with Client(addresses, timeout=120) as client:
            closed_loop(client, max(200, requests // 10), concurrency)  # warm-up
            pids = launched.tier_pids()
            cpu0 = [proc_cpu(p) for p in pids]
            t0 = time.perf_counter()
            lat = closed_loop(client, requests, concurrency)
            wall = time.perf_counter() - t0
            cpu = [(proc_cpu(p) - c) / wall for p, c in zip(pids, cpu0)]
    finally:
        launched.stop()
    rate = requests / wall
    busiest = max(cpu)
    return {"gateways": len(addresses), "rate": rate, "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000, "tier_cpu": cpu, "busiest_cpu": busiest,
            "ceiling": rate / busiest if busiest > 0 else float("inf")}


def summary(runs: list[dict], key: str) -> str:
    xs = [r[key] for r in runs]
    return f"{statistics.median(xs):,.0f} [{min(xs):,.0f}-{max(xs):,.0f}]" if key != "busiest_cpu" else \
        f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def plot(results: dict[str, dict[int, list[dict]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, by_n in results.items():
        ns = sorted(by_n)
        for ax, key, label in zip(axes, ("rate", "p99_ms", "ceiling"),
                                  ("requests/s (this machine)", "p99 latency, ms", "ceiling: requests/s / busiest CPU")):
            med = [statistics.median(r[key] for r in by_n[n]) for n in ns]
            ax.plot(ns, med, marker="o", label=name)
            ax.set_xlabel("gateways")
            ax.set_title(label, fontsize=10)
            ax.set_xticks(ns)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--gateways", default="1,2,4")
    ap.add_argument("--topologies", default="words,fan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default="out/bench_gateways")
    args = ap.parse_args()
    counts = [int(n) for n in args.gateways.split(",")]
    names = args.topologies.split(",")
    results: dict[str, dict[int, list[dict]]] = {name: {n: [] for n in counts} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in names:
                order = counts if rep % 2 == 0 else counts[::-1]
                for n in order:
                    r = run_one(with_gateways(EXAMPLES / f"{name}.toml", n, Path(tmp)), args.requests, args.concurrency)
                    results[name][n].append(r)
                    print(f"repeat {rep + 1}/{args.repeats} {name} gateways={n}: {r['rate']:,.0f} req/s, "
                          f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, busiest tier process "
                          f"{r['busiest_cpu']:.2f} CPU s/s", flush=True)
    print("\n| pipeline | gateways | requests/s | p50 ms | p99 ms | busiest tier CPU s/s | ceiling requests/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        for n in counts:
            runs = results[name][n]
            print(f"| {name} | {n} | {summary(runs, 'rate')} | {summary(runs, 'p50_ms')} | {summary(runs, 'p99_ms')} "
                  f"| {summary(runs, 'busiest_cpu')} | {summary(runs, 'ceiling')} |")
    out = ROOT / args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "results.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
