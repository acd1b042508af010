"""The ``alto`` command: launch, broker, worker, http, submit, status, check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any


def _logging(level: str | None = None) -> None:
    level = level or os.environ.get("ALTO_LOG_LEVEL", "INFO")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s %(name)s[{os.getpid()}] %(levelname)s %(message)s")


def cmd_launch(args: argparse.Namespace) -> int:
    from alto_bus.deploy.supervisor import launch

    _logging("WARNING" if not args.verbose else "INFO")
    if args.hosts is not None:  # across the [[host]] tables, over ssh
        if args.http or args.metrics_port:
            print(f"error: {'--http' if args.http else '--metrics-port'} serves a one-machine launch; it does not "
                  "combine with --hosts (give alto node --metrics-port on each host)", file=sys.stderr)
            return 2
        from alto_bus.deploy.ssh_launch import launch_cluster_main

        return launch_cluster_main(args)
    if args.http:
        from alto_bus.deploy.http_config import parse_listen

        try:
            parse_listen(args.http)
        except ValueError as exc:
            print(f"error: --http: {exc}", file=sys.stderr)
            return 2
    return launch(args.topology, log_level="INFO" if args.verbose else "WARNING", http=args.http,
                  metrics=args.metrics_port)


def cmd_check(args: argparse.Namespace) -> int:
    from alto_bus.deploy.topology import TopologyError, load

    try:
        topo = load(args.topology)
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in topo.stages:
        extra = "".join([f", route {s.route}" if s.route else "", f", max_turns {s.max_turns}" if s.max_turns else "",
                         f", merges at depth {s.merge_depth}" if s.merge_depth else "",
                         ", in a loop" if s.in_loop else "", f", retries {s.retries}" if s.retries else ""])
        print(f"stage {s.name}: kind {s.kind}, {s.replicas} replica(s), "
              f"input {', '.join(s.inputs) or '(clients)'}, next {', '.join(s.consumers) or '(gateway)'}, "
              f"path depth {s.out_depth}{'+' if s.depth_varies else ''}{extra}")
    if topo.hosts:  # where each instance runs (the broker and gateway on the first host)
        from alto_bus.deploy.gpu_placement import describe
        from alto_bus.deploy.topology import place_instances

        print("\n".join(describe(place_instances(topo))))
    if topo.security:
        print(f"CURVE on every link: broker key {topo.security.broker_key}, allowed keys {topo.security.allowed_keys}")
    print("ok")
    return 0


def _tier_topology(args: argparse.Namespace) -> Any:
    """The topology for ``alto broker`` / ``alto gateway`` (bound on --bind-host in a cluster),
    or None after printing why it cannot be read."""
    from alto_bus.deploy.topology import TopologyError, load

    _logging()
    try:
        topo = load(args.topology)
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if args.bind_host:  # a host of a cluster: loopback addresses become this host's
        from alto_bus.deploy.plan import bind_broker_on

        topo = bind_broker_on(topo, args.bind_host, args.port_base)
    return topo


def cmd_gateway(args: argparse.Namespace) -> int:
    from alto_bus.control.gateway_process import run_gateway

    topo = _tier_topology(args)
    if topo is None:
        return 2
    rebind = json.loads(args.rebind) if args.rebind else None

    def announce(addresses: dict[str, str]) -> None:
        print(json.dumps(addresses) if args.announce else f"gateway {addresses['gateway']}", flush=True)

    import zmq

    try:
        run_gateway(topo, args.control, args.index, announce, rebind)
    except (ValueError, zmq.ZMQError) as exc:
        print(f"error: gateway {args.index}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from alto_bus.control.broker import run_broker

    topo = _tier_topology(args)
    if topo is None:
        return 2
    id_base = 0
    if args.rebind:  # a restart: the same addresses, and epochs and ids above any the last run used
        import dataclasses
        import time

        old = json.loads(args.rebind)
        topo = dataclasses.replace(topo, broker=dataclasses.replace(
            topo.broker, **{k: old[k] for k in ("control", "gateway", "results")}))
        id_base = int(time.time() * 1000)

    def announce(addresses: dict[str, str]) -> None:
        if args.announce:
            print(json.dumps(addresses), flush=True)
        else:
            print(f"gateway {addresses['gateway']}\ncontrol {addresses['control']}", flush=True)

    import zmq

    from alto_bus.net.curve import KeyFileError

    try:
        run_broker(topo, announce, id_base=id_base)
    except (KeyFileError, zmq.ZMQError) as exc:
        print(f"error: broker: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from alto_bus.deploy.processes import kill_group_members
    from alto_bus.runtime.worker import Worker, WorkerError

    _logging()
    curve = _curve(args)
    if args.pool:
        from alto_bus.runtime.pool_member import PoolMember

        worker = PoolMember(args.pool, args.broker, inbox=args.inbox, advertise=args.advertise,
                            broker_timeout=args.broker_timeout, curve=curve, host=args.host_name,
                            member_index=args.member_index)
    elif args.stage:
        worker = Worker(args.stage, broker=args.broker, inbox=args.inbox, advertise=args.advertise,
                        broker_timeout=args.broker_timeout, curve=curve, host=args.host_name)
    else:
        print("error: give --stage or --pool", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop, False)
        await worker.run()

    try:
        asyncio.run(main())
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        kill_group_members()  # what the stage spawned and did not stop (a vLLM engine core)
    return 1 if worker.failed else 0  # a thread of its own failed: tell the supervisor


def cmd_http(args: argparse.Namespace) -> int:
    from alto_bus.service.http_server import serve

    _logging()
    curve = _curve(args)
    return serve(args.gateway, args.control, args.listen, timeout=args.timeout, curve=curve,
                 announce=args.announce)


def _one_of(args: argparse.Namespace, zmq_option: str) -> bool:
    """Exactly one of --ZMQ_OPTION and --http was given (else a message on stderr)."""
    if (getattr(args, zmq_option) is None) == (args.http is None):
        print(f"error: give --{zmq_option} or --http URL (one of them)", file=sys.stderr)
        return False
    return True


def cmd_submit(args: argparse.Namespace) -> int:
    from alto_bus.client import Client, RequestError

    if not _one_of(args, "gateway"):
        return 2
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"error: the payload is not JSON: {exc}", file=sys.stderr)
        if not args.payload.lstrip().startswith(("{", "[", '"')):
            # The shell ate the quotes: 'hello' reaches us as hello, which is not JSON text.
            print(f"hint: a text request is a JSON string; quote it twice: alto submit ... "
                  f"'{json.dumps(args.payload)}'", file=sys.stderr)
        return 2
    if args.http:
        from alto_bus.service import http_cli

        return http_cli.submit(args.http, payload, stream=args.stream, timeout=args.timeout, compact=args.compact)
    curve = _curve(args)
    with Client(args.gateway, timeout=args.timeout, curve=curve) as client:
        try:
            if args.stream:
                stream = client.stream(payload)
                for part in stream:
                    print(json.dumps({"path": list(part.path), "seq": part.seq, "data": part.data,
                                      "final": part.final}), flush=True)
                result = stream.result()
            else:
                result = client.submit(payload).result()
        except RequestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=None if args.compact else 2, default=repr))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from alto_bus.deploy.status_probe import StatusProbe

    if not _one_of(args, "broker"):
        return 2
    if args.http:
        from alto_bus.service import http_cli

        status = http_cli.status(args.http, args.timeout)
        if status is None:
            return 1
    else:
        curve = _curve(args)
        with StatusProbe(args.broker, curve=curve) as probe:
            status = probe.query(timeout=args.timeout)
        if status is None:
            print(f"error: no answer from the broker at {args.broker} within {args.timeout:g} s", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(status, indent=2, default=repr))
        return 0
    print(_format_status(status))
    return 0


def _counts(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1]))


def _format_status(status: dict[str, Any]) -> str:
    g = status["gateway"]
    lines = [f"epoch {status['epoch']}  gateway {status['addresses']['gateway']}",
             f"requests: {g['in_flight']} in flight, {g['completed']} completed, {g['failed']} failed, "
             f"{g['rejected']} rejected; bad frames {g['bad_frames']}"]
    for socket, reasons in g.get("bad_by_socket", {}).items():
        lines.append(f"  dropped on the {socket} socket: {_counts(reasons)}")
    gateways = status.get("gateways") or []
    if len(gateways) > 1:  # [broker] gateways = N: each one's share
        for gw in gateways:
            state = (f"{gw.get('in_flight', 0)} in flight, {gw.get('completed', 0)} completed, "
                     f"{gw.get('failed', 0)} failed" if gw.get("up") else "not reporting")
            lines.append(f"  gateway {gw['index']} {gw.get('gateway', '?')}: {state}")
    b = g.get("backlog") or {}
    if b.get("clients") or b.get("cut_off"):  # clients that do not read their answers
        lines.append(f"  answers waiting for slow clients: {b['bytes']} bytes for {b['clients']} client(s); "
                     f"{b['cut_off']} cut off, {b['dropped_answers']} answers dropped, {b['refused']} refused")
    for name, st in status["stages"].items():
        insts = st["instances"]
        retries = f", retries {st['retries']}" if st.get("retries") else ""
        lines.append(f"stage {name}: {len(insts)}/{st['replicas']} instances{retries}")
        for i in insts:
            flag = " (draining)" if i["draining"] else ""
            if i.get("stalled"):
                flag += f" (event loop stalled {i['stalled']:.1f} s)"
            lines.append(f"  #{i['iid']} pid {i['pid']} on {i['host']} {i['address']} depth {i['depth']}"
                         f" in {i['stats'].get('messages_in', 0)} msgs{flag}")
            if i.get("bad"):
                lines.append(f"    dropped on its inbox: {_counts(i['bad'])}")
    for name, pool in status.get("pools", {}).items():
        lines.append(f"pool {name} ({pool['policy']}):")
        for prompt, members in pool["placement"].items():
            demand = pool["demand_tokens_per_s"].get(prompt, 0.0)
            lines.append(f"  prompt {prompt}: demand {demand:,.0f} tok/s on {', '.join(members)}")
            if prompt in pool.get("held", {}):
                lines.append(f"    held: {pool['held'][prompt]}")
        for member, load in pool["member_loads"].items():
            hit = pool["hit_rates"].get(member)
            lines.append(f"  member {member}: load {load}" + (f", prefix-cache hit rate {hit:.0%}" if hit is not None
                                                               else "") + _member_figures(pool, member))
        for d in pool["decisions"][-5:]:
            lines.append(f"  round {d['round']}: {d['reason']}")
    return "\n".join(lines)


def _member_figures(pool: dict, member: str) -> str:
    """KV use, and for a remote member its server and what that server runs, in a few words."""
    out = ""
    kv = pool.get("kv", {}).get(member)
    if kv and kv.get("capacity"):
        out += f", KV {kv['used'] / kv['capacity']:.0%} of {kv['capacity']:,} tokens"
    server = pool.get("servers", {}).get(member)
    if server:
        out += f", server {server['url']}"
        if server.get("vllm"):
            out += f" (vLLM: {server['running']} running, {server['waiting']} waiting)"
        else:
            out += f" ({pool.get('in_flight', {}).get(member, 0)} in flight; no vLLM /metrics)"
    return out


def _curve(args: argparse.Namespace) -> Any:
    """CURVE keys from --key/--broker-key (both or neither); a bad pair or file ends the
    command with exit code 2 and a line naming it."""
    if args.key is None and args.broker_key is None:
        return None
    try:
        if args.key is None or args.broker_key is None:
            raise ValueError("give both --key (this process's key pair) and --broker-key (the broker's public key)")
        from alto_bus.net.curve import client_curve

        return client_curve(args.key, args.broker_key)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="CURVE: this process's key file (NAME.key_secret, or NAME.key beside it)")
    p.add_argument("--broker-key", help="CURVE: the broker's public key file")


def cmd_keys(args: argparse.Namespace) -> int:
    from alto_bus.net.curve import KeyFileError, create

    try:
        public, secret = create(args.dir, args.name, force=args.force)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"public key {public}\nsecret key {secret} (mode 600: keep it on the hosts that run as {args.name!r})")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from alto_bus.deploy.node import node_main

    return node_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alto", description="Serve compound AI pipelines over a ZeroMQ bus.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="start a topology on this machine")
    p.add_argument("topology")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO from every process")
    p.add_argument("--hosts", nargs="?", const="all",
                   help="start across the file's [[host]] tables over ssh: all, or NAME,NAME,... "
                        "(the first runs the broker)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the HTTP front door there (port 0: a free one; overrides [http] listen)")
    p.add_argument("--metrics-port", metavar="[HOST:]PORT",
                   help="serve Prometheus /metrics of this machine's processes there (host 127.0.0.1 unless given)")
    from alto_bus.deploy.ssh_launch import add_cluster_arguments

    add_cluster_arguments(p)  # ssh options of --hosts
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("check", help="validate a topology file")
    p.add_argument("topology")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("broker", help="run the broker and gateway of a topology")
    p.add_argument("topology")
    p.add_argument("--announce", action="store_true", help="print the bound addresses as one JSON line")
    p.add_argument("--bind-host", help="in a cluster: bind loopback addresses on this host address instead")
    p.add_argument("--port-base", type=int, help="with --bind-host: control, gateway, results on ports "
                                                 "BASE, BASE+1, BASE+2 where the file says 0")
    p.add_argument("--rebind", help="a restart: bind the addresses a previous broker announced (its JSON line)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("gateway", help="run one of the gateways beside the broker ([broker] gateways = N)")
    p.add_argument("topology")
    p.add_argument("--index", type=int, required=True, help="which gateway: 1 .. N-1 (the broker is gateway 0)")
    p.add_argument("--control", required=True, help="the broker's control address")
    p.add_argument("--announce", action="store_true", help="print the bound addresses as one JSON line")
    p.add_argument("--bind-host", help="in a cluster: bind loopback addresses on this host address instead")
    p.add_argument("--port-base", type=int, help="with --bind-host: as for alto broker")
    p.add_argument("--rebind", help="a restart: bind the addresses this gateway announced before (its JSON line)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("worker", help="run one instance of a stage")
    p.add_argument("--broker", required=True, help="the broker's control address")
    p.add_argument("--stage", help="the stage this instance serves")
    p.add_argument("--pool", help="or: the LM pool this process is a member of (all its stages)")
    p.add_argument("--member-index", type=int, help="with --pool: which of the pool's remote 'members' "
                                                    "this member talks to (0-based)")
    p.add_argument("--inbox", help="bind address of this instance's inbox (default: the topology's)")
    p.add_argument("--advertise", help="host name or address peers reach this instance at")
    p.add_argument("--broker-timeout", type=float, default=15.0,
                   help="stop when the broker is silent this long (seconds)")
    p.add_argument("--host-name", help="the host name the broker reports for this instance (a [[host]] name)")
    _key_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("http", help="serve the HTTP front door of a running topology (a client of its gateway)")
    p.add_argument("--gateway", required=True, help="the gateway's address")
    p.add_argument("--control", help="the broker's control address (for /v1/status and /metrics)")
    p.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT", help="port 0 picks a free one")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of a request that gives none (s)")
    p.add_argument("--announce", action="store_true", help='print {"http": URL} as one JSON line once listening')
    _key_options(p)
    p.set_defaults(func=cmd_http)

    p = sub.add_parser("submit", help="send one request and print its result")
    p.add_argument("--gateway")
    p.add_argument("--http", metavar="URL", help="or: the HTTP front door (http://HOST:PORT)")
    p.add_argument("--stream", action="store_true", help="print partial results as they arrive")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--compact", action="store_true")
    p.add_argument("payload", help="the request, as JSON")
    _key_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show instances, epochs and request counts")
    p.add_argument("--broker", help="the broker's control address")
    p.add_argument("--http", metavar="URL", help="or: the HTTP front door (http://HOST:PORT)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=3.0)
    _key_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("keys", help="make a CURVE key pair: DIR/NAME.key (public), DIR/NAME.key_secret")
    p.add_argument("name")
    p.add_argument("--dir", default="keys", help="where to write them (default: ./keys)")
    p.add_argument("--force", action="store_true", help="replace an existing pair")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("node", help="start and supervise one host's share of a topology's instances")
    from alto_bus.deploy.node import add_node_arguments

    add_node_arguments(p)
    p.set_defaults(func=cmd_node)

    args = parser.parse_args(argv)
    # Handlers are named "module:function" relative to the directory alto runs in.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
