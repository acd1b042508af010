"""The gateway's side of a broker process: admission, failing and retrying requests.

Shared by the broker (alto_bus.control.broker, gateway 0) and each gateway process
beside it (alto_bus.control.gateway_process, ``[broker] gateways > 1``): both admit
requests into the entry stage, and both settle what departed instances leave of their
own requests with a failure ledger. They differ in where the membership comes from (the
broker's own table; a mirror of the broker's view) and in what they tell others.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from alto_bus.control.broker_publishing import ENTRY_BACKLOG_FRAMES
from alto_bus.control.failure_ledger import Departure, Failure, FailureLedger
from alto_bus.control.membership import Instance
from alto_bus.control.request_book import ClientOut, Gateway, left_ms
from alto_bus.control.socket_drain import BadFrames
from alto_bus.deploy.topology import Topology
from alto_bus.net import curve as keys
from alto_bus.protocol import control_bodies, wire
from alto_bus.protocol.messages import Data, Submit
from alto_bus.routing.choice import LoadView
from alto_bus.routing.pool_route import PoolRoute
from alto_bus.routing.route_table import choose_instance
from alto_bus.scheduling import make_policy

log = logging.getLogger("alto.broker")


def serve_until_signal(server: Any, announce: Any, name: str) -> None:
    """Serve until SIGTERM/SIGINT (or the server stops itself); ``announce(addresses)`` once bound."""
    def stop(signum: int, frame: Any) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if announce is not None:
        announce(server.addresses)
    try:
        server.serve()
    finally:
        server.close()
        log.info("%s stopped (pid %d)", name, os.getpid())


class GatewaySide:
    """Needs ``members`` (a Membership or its mirror), ``gateway_io``, ``pools`` and the
    publishing and retries mixins' state; :meth:`_init_gateway_side` makes the rest."""

    def _init_gateway_side(self, topology: Topology, ctx: zmq.Context | None, index: int, role: str) -> None:
        self.topology = topology
        cfg = topology.broker
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.stage_names = [s.name for s in topology.stages]
        self.index = index  # gateway index: it admits the request ids rid % gateways == index
        self.gateway = Gateway(cfg.request_timeout, cfg.max_inflight, index, cfg.gateways)
        self.pool_of = {s: p.name for p in topology.pools for s in p.stages}
        self._init_publishing()  # entry links (alto_bus/control/broker_publishing.py)
        # An entry stage on a pool is routed by the pool's policy, like any other prompt
        # of the pool: else the placement would assume a load that goes elsewhere.
        entry = topology.entry
        self.entry_pool = self.pool_of.get(entry.name)
        self.entry_route: PoolRoute | None = None
        if self.entry_pool is not None:
            pool = topology.pool(self.entry_pool)
            self.entry_route = PoolRoute(entry.name, make_policy(pool.policy, **(pool.policy_args or {})))
        self.loads = LoadView()
        self.rng = random.Random(0x5EED + index)
        self.host = socket.gethostname()
        self.bad = BadFrames(log)
        self.stopping = False
        self.curve = keys.topology_curve(topology, role)  # [security]: CURVE on every socket; None: plain
        # Instances retired, suspected or gone, and what each leaves to settle.
        self.ledger = FailureLedger(cfg.heartbeat_interval * cfg.heartbeat_liveness)
        self._init_retries(topology)  # stages with retries (alto_bus/control/broker_retries.py)

    def _take_control(self, frame: bytes, bodies: dict[str, type[control_bodies.Body]],
                      handle: Callable[[str, dict, Any, float], None],
                      answer: Callable[[str], None] | None = None) -> None:
        """One control frame decoded, checked against ``bodies`` and handed to ``handle``.
        A bad one is counted (and, when it named an op, the sender is told by ``answer``);
        a handler's failure is a bug of ours: that message is lost, the process serves on."""
        try:
            op, raw, body = control_bodies.decode_checked(frame, bodies)
        except control_bodies.BodyError as exc:
            self.bad("control", exc.reason, str(exc))
            if answer is not None and exc.op is not None:
                answer(str(exc) if exc.reason == "unknown op" else f"bad {exc.op!r} message: {exc}")
            return
        try:
            handle(op, raw, body, time.monotonic())
        except Exception as exc:
            log.exception("gateway %d: control op %s failed", self.index, op)
            self.bad("control", f"{op} failed", f"{op}: {type(exc).__name__}: {exc}")

    def _end_turn(self, now: float) -> None:
        """What each turn of the loop ends with: expired requests answered, entry frames and
        answers sent, cancels told to the workers."""
        self.gateway_io.expire(now)
        self._flush_entries()
        self._watch_entries()
        self.gateway_io.flush(now)
        if self.gateway.cancelled:
            self._broadcast_cancels()

    def _settle_lost(self, now: float) -> None:
        # Called each tick after any new table is out: the resends it asks for use that table.
        if self.retry_book.pending:
            self._send_resends()
        self.retry_book.prune(self.gateway.requests)
        if not self.ledger.records:
            return
        failures = self.ledger.settle(now, self.gateway.requests, self.members.by_identity, self._held)
        self._fail(failures, "failed %d request(s) whose items were on their way to instance %d")

    def _held(self) -> set[int]:
        """Every request id a live instance reported holding in its last heartbeat."""
        return {rid for inst in self.members.instances.values() for rid in inst.held}

    def _fail(self, failures: list[Failure], what: str) -> None:
        """Fail each request once with its ledger's message; one log line per instance."""
        out: list[ClientOut] = []
        counts: dict[int, int] = {}
        for f in failures:
            if self.gateway.fail(f.rid, f.stage, f.message, out):
                counts[f.iid] = counts.get(f.iid, 0) + 1
        for iid, n in counts.items():
            log.error(what, n, iid)
        self.gateway_io.queue(out)

    def _update_entry_route(self, body: dict) -> None:
        route = self.entry_route
        if route is None:
            return
        name = self.entry_pool
        route.update(body["placements"].get(name), body["member_loads"].get(name))
        route.members(self._entry_pool_members(), self.members.routable(self.topology.entry.name))
        spills = route.policy.drain_spills()
        if spills and name in self.pools:  # a gateway beside the broker reports none (yet)
            self.pools[name].note_spills(spills)

    def _entry_pool_members(self) -> dict[int, str]:
        return {i.iid: i.member for i in self.members.instances.values() if i.member is not None}

    def _fail_held(self, inst: Instance | None, why: str, retry: bool = True) -> None:
        """``inst`` died or left: fail what it held and what the gateway sent it lately."""
        if inst is None:
            return
        recent: Iterable[int] = ()
        older: Iterable[int] = ()
        link = self.entries.get(inst.iid) or self.ledger.retired_link(inst.iid)
        if link is not None:
            recent, older = link.sent.lost()
        departure = Departure(inst.stage, inst.pid, inst.host, inst.identity, why)
        self._departed_elsewhere(inst, why, retry)  # the other gateways' requests
        if retry and self.retry_book.retries(inst.stage):
            self._retry_departed(inst, departure, time.monotonic(), [*inst.held, *recent, *older])
        else:
            failures = self.ledger.departed(inst.iid, departure, time.monotonic(), inst.held, recent, older)
            self._fail(failures, "failed %d request(s) held by instance %d")
        if inst.pool in self.pools and not any(i.member == inst.member for i in self.members.instances.values()):
            self.pools[inst.pool].forget(inst.member)  # the member is gone: so are its figures

    def _submit(self, identity: bytes, msg: Submit, now: float, out: list[ClientOut]) -> None:
        cid, payload, stream, timeout = msg.cid, msg.payload, msg.stream, msg.timeout
        if not self.members.complete:
            missing = [n for n in self.stage_names if not self.members.count(n)]
            out.append((identity, [wire.FAILED, cid, "gateway",
                                   f"unavailable: stage(s) {missing} have no live instance"]))
            self.gateway.stats.rejected += 1
            return
        entry_ids = self.members.routable(self.topology.entry.name)
        if self._table_due and any(i not in self.entries for i in entry_ids):
            self._publish_table()  # a new entry instance: its link comes with its epoch
        # A few parked frames are a link still connecting or a moment's backpressure (it is
        # flushed every loop); only a long backlog means the instance is not taking input.
        entries = self.entries  # an instance joins them when its epoch is published
        writable = [i for i in entry_ids if i in entries and len(entries[i].backlog) < ENTRY_BACKLOG_FRAMES]
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
        iid = choose_instance(writable, self.loads, self.rng, self.entry_route)
        self.loads.note_sent(iid)
        link = self.entries[iid]
        link.sent.add(rid)
        req = self.gateway.requests[rid]
        if self.retry_book.limits.get(self.topology.entry.name):  # kept to be sent again (retries)
            req.entry, req.kept = iid, payload
        spans = self.gateway_io.spans  # tracing: the request's span, its context on the first DATA
        trace = spans.start(identity, msg, rid, self.topology.entry.name, iid) if spans else None
        # Its time left travels with it: every worker frees what it holds past the deadline.
        first = Data([rid], 0, payload, True, self.members.epoch, trace, 0, left_ms(req.deadline, now))
        if link.batch.add(first) >= self.topology.entry.batch_bytes:
            self._send_entry(link)

