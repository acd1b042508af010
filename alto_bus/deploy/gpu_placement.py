"""Which host runs which instance, and on which GPUs. Pure: no sockets, no processes.

Input: the hosts (name, GPUs) and, per stage, its replicas, the GPUs one instance takes
(an LM instance with ``tensor_parallel_size = k`` takes k GPUs of one host) and the
hosts it may run on. Output: per host, its instances with the device indices that
become that instance's ``CUDA_VISIBLE_DEVICES``.

The rule, deterministic so that every host of a Slurm job computes the same answer on
its own:

1. Stages that need GPUs first, widest instances first (the hardest to fit), then in
   topology order. Each instance goes to an allowed host with enough free GPUs: the
   one holding the fewest instances of that stage (replicas spread over hosts, so the
   loss of one host leaves the others serving), then the one with the most free GPUs,
   then the first in host order. It takes the lowest free device indices.
2. Stages without GPUs: an allowed host holding the fewest instances of that stage,
   then the fewest instances in all, then host order.

Anything that cannot fit is refused before anything starts, naming the stage.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlacementError(ValueError):
    """The stages cannot be placed on the hosts; the message names the stage (and host)."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Host:
    name: str
    gpus: int = 0


@dataclass(frozen=True)
class Demand:
    """What one stage asks for."""

    stage: str
    replicas: int
    gpus: int = 0                           # per instance, all on one host
    hosts: tuple[str, ...] | None = None    # the hosts it may run on (None: any)
    what: str = "stage"                     # or "pool" (an LM pool's members)


@dataclass(frozen=True)
class Placed:
    """One instance on one host."""

    stage: str
    replica: int              # 0..replicas-1 within its stage
    host: str
    gpus: tuple[int, ...] = ()
    what: str = "stage"       # or "pool"

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(g) for g in self.gpus)


Placement = dict[str, list[Placed]]  # host name -> its instances, in start order


def place(hosts: list[Host] | tuple[Host, ...], demands: list[Demand] | tuple[Demand, ...]) -> Placement:
    """Place every replica of every stage; raise PlacementError if they do not fit."""
    if not hosts:
        raise PlacementError("no hosts to place instances on")
    by_name: dict[str, Host] = {}
    for h in hosts:
        if h.name in by_name:
            raise PlacementError(f"two hosts are named {h.name!r}")
        if h.gpus < 0:
            raise PlacementError(f"host {h.name!r}: gpus must be >= 0, got {h.gpus}")
        by_name[h.name] = h
    order = {h.name: i for i, h in enumerate(hosts)}
    for d in demands:
        _check_demand(d, by_name, order)

    free: dict[str, list[int]] = {h.name: list(range(h.gpus)) for h in hosts}
    count: dict[str, int] = {h.name: 0 for h in hosts}              # instances per host
    per_stage: dict[tuple[str, str], int] = {}                      # (unit, host) -> instances
    out: Placement = {h.name: [] for h in hosts}
    placed: dict[tuple[str, str], list[Placed]] = {(d.what, d.stage): [] for d in demands}

    gpu_first = sorted((d for d in demands if d.gpus > 0), key=lambda d: -d.gpus)  # stable: topology order
    for d in gpu_first:
        allowed = _allowed(d, hosts)
        for r in range(d.replicas):
            fits = [h for h in allowed if len(free[h]) >= d.gpus]
            if not fits:
                left = ", ".join(f"{h} {len(free[h])}" for h in allowed)
                raise PlacementError(
                    f"{d.what} {d.stage!r}: instance {r + 1} of {d.replicas} needs {d.gpus} GPU(s) on one host "
                    f"and none is left with that many (free GPUs: {left})", d.stage)
            host = min(fits, key=lambda h: (per_stage.get((_unit(d), h), 0), -len(free[h]), order[h]))
            gpus = tuple(free[host][:d.gpus])
            del free[host][:d.gpus]
            _take(d, r, host, gpus, count, per_stage, placed)
    for d in demands:
        if d.gpus > 0:
            continue
        allowed = _allowed(d, hosts)
        for r in range(d.replicas):
            host = min(allowed, key=lambda h: (per_stage.get((_unit(d), h), 0), count[h], order[h]))
            _take(d, r, host, (), count, per_stage, placed)
    for d in demands:  # start order per host: topology order, then replica
        for p in placed[(d.what, d.stage)]:
            out[p.host].append(p)
    return out


def _check_demand(d: Demand, by_name: dict[str, Host], order: dict[str, int]) -> None:
    if d.replicas < 1:
        raise PlacementError(f"{d.what} {d.stage!r}: replicas must be >= 1, got {d.replicas}", d.stage)
    if d.gpus < 0:
        raise PlacementError(f"{d.what} {d.stage!r}: gpus must be >= 0, got {d.gpus}", d.stage)
    if d.hosts is not None:
        if not d.hosts:
            raise PlacementError(f"{d.what} {d.stage!r}: field 'hosts' is empty", d.stage)
        for name in d.hosts:
            if name not in by_name:
                known = ", ".join(by_name)
                raise PlacementError(f"{d.what} {d.stage!r}: field 'hosts': no host named {name!r} "
                                     f"(hosts: {known})", d.stage)
    if d.gpus == 0:
        return
    names = list(d.hosts) if d.hosts is not None else sorted(by_name, key=order.__getitem__)
    widest = max(by_name[n].gpus for n in names)
    where = f"its hosts ({', '.join(f'{n} {by_name[n].gpus}' for n in names)})"
    if d.gpus > widest:
        raise PlacementError(
            f"{d.what} {d.stage!r}: one instance takes {d.gpus} GPU(s) on one host (tensor_parallel_size / "
            f"gpus) but the largest of {where} has {widest}", d.stage)
    total = sum(by_name[n].gpus for n in names)
    if d.replicas * d.gpus > total:
        raise PlacementError(
            f"{d.what} {d.stage!r}: asks {d.replicas * d.gpus} GPU(s) ({d.replicas} replica(s) x {d.gpus}) "
            f"but {where} have {total} in all", d.stage)


def _allowed(d: Demand, hosts: list[Host] | tuple[Host, ...]) -> list[str]:
    if d.hosts is None:
        return [h.name for h in hosts]
    wanted = set(d.hosts)
    return [h.name for h in hosts if h.name in wanted]


def _unit(d: Demand) -> str:
    return f"{d.what} {d.stage}"


def _take(d: Demand, r: int, host: str, gpus: tuple[int, ...], count: dict[str, int],
          per_stage: dict[tuple[str, str], int], placed: dict[tuple[str, str], list[Placed]]) -> None:
    count[host] += 1
    per_stage[(_unit(d), host)] = per_stage.get((_unit(d), host), 0) + 1
    placed[(d.what, d.stage)].append(Placed(d.stage, r, host, gpus, d.what))


def describe(placement: Placement) -> list[str]:
    """One line per host: what runs there (for ``alto check`` and the launcher)."""
    lines = []
    for host, insts in placement.items():
        parts = []
        for p in insts:
            name = ("pool " if p.what == "pool" else "") + f"{p.stage}#{p.replica}"
            parts.append(name + (f" (GPUs {p.cuda_visible_devices})" if p.gpus else ""))
        lines.append(f"host {host}: " + (", ".join(parts) if parts else "(nothing)"))
    return lines
