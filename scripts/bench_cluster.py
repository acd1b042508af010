"""Across hosts: one stage hop over veth vs loopback, CURVE on vs off; launch to ready.

    sudo .venv/bin/python scripts/bench_cluster.py [--messages 100000] [--repeats 3]
         [--latency-samples 1000] [--launches 3] [--json out.json]

Needs root (network namespaces). One hop, as in scripts/bench_hop.py: a source, an
alto_bus Worker with an identity handler (registered with a fake broker whose results
address is the sink), a sink. Four ways, interleaved in every repeat so that the ratios
come from one run:

  loopback        source, worker, sink on 127.0.0.1
  loopback+curve  the same with CURVE on every link (ZAP-checked keys, encryption)
  veth            the worker in a network namespace of its own, 198.18.k.1, reached over a
                  veth pair and a bridge from the source and sink at 198.18.k.254
  veth+curve      the same with CURVE

(a) throughput at the sink, small payloads and 16-token payloads (coalesced frames, as
an upstream stage sends them); (b) one-way latency with one message in flight.
Then: time from `scripts/launch_cluster.py` to `ready` for 3 hosts over ssh (namespaces
with a real sshd each), the median of --launches runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from alto_bus.net import curve as keys  # noqa: E402
from alto_bus.protocol import wire  # noqa: E402
from alto_bus.net.sockets import bound_address, make_socket  # noqa: E402
from scripts.hop_broker import FakeBroker  # noqa: E402

SMALL = "x" * 8
TOKENS16 = list(range(1000, 1016))

def identity(x):
    return x


# -- the hop --------------------------------------------------------------------------------


def serve_worker(control: str, host: str, keydir: str | None) -> None:
    """The hop process (run in the worker's namespace)."""
    import asyncio

    from alto_bus.runtime.worker import Worker

    curve = keys.client_curve(f"{keydir}/worker.key", f"{keydir}/broker.key") if keydir else None
    w = Worker("hop", handler=identity, broker=control, inbox=f"tcp://{host}:0", curve=curve)
    asyncio.run(w.run())


def source_proc(inbox: str, n: int, payload, keydir: str | None, go) -> None:
    ctx = zmq.Context()
    curve = keys.client_curve(f"{keydir}/source.key", f"{keydir}/broker.key") if keydir else None
    push = make_socket(ctx, zmq.PUSH, connect=inbox if curve else keys.split_key(inbox)[0],
                       curve=curve and curve.to_peer("bench source"))
    go.wait()
    b = wire.FrameBuilder("hop")
    for i in range(n):
        b.add([wire.DATA, [i], 0, payload, True, 0])
        if len(b) >= 64:
            push.send(b.take())
    if len(b):
        push.send(b.take())
    push.close(linger=10000)
    ctx.term()


def throughput(inbox: str, sink: zmq.Socket, n: int, payload, keydir: str | None) -> float:
    go = mp.Event()
    src = mp.Process(target=source_proc, args=(inbox, n, payload, keydir, go))
    src.start()
    go.set()
    got, t0 = 0, None
    while got < n:
        if not sink.poll(30_000):
            raise RuntimeError(f"sink stalled at {got}/{n} messages")
        frame = sink.recv()
        if t0 is None:
            t0 = time.perf_counter()
        got += len(wire.decode_frame(frame)[1])
    elapsed = time.perf_counter() - t0
    src.join()
    return n / elapsed


def latency(push: zmq.Socket, sink: zmq.Socket, n: int) -> list[float]:
    lat = []
    for i in range(n + 50):
        sent = time.perf_counter_ns()
        push.send(wire.encode_frame("hop", [[wire.DATA, [i], 0, SMALL, True, 0]]))
        if not sink.poll(10_000):
            raise RuntimeError("no answer within 10 s")
        sink.recv()
        if i >= 50:
            lat.append((time.perf_counter_ns() - sent) / 1000)
    return lat


class Hop:
    """One configuration: fake broker, sink, worker process (maybe in a namespace)."""

    def __init__(self, name: str, here: str, worker_host: str, ns: str | None, keydir: str | None) -> None:
        self.name, self.keydir = name, keydir
        ctx = zmq.Context.instance()
        broker_curve = (keys.process_curve(f"{keydir}/broker.key", f"{keydir}/broker.key", f"{keydir}/allowed")
                        if keydir else None)
        allowed = sorted(broker_curve.allowed) if broker_curve else []
        self.broker = FakeBroker(host=here, curve=broker_curve, allowed=allowed)
        self.sink = make_socket(ctx, zmq.PULL, bind=f"tcp://{here}:0", hwm=100_000,
                                curve=broker_curve and broker_curve.server("bench sink"))
        self.broker.results = bound_address(self.sink)
        self.broker.start()
        argv = [sys.executable, __file__, "--serve-worker", self.broker.address, worker_host, keydir or ""]
        self.proc = subprocess.Popen((["ip", "netns", "exec", ns] if ns else []) + argv, cwd=ROOT)
        if not self.broker.registered.wait(60):
            raise RuntimeError(f"{name}: the worker did not register")
        source_curve = keys.client_curve(f"{keydir}/source.key", f"{keydir}/broker.key") if keydir else None
        inbox = self.broker.inbox
        self.push = make_socket(ctx, zmq.PUSH, connect=inbox if keydir else keys.split_key(inbox)[0],
                                curve=source_curve and source_curve.to_peer("bench latency"))

    def measure(self, args: argparse.Namespace, out: dict[str, list[float]]) -> None:
        inbox = self.broker.inbox
        out.setdefault("small_msgs_per_s", []).append(throughput(inbox, self.sink, args.messages, SMALL, self.keydir))
        out.setdefault("tok16_msgs_per_s", []).append(throughput(inbox, self.sink, args.messages, TOKENS16,
                                                                 self.keydir))
        lat = latency(self.push, self.sink, args.latency_samples)
        out.setdefault("lat_p50_us", []).append(statistics.median(lat))
        out.setdefault("lat_p99_us", []).append(statistics.quantiles(lat, n=100)[98])

    def close(self) -> None:
        self.broker.shutdown()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.push.close(linger=0)
        self.sink.close(linger=0)


def hop_figures(args: argparse.Namespace, hosts) -> dict:
    keydir = tempfile.mkdtemp(prefix="alto-bench-keys-")
    for name in ("broker", "worker", "source"):
        keys.create(keydir, name)
    os.makedirs(f"{keydir}/allowed")
    for name in ("worker", "source"):
        os.link(f"{keydir}/{name}.key", f"{keydir}/allowed/{name}.key")
    ns, far = hosts.hosts[0].ns, hosts.hosts[0].address
    hops = [Hop("loopback", "127.0.0.1", "127.0.0.1", None, None),
            Hop("loopback+curve", "127.0.0.1", "127.0.0.1", None, keydir),
            Hop("veth", hosts.login, far, ns, None),
            Hop("veth+curve", hosts.login, far, ns, keydir)]
    results: dict[str, dict[str, list[float]]] = {h.name: {} for h in hops}
    try:
        for r in range(args.repeats):
            for h in hops:
                h.measure(args, results[h.name])
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        for h in hops:
            h.close()
    return {name: {k: statistics.median(v) for k, v in res.items()} for name, res in results.items()} | \
        {"runs": results}


def launch_figures(args: argparse.Namespace, hosts) -> list[float]:
    from tests.support import to_toml

    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        topo = {
            "host": [{"name": h.name, "address": h.address, "gpus": 2} for h in hosts.hosts],
            "stage": [
                {"name": "split", "kind": "function", "handler": "tests.cluster.handlers:split", "replicas": 3},
                {"name": "where", "kind": "function", "handler": "tests.cluster.handlers:where", "input": "split",
                 "replicas": 6, "gpus": 1},
            ],
        }
        path = Path(tmp) / "three.toml"
        path.write_text(to_toml(topo))
        for _ in range(args.launches):
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "scripts/launch_cluster.py", str(path), *hosts.ssh_args()],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for line in proc.stdout:
                if line.startswith("ready"):
                    seconds.append(time.monotonic() - t0)
                    break
            proc.send_signal(2)
            proc.wait(60)
    return seconds


