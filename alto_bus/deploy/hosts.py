"""The hosts a topology runs on ([[host]]), its [security] table, and GPU placement of
instances over the hosts: validated with the rest of the topology, before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alto_bus.deploy.topology import (
    _MISSING,
    POOL_KIND,
    PoolConfig,
    StageConfig,
    Topology,
    TopologyError,
    _fields,
)
from alto_bus.runtime.kinds import stage_kind


HOST_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), _MISSING),
    "address": ((str,), _MISSING),   # the address peers reach this host at (name or IP)
    "gpus": ((int,), 0),
    "ssh_user": ((str,), None),
    "ssh_port": ((int,), None),
    "key": ((str,), None),           # this host's instances' public key file (default: [security] worker_key)
}

SECURITY_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "broker_key": ((str,), _MISSING),    # the broker's public key file; its secret is the _secret sibling
    "worker_key": ((str,), _MISSING),    # the instances' public key file (per host: [[host]] key)
    "allowed_keys": ((str,), _MISSING),  # directory of the public keys (*.key) of clients and other peers
}


@dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    gpus: int
    ssh_user: str | None
    ssh_port: int | None
    key: str | None


@dataclass(frozen=True)
class SecurityConfig:
    broker_key: str      # absolute paths (the file names them relative to its own folder)
    worker_key: str
    allowed_keys: str

    def host_key(self, host: HostConfig | None) -> str:
        """The public key file of the instances on ``host``."""
        return host.key if host is not None and host.key else self.worker_key


def with_hosts(topo: Topology, raw: dict[str, Any]) -> Topology:
    """Validate ``[[host]]``, stage placement and ``[security]``; add them to the topology."""
    import dataclasses

    from alto_bus.net import curve as keys

    source = topo.source
    folder = Path(source).resolve().parent if Path(source).suffix else Path.cwd()
    hosts_raw = raw.get("host", [])
    if not isinstance(hosts_raw, list):
        raise TopologyError(f"{source}: [[host]] must be an array of tables")
    hosts = []
    for i, h in enumerate(hosts_raw):
        name = h.get("name", f"#{i + 1}") if isinstance(h, dict) else f"#{i + 1}"
        label = f"{source}: host {name!r}" if isinstance(h, dict) else f"{source}: host #{i + 1}"
        values = _fields(h, HOST_FIELDS, label)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\]", values["address"]):
            raise TopologyError(f"{label}: field 'address': {values['address']!r} is not a host name or IP address")
        if values["gpus"] < 0:
            raise TopologyError(f"{label}: field 'gpus' must be >= 0, got {values['gpus']}")
        if values["key"] is not None:
            values["key"] = str(folder / values["key"])
        hosts.append(HostConfig(**values))
    names = [h.name for h in hosts]
    for n in names:
        if names.count(n) > 1:
            raise TopologyError(f"{source}: host {n!r}: field 'name': two [[host]] tables are named {n!r}")
    for s in topo.stages:
        if s.hosts is not None and not hosts:
            raise TopologyError(f"{source}: stage {s.name!r}: field 'hosts': the file has no [[host]] tables")
        if s.hosts is not None and not all(isinstance(h, str) for h in s.hosts):
            raise TopologyError(f"{source}: stage {s.name!r}: field 'hosts' must be a list of host names")
        if s.gpus is not None and s.gpus < 0:
            raise TopologyError(f"{source}: stage {s.name!r}: field 'gpus' must be >= 0, got {s.gpus}")
    for p in topo.pools:
        for name in p.stages:
            if topo.stage(name).hosts is not None or topo.stage(name).gpus is not None:
                raise TopologyError(f"{source}: stage {name!r}: fields 'hosts' and 'gpus' of a stage on pool "
                                    f"{p.name!r} are the pool's (set them on the [[pool]])")
        if p.hosts is not None and not hosts:
            raise TopologyError(f"{source}: pool {p.name!r}: field 'hosts': the file has no [[host]] tables")
        if p.gpus is not None and p.gpus < 0:
            raise TopologyError(f"{source}: pool {p.name!r}: field 'gpus' must be >= 0, got {p.gpus}")
    security = None
    if "security" in raw:
        if topo.broker.gateways > 1:  # the gateways' own link to the broker has no CURVE keys yet
            raise TopologyError(f"{source}: [broker] gateways = {topo.broker.gateways} with [security]: "
                                "several gateways do not run with CURVE yet (use gateways = 1)")
        values = _fields(raw["security"], SECURITY_FIELDS, f"{source}: [security]")
        values = {k: str(folder / v) for k, v in values.items()}
        security = SecurityConfig(**values)
        checks = [("broker_key", security.broker_key, keys.load_public),
                  ("worker_key", security.worker_key, keys.load_public),
                  ("allowed_keys", security.allowed_keys, keys.load_allowed)]
        for name, path, check in checks:
            try:
                check(path)
            except keys.KeyFileError as exc:
                raise TopologyError(f"{source}: [security] field '{name}': {exc}") from None
        for h in hosts:
            if h.key is not None:
                try:
                    keys.load_public(h.key)
                except keys.KeyFileError as exc:
                    raise TopologyError(f"{source}: host {h.name!r}: field 'key': {exc}") from None
    elif any(h.key for h in hosts):
        raise TopologyError(f"{source}: host {next(h.name for h in hosts if h.key)!r}: field 'key': "
                            "keys need a [security] table")
    topo = dataclasses.replace(topo, hosts=tuple(hosts), security=security)
    if hosts:
        place_instances(topo)  # refuse what does not fit, before anything starts
    return topo


def gpus_per_instance(unit: StageConfig | PoolConfig) -> int:
    """GPUs one instance (or pool member) takes: its ``gpus``, else a vllm engine's parallel size."""
    if unit.gpus is not None:
        return unit.gpus
    if isinstance(unit, PoolConfig):
        kind, fields = stage_kind(POOL_KIND), {"engine": unit.engine, "engine_args": unit.engine_args}
    else:
        kind, fields = stage_kind(unit.kind), unit.fields
    return int(kind.gpus(fields)) if kind.gpus else 0


def place_instances(topo: Topology, host_names: list[str] | None = None):  # -> placement.Placement
    """Per host (all, or the named ones in that order), its instances and their GPUs."""
    from alto_bus.deploy import gpu_placement as placement

    hosts = list(topo.hosts)
    if host_names is not None:
        known = {h.name: h for h in hosts}
        for n in host_names:
            if n not in known:
                raise TopologyError(f"{topo.source}: no [[host]] named {n!r} (hosts: {', '.join(known) or 'none'})")
        hosts = [known[n] for n in host_names]
    pooled = {name for p in topo.pools for name in p.stages}   # a pool's stages run in its members
    demands = [placement.Demand(s.name, s.replicas, gpus_per_instance(s), tuple(s.hosts) if s.hosts else None)
               for s in topo.stages if s.name not in pooled]
    demands += [placement.Demand(p.name, p.replicas, gpus_per_instance(p), tuple(p.hosts) if p.hosts else None,
                                 what="pool") for p in topo.pools]
    try:
        return placement.place([placement.Host(h.name, h.gpus) for h in hosts], demands)
    except placement.PlacementError as exc:
        raise TopologyError(f"{topo.source}: {exc}") from None
