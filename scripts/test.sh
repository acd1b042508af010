#!/usr/bin/env bash
# Set up, then run the whole test suite. Extra arguments go to pytest.
# As root, pytest runs in a network namespace with only loopback, so no test, library or
# engine can reach any other address (VLLM_CPU.md, "Keep vLLM on loopback").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v ip >/dev/null; then
    exec unshare --net sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' sh "$@"
fi
echo "not root: running the tests without the loopback-only namespace" >&2
exec .venv/bin/python -m pytest "$@"
