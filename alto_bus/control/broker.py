"""The broker process: control plane and gateway in one poll loop.

Sockets (each owned by this loop alone):
  control ROUTER  <- worker DEALERs: hello/ready/heartbeat/leave/bye; status, shutdown
  gateway ROUTER, results PULL: alto_bus.control.gateway (clients in, answers out)
  PUSH per entry-stage instance: requests into the pipeline

What departed instances leave to fail is kept by alto_bus.control.failure_ledger (pure);
this module only feeds it events and sends the failures it returns.

The broker is never in the token path between stages: it admits requests, collects
results, and publishes routing tables (an epoch per membership change) and loads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from alto_bus.protocol import control_bodies, wire
from alto_bus.control.gateway import GatewaySockets
from alto_bus.control.gateway_side import GatewaySide, serve_until_signal
from alto_bus.control.load_reports import LoadReports
from alto_bus.control.pool_setup import make_pools
from alto_bus.control.socket_drain import drain_routed
from alto_bus.control.broker_gateways import BrokerGateways
from alto_bus.control.broker_publishing import BrokerPublishing
from alto_bus.control.broker_retries import BrokerRetries
from alto_bus.control.membership import Membership
from alto_bus.control.table_reports import TableReports
from alto_bus.deploy.topology import Topology
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.routing import subsetting

log = logging.getLogger("alto.broker")

# Held-rid reports can be long; keep the heartbeat frame bounded.
MAX_HELD_REPORT = 100_000


class Broker(GatewaySide, BrokerGateways, BrokerPublishing, BrokerRetries):
    def __init__(self, topology: Topology, *, ctx: zmq.Context | None = None, id_base: int = 0) -> None:
        self._init_gateway_side(topology, ctx, 0, "broker")  # gateway 0 (alto_bus/control/gateway_side.py)
        cfg = self.cfg
        keyed = {s.name: float(s.fields.get("eps", 0.25)) for s in topology.stages if s.key_depth is not None}
        self.members = Membership(self.stage_names, cfg.heartbeat_interval, cfg.heartbeat_liveness, keyed,
                                  id_base=id_base)
        # Each stage's instances get the loads of the stages they feed (of a large stateless
        # one, only of the group they route among), as they change.
        self.load_reports = LoadReports({s.name: s.consumers for s in topology.stages}, self.pool_of,
                                        cfg.loads_full_every, cfg.load_subset,
                                        subsetting.eligible(topology.stages, self.pool_of))
        # Each stage's instances get its view of the routing table, whole or as changes.
        self.table_reports = TableReports({s.name: s.consumers for s in topology.stages})
        self.pools = make_pools(topology)
        self._next_round = 0.0
        self.control = make_socket(self.ctx, zmq.ROUTER, bind=cfg.control,
                                   options={zmq.ROUTER_MANDATORY: 1},
                                   curve=self.curve and self.curve.server("broker control"))
        self.gateway_io = GatewaySockets(self.ctx, cfg, self.curve, self.gateway, self._submit, self.bad)
        self.addresses = {"control": advertised(bound_address(self.control), cfg.advertise),
                          **self.gateway_io.addresses}
        self._init_gateways()  # the gateways beside this one (alto_bus/control/broker_gateways.py)
        self._next_tick = 0.0
        self.ticks = 0

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        poller = self._poller = zmq.Poller()
        for sock in (self.control, *self.gateway_io.sockets):
            poller.register(sock, zmq.POLLIN)
        log.info("broker up: control %s gateway %s results %s",
                 self.addresses["control"], self.addresses["gateway"], self.addresses["results"])
        try:
            while not self.stopping:
                now = time.monotonic()
                timeout = max(0.0, self._next_wake(now) - now)
                events = dict(poller.poll(timeout * 1000))
                self.gateway_io.on_ready(events)
                if self.control in events:
                    drain_routed(self.control, self._on_control, self.bad, "control")
                now = time.monotonic()
                if self._table_due and now >= self._publish_at():  # a burst of joins: one epoch
                    self._publish_table()
                if now >= self._next_tick:
                    self._tick(now)
                self._end_turn(now)
        finally:
            self._shutdown_workers()

    def _next_wake(self, now: float) -> float:
        wake = self._next_tick
        if self._table_due:
            wake = min(wake, self._publish_at())
        deadline = self.gateway.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        retry = self.gateway_io.next_wake()  # a client's backlog, retried with a growing pause
        if retry is not None:
            wake = min(wake, retry)
        return wake

    # -- control plane -----------------------------------------------------------------

    def _send_control(self, identity: bytes, op: str, body: dict | None = None) -> None:
        self._send_frame(identity, wire.encode_control(op, body), op)

    def _send_frame(self, identity: bytes, frame: bytes, op: str) -> None:
        try:
            self.control.send_multipart([identity, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or its queue full
            log.debug("control %s to %r not sent: %s", op, identity, exc)

    def _on_control(self, identity: bytes, frame: bytes) -> None:
        self._take_control(frame, control_bodies.BODIES,
                           lambda op, raw, body, now: getattr(self, f"_op_{op}")(identity, body, now),
                           lambda reason: self._send_control(identity, "error", {"reason": reason}))

    def _op_hello(self, identity: bytes, body: control_bodies.Hello, now: float) -> None:
        stage = body.stage
        if stage not in self.stage_names:
            reason = f"no stage named {stage!r} in {self.topology.source} (stages: {', '.join(self.stage_names)})"
            log.warning("refused a worker: %s", reason)
            self._send_control(identity, "reject", {"reason": reason})
            return
        cfg = self.topology.stage(stage)
        consumers = []
        for name in cfg.consumers:
            pool = self.topology.pool(self.pool_of[name]) if name in self.pool_of else None
            consumers.append({"config": self.topology.stage(name).to_dict(), "pool": pool and {
                "name": pool.name, "policy": pool.policy, "policy_args": pool.policy_args or {}}})
        self._send_control(identity, "welcome", {
            "config": cfg.to_dict(),
            "consumers": consumers,
            "heartbeat_interval": self.cfg.heartbeat_interval,
            "liveness": self.cfg.heartbeat_liveness,
            "results": self.results_addresses(),
            "allowed": sorted(self.curve.allowed) if self.curve else [],  # whom an inbox lets in
        })

    def _op_ready(self, identity: bytes, body: control_bodies.Ready, now: float) -> None:
        stage = body.stage
        if stage not in self.stage_names:
            self._send_control(identity, "reject", {"reason": f"no stage named {stage!r}"})
            return
        pool = member = None
        if body.member is not None and self.pool_of.get(stage) == body.pool:
            pool, member = body.pool, body.member  # the table lists pool members
        inst = self.members.add(stage, identity, body.address, body.pid, body.host, now, pool=pool, member=member)
        log.info("stage %s: instance %d registered (pid %d on %s, inbox %s)",
                 stage, inst.iid, inst.pid, inst.host, inst.address)
        self._send_control(identity, "registered", {"iid": inst.iid})
        self._membership_changed()

    def _op_heartbeat(self, identity: bytes, body: control_bodies.Heartbeat, now: float) -> None:
        inst = self.members.heartbeat(identity, now, body.depth, body.held, body.stats, body.stalled, body.bad)
        if inst is None:
            self._send_control(identity, "reregister", {})
            return
        if inst.member is not None and body.prompt is not None:
            self.pools[inst.pool].observe(inst.member, inst.stage, body.prompt, inst.depth, now)
        for prompt, by_member in body.spills.items():
            pool = self.pool_of.get(prompt)
            if pool is not None:
                self.pools[pool].note_spills({prompt: by_member})
        link = self.entries.get(inst.iid) or self.ledger.retired_link(inst.iid)
        if link is not None:
            link.sent.rotate(keep_if=self.gateway.requests)  # a new interval of sent ids

    def _op_leave(self, identity: bytes, body: control_bodies.Empty, now: float) -> None:
        iid = self.members.by_identity.get(identity)
        if iid is not None and self.members.drain(iid):
            self._membership_changed()
            self._publish_table()  # "left" must follow the table without it
            log.info("instance %d is draining; epoch %d", iid, self.members.epoch)
        self._send_control(identity, "left", {})

    def _op_lost(self, identity: bytes, body: control_bodies.Lost, now: float) -> None:
        """A sender's request ids whose items went to an instance that died: failed (never a hang)
        unless the instance proves alive within ``liveness`` heartbeats (it was only slow: it
        registers again, and what it was sent completes)."""
        if identity not in self.members.by_identity:  # only a member's senders report losses
            self.bad("control", "lost from a non-member", f"lost report from unregistered peer {identity!r:.40}")
            return
        self.ledger.reported_lost(body.iid, body.rids, now, body.older)
        self._forward_ids("gw_lost", body)

    def _op_bye(self, identity: bytes, body: control_bodies.Bye, now: float) -> None:
        iid = self.members.by_identity.get(identity)
        if iid is None:
            return
        inst = self.members.remove(iid)
        log.info("instance %d (stage %s) left", iid, inst.stage if inst else "?")
        self._fail_held(inst, "left before finishing", retry=not body.drained)
        self._membership_changed()

    def _op_status(self, identity: bytes, body: control_bodies.Empty, now: float) -> None:
        self._send_control(identity, "status", self.status())

    def _op_shutdown(self, identity: bytes, body: control_bodies.Empty, now: float) -> None:
        log.info("shutdown requested")
        self._send_control(identity, "ok", {})
        self.stopping = True

    def status(self) -> dict[str, Any]:
        replicas = {name: self.topology.stage(name).replicas for name in self.stage_names}
        stages = self.members.status(replicas)
        for s in self.topology.stages:  # the graph (the dashboard draws it): kind, inputs, pool
            if s.name in stages:
                stages[s.name].update(kind=s.kind, input=s.input, pool=s.fields.get("pool"), retries=s.retries)
        return {
            "pools": {n: p.status() for n, p in self.pools.items()},
            "epoch": self.members.epoch,
            "ticks": self.ticks,
            "addresses": self.addresses,
            "stages": stages,
            "gateway": self.gateways_status(),
            "gateways": self.gateway_list(),
        }

    def _tick(self, now: float) -> None:
        late = now - self._next_tick
        if self._next_tick and late > self.cfg.heartbeat_interval:  # the broker could not run
            log.warning("broker: this tick is %.1f s late (the process was paused or starved)", late)
            self.members.excuse(late, now)
        self._next_tick = now + self.cfg.heartbeat_interval
        self.ticks += 1
        ended, self.gateway.ended = self.gateway.ended, []
        if ended:
            for link in [*self.entries.values(), *self.ledger.retired.values()]:
                link.sent.forget(ended)
        dead = self.members.dead(now)
        for inst in dead:  # every one of them before the new table closes their entry links
            silent = now - inst.last_seen
            log.error("stage %s: instance %d (pid %d on %s) is dead: no heartbeat for %.1f s",
                      inst.stage, inst.iid, inst.pid, inst.host, silent)
            self._fail_held(inst, f"died (no heartbeat for {silent:.1f} s)")
        if dead:
            self._membership_changed()
        if self._table_due:  # before the loads report, which names the epoch
            self._publish_table(views=False)  # the gateways' views go below, once
        self._settle_lost(now)
        loads = self.members.loads()
        self.loads.update(loads)
        common = {"epoch": self.members.epoch, "ended": ended,
                  "oldest": self._oldest_epoch()}
        placements = member_loads = None
        if self.pools:
            if now >= self._next_round:
                self._next_round = now + max(1.0, self.cfg.heartbeat_interval)
                self._schedule_pools()
            placements = {n: p.placement.to_dict() for n, p in self.pools.items() if p.placement}
            member_loads = {n: p.member_loads for n, p in self.pools.items()}
            self._update_entry_route({"placements": placements, "member_loads": member_loads})
        self._send_views(placements, member_loads)
        instances = self.members.instances
        routable = {s: self.members.routable(s) for s in self.load_reports.subsettable}  # as just published
        for iid, frame in self.load_reports.frames(common, loads, {i: inst.stage for i, inst in instances.items()},
                                                   placements, member_loads, routable):
            try:  # one encoding per stage (or per group of a subsetted one), with the loads that changed
                self.control.send_multipart([instances[iid].identity, frame], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("loads to %r not sent: %s", instances[iid].identity, exc)

    def _schedule_pools(self) -> None:
        for name, sched in self.pools.items():
            members = sorted({i.member for i in self.members.instances.values()
                              if i.pool == name and not i.draining and i.member is not None})
            sched.round(members)

    def _op_pool_info(self, identity: bytes, body: control_bodies.PoolInfo, now: float) -> None:
        name = body.pool
        if name not in self.pools:
            self._send_control(identity, "reject", {"reason": f"no pool named {name!r} in {self.topology.source}"})
            return
        pool = self.topology.pool(name)
        self._send_control(identity, "pool_info", {
            "pool": pool.to_dict(), "stages": {s: self.topology.stage(s).to_dict() for s in pool.stages}})

    def _broadcast_cancels(self) -> None:
        body = {"rids": self.gateway.cancelled}
        self.gateway.cancelled = []
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "cancel", body)

    def _shutdown_workers(self) -> None:
        for inst in self.members.instances.values():
            self._send_control(inst.identity, "shutdown", {})

    def close(self) -> None:
        for link in self.entries.values():
            link.sock.close(linger=0)
        self.control.close(linger=0)
        self.gateway_io.close()


def run_broker(topology: Topology, announce: Any = None, id_base: int = 0) -> None:
    """Run a broker until SIGTERM/SIGINT or a shutdown request; ``announce(addresses)`` once bound.
    ``id_base``: first epoch and instance id (a restarted broker starts above its predecessor's)."""
    serve_until_signal(Broker(topology, id_base=id_base), announce, "broker")
