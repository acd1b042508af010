"""``alto node FILE --host NAME`` (or ``--slurm``): one host's share of a topology.

It starts and supervises one host's instances (and, on the first host, the broker and
gateway) with :class:`~alto_bus.deploy.supervisor.Supervisor`. Its children die with it,
and it dies with whatever started it: ``--watch-stdin`` stops it when its stdin closes
(the ssh session, or the launcher, went away) and ``--die-with-parent`` when its parent
process dies. Before it starts anything it checks its keys and that the broker answers,
so that a wrong file or a silent broker is a one-line error naming the host or file.

The pieces live beside it: :mod:`.slurm` (the Slurm environment), :mod:`.plan` (what one
host runs), :mod:`.supervisor` (the processes), :mod:`.ssh_launch` (across hosts over
ssh; ``scripts/launch_cluster.py`` imports its entry points from here).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from alto_bus.deploy import topology as topo_mod
from alto_bus.deploy.errors import NodeError
from alto_bus.deploy.gpu_placement import describe
from alto_bus.deploy.plan import broker_control, load_keys, plan
from alto_bus.deploy.processes import set_parent_death_signal
from alto_bus.deploy.slurm import slurm_node, slurm_port_base, slurm_topology
from alto_bus.deploy.ssh_launch import add_cluster_arguments, launch_cluster_main  # noqa: F401  (scripts/launch_cluster.py)
from alto_bus.deploy.supervisor import Supervisor
from alto_bus.net import curve as keys


def add_node_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", help="the [[host]] this node is (ssh mode)")
    who.add_argument("--slurm", action="store_true", help="find this node's share from the Slurm environment")
    p.add_argument("--hosts", help="the hosts of this run, NAME,NAME,... (default: every [[host]]; the first "
                                   "runs the broker)")
    p.add_argument("--broker", help="the broker's control address (every host but the broker's)")
    p.add_argument("--gpus", type=int, help="--slurm without [[host]] tables: GPUs per node "
                                            "(default: SLURM_GPUS_ON_NODE)")
    p.add_argument("--check", action="store_true", help="validate the file, this host's share and keys; start nothing")
    p.add_argument("--announce", action="store_true", help="print the broker's addresses as one JSON line")
    p.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes (an ssh session that ends)")
    p.add_argument("--die-with-parent", action="store_true", help="stop when the parent process dies")
    p.add_argument("--broker-wait", type=float, help="seconds to wait for the broker to answer "
                                                     "(default 10; 120 with --slurm)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds until every instance has registered")
    p.add_argument("--metrics-port", metavar="[HOST:]PORT",
                   help="serve Prometheus /metrics of this host's processes there (host: the [[host]] address)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO from every process")


def node_main(args: argparse.Namespace) -> int:
    """``alto node``: returns the exit code."""
    level = "INFO" if args.verbose else os.environ.get("ALTO_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING), stream=sys.stderr,
                        format=f"%(asctime)s %(name)s[{os.getpid()}] %(levelname)s %(message)s")
    if args.die_with_parent:
        parent = os.getppid()
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:
            return 1
    stop = [False]

    def on_signal(signum: int, frame: Any) -> None:
        stop[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    node: Supervisor | None = None
    try:
        topo = topo_mod.load(args.topology)
        port_base = None
        broker = args.broker
        names = args.hosts.split(",") if args.hosts else None
        if args.slurm:
            sn = slurm_node()
            topo = slurm_topology(topo, sn, args.gpus)
            host, names = sn.name, sn.nodes
            port_base = slurm_port_base(sn.job_id)
            if host != names[0] and broker is None:
                broker = broker_control(topo, topo.hosts[0], port_base)
        else:
            host = args.host
        p = plan(topo, host, names)
        load_keys(p)
        if args.check:
            print(f"host {p.host.name}: ok: " + describe({p.host.name: p.instances})[0].split(": ", 1)[1]
                  + (" + broker and gateway" if p.runs_broker else ""), flush=True)
            return 0
        if not p.runs_broker and broker is None:
            raise NodeError(f"host {p.host.name!r}: give --broker (the control address the broker's host printed)")
        if p.runs_broker and args.broker:
            raise NodeError(f"host {p.host.name!r} runs the broker (it is the first host of this run); "
                            "do not give --broker")
        wait = args.broker_wait if args.broker_wait is not None else (120.0 if args.slurm else 10.0)
        node = Supervisor(args.topology, p, broker=broker, port_base=port_base, broker_wait=wait,
                          ready_timeout=args.ready_timeout, announce=args.announce, metrics=args.metrics_port,
                          log_level="INFO" if args.verbose else os.environ.get("ALTO_LOG_LEVEL", "WARNING"))
        if stop[0]:
            return 0
        node.start()
        return node.supervise(stop, args.watch_stdin)
    except topo_mod.TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (NodeError, keys.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if node is not None:
            node.stop()
