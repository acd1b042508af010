"""The broker process: control plane and gateway in one poll loop.

Sockets (each owned by this loop alone):
  control ROUTER  <- worker DEALERs: hello/ready/heartbeat/leave/bye; status, shutdown
  gateway ROUTER  <- client DEALERs: submit/cancel/bye; results back by identity
  results PULL    <- the last stage's instances (and ERRORs from any stage)
  PUSH per entry-stage instance: requests into the pipeline

The broker is never in the token path between stages: it admits requests, collects
results, and publishes routing tables (an epoch per membership change) and loads.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from typing import Any

import zmq

from alto_bus.net import curve as keys
from alto_bus.protocol import wire
from alto_bus.control.request_book import ClientOut, Gateway
from alto_bus.control.membership import Instance, Membership
from alto_bus.scheduling.pool_scheduler import PoolScheduler
from alto_bus.routing.choice import LoadView, pow2_choice
from alto_bus.routing.pool_route import PoolRoute
from alto_bus.scheduling import make_policy
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.deploy.topology import Topology

log = logging.getLogger("alto.broker")

# Held-rid reports can be long; keep the heartbeat frame bounded.
MAX_HELD_REPORT = 100_000


class EntryLink:
    """The gateway's PUSH to one entry-stage instance, with its coalescing batch."""

    def __init__(self, sock: zmq.Socket, stage: str) -> None:
        self.sock = sock
        self.batch = wire.FrameBuilder(stage)
        self.backlog: list[bytes] = []
        self.sent_rids: list[int] = []   # requests sent since its last heartbeat
        self.prev_rids: list[int] = []   # and in the interval before (that heartbeat may predate them)
        # Sent earlier and not ended yet. Time does not prove the instance took them: under
        # load they wait in its inbox, out of its "held" reports, for as long as the queue is.
        self.older: dict[int, None] = {}


# Frames parked on an entry link before the gateway refuses new requests for it.
ENTRY_BACKLOG_FRAMES = 64


