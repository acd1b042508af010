"""What one host runs, and the addresses it binds. Pure: no sockets, no processes.

A topology with ``[[host]]`` tables runs on several machines. Placement
(:mod:`alto_bus.deploy.gpu_placement`, validated when the file loads) gives each host its
instances and their GPUs; every host computes the same answer on its own. ``alto launch
FILE`` is the one-host case (:func:`local_plan`): this machine runs the broker and every
instance, on the file's own addresses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.errors import NodeError
from alto_bus.deploy.gpu_placement import Placed
from alto_bus.net import curve as keys

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
LOCAL_HOST = "local"  # the host name of a one-host plan (``alto launch FILE``)


# -- addresses on a host ----------------------------------------------------------------------


def rehost(address: str, host: str, port: int | None = None) -> str:
    """A loopback ``tcp://`` address moved to ``host`` (port kept, or ``port`` where it is 0)."""
    if not address.startswith("tcp://"):
        return address
    bind_host, _, p = address[len("tcp://"):].rpartition(":")
    if bind_host not in LOOPBACK:
        return address
    if port is not None and p in ("0", "*"):
        p = str(port)
    return f"tcp://{host}:{p}"



def bind_broker_on(topo: topo_mod.Topology, host: str, port_base: int | None = None) -> topo_mod.Topology:
    """The topology with its broker bound on ``host`` (loopback addresses only) and advertised there."""
    b = topo.broker
    ports = {"control": 0, "gateway": 1, "results": 2}
    moved = {name: rehost(getattr(b, name), host, None if port_base is None else port_base + off)
             for name, off in ports.items()}
    broker = dataclasses.replace(b, **moved, advertise=b.advertise or host)
    return dataclasses.replace(topo, broker=broker)


def broker_control(topo: topo_mod.Topology, broker_host: topo_mod.HostConfig, port_base: int | None) -> str:
    """The control address every node dials, known without asking (Slurm mode)."""
    address = bind_broker_on(topo, broker_host.address, port_base).broker.control
    bind_host, _, port = address[len("tcp://"):].rpartition(":")
    if port in ("0", "*"):
        raise NodeError(f"{topo.source}: [broker] control {topo.broker.control!r}: a fixed port is needed "
                        "when every node starts at once (give one, or run under Slurm for a derived one)")
    host = topo.broker.advertise or (broker_host.address if bind_host in ("0.0.0.0", "*") else bind_host)
    return f"tcp://{host}:{port}"


# -- what one host runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    topology: topo_mod.Topology
    host: topo_mod.HostConfig
    host_names: list[str]         # the hosts of this run, the broker's first
    instances: list[Placed]
    local: bool = False           # the one-host plan of ``alto launch FILE``: the file's addresses as they are

    @property
    def runs_broker(self) -> bool:
        return self.host.name == self.host_names[0]


def plan(topo: topo_mod.Topology, host: str, host_names: list[str] | None = None) -> NodePlan:
    """Host ``host``'s share of a topology with [[host]] tables (the broker on the first of ``host_names``)."""
    if not topo.hosts:
        raise topo_mod.TopologyError(f"{topo.source}: no [[host]] tables; `alto launch FILE` runs it on this machine")
    names = host_names or [h.name for h in topo.hosts]
    placement = topo_mod.place_instances(topo, names)
    known = {h.name: h for h in topo.hosts}
    if host not in names:
        raise topo_mod.TopologyError(f"{topo.source}: no [[host]] named {host!r} in this run "
                                     f"(hosts: {', '.join(names)})")
    for what, unit in [("stage", s) for s in topo.stages] + [("pool", p) for p in topo.pools]:
        if unit.inbox.startswith("ipc://"):
            raise topo_mod.TopologyError(f"{topo.source}: {what} {unit.name!r}: field 'inbox': {unit.inbox!r} "
                                         "cannot be reached from other hosts; use tcp://")
    return NodePlan(topo, known[host], names, placement[host])


def local_plan(topo: topo_mod.Topology) -> NodePlan:
    """Everything on this machine: the broker, then each pool's members, then every other stage's replicas."""
    pooled = {s for p in topo.pools for s in p.stages}
    instances = [Placed(p.name, r, LOCAL_HOST, what="pool") for p in topo.pools for r in range(p.replicas)]
    instances += [Placed(s.name, r, LOCAL_HOST) for s in topo.stages if s.name not in pooled
                  for r in range(s.replicas)]
    host = topo_mod.HostConfig(LOCAL_HOST, "127.0.0.1", 0, None, None, None)
    return NodePlan(topo, host, [LOCAL_HOST], instances, local=True)


def load_keys(p: NodePlan) -> None:
    """Read the secret keys this host needs now, so a missing one is named before anything starts."""
    sec = p.topology.security
    if sec is None:
        return
    try:
        if p.runs_broker:
            keys.load_pair(sec.broker_key)
        if p.instances or not p.runs_broker:
            keys.load_pair(sec.host_key(p.host))
    except keys.KeyFileError as exc:
        raise NodeError(f"host {p.host.name!r}: {exc}") from None
