"""A gateway beside the broker (``[broker] gateways = N``, gateway 1 .. N-1): clients'
requests in, their results out, in a process of its own.

It does what the broker's own gateway does (alto_bus.control.gateway_side): admits the
request ids ``rid % N == index``, sends them to the entry stage's instances over its own
links, assembles their results from its own results inbox, and fails or retries its own
requests when an instance departs. What it knows of the membership is the broker's view
(alto_bus.control.membership_mirror); the broker forwards departures and senders'
reports (alto_bus.control.broker_gateways). It reports to the broker each tick; without
a view for ``liveness`` ticks it refuses new requests (its requests in flight go on: the
data plane does not need the broker) and says hello again until the broker answers.

Sockets (each owned by this loop alone):
  gateway ROUTER, results PULL: alto_bus.control.gateway (clients in, answers out)
  DEALER to the broker's control socket
  PUSH per entry-stage instance
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Container
from typing import Any

import zmq

from alto_bus.control.broker_publishing import BrokerPublishing
from alto_bus.control.broker_retries import BrokerRetries
from alto_bus.control.gateway import GatewaySockets
from alto_bus.control.gateway_side import GatewaySide, serve_until_signal
from alto_bus.control.membership import Instance
from alto_bus.control.membership_mirror import MembershipMirror
from alto_bus.control.request_book import ClientOut
from alto_bus.control.socket_drain import drain
from alto_bus.deploy.topology import Topology
from alto_bus.net.sockets import make_socket
from alto_bus.protocol import gateway_bodies, wire
from alto_bus.protocol.gateway_bodies import TOKEN_ENV
from alto_bus.protocol.messages import Submit

log = logging.getLogger("alto.gateway")


def gateway_address(address: str, index: int) -> str:
    """Where gateway ``index`` binds, from the broker's address of the same socket: port 0
    stays 0 (any free port); a fixed port p becomes p + 2 x index, so that the gateway and
    results ports of every gateway (p, p + 1 for the broker's) stay apart."""
    head, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0 or not address.startswith("tcp://"):
        return address
    return f"{head}:{int(port) + 2 * index}"


class GatewayProcess(GatewaySide, BrokerPublishing, BrokerRetries):
    def __init__(self, topology: Topology, control: str, index: int, *, ctx: zmq.Context | None = None,
                 rebind: dict[str, str] | None = None) -> None:
        cfg = topology.broker
        if not 1 <= index < cfg.gateways:
            raise ValueError(f"gateway index {index}: {topology.source} has gateways = {cfg.gateways} "
                             f"(the broker is gateway 0; the others are 1 .. {cfg.gateways - 1})")
        self._init_gateway_side(topology, ctx, index, "broker")
        self.control_address = control
        self.pools: dict[str, Any] = {}
        self.members = MembershipMirror(topology.entry.name, cfg.heartbeat_interval * cfg.heartbeat_liveness)
        own = rebind or {"gateway": gateway_address(cfg.gateway, index),
                         "results": gateway_address(cfg.results, index)}
        self.gateway_io = GatewaySockets(self.ctx, dataclasses.replace(cfg, **own), self.curve, self.gateway,
                                         self._submit, self.bad)
        self.addresses = dict(self.gateway_io.addresses)
        self.link = make_socket(self.ctx, zmq.DEALER, connect=control)
        self._next_tick = 0.0
        self._welcomed = False
        self._hello_at = float("-inf")

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> None:
        poller = self._poller = zmq.Poller()
        for sock in (self.link, *self.gateway_io.sockets):
            poller.register(sock, zmq.POLLIN)
        log.info("gateway %d up: gateway %s results %s, broker %s", self.index, self.addresses["gateway"],
                 self.addresses["results"], self.control_address)
        self._hello()
        while not self.stopping:
            now = time.monotonic()
            timeout = max(0.0, self._next_wake(now) - now)
            events = dict(poller.poll(timeout * 1000))
            self.gateway_io.on_ready(events)
            if self.link in events:
                drain(self.link, self._on_broker)
            now = time.monotonic()
            if now >= self._next_tick:
                self._tick(now)
            self._end_turn(now)

    def _next_wake(self, now: float) -> float:
        wake = self._next_tick
        deadline = self.gateway.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        retry = self.gateway_io.next_wake()
        return min(wake, retry) if retry is not None else wake

    def _tell(self, op: str, body: dict) -> None:
        try:
            self.link.send(wire.encode_control(op, body), zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the broker is not there (yet): said again next tick
            log.debug("gateway %d: %s to the broker not sent: %s", self.index, op, exc)

    def _hello(self) -> None:
        self._hello_at = time.monotonic()
        self._tell("gw_hello", {"index": self.index, "gateway": self.addresses["gateway"],
                                "results": self.addresses["results"], "pid": os.getpid(), "host": self.host,
                                "token": os.environ.get(TOKEN_ENV, "")})

    def _tick(self, now: float) -> None:
        self._next_tick = now + self.cfg.heartbeat_interval
        if not self.members.fresh(now):
            if self._welcomed:
                log.warning("gateway %d: no word from the broker at %s for %.1f s; refusing new requests",
                            self.index, self.control_address, now - self.members.received)
                self._welcomed = False
            if now - self._hello_at >= 2 * self.cfg.heartbeat_interval:  # unanswered: say it again
                self._hello()
        ended, self.gateway.ended = self.gateway.ended, []
        for link in [*self.entries.values(), *self.ledger.retired.values()]:
            if ended:
                link.sent.forget(ended)
            link.sent.rotate(keep_if=self.gateway.requests)  # an interval of sent ids per tick
        self._settle_lost(now)
        # The oldest epoch it may still route by: its oldest request's, or the view's it
        # admits new ones with (views only grow), so the key tables of both stay published.
        self._tell("gw_report", {"ended": ended, "oldest": self.gateway.oldest_epoch(self.members.epoch),
                                 "status": self.gateway_io.status()})

    # -- what the broker says ----------------------------------------------------------

    def _on_broker(self, frame: bytes) -> None:
        self._take_control(frame, gateway_bodies.TO_GATEWAY, self._on_op)

    def _on_op(self, op: str, raw: dict, body: Any, now: float) -> None:
        if op == "gw_view":
            if self.members.update(body, now):
                self._sync_entries()
            self.loads.update(body.loads)
            if self.entry_route is not None:
                self._update_entry_route({"placements": {self.entry_pool: body.placements},
                                          "member_loads": {self.entry_pool: body.member_loads}})
            self._welcomed = True
        elif op == "gw_departed":
            inst = Instance(body.iid, body.stage, bytes.fromhex(body.identity), "", body.pid, body.host, now,
                            held=list(body.held))
            self._fail_held(inst, body.why, retry=body.retry)
        elif op == "gw_lost":
            self.ledger.reported_lost(body.iid, body.rids, now, body.older)
        elif op == "gw_resent":
            self._count_resent(body.iid, body.rids)
        elif op == "reregister":
            self._hello()
        elif op == "shutdown":
            self.stopping = True
        elif op in ("reject", "error"):
            log.error("gateway %d: the broker says: %s", self.index, str(raw.get("reason"))[:500])
            if op == "reject":
                raise SystemExit(2)

    # -- how this gateway differs from the broker's own --------------------------------

    def _submit(self, identity: bytes, msg: Submit, now: float, out: list[ClientOut]) -> None:
        if not self.members.fresh(now):
            out.append((identity, [wire.FAILED, msg.cid, "gateway",
                                   f"unavailable: gateway {self.index} has no word from the broker at "
                                   f"{self.control_address} (it is starting, or the broker restarts)"]))
            self.gateway.stats.rejected += 1
            return
        super()._submit(identity, msg, now, out)

    def _held(self) -> set[int]:
        return self.members.held()

    def _entry_pool_members(self) -> dict[int, str]:
        view = self.members.view
        return dict(view.pool_members) if view is not None else {}

    def _member_ids(self) -> Container[int]:
        return self.members.member_ids

    def _departed_elsewhere(self, inst: Instance, why: str, retry: bool) -> None:
        pass  # the broker told every gateway

    def _send_control(self, identity: bytes, op: str, body: dict | None = None) -> None:
        pass  # no workers here: the broker tells them (resends included)

    def _broadcast_cancels(self) -> None:
        rids, self.gateway.cancelled = self.gateway.cancelled, []
        self._tell("gw_cancel", {"rids": rids})

    def close(self) -> None:
        for link in self.entries.values():
            link.sock.close(linger=0)
        self.link.close(linger=0)
        self.gateway_io.close()


def run_gateway(topology: Topology, control: str, index: int, announce: Any = None,
                rebind: dict[str, str] | None = None) -> None:
    """Run gateway ``index`` until SIGTERM/SIGINT; ``announce(addresses)`` once bound."""
    serve_until_signal(GatewayProcess(topology, control, index, rebind=rebind), announce, f"gateway {index}")
