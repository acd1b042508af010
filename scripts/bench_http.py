"""Requests/s and latency over the HTTP front door against the ZeroMQ client, one topology, one run.

    .venv/bin/python scripts/bench_http.py --requests 2000 --concurrency 64 --repeats 3

Launches ``topology/examples/words.toml`` with ``alto launch --http 127.0.0.1:0`` and
sends the same bounded number of requests through each door in turn, alternating
(ZeroMQ, HTTP, ZeroMQ, HTTP, ...) so that a change in the machine's load hits both: a
closed loop with ``--concurrency`` requests in flight, then one at a time (unloaded
latency). Both load generators are Python in this process (``alto_bus.Client``, and
keep-alive connections written by hand, on uvloop when it is installed), so their own
CPU cost is part of the figure. The rate's ratio is the median over the repeats of each
HTTP run against the ZeroMQ run just before it, with the lowest and highest in brackets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


from alto_bus import Client

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import launch_until_ready, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox"


def launch(topology: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    return launch_until_ready(["launch", str(topology), "--http", "127.0.0.1:0"])


def zmq_run(gateway: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """(requests/s, latencies): a window of ``concurrency`` futures, refilled as each completes."""
    lat: list[float] = []
    with Client(gateway, timeout=60) as client:
        t0 = time.perf_counter()
        window: list[tuple[float, object]] = []
        sent = 0
        while sent < n or window:
            while sent < n and len(window) < concurrency:
                window.append((time.perf_counter(), client.submit(TEXT)))
                sent += 1
            start, fut = window.pop(0)
            fut.result(timeout=60)
            lat.append(time.perf_counter() - start)
        return n / (time.perf_counter() - t0), lat


class _Conn:
    """One keep-alive HTTP/1.1 connection, as plain as a load generator can be: the figure
    is the front door's cost, not an HTTP client library's (httpx's own pool caps a loop
    at a few hundred requests/s with 64 connections on this machine)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)


def http_run(url: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    host, port = url[len("http://"):].rsplit(":", 1)
    body = json.dumps({"input": TEXT}).encode()

    async def run() -> tuple[float, list[float]]:
        lat: list[float] = []
        left = iter(range(n))
        conns = [_Conn(*await asyncio.open_connection(host, int(port)), host) for _ in range(concurrency)]

        async def caller(conn: _Conn) -> None:
            for _ in left:
                start = time.perf_counter()
                status, _ = await conn.post("/v1/requests", body)
                if status != 200:
                    raise SystemExit(f"HTTP {status} from the front door")
                lat.append(time.perf_counter() - start)

        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(caller(c) for c in conns))
        finally:
            for c in conns:
                c.writer.close()
        return n / (time.perf_counter() - t0), lat

    if uvloop is not None:  # the front door's own loop: the generator costs the shared cores less
        return uvloop.run(run())
    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default=str(ROOT / "topology/examples/words.toml"))
    ap.add_argument("--requests", type=int, default=2000, help="per door and repeat, closed loop")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--serial", type=int, default=300, help="requests one at a time, per door and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    proc, printed = launch(Path(args.topology))
    try:
        gateway, url = printed["gateway"], printed["http"]
        zmq_run(gateway, 200, 16)   # warm both paths (connections, imports) before measuring
        http_run(url, 200, 16)
        figures: dict[str, dict[str, list[float]]] = {"zmq": {}, "http": {}}
        for _ in range(args.repeats):
            for door, run, where in (("zmq", zmq_run, gateway), ("http", http_run, url)):
                rate, lat = run(where, args.requests, args.concurrency)
                _, one = run(where, args.serial, 1)
                f = figures[door]
                for key, value in (("rate", rate), ("p50", percentile(lat, 50)), ("p99", percentile(lat, 99)),
                                   ("p50_1", percentile(one, 50)), ("p99_1", percentile(one, 99))):
                    f.setdefault(key, []).append(value)
                print(f"{door}: {rate:,.0f} req/s at concurrency {args.concurrency}; p50 {f['p50'][-1] * 1e3:.2f} "
                      f"ms p99 {f['p99'][-1] * 1e3:.2f} ms; one at a time p50 {f['p50_1'][-1] * 1e3:.2f} ms "
                      f"p99 {f['p99_1'][-1] * 1e3:.2f} ms", flush=True)
        med = {d: {k: statistics.median(v) for k, v in f.items()} for d, f in figures.items()}
        z, h = med["zmq"], med["http"]
        # Each repeat's HTTP rate over the ZeroMQ rate measured just before it: the machine's
        # load moves between repeats, much less within one pair.
        pairs = sorted(hr / zr for hr, zr in zip(figures["http"]["rate"], figures["zmq"]["rate"], strict=True))
        print(f"\n| figure (median of {args.repeats}) | ZeroMQ client | HTTP front door | HTTP / ZeroMQ |")
        print("|---|---:|---:|---:|")
        print(f"| requests/s, {args.concurrency} in flight | {z['rate']:,.0f} | {h['rate']:,.0f} | "
              f"{statistics.median(pairs):.2f} ({pairs[0]:.2f}-{pairs[-1]:.2f}) |")
        for key, label in (("p50", f"latency p50, ms, {args.concurrency} in flight"),
                           ("p99", f"latency p99, ms, {args.concurrency} in flight"),
                           ("p50_1", "latency p50, ms, one at a time"), ("p99_1", "latency p99, ms, one at a time")):
            print(f"| {label} | {z[key] * 1e3:.2f} | {h[key] * 1e3:.2f} | {h[key] / z[key]:.2f} |")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
