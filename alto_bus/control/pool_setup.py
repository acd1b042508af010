"""The broker's LM pools, built from the topology: one scheduler per [[pool]]."""

from __future__ import annotations

from alto_bus.deploy.topology import Topology, import_object
from alto_bus.scheduling.pool_scheduler import PoolScheduler


def make_pools(topology: Topology) -> dict[str, PoolScheduler]:
    """Pool name -> the scheduler that places its prompts."""
    return {p.name: PoolScheduler(p.name, p.policy, dict(p.policy_args or {}), p.stages,
                                  prefix_tokens(topology, p.stages), servers=tuple(p.members or ()))
            for p in topology.pools}


def prefix_tokens(topology: Topology, stages: tuple[str, ...]) -> dict[str, int]:
    """The fixed part of each prompt, in tokens (about 4 characters a token): what a
    prefix cache can keep for every call of that prompt."""
    out = {}
    for name in stages:
        f = topology.stage(name).fields
        text = f.get("prompt") if f.get("prompt") is not None else import_object(f["prompt_from"])
        out[name] = len(str(text).split("{", 1)[0]) // 4
    return out
