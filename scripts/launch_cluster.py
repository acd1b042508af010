"""Start a topology across the hosts of its [[host]] tables, over ssh or inside Slurm.

    python scripts/launch_cluster.py FILE [--hosts a,b,c] [--ssh-key KEY] [--ssh-option OPT]...
    python scripts/launch_cluster.py FILE --slurm [--gpus N]     # inside an allocation (sbatch/salloc)

ssh: checks every host (reachable, alto_bus importable, files and keys there), starts
`alto node` on the first host (broker, gateway and its instances), then on the others,
prints the gateway address and `ready`; Ctrl-C or SIGTERM stops every host, leaving
nothing running. A host whose node dies is reported (with the command that rejoins it);
the others serve on.

Slurm: runs `srun --ntasks-per-node=1 --nodes=$SLURM_JOB_NUM_NODES python -m alto_bus
node FILE --slurm`, one node per Slurm node; each finds its share in the Slurm
environment and the broker on the first node at ports derived from the job id.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alto_bus.deploy.node import add_cluster_arguments, launch_cluster_main  # noqa: E402


def run_slurm(args: argparse.Namespace) -> int:
    if not os.environ.get("SLURM_JOB_ID"):
        print("error: --slurm: not inside a Slurm allocation (no SLURM_JOB_ID); use sbatch or salloc",
              file=sys.stderr)
        return 2
    nodes = os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or "1"
    cmd = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--ntasks={nodes}", "--kill-on-bad-exit=1",
           sys.executable, "-m", "alto_bus", "node", args.topology, "--slurm"]
    if args.gpus is not None:
        cmd += ["--gpus", str(args.gpus)]
    if args.verbose:
        cmd.append("--verbose")
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd)
    # srun forwards the first Ctrl-C as a status request and the second as a kill; send it SIGTERM once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: proc.send_signal(signal.SIGTERM))
    return proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topology")
    p.add_argument("--hosts", help="all (default), or NAME,NAME,... of the [[host]] tables (the first runs the broker)")
    p.add_argument("--slurm", action="store_true", help="run inside the current Slurm allocation with srun")
    p.add_argument("--gpus", type=int, help="--slurm without [[host]] tables: GPUs per node")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO from every process")
    add_cluster_arguments(p)
    args = p.parse_args()
    if args.slurm:
        return run_slurm(args)
    return launch_cluster_main(args)


if __name__ == "__main__":
    sys.exit(main())
