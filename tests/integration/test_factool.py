"""The fact-verification pipeline end to end on the sim engine: every verdict equals the
single-process reference, streaming or not, stage by stage (FacTool's way, with barriers),
on a shared pool or with one or several replicas per stage."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from tests.support import running
from alto_workers.factool.reference import Reference
from alto_workers.factool.workload import Workload

ROOT = Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture(scope="module")
def reference():
    workload = Workload.load()
    return workload, Reference(workload, k=3)


def variant(stream: bool = True, replicas: int | None = None, file: str = "factool.toml") -> dict:
    topo = tomllib.loads((ROOT / "topology" / file).read_text())
    # A fast emulated GPU keeps the test short; timing is not what is checked here.
    for pool in topo.get("pool", []):
        pool["engine_args"] = {"time_scale": 0.2}
    for stage in topo["stage"]:
        if stage["kind"] == "lm":
            stage["stream"] = stream
            if "pool" not in stage:
                stage["engine_args"] = {"time_scale": 0.2}
        if replicas is not None and "pool" not in stage:
            stage["replicas"] = replicas
        if "options" in stage and "corpus" in stage["options"]:
            stage["options"]["corpus"] = str(ROOT / stage["options"]["corpus"])
    return topo


@pytest.mark.parametrize("stream, replicas, file", [
    (True, None, "factool.toml"), (False, None, "factool.toml"), (False, None, "factool_baseline.toml"),
    (True, None, "factool_stages.toml"), (True, 3, "factool_stages.toml"), (False, None, "factool_stages.toml")],
    ids=["pool-stream", "pool-whole-outputs", "pool-factool-baseline", "stages-stream", "stages-3-replicas",
         "stages-whole-outputs"])
def test_verdicts_equal_the_reference(reference, stream, replicas, file):
    workload, ref = reference
    questions = [q["question"] for q in workload.questions[:N]]
    with running(variant(stream, replicas, file)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit({"question": q}) for q in questions]
        results = [f.result(timeout=180) for f in futures]
    for q, r in zip(questions, results):
        assert r == ref.result(q), q


def test_questions_the_pipeline_cannot_take_end_in_clear_errors(reference):
    workload, ref = reference
    q = workload.questions[0]["question"]
    topo = variant()
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        empty = client.submit({"question": "  "})
        number = client.submit({"question": 42})
        too_long = client.submit({"question": "why " * 2000})
        wrong_shape = client.submit({"query": "a map without the question"})
        good = client.submit({"question": q})
        for fut, words in [(empty, "field 'question' is empty"), (number, "must be text"),
                           (too_long, "more than max_prompt_chars"), (wrong_shape, "needs field")]:
            with pytest.raises(RequestError) as err:
                fut.result(timeout=60)
            assert err.value.stage == "answer" and words in err.value.message
        assert good.result(timeout=60) == ref.result(q)
