#!/usr/bin/env bash
# Set up, then run the whole test suite. Extra arguments go to pytest (after
# --durations=15, which lists the 15 slowest tests; a later --durations wins).
# As root, pytest runs in a network namespace with only loopback, so no test, library or
# engine can reach any other address: vLLM finds its own address by a UDP "connect" to
# 8.8.8.8 and reports usage stats, the Hugging Face libraries try the hub (the README's
# "Real vLLM on a CPU"). What the tests need from outside is installed by setup.sh, before.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v ip >/dev/null; then
    exec unshare --net sh -c 'ip link set lo up && exec .venv/bin/python -m pytest --durations=15 "$@"' sh "$@"
fi
if [[ $(id -u) == 0 ]]; then
    echo "no unshare or ip (util-linux, iproute2): running the tests without the loopback-only namespace" >&2
else
    echo "not root: running the tests without the loopback-only namespace" >&2
fi
exec .venv/bin/python -m pytest --durations=15 "$@"
