"""Slurm: where this task runs, from the variables srun sets. Pure: no sockets, no processes.

``srun --ntasks-per-node=1 alto node FILE --slurm`` runs one node per Slurm node; each
finds its share from ``SLURM_JOB_NODELIST``, ``SLURMD_NODENAME`` / ``SLURM_NODEID`` and
``SLURM_JOB_ID``. The first node of the list runs the broker on fixed ports (the file's,
or ``20000 + 3 x (job id mod 10000)`` where the file says 0), so every other node knows
its address without asking anyone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.errors import NodeError


def slurm_port_base(job_id: str | int) -> int:
    """Fixed broker ports for one Slurm job (the same on every node, different per job)."""
    return 20000 + 3 * (int(job_id) % 10000)


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host lists: ``gpu[01-03,7],login1`` -> gpu01 gpu02 gpu03 gpu7 login1."""
    out: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        out.extend(_expand_one(part.strip()))
    return [h for h in out if h]


def _expand_one(pattern: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[:m.start()], pattern[m.end():]
    names = []
    for rng in m.group(1).split(","):
        lo, _, hi = rng.partition("-")
        if hi:
            width = len(lo)
            names += [f"{head}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
        else:
            names.append(f"{head}{lo}")
    return [n + rest for n in names for rest in _expand_one(tail)] if tail else names


@dataclass(frozen=True)
class SlurmNode:
    nodes: list[str]     # the step's (or job's) nodes, in Slurm's order
    name: str            # this node
    job_id: str


def slurm_node(environ: Mapping[str, str] = os.environ) -> SlurmNode:
    """Where this task runs, from the variables srun sets."""
    nodelist = (environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
                or environ.get("SLURM_NODELIST"))
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not nodelist or not job_id:
        raise NodeError("--slurm: SLURM_JOB_NODELIST and SLURM_JOB_ID are not set; run it under srun "
                        "(srun --ntasks-per-node=1 alto node FILE --slurm)")
    nodes = expand_hostlist(nodelist)
    name = environ.get("SLURMD_NODENAME")
    if name not in nodes:
        try:
            name = nodes[int(environ["SLURM_NODEID"])]
        except (KeyError, ValueError, IndexError):
            raise NodeError(f"--slurm: this node ({name or 'SLURMD_NODENAME unset'}) is not in the job's "
                            f"node list {nodelist!r} and SLURM_NODEID does not say which it is") from None
    return SlurmNode(nodes, name, job_id)


def slurm_topology(topo: topo_mod.Topology, sn: SlurmNode, gpus: int | None,
                   environ: Mapping[str, str] = os.environ) -> topo_mod.Topology:
    """The topology's hosts are the Slurm nodes: the [[host]] tables of that name, or made up."""
    if topo.hosts:
        known = {h.name: h for h in topo.hosts}
        missing = [n for n in sn.nodes if n not in known]
        if missing:
            raise topo_mod.TopologyError(f"{topo.source}: Slurm node {missing[0]!r} is not a [[host]] of this file "
                                         f"(hosts: {', '.join(known)}); name the hosts as Slurm does, or "
                                         "leave [[host]] out")
        hosts = tuple(known[n] for n in sn.nodes)
    else:
        if gpus is None:
            gpus = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
        hosts = tuple(topo_mod.HostConfig(n, n, gpus, None, None, None) for n in sn.nodes)
    topo = dataclasses.replace(topo, hosts=hosts)
    topo_mod.place_instances(topo)
    return topo
