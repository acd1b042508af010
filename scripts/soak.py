"""Soak: mixed load on two topologies while workers and a broker are killed.

    python scripts/soak.py --minutes 20          # nice -n 10 on a shared machine

Runs the fact-verification pipeline (topology/factool.toml, sim engine) and the fan-out /
fan-in example (topology/examples/fan.toml), each under its own ``alto launch``, with a
steady stream of requests to each (loopback only). Every ``--kill-every`` seconds a random
worker of either topology is SIGKILLed and a new one is started in its place (as an
operator would: ``alto launch`` restarts a broker, not workers); once, at 40% of the run,
the fact-verification broker is SIGKILLed (its supervisor restarts it).

It checks that every request ends in a result equal to the reference or a clear error,
never at the client's own timeout nor not at all, and samples the RSS of every
long-lived process (supervisors, brokers, workers) every 5 s: after the warm-up, each
must stay within 10% (scripts/soak_check.py). It prints a line of progress every
``--kill-every`` seconds and a report at the end; exit code 0 when everything held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from soak_check import Outcomes, rss_flatness  # noqa: E402

from alto_bus import Client, RequestError  # noqa: E402
from alto_bus.deploy.processes import die_with  # noqa: E402

SAMPLE_EVERY = 5.0
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


# -- the topologies ------------------------------------------------------------------------


class Launch:
    """One ``alto launch FILE``: its supervisor, and the broker and workers under it."""

    def __init__(self, name: str, path: Path, logs: Path) -> None:
        self.name = name
        self.log = open(logs / f"{name}.log", "w")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "alto_bus", "launch", str(path)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     preexec_fn=die_with(os.getpid(), signal.SIGTERM))
        self.addresses: dict[str, str] = {}
        threading.Thread(target=self._read, name=f"soak-{name}-out", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.write(f"[stdout] {line}\n")
            self.log.flush()
            key, _, value = line.partition(" ")
            if key in ("gateway", "control"):
                self.addresses[key] = value

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if len(self.addresses) == 2 and self.instances_registered():
                return
            time.sleep(0.5)
        raise SystemExit(f"soak: {self.name} did not start within {timeout:g} s (see {self.log.name})")

    def instances_registered(self) -> bool:
        from alto_bus.deploy.status_probe import StatusProbe

        with StatusProbe(self.addresses["control"]) as probe:
            st = probe.query(timeout=2.0)
        return st is not None and all(len(s["instances"]) >= s["replicas"] for s in st["stages"].values())

    def children(self) -> dict[int, str]:
        """pid -> role ("broker", "worker --stage X", "worker --pool P") of the supervisor's children."""
        return {pid: role for pid, role in processes_of(self.proc.pid).items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def processes_of(parent: int) -> dict[int, str]:
    """The live children of ``parent`` that are alto processes, with their role."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        found[int(entry)] = role_of(argv)
    return found


def role_of(argv: list[str]) -> str:
    if "broker" in argv:
        return "broker"
    for flag in ("--stage", "--pool"):
        if flag in argv:
            return f"worker {flag} {argv[argv.index(flag) + 1]}"
    return "other"


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# -- load ---------------------------------------------------------------------------------


class Load(threading.Thread):
    """Requests at ``rate`` a second to one gateway (at most ``window`` in flight), each
    checked against ``expected``; every outcome lands in ``outcomes``."""

    def __init__(self, name: str, gateway: str, rate: float, timeout: float, window: int,
                 make: Callable[[random.Random], tuple[Any, Callable[[], Any]]], seed: int) -> None:
        super().__init__(name=f"soak-load-{name}", daemon=True)
        self.client = Client(gateway, timeout=timeout)
        self.rate, self.timeout, self.window = rate, timeout, window
        self.make = make
        self.rng = random.Random(seed)
        self.outcomes = Outcomes()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.pending: set = set()
        self.skipped = 0  # ticks with the window full (the load backs off rather than pile up)

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                next_at += 1.0 / self.rate
                if len(self.pending) >= self.window:
                    self.skipped += 1
                else:
                    payload, expected = self.make(self.rng)
                    self._submit(payload, expected)
                self.stopping.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # the soak's own bug: say so, the report shows the count
            print(f"soak: load {self.name} failed: {type(exc).__name__}: {exc}", flush=True)
            raise

    def _submit(self, payload: Any, expected: Callable[[], Any]) -> None:
        with self.lock:
            self.outcomes.submit()
        try:
            fut = self.client.submit(payload, timeout=self.timeout)
        except RequestError as exc:  # refused at once (the client knows its gateway is gone)
            with self.lock:
                self.outcomes.error(exc.stage, exc.message)
            return
        self.pending.add(fut)
        fut.add_done_callback(lambda f: self._ended(f, expected))

    def _ended(self, fut: Any, expected: Callable[[], Any]) -> None:
        exc = fut.exception()
        with self.lock:
            if isinstance(exc, RequestError):
                self.outcomes.error(exc.stage, exc.message)
            elif exc is not None:
                self.outcomes.error("soak", f"unexpected {type(exc).__name__}: {exc}")
            else:
                self.outcomes.result(fut.result(), expected())
        self.pending.discard(fut)

    def finish(self, bound: float) -> None:
        """Stop submitting; wait up to ``bound`` s for what is in flight; the rest hung."""
        self.stopping.set()
        self.join(5)
        deadline = time.monotonic() + bound
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.2)
        with self.lock:
            self.outcomes.hung(len(self.pending))
        self.client.close()


def fan_request(rng: random.Random) -> tuple[Any, Callable[[], Any]]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
    return " ".join(words), lambda: [w.upper() for w in words]


def factool_requests() -> Callable[[random.Random], tuple[Any, Callable[[], Any]]]:
    from alto_workers.factool.reference import Reference
    from alto_workers.factool.workload import Workload

    workload = Workload.load()
    ref = Reference(workload, k=3)
    questions = [q["question"] for q in workload.questions]
    cache: dict[str, Any] = {}

    def make(rng: random.Random) -> tuple[Any, Callable[[], Any]]:
        q = rng.choice(questions)

        def expected() -> Any:
            if q not in cache:
                cache[q] = ref.result(q)
            return cache[q]
        return {"question": q}, expected
    return make


# -- the soak -----------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        # Paths in the topology files (the corpus, handlers) are relative to the repository.
        self.launches = {"factool": Launch("factool", ROOT / "topology" / "factool.toml", folder),
                         "fan": Launch("fan", ROOT / "topology" / "examples" / "fan.toml", folder)}
        self.folder = folder
        self.replacements: list[tuple[str, subprocess.Popen]] = []   # (topology, worker we started)
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self.labels: dict[int, str] = {}
        self.born: dict[int, float] = {}
        self.kills: list[str] = []
        self.killed: set[int] = set()
        self.broker_killed = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        for launch in self.launches.values():
            launch.wait_ready(180)
        a = self.args
        self.loads = {
            "factool": Load("factool", self.launches["factool"].addresses["gateway"], a.factool_rate, a.timeout,
                            a.window, factool_requests(), a.seed + 1),
            "fan": Load("fan", self.launches["fan"].addresses["gateway"], a.fan_rate, a.timeout, a.window,
                        fan_request, a.seed + 2),
        }
        self.t0 = time.monotonic()  # the run starts with the load
        for load in self.loads.values():
            load.start()

    def processes(self) -> dict[int, tuple[str, str]]:
        """pid -> (topology, role) of every long-lived process: supervisors, brokers, workers."""
        out = {}
        for name, launch in self.launches.items():
            out[launch.proc.pid] = (name, "supervisor")
            for pid, role in launch.children().items():
                out[pid] = (name, role)
        for name, proc in self.replacements:
            if proc.poll() is None:
                out[proc.pid] = (name, role_of(proc.args))
        return out

    def sample(self) -> None:
        now = self.now()
        for pid, (topo, role) in self.processes().items():
            rss = rss_of(pid)
            if rss is None:
                continue
            if pid not in self.samples:
                self.samples[pid], self.born[pid] = [], now
                self.labels[pid] = f"{topo} {role} (pid {pid})"
            self.samples[pid].append((now, rss))

    def kill_worker(self) -> None:
        workers = [(pid, topo, role) for pid, (topo, role) in self.processes().items() if role.startswith("worker")]
        if not workers:
            return
        pid, topo, role = self.rng.choice(sorted(workers))
        os.kill(pid, signal.SIGKILL)
        self.killed.add(pid)
        self.kills.append(f"{self.now():.0f}s {topo} {role}")
        flag, name = role.split()[1:]
        log = open(self.folder / f"replacement-{pid}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "alto_bus", "worker", "--broker",
                                 self.launches[topo].addresses["control"], flag, name], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                    [str(ROOT), os.environ.get("PYTHONPATH", "")])},
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with(os.getpid(), signal.SIGTERM))
        log.close()
        self.replacements.append((topo, proc))

    def kill_broker(self) -> None:
        launch = self.launches["factool"]
        (pid,) = [p for p, role in launch.children().items() if role == "broker"] or [None]
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.kills.append(f"{self.now():.0f}s factool broker")
            self.broker_killed = True

    def progress(self) -> None:
        parts = [f"{self.now() / 60:5.1f} min"]
        for name, load in self.loads.items():
            with load.lock:
                o = load.outcomes
                ended = ", ".join(f"{n} {k}" for k, n in sorted(o.ended.items()))
                parts.append(f"{name}: {o.submitted} sent, {o.in_flight} in flight, {ended or 'none ended'}")
        rss = {self.labels[p].split(" (pid")[0]: s[-1][1] >> 20 for p, s in self.samples.items()
               if s and s[-1][0] >= self.now() - SAMPLE_EVERY * 2 and "broker" in self.labels[p]}
        parts.append("broker RSS " + ", ".join(f"{k.split()[0]} {v} MiB" for k, v in rss.items()))
        parts.append(f"{len(self.kills)} kills")
        print(" | ".join(parts), flush=True)

    def run(self) -> None:
        a = self.args
        end = a.minutes * 60
        next_kill = a.kill_every
        next_sample = 0.0
        broker_at = 0.4 * end
        while self.now() < end:
            for name, launch in self.launches.items():
                if launch.proc.poll() is not None:
                    raise SystemExit(f"soak: the {name} launch exited with code {launch.proc.returncode} "
                                     f"(see {launch.log.name})")
            now = self.now()
            if now >= next_sample:
                self.sample()
                next_sample = now + SAMPLE_EVERY
            if not self.broker_killed and now >= broker_at:
                self.kill_broker()
            if now >= next_kill:
                self.kill_worker()
                self.progress()
                next_kill = now + a.kill_every
            time.sleep(0.25)
        for load in self.loads.values():
            load.finish(bound=a.timeout + 20)

    def report(self) -> dict[str, Any]:
        a = self.args
        warm = a.warmup_minutes * 60
        span = max(60.0, 0.2 * a.minutes * 60)
        flat = [rss_flatness(self.labels[pid], s, warm_until=max(warm, self.born[pid] + warm), min_span=span,
                             tolerance=a.tolerance)
                for pid, s in sorted(self.samples.items())]
        judged = [f for f in flat if f.flat is not None]
        loads = {name: load.outcomes.summary() for name, load in self.loads.items()}
        return {
            "minutes": a.minutes, "kill_every_s": a.kill_every, "kills": self.kills,
            "rates": {"factool": a.factool_rate, "fan": a.fan_rate}, "timeout_s": a.timeout,
            "warmup_minutes": a.warmup_minutes, "loads": loads,
            "rss": [{"process": f.label, "baseline_mib": f.baseline and round(f.baseline / 2**20, 1),
                     "final_mib": f.final and round(f.final / 2**20, 1), "peak_mib": f.peak and round(f.peak / 2**20, 1),
                     "growth": f.growth and round(f.growth, 4), "flat": f.flat} for f in flat],
            "rss_lines": [f.line() for f in judged],
            "every_request_ended_well": all(v["ok"] for v in loads.values()),
            "rss_flat": bool(judged) and all(f.flat for f in judged),
            "processes_judged": len(judged),
            # Workers the soak started that ended on their own (a replacement must serve on).
            "replacements_exited": [f"{topo} {role_of(proc.args)}: code {proc.returncode}"
                                    for topo, proc in self.replacements
                                    if proc.poll() is not None and proc.pid not in self.killed],
        }

    def stop(self) -> None:
        for launch in self.launches.values():
            launch.stop()
        for _, proc in self.replacements:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.replacements:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="length of the run (default 20)")
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds between worker kills")
    p.add_argument("--warmup-minutes", type=float, help="RSS is judged after this (default: a quarter of the run)")
    p.add_argument("--factool-rate", type=float, default=1.0, help="fact-verification requests a second")
    p.add_argument("--fan-rate", type=float, default=20.0, help="fan-out/fan-in requests a second")
    p.add_argument("--timeout", type=float, default=60.0, help="each request's deadline (s)")
    p.add_argument("--window", type=int, default=200, help="most requests in flight per topology")
    p.add_argument("--tolerance", type=float, default=0.10, help="RSS growth allowed after warm-up")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--logs", help="keep every process's log in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.warmup_minutes is None:
        args.warmup_minutes = args.minutes / 4
    with tempfile.TemporaryDirectory(prefix="alto-soak-") as tmp:
        folder = Path(args.logs or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        soak = Soak(args, folder)
        try:
            soak.start()
            print(f"soak: {args.minutes:g} min; factool {args.factool_rate:g} req/s, fan {args.fan_rate:g} req/s; "
                  f"a worker killed every {args.kill_every:g} s, the factool broker at "
                  f"{0.4 * args.minutes:.1f} min; logs in {folder}", flush=True)
            soak.run()
            report = soak.report()
        finally:
            soak.stop()
    for name, summary in report["loads"].items():
        print(f"{name}: {json.dumps(summary)}")
    for line in report["rss_lines"]:
        print(f"rss {line}")
    for line in report["replacements_exited"]:
        print(f"a replacement worker ended by itself: {line}")
    print(f"every request ended with a result or a clear error: {report['every_request_ended_well']}; "
          f"RSS flat within {args.tolerance:.0%} after warm-up: {report['rss_flat']} "
          f"({report['processes_judged']} processes judged)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["every_request_ended_well"] and report["rss_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
