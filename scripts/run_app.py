"""Launch one of the applications beside fact verification and check every result.

    python scripts/run_app.py {rag,agent,mapreduce} [--n 50] [--rate 5] [--no-stream]

Launches ``topology/<app>.toml`` on this machine (every stage its own process, the LMs on
the sim engine), sends ``--n`` requests of the app's seeded workload as a Poisson stream,
prints each outcome as it completes (latency, time to its first result item, and whether
it equals the single-process reference's), then a summary: requests, p50/p99 latency and
time to first item, and whether every outcome equalled the reference. Some agent requests
end, by design, in the loop's ``max_turns`` error; the reference predicts which.
Exit status 1 when any outcome differs. Ctrl-C stops everything; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus import AsyncClient, RequestError  # noqa: E402
from alto_bus.deploy.supervisor import LaunchError, Supervisor  # noqa: E402
from tests.support import write_topology  # noqa: E402


def _rag() -> Any:
    from alto_workers.apps.rag.reference import Reference
    return Reference()


def _agent() -> Any:
    from alto_workers.apps.agent.reference import Reference
    return Reference()


def _mapreduce() -> Any:
    from alto_workers.apps.mapreduce.reference import Reference
    return Reference()


def _show_rag(payload: Any, value: Any) -> str:
    return f"{payload[:50]!r} -> {len(value)} sentence(s): {value[0][:60]!r}"


def _show_agent(payload: Any, value: Any) -> str:
    return f"{payload[:50]!r} -> {value['answer'][:50]!r} after {value['steps']} tool call(s)"


def _show_mapreduce(payload: Any, value: Any) -> str:
    chunks = sum(d["chunks"] for d in value)
    return f"{len(value)} document(s), {chunks} chunks -> {value[0]['summary'][:60]!r}"


APPS: dict[str, tuple[Callable[[], Any], Callable[[Any, Any], str], str]] = {
    "rag": (_rag, _show_rag, "a question -> BM25 and dense retrieval in parallel -> joined, reranked "
                             "-> an LM answer streamed by sentence"),
    "agent": (_agent, _show_agent, "a question -> an LM that calls a calculator and a lookup table in a "
                                   "loop until it answers (or hits max_turns 4)"),
    "mapreduce": (_mapreduce, _show_mapreduce, "documents -> chunks -> an LM summary per chunk -> a reduce "
                                               "per document -> a final LM summary"),
}


def topology_file(app: str, stream: bool, time_scale: float | None, folder: Path) -> Path:
    path = ROOT / "topology" / f"{app}.toml"
    if stream and time_scale is None:
        return path
    topo = tomllib.loads(path.read_text())
    for table in [*topo.get("pool", []), *topo["stage"]]:
        if table.get("kind") == "lm" and not stream:
            table["stream"] = False
        if time_scale is not None and table.get("engine") == "sim":
            table["engine_args"] = {**table.get("engine_args", {}), "time_scale": time_scale}
    return write_topology(folder, topo, f"{app}.toml")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def drive(gateway: str, requests: list[Any], reference: Any, show: Callable[[Any, Any], str],
                rate: float, seed: int, timeout: float) -> dict[str, Any]:
    rng = random.Random(seed)
    stats: dict[str, Any] = {"latency": [], "first": [], "equal": 0, "differ": 0, "errors": 0}
    done = 0

    async def one(i: int, payload: Any) -> None:
        nonlocal done
        sent = time.monotonic()
        first = None
        value, error = None, None
        stream = client.open_stream(payload, timeout=timeout)
        try:
            async for _ in stream:
                first = first if first is not None else time.monotonic() - sent
            value = await stream.result()
        except RequestError as exc:
            error = exc
        latency = time.monotonic() - sent
        expected = reference.expected(payload)
        mismatch = expected.mismatch(value, error)
        done += 1
        stats["equal" if mismatch is None else "differ"] += 1
        if mismatch is None and error is None:
            stats["latency"].append(latency)
            stats["first"].append(first if first is not None else latency)
            what = show(payload, value)
        elif mismatch is None:
            stats["errors"] += 1
            what = f"error, as the reference expects: {error}"
        else:
            what = f"DIFFERS from the reference: {mismatch}"
        print(f"[{done:4d}/{len(requests)}] {latency:5.2f}s  {what}", flush=True)

    async with AsyncClient(gateway, timeout=timeout) as client:
        t0 = next_at = time.monotonic()
        tasks = []
        for i, payload in enumerate(requests):
            next_at += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(asyncio.create_task(one(i, payload)))
        await asyncio.gather(*tasks)
        stats["elapsed"] = time.monotonic() - t0
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", choices=sorted(APPS))
    p.add_argument("--n", type=int, default=50, help="requests to send (default: %(default)s)")
    p.add_argument("--rate", type=float, default=5.0, help="mean arrival rate, requests/s, Poisson (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival times (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline, s (default: %(default)s)")
    p.add_argument("--no-stream", action="store_true", help="stream = false on every LM stage (the baseline)")
    p.add_argument("--time-scale", type=float, help="the sim engines' time_scale (default: the topology's)")
    args = p.parse_args()
    if args.n < 1 or args.rate <= 0:
        p.error("--n must be >= 1 and --rate > 0")

    make_reference, show, what = APPS[args.app]
    reference = make_reference()
    requests = reference.requests(args.n)
    print(f"{args.app}: {what}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = topology_file(args.app, not args.no_stream, args.time_scale, Path(tmp))
        print(f"launching {path} ...", flush=True)
        sup = Supervisor(str(path), out=sys.stdout)
        try:
            sup.start()
            stats = asyncio.run(drive(sup.addresses["gateway"], requests, reference, show,
                                      args.rate, args.seed, args.timeout))
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            sup.stop()
    lat, first = stats["latency"], stats["first"]
    line = (f"summary: {args.n} requests in {stats['elapsed']:.1f} s, {len(lat)} answered, "
            f"{stats['errors']} ended in the error the reference expects; ")
    if lat:
        line += (f"latency p50 {statistics.median(lat):.2f} s, p99 {percentile(lat, 0.99):.2f} s; "
                 f"first item p50 {statistics.median(first):.2f} s, p99 {percentile(first, 0.99):.2f} s; ")
    line += ("all results equal to the reference" if stats["differ"] == 0
             else f"{stats['differ']} DIFFER from the reference")
    print(line, flush=True)
    return 0 if stats["differ"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