def report(out: dict) -> str:
    m = out["hop"]
    rows = [("small payload, messages/s", "small_msgs_per_s", "{:,.0f}"),
            ("16-token payload, messages/s", "tok16_msgs_per_s", "{:,.0f}"),
            ("one-way latency p50, us", "lat_p50_us", "{:,.0f}"),
            ("one-way latency p99, us", "lat_p99_us", "{:,.0f}")]
    lines = [f"| figure (median of {out['repeats']} runs) | loopback | loopback+CURVE | veth | veth+CURVE "
             "| CURVE/plain (loopback) | CURVE/plain (veth) | veth/loopback |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key, fmt in rows:
        lo, lc, ve, vc = (m[n][key] for n in ("loopback", "loopback+curve", "veth", "veth+curve"))
        lines.append(f"| {label} | {fmt.format(lo)} | {fmt.format(lc)} | {fmt.format(ve)} | {fmt.format(vc)} "
                     f"| {lc / lo:.2f} | {vc / ve:.2f} | {ve / lo:.2f} |")
    if out.get("launch_s"):
        s = out["launch_s"]
        lines.append("")
        lines.append(f"launch to ready, 3 hosts over ssh: median {statistics.median(s):.2f} s "
                     f"(runs: {', '.join(f'{x:.2f}' for x in s)})")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        serve_worker(sys.argv[2], sys.argv[3], sys.argv[4] or None)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--latency-samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--launches", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    from tests.cluster.netns import TOOLS, Hosts, missing, not_root

    reason = not_root() or missing(TOOLS, "bench_cluster.py")
    if reason:
        sys.exit(f"error: {reason}")
    out: dict = {"repeats": args.repeats, "messages": args.messages, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        hosts = Hosts(3, Path(tmp))
        try:
            hosts.up()
            out["hop"] = hop_figures(args, hosts)
            if args.launches:
                out["launch_s"] = launch_figures(args, hosts)
        finally:
            hosts.close()
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
