"""The main job: launch the fact-verification pipeline and send it the bundled questions.

    python scripts/run_factool.py [--topology topology/factool.toml] [--n 100] [--rate 2.5]

Launches the topology on this machine (every stage its own process), sends ``--n``
questions from the workload as a Poisson stream of ``--rate`` requests/s, prints each
request's verdict as it completes under a progress bar, then a summary (requests,
throughput, p50/p99 latency). Two bad questions (empty, not text) are sent on purpose
first, to show how a request the pipeline cannot take is refused; they are not counted
as failures. Ctrl-C stops everything; nothing is left running.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alto_bus import Client, RequestError  # noqa: E402
from alto_bus.deploy.supervisor import LaunchError, Supervisor  # noqa: E402
from alto_workers.factool.workload import Workload  # noqa: E402


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty()

    def line(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(("\r\033[K" if self.tty else "") + text + "\n")
            self._bar()

    def tick(self, failed: bool) -> None:
        with self.lock:
            self.done += 1
            self.failed += failed
            self._bar()

    def _bar(self) -> None:
        if not self.tty:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                         f" done, {self.failed} failed")
        sys.stdout.flush()


INTRO = """\
Fact verification (FacTool's pipeline, streamed): each question is answered by an LM;
each sentence of the answer goes on to claim extraction as soon as it is written, each
claim to a search query, BM25 retrieval and an LM verification against the evidence.
A request's result is FACTUAL when no claim was found false, NOT FACTUAL otherwise (the
first false claim is shown). The LMs run on the sim engine: an emulated GPU with scripted
answers, some of which hold deliberate errors."""


def verdict_line(question: str, result: dict, latency: float) -> str:
    mark = "FACTUAL    " if result["factual"] else "NOT FACTUAL"
    false = [c["claim"] for c in result["claims"] if c["factual"] is False]
    detail = f"{result['n_claims']} claims" + (f"; false: {false[0]!r}" if false else "")
    return f"{latency:5.2f}s  {mark}  {question[:60]!r}  ({detail})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topology", default=str(ROOT / "topology" / "factool.toml"),
                   help="the topology to launch (default: topology/factool.toml)")
    p.add_argument("--n", type=int, default=100, help="questions to send (default: %(default)s)")
    p.add_argument("--rate", type=float, default=2.5,
                   help="mean arrival rate, requests/s, Poisson (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrival times (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="per-request deadline, seconds (default: %(default)s)")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    workload = Workload.load()
    rng = random.Random(args.seed)
    questions = [workload.questions[i % len(workload.questions)]["question"] for i in range(args.n)]
    bad = [("", "an empty question"), (42, "a question that is not text")]

    print(INTRO, flush=True)
    print(f"launching {args.topology} ...", flush=True)
    sup = Supervisor(args.topology, out=sys.stdout)
    latencies: list[float] = []
    try:
        sup.start()
        progress = Progress(len(questions) + len(bad))
        with Client(sup.addresses["gateway"], timeout=args.timeout) as client:
            pending = []
            t_start = time.monotonic()
            next_at = t_start
            for payload, what in bad:
                pending.append((client.submit({"question": payload}), what, time.monotonic()))
            for q in questions:
                if stop.is_set():
                    break
                next_at += rng.expovariate(args.rate)
                stop.wait(max(0.0, next_at - time.monotonic()))
                fut = client.submit({"question": q})
                sent = time.monotonic()
                pending.append((fut, q, sent))
                fut.add_done_callback(lambda f, q=q, sent=sent: _report(f, q, sent, progress, latencies))
            for fut, what, _ in pending[: len(bad)]:
                try:
                    fut.result(timeout=args.timeout + 10)
                    progress.line(f"unexpected: {what}, sent on purpose, was accepted")
                    progress.tick(failed=True)
                except RequestError as exc:
                    progress.line(f"refused, as intended: {what} (sent on purpose): {exc}")
                    progress.tick(failed=False)
            for fut, _, _ in pending[len(bad):]:
                if stop.is_set():
                    break
                try:
                    fut.result(timeout=args.timeout + 10)
                except RequestError:
                    pass
            elapsed = time.monotonic() - t_start
        print()
        if latencies:
            lat = sorted(latencies)
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            print(f"summary: {len(lat)} requests answered, {progress.failed} failed "
                  f"(and {len(bad)} deliberate refusals), "
                  f"{len(lat) / elapsed:.1f} requests/s, latency p50 {statistics.median(lat):.2f} s, "
                  f"p99 {p99:.2f} s, mean {statistics.fmean(lat):.2f} s")
        return 0
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        sup.stop()


def _report(fut, question: str, sent: float, progress: Progress, latencies: list[float]) -> None:
    latency = time.monotonic() - sent
    try:
        result = fut.result()
    except RequestError as exc:
        progress.line(f"error   {question[:60]!r}: {exc}")
        progress.tick(failed=True)
        return
    latencies.append(latency)
    progress.line(verdict_line(question, result, latency))
    progress.tick(failed=False)


if __name__ == "__main__":
    sys.exit(main())
