#!/usr/bin/env bash
# Set up (no GPU, no vLLM needed), then run the fact-verification pipeline on this machine.
# Arguments go to scripts/run_factool.py (e.g. --n 200 --rate 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-vllm
exec .venv/bin/python scripts/run_factool.py "$@"
