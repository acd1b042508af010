"""The gateway's sockets around the request book (alto_bus.control.request_book).

  gateway ROUTER  <- client DEALERs: submit/cancel/bye; answers back by identity
  results PULL    <- the last stage's instances (and ERRORs from any stage)

Admission itself (which entry instance a request goes to) is the broker's: it knows the
members and owns the entry links, so ``submit`` is handed in. Answers to clients are
queued and sent once per turn of the loop, one frame per client.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from collections.abc import Callable

import zmq

from alto_bus.control.request_book import ClientOut, Gateway
from alto_bus.control.socket_drain import BadFrames, drain, drain_routed
from alto_bus.deploy.topology import BrokerConfig
from alto_bus.net.curve import Curve
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.protocol import wire
from alto_bus.protocol.messages import Cancel, Ping, Submit

log = logging.getLogger("alto.broker")

OnSubmit = Callable[[bytes, Submit, float, list[ClientOut]], None]  # (client, SUBMIT message, now, out)


class GatewaySockets:
    """The clients' ROUTER and the results PULL, feeding one request book."""

    def __init__(self, ctx: zmq.Context, cfg: BrokerConfig, curve: Curve | None, book: Gateway,
                 submit: OnSubmit, bad: BadFrames) -> None:
        self.book = book
        self.submit = submit
        self.bad = bad
        self.clients = make_socket(ctx, zmq.ROUTER, bind=cfg.gateway, hwm=200_000,
                                   options={zmq.ROUTER_MANDATORY: 1},
                                   curve=curve and curve.server("gateway"))
        self.results = make_socket(ctx, zmq.PULL, bind=cfg.results, hwm=10_000,
                                   curve=curve and curve.server("gateway results"))
        self.addresses = {"gateway": advertised(bound_address(self.clients), cfg.advertise),
                          "results": advertised(bound_address(self.results), cfg.advertise)}
        self.pending: dict[bytes, list[list]] = {}  # client identity -> messages not sent yet

    @property
    def sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        return self.clients, self.results

    def on_ready(self, events: dict[zmq.Socket, int]) -> None:
        """Read what the poll found ready: results first (they end requests, freeing room)."""
        if self.results in events:
            drain(self.results, self.on_results)
        if self.clients in events:
            drain_routed(self.clients, self.on_client, self.bad, "client")

    def on_client(self, identity: bytes, frame: bytes) -> None:
        now = time.monotonic()
        out: list[ClientOut] = []
        for msg in wire.client_messages(frame, self._bad_client):  # each field checked
            kind = type(msg)
            if kind is Submit:
                self.submit(identity, msg, now, out)
            elif kind is Cancel:
                self.book.cancel(identity, msg.cid, out)
            elif kind is Ping:
                out.append((identity, [wire.PONG]))
            else:
                self.book.drop_client(identity)
        self.queue(out)

    def _bad_client(self, exc: wire.WireError) -> None:
        self.bad("client", exc.reason, str(exc))

    def _bad_result(self, exc: wire.WireError) -> None:
        self.bad("results", exc.reason, str(exc))

    def on_results(self, frame: bytes) -> None:
        try:
            stage, parts = wire.split_frame(frame)
        except wire.WireError as exc:
            self._bad_result(exc)
            return
        if stage != wire.GATEWAY_STAGE:
            self.bad("results", "misaddressed", f"a frame for stage {stage!r} reached the gateway")
            return
        out: list[ClientOut] = []
        for msg in wire.messages(parts, self._bad_result):
            self.book.on_message(msg, out)
        self.queue(out)

    def expire(self, now: float) -> None:
        """Answer every request whose deadline passed (with the reason it is still open)."""
        out: list[ClientOut] = []
        self.book.expire(now, out)
        self.queue(out)

    def queue(self, out: list[ClientOut]) -> None:
        for identity, msg in out:
            self.pending.setdefault(identity, []).append(msg)

    def flush(self) -> None:
        """Send what is queued, one frame per client; a full queue keeps it for next turn."""
        pending = self.pending
        self.pending = {}
        for identity, msgs in pending.items():
            try:
                self.clients.send_multipart([identity, wire.encode_client_frame(msgs)], zmq.NOBLOCK)
            except zmq.Again:
                self.pending[identity] = msgs  # retried on the next turn of the loop
            except zmq.ZMQError:
                dropped = self.book.drop_client(identity)
                log.info("client %r is gone; dropped its %d request(s)", identity, len(dropped))

    def status(self) -> dict[str, Any]:
        g = self.book.stats
        return {"in_flight": len(self.book.requests), "clients": len(self.book.by_client),
                "admitted": g.admitted, "completed": g.completed, "failed": g.failed,
                "rejected": g.rejected, "late_messages": g.late_messages,
                "bad_frames": self.bad.count, "bad_by_socket": self.bad.status()}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