class Broker:
    def __init__(self, topology: Topology, *, ctx: zmq.Context | None = None) -> None:
        self.topology = topology
        cfg = topology.broker
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.stage_names = [s.name for s in topology.stages]
        keyed = {s.name: float(s.fields.get("eps", 0.25)) for s in topology.stages if s.key_depth is not None}
        self.members = Membership(self.stage_names, cfg.heartbeat_interval, cfg.heartbeat_liveness, keyed)
        self.gateway = Gateway(cfg.request_timeout, cfg.max_inflight)
        self.pool_of = {s: p.name for p in topology.pools for s in p.stages}
        self.pools = {p.name: PoolScheduler(p.name, p.policy, dict(p.policy_args or {}), p.stages,
                                            _prefix_tokens(topology, p.stages))
                      for p in topology.pools}
        self._next_round = 0.0
        # An entry stage on a pool is routed by the pool's policy, like any other prompt
        # of the pool: else the placement would assume a load that goes elsewhere.
        entry = topology.entry
        self.entry_pool = self.pool_of.get(entry.name)
        self.entry_route: PoolRoute | None = None
        if self.entry_pool is not None:
            pool = topology.pool(self.entry_pool)
            self.entry_route = PoolRoute(entry.name, make_policy(pool.policy, **(pool.policy_args or {})))
        self.loads = LoadView()
        self.rng = random.Random(0x5EED)
        self.host = socket.gethostname()
        self.bad_frames = 0
        self.stopping = False
        self.entries: dict[int, EntryLink] = {}
        # Links of instances out of the routing table but still members (draining): what was
        # sent to them still counts if they die or leave before finishing.
        self.retired: dict[int, EntryLink] = {}
        self.curve = keys.topology_curve(topology, "broker")  # [security]: CURVE on every socket; None: plain
        self.gone: dict[int, tuple[Instance, str]] = {}  # instances that died or left, newest last (for "lost")
        self.suspect: list[tuple[float, int, list[int]]] = []  # "lost" reports: (when to fail, iid, rids)
        # Requests that sent items to an instance that died, longer ago than the senders' recent
        # window: when due, failed unless they ended or a live instance reports holding them.
        self.doubtful: dict[int, tuple[float, int]] = {}  # rid -> (when to check, iid)
        self.control = make_socket(self.ctx, zmq.ROUTER, bind=cfg.control,
                                   options={zmq.ROUTER_MANDATORY: 1},
                                   curve=self.curve and self.curve.server("broker control"))
        self.clients = make_socket(self.ctx, zmq.ROUTER, bind=cfg.gateway, hwm=200_000,
                                   options={zmq.ROUTER_MANDATORY: 1},
                                   curve=self.curve and self.curve.server("gateway"))
        self.results = make_socket(self.ctx, zmq.PULL, bind=cfg.results, hwm=10_000,
                                   curve=self.curve and self.curve.server("gateway results"))
        self.addresses = {
            "control": advertised(bound_address(self.control), cfg.advertise),
            "gateway": advertised(bound_address(self.clients), cfg.advertise),
            "results": advertised(bound_address(self.results), cfg.advertise),
        }
        self._client_out: dict[bytes, list[list]] = {}
        self._next_tick = 0.0
        self.ticks = 0

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in (self.control, self.clients, self.results):
            poller.register(sock, zmq.POLLIN)
        log.info("broker up: control %s gateway %s results %s",
                 self.addresses["control"], self.addresses["gateway"], self.addresses["results"])
        try:
            while not self.stopping:
                now = time.monotonic()
                timeout = max(0.0, self._next_wake(now) - now)
                events = dict(poller.poll(timeout * 1000))
                if self.results in events:
                    self._drain(self.results, self._on_results)
                if self.clients in events:
                    self._drain_router(self.clients, self._on_client)
                if self.control in events:
                    self._drain_router(self.control, self._on_control)
                now = time.monotonic()
                if now >= self._next_tick:
                    self._tick(now)
                out: list[ClientOut] = []
                self.gateway.expire(now, out)
                self._queue_client(out)
                self._flush_entries()
                self._flush_clients()
                if self.gateway.cancelled:
                    self._broadcast_cancels()
        finally:
            self._shutdown_workers()

    def _next_wake(self, now: float) -> float:
        wake = self._next_tick
        deadline = self.gateway.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if any(link.backlog for link in self.entries.values()) or self._client_out:
            wake = min(wake, now + 0.001)
        return wake

    def _drain(self, sock: zmq.Socket, handle: Any, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            handle(frame)

    def _drain_router(self, sock: zmq.Socket, handle: Any, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                self._bad(f"{len(parts)}-part message on a ROUTER socket (expected identity + frame)")
                continue
            handle(parts[0], parts[1])

    def _bad(self, what: str) -> None:
        self.bad_frames += 1
        if self.bad_frames <= 20 or self.bad_frames % 1000 == 0:
            log.warning("dropped a malformed frame (%d so far): %s", self.bad_frames, what)

    # -- control plane -----------------------------------------------------------------

    def _send_control(self, identity: bytes, op: str, body: dict | None = None) -> None:
        try:
            self.control.send_multipart([identity, wire.encode_control(op, body)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
            log.debug("control %s to %r not sent: %s", op, identity, exc)

    def _on_control(self, identity: bytes, frame: bytes) -> None:
        try:
            op, body = wire.decode_control(frame)
        except wire.WireError as exc:
            self._bad(f"control: {exc}")
            return
        now = time.monotonic()
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._bad(f"control: unknown op {op!r}")
            self._send_control(identity, "error", {"reason": f"unknown op {op!r}"})
            return
        try:
            handler(identity, body, now)
        except (KeyError, TypeError, ValueError) as exc:
            self._bad(f"control op {op!r} with a bad body: {exc!r}")
            self._send_control(identity, "error", {"reason": f"bad {op!r} message: {exc!r}"})

    def _op_hello(self, identity: bytes, body: dict, now: float) -> None:
        stage = body["stage"]
        if stage not in self.stage_names:
            reason = f"no stage named {stage!r} in {self.topology.source} (stages: {', '.join(self.stage_names)})"
            log.warning("refused a worker: %s", reason)
            self._send_control(identity, "reject", {"reason": reason})
            return
        cfg = self.topology.stage(stage)
        nxt = self.topology.stage(cfg.next).to_dict() if cfg.next else None
        next_pool = None
        if cfg.next in self.pool_of:
            pool = self.topology.pool(self.pool_of[cfg.next])
            next_pool = {"name": pool.name, "policy": pool.policy, "policy_args": pool.policy_args or {}}
        self._send_control(identity, "welcome", {
            "config": cfg.to_dict(),
            "next": nxt,
            "next_pool": next_pool,
            "heartbeat_interval": self.cfg.heartbeat_interval,
            "liveness": self.cfg.heartbeat_liveness,
            "results": self.addresses["results"],
            "allowed": sorted(self.curve.allowed) if self.curve else [],  # whom an inbox lets in
        })

    def _op_ready(self, identity: bytes, body: dict, now: float) -> None:
        stage = body["stage"]
        if stage not in self.stage_names:
            self._send_control(identity, "reject", {"reason": f"no stage named {stage!r}"})
            return
        pool = member = None
        if body.get("member") is not None and self.pool_of.get(stage) == body.get("pool"):
            pool, member = str(body["pool"]), str(body["member"])  # the table lists pool members
        inst = self.members.add(stage, identity, str(body["address"]), int(body.get("pid", 0)),
                                str(body.get("host", "?")), now, pool=pool, member=member)
        log.info("stage %s: instance %d registered (pid %d on %s, inbox %s); epoch %d",
                 stage, inst.iid, inst.pid, inst.host, inst.address, self.members.epoch)
        self._send_control(identity, "registered", {"iid": inst.iid})
        self._membership_changed()

    def _op_heartbeat(self, identity: bytes, body: dict, now: float) -> None:
        held = body.get("held", [])
        inst = self.members.heartbeat(identity, now, int(body.get("depth", 0)), held, body.get("stats", {}))
        if inst is None:
            self._send_control(identity, "reregister", {})
            return
        if inst.member is not None and "prompt" in body:
            self.pools[inst.pool].observe(inst.member, inst.stage, body["prompt"], inst.depth, now)
        for prompt, by_member in (body.get("spills") or {}).items():
            pool = self.pool_of.get(prompt)
            if pool is not None:
                self.pools[pool].note_spills({prompt: by_member})
        link = self.entries.get(inst.iid) or self.retired.get(inst.iid)
        if link is not None:
            requests = self.gateway.requests
            link.older.update(dict.fromkeys(r for r in link.prev_rids if r in requests))
            link.prev_rids, link.sent_rids = link.sent_rids, []

    def _op_leave(self, identity: bytes, body: dict, now: float) -> None:
        iid = self.members.by_identity.get(identity)
        if iid is not None and self.members.drain(iid):
            log.info("instance %d is draining; epoch %d", iid, self.members.epoch)
            self._membership_changed()
        self._send_control(identity, "left", {})

    def _op_lost(self, identity: bytes, body: dict, now: float) -> None:
        """A sender's request ids whose items went to an instance that died: failed (never a hang)
        unless the instance proves alive within ``liveness`` heartbeats (it was only slow: it
        registers again, and what it was sent completes)."""
        wait = self.cfg.heartbeat_interval * self.cfg.heartbeat_liveness
        iid = int(body["iid"])
        self.suspect.append((now + wait, iid, [int(r) for r in body["rids"]]))
        # Sent before the sender's recent window: the instance may have taken them and passed
        # them on long ago, or they may have waited in its inbox all along (no heartbeat of
        # its named them). Checked when due: failed unless they ended or live work holds them.
        for rid in body.get("older", ()):
            self.doubtful.setdefault(int(rid), (now + wait, iid))

    def _lost_to(self, iid: int) -> tuple[str, str] | None:
        """(stage, error message) for requests whose items went to dead instance ``iid``;
        None if it came back (it was alive, and it has those items)."""
        inst, why = self.gone.get(iid, (None, "died"))
        if inst is not None and inst.identity in self.members.by_identity:
            return None
        stage = inst.stage if inst is not None else "?"
        where = f" (pid {inst.pid} on {inst.host})" if inst is not None else ""
        return stage, f"instance {iid} of stage {stage!r}{where} {why}; items of this request were sent to it"

    def _settle_lost(self, now: float) -> None:
        out: list[ClientOut] = []
        while self.suspect and self.suspect[0][0] <= now:
            _, iid, rids = self.suspect.pop(0)
            lost = self._lost_to(iid)
            if lost is None:
                continue
            failed = sum(self.gateway.fail(rid, lost[0], lost[1], out) for rid in rids)
            if failed:
                log.error("failed %d request(s) whose items were on their way to instance %d", failed, iid)
        if self.doubtful:
            self._settle_doubtful(now, out)
        self._queue_client(out)

    def _settle_doubtful(self, now: float, out: list[ClientOut]) -> None:
        requests = self.gateway.requests
        due = [rid for rid, (when, _) in self.doubtful.items() if when <= now or rid not in requests]
        if not due:
            return
        held: set[int] = set()
        for inst in self.members.instances.values():
            held.update(inst.held)
        failed: dict[int, int] = {}
        for rid in due:
            if rid in requests and rid in held:
                continue  # live work on it: checked again next tick
            _, iid = self.doubtful.pop(rid)
            if rid not in requests:
                continue  # it ended: its items got through
            lost = self._lost_to(iid)
            if lost is not None and self.gateway.fail(rid, lost[0], lost[1], out):
                failed[iid] = failed.get(iid, 0) + 1
        for iid, n in failed.items():
            log.error("failed %d request(s) that sent items to instance %d and were not finished by anyone "
                      "live", n, iid)

    def _op_bye(self, identity: bytes, body: dict, now: float) -> None:
        iid = self.members.by_identity.get(identity)
        if iid is None:
            return
        inst = self.members.remove(iid)
        log.info("instance %d (stage %s) left", iid, inst.stage if inst else "?")
        self._fail_held(inst, "left before finishing")
        self._membership_changed()

    def _op_status(self, identity: bytes, body: dict, now: float) -> None:
        self._send_control(identity, "status", self.status())

    def _op_shutdown(self, identity: bytes, body: dict, now: float) -> None:
        log.info("shutdown requested")
        self._send_control(identity, "ok", {})
        self.stopping = True

    def status(self) -> dict[str, Any]:
        stages = {}
        for name in self.stage_names:
            cfg = self.topology.stage(name)
            insts = [i for i in self.members.instances.values() if i.stage == name]
            stages[name] = {
                "replicas": cfg.replicas,
                "instances": [{"iid": i.iid, "pid": i.pid, "host": i.host, "address": i.address,
                               "depth": i.depth, "draining": i.draining, "stats": i.stats}
                              for i in sorted(insts, key=lambda i: i.iid)],
            }
        g = self.gateway.stats
        pools = {n: p.status() for n, p in self.pools.items()}
        return {
            "pools": pools,
            "epoch": self.members.epoch,
            "ticks": self.ticks,
            "addresses": self.addresses,
            "stages": stages,
            "gateway": {"in_flight": len(self.gateway.requests), "clients": len(self.gateway.by_client),
                        "admitted": g.admitted, "completed": g.completed, "failed": g.failed,
                        "rejected": g.rejected, "late_messages": g.late_messages,
                        "bad_frames": self.bad_frames + g.bad_messages},
        }

    def _membership_changed(self) -> None:
        table = dict(self.members.table)
        table["results"] = self.addresses["results"]
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "table", table)
        self._sync_entries()

    def _sync_entries(self) -> None:
        entry = self.topology.entry.name
        want = dict(self.members.table["stages"].get(entry, []))
        for iid in list(self.entries):
            if iid not in want:
                link = self.entries.pop(iid)
                link.sock.close(linger=0)
                if iid in self.members.instances:
                    self.retired[iid] = link
        for iid in [i for i in self.retired if i not in self.members.instances]:
            del self.retired[iid]  # gone: what it was sent was settled then (_fail_held)
        for iid, address in want.items():
            if iid not in self.entries:
                sock = make_socket(self.ctx, zmq.PUSH, connect=address, immediate=True,
                                   curve=self.curve and self.curve.to_peer(f"gateway to {entry} instance {iid}"))
                self.entries[iid] = EntryLink(sock, entry)

    def _tick(self, now: float) -> None:
        self._next_tick = now + self.cfg.heartbeat_interval
        self.ticks += 1
        ended, self.gateway.ended = self.gateway.ended, []
        if ended:
            for link in [*self.entries.values(), *self.retired.values()]:
                if link.older:
                    for rid in ended:
                        link.older.pop(rid, None)
        dead = self.members.dead(now)
        for inst in dead:  # every one of them before the new table closes their entry links
            silent = now - inst.last_seen
            log.error("stage %s: instance %d (pid %d on %s) is dead: no heartbeat for %.1f s",
                      inst.stage, inst.iid, inst.pid, inst.host, silent)
            self._fail_held(inst, f"died (no heartbeat for {silent:.1f} s)")
        if dead:
            self._membership_changed()
        self._settle_lost(now)
        loads = self.members.loads()
        self.loads.update(loads)
        body = {"epoch": self.members.epoch, "loads": loads, "ended": ended,
                "oldest": self.gateway.oldest_epoch(self.members.epoch)}
        if self.pools:
            if now >= self._next_round:
                self._next_round = now + max(1.0, self.cfg.heartbeat_interval)
                self._schedule_pools()
            body["placements"] = {n: p.placement.to_dict() for n, p in self.pools.items() if p.placement}
            body["member_loads"] = {n: p.member_loads for n, p in self.pools.items()}
            self._update_entry_route(body)
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "loads", body)

    def _update_entry_route(self, body: dict) -> None:
        route = self.entry_route
        if route is None:
            return
        name = self.entry_pool
        route.update(body["placements"].get(name), body["member_loads"].get(name))
        route.members({i.iid: i.member for i in self.members.instances.values() if i.member is not None},
                      self.members.routable(self.topology.entry.name))
        spills = route.policy.drain_spills()
        if spills:
            self.pools[name].note_spills(spills)

    def _schedule_pools(self) -> None:
        for name, sched in self.pools.items():
            members = sorted({i.member for i in self.members.instances.values()
                              if i.pool == name and not i.draining and i.member is not None})
            sched.round(members)

    def _op_pool_info(self, identity: bytes, body: dict, now: float) -> None:
        name = body["pool"]
        if name not in self.pools:
            self._send_control(identity, "reject", {"reason": f"no pool named {name!r} in {self.topology.source}"})
            return
        pool = self.topology.pool(name)
        self._send_control(identity, "pool_info", {
            "pool": pool.to_dict(), "stages": {s: self.topology.stage(s).to_dict() for s in pool.stages}})

    def _fail_held(self, inst: Instance | None, why: str) -> None:
        if inst is None:
            return
        rids = set(inst.held)
        link = self.entries.get(inst.iid) or self.retired.pop(inst.iid, None)
        if link is not None:
            rids.update(link.sent_rids)
            rids.update(link.prev_rids)
            wait = self.cfg.heartbeat_interval * self.cfg.heartbeat_liveness
            now = time.monotonic()
            for rid in link.older:  # possibly still waiting in its inbox: see _settle_doubtful
                if rid not in rids:
                    self.doubtful.setdefault(rid, (now + wait, inst.iid))
        out: list[ClientOut] = []
        message = f"instance {inst.iid} of stage {inst.stage!r} (pid {inst.pid} on {inst.host}) {why}"
        self.gone[inst.iid] = (inst, why)
        while len(self.gone) > 10_000:
            del self.gone[next(iter(self.gone))]
        failed = sum(self.gateway.fail(rid, inst.stage, message, out) for rid in rids)
        if failed:
            log.error("failed %d request(s) held by instance %d", failed, inst.iid)
        self._queue_client(out)

    def _broadcast_cancels(self) -> None:
        body = {"rids": self.gateway.cancelled}
        self.gateway.cancelled = []
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "cancel", body)

    def _shutdown_workers(self) -> None:
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "shutdown", {})

    # -- gateway -----------------------------------------------------------------------

    def _on_client(self, identity: bytes, frame: bytes) -> None:
        try:
            msgs = wire.decode_client_frame(frame)
        except wire.WireError as exc:
            self._bad(f"client: {exc}")
            return
        now = time.monotonic()
        out: list[ClientOut] = []
        for msg in msgs:
            if type(msg) is not list or not msg or type(msg[0]) is not int:
                self._bad(f"client: message {msg!r:.80} is not [op, ...]")
                continue
            op = msg[0]
            if op == wire.SUBMIT and len(msg) >= 5:
                self._submit(identity, msg, now, out)
            elif op == wire.CANCEL and len(msg) >= 2:
                self.gateway.cancel(identity, msg[1], out)
            elif op == wire.BYE:
                self.gateway.drop_client(identity)
            else:
                self._bad(f"client: unknown op or short message {msg!r:.80}")
        self._queue_client(out)

    def _submit(self, identity: bytes, msg: list, now: float, out: list[ClientOut]) -> None:
        _, cid, payload, stream, timeout = msg[:5]
        if not self.members.complete:
            missing = [n for n in self.stage_names if not self.members.count(n)]
            out.append((identity, [wire.FAILED, cid, "gateway",
                                   f"unavailable: stage(s) {missing} have no live instance"]))
            self.gateway.stats.rejected += 1
            return
        entry_ids = self.members.routable(self.topology.entry.name)
        # A few parked frames are a link still connecting or a moment's backpressure (it is
        # flushed every loop); only a long backlog means the instance is not taking input.
        writable = [i for i in entry_ids if len(self.entries[i].backlog) < ENTRY_BACKLOG_FRAMES]
        if not writable:
            why = (f"overloaded: stage {self.topology.entry.name!r} is not taking input"
                   if entry_ids else f"unavailable: stage {self.topology.entry.name!r} has no live instance")
            out.append((identity, [wire.FAILED, cid, "gateway", why]))
            self.gateway.stats.rejected += 1
            return
        rid = self.gateway.admit(identity, cid, stream, timeout, now, self.members.epoch)
        if isinstance(rid, str):
            out.append((identity, [wire.FAILED, cid, "gateway", rid]))
            return
        iid = self.entry_route.pick() if self.entry_route is not None else None
        if iid is None or iid not in writable:
            iid = pow2_choice(writable, self.loads, self.rng)
        self.loads.note_sent(iid)
        link = self.entries[iid]
        link.sent_rids.append(rid)
        if link.batch.add(wire.data([rid], 0, payload, True, self.members.epoch)) >= self.topology.entry.batch_bytes:
            self._send_entry(link)

    def _send_entry(self, link: EntryLink) -> None:
        if len(link.batch):
            link.backlog.append(link.batch.take())
        while link.backlog:
            try:
                link.sock.send(link.backlog[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.backlog.pop(0)

    def _flush_entries(self) -> None:
        for link in self.entries.values():
            if len(link.batch) or link.backlog:
                self._send_entry(link)

    def _on_results(self, frame: bytes) -> None:
        try:
            _, msgs = wire.decode_frame(frame)
        except wire.WireError as exc:
            self._bad(f"results: {exc}")
            return
        out: list[ClientOut] = []
        for msg in msgs:
            try:
                self.gateway.on_message(msg, out)
            except wire.WireError as exc:
                self._bad(f"results: {exc}")
        self._queue_client(out)

    def _queue_client(self, out: list[ClientOut]) -> None:
        for identity, msg in out:
            self._client_out.setdefault(identity, []).append(msg)

    def _flush_clients(self) -> None:
        pending = self._client_out
        self._client_out = {}
        for identity, msgs in pending.items():
            try:
                self.clients.send_multipart([identity, wire.encode_client_frame(msgs)], zmq.NOBLOCK)
            except zmq.Again:
                self._client_out[identity] = msgs  # retried on the next turn of the loop
            except zmq.ZMQError:
                dropped = self.gateway.drop_client(identity)
                log.info("client %r is gone; dropped its %d request(s)", identity, len(dropped))

    def close(self) -> None:
        for link in self.entries.values():
            link.sock.close(linger=0)
        for sock in (self.control, self.clients, self.results):
            sock.close(linger=0)


def run_broker(topology: Topology, announce: Any = None) -> None:
    """Run a broker until SIGTERM/SIGINT or a shutdown request; ``announce(addresses)`` once bound."""
    broker = Broker(topology)

    def stop(signum: int, frame: Any) -> None:
        broker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if announce is not None:
        announce(broker.addresses)
    try:
        broker.serve()
    finally:
        broker.close()
        log.info("broker stopped (pid %d)", os.getpid())


def _prefix_tokens(topology: Topology, stages: tuple[str, ...]) -> dict[str, int]:
    """The fixed part of each prompt, in tokens (about 4 characters a token): what a
    prefix cache can keep for every call of that prompt."""
    from alto_bus.deploy.topology import import_object

    out = {}
    for name in stages:
        f = topology.stage(name).fields
        text = f.get("prompt") if f.get("prompt") is not None else import_object(f["prompt_from"])
        out[name] = len(str(text).split("{", 1)[0]) // 4
    return out
