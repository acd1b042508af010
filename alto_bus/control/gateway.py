"""The gateway's sockets around the request book (alto_bus.control.request_book).

  gateway ROUTER  <- client DEALERs: submit/cancel/bye; answers back by identity
  results PULL    <- the last stage's instances (and ERRORs from any stage)

Admission itself (which entry instance a request goes to) is the broker's: it knows the
members and owns the entry links, so ``submit`` is handed in. Answers to clients are
queued and sent once per turn of the loop, one frame per client. A client that does not
read them fills its pipe (CLIENT_SNDHWM frames), then a bounded backlog
(alto_bus.control.client_backlog), then it is cut off: its requests fail.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any
from collections.abc import Callable

import zmq

from alto_bus.control.client_backlog import ClientBacklogs
from alto_bus.control.request_book import ClientOut, Gateway
from alto_bus.control.socket_drain import BadFrames, drain, drain_routed
from alto_bus.deploy.topology import BrokerConfig
from alto_bus.net.curve import Curve
from alto_bus.net.sockets import advertised, bound_address, make_socket
from alto_bus.protocol import wire
from alto_bus.protocol.messages import Cancel, Ping, Submit
from alto_bus.telemetry.request_spans import request_spans

log = logging.getLogger("alto.broker")

# Frames ZeroMQ queues for one client before a send to it would block (then the backlog
# takes over), and about the most bytes in one frame: together they bound what a client
# that stops reading holds in the broker's pipe (128 x 64 KiB = 8 MiB).
CLIENT_SNDHWM = 128
CLIENT_FRAME_BYTES = 64 * 1024
FINAL_ANSWERS = (wire.RESULT, wire.FAILED)

OnSubmit = Callable[[bytes, Submit, float, list[ClientOut]], None]  # (client, SUBMIT message, now, out)


def client_frames(msgs: list[list]) -> list[tuple[bytes, list[list]]]:
    """The frames that carry ``msgs`` to one client, each about CLIENT_FRAME_BYTES at most
    (one message larger than that still goes whole)."""
    frame = wire.encode_client_frame(msgs)
    if len(frame) <= CLIENT_FRAME_BYTES or len(msgs) == 1:
        return [(frame, msgs)]
    step = -(-len(msgs) // -(-len(frame) // CLIENT_FRAME_BYTES))  # ceil(n / frames needed)
    return [(wire.encode_client_frame(msgs[i:i + step]), msgs[i:i + step]) for i in range(0, len(msgs), step)]


class GatewaySockets:
    """The clients' ROUTER and the results PULL, feeding one request book."""

    def __init__(self, ctx: zmq.Context, cfg: BrokerConfig, curve: Curve | None, book: Gateway,
                 submit: OnSubmit, bad: BadFrames) -> None:
        self.book = book
        self.submit = submit
        self.bad = bad
        self.clients = make_socket(ctx, zmq.ROUTER, bind=cfg.gateway, hwm=200_000,
                                   options={zmq.ROUTER_MANDATORY: 1, zmq.SNDHWM: CLIENT_SNDHWM},
                                   curve=curve and curve.server("gateway"))
        self.results = make_socket(ctx, zmq.PULL, bind=cfg.results, hwm=10_000,
                                   curve=curve and curve.server("gateway results"))
        self.addresses = {"gateway": advertised(bound_address(self.clients), cfg.advertise),
                          "results": advertised(bound_address(self.results), cfg.advertise)}
        self.pending: dict[bytes, list[list]] = {}  # client identity -> messages of this turn
        self.backlog = ClientBacklogs(cfg.client_backlog_bytes, cfg.client_backlog_answers)
        self.gone: set[bytes] = set()  # clients found gone during this flush
        # Names this run of the gateway in every PONG: a client that sees it change knows
        # the broker restarted and its requests in flight are lost (it fails them at once).
        self.boot = os.urandom(8).hex()
        self.spans = request_spans(book)  # a span per request (None: tracing is off)

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
                if self.backlog.is_cut(identity):
                    self._refuse(identity, msg.cid, out)
                else:
                    self.submit(identity, msg, now, out)
            elif kind is Cancel:
                self.book.cancel(identity, msg.cid, out)
            elif kind is Ping:
                if not self.backlog.is_cut(identity) or self.backlog.has_room(identity):
                    out.append((identity, [wire.PONG, self.boot]))
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
        if self.spans is not None:
            self.spans.answered(out)
        for identity, msg in out:
            self.pending.setdefault(identity, []).append(msg)

    def flush(self, now: float) -> None:
        """Send this turn's answers, one frame per client; a client whose pipe is full
        gets them later, from its backlog (in order, behind what is already there)."""
        pending, self.pending = self.pending, {}
        backlog = self.backlog
        for identity, all_msgs in pending.items():
            chunks = client_frames(all_msgs)
            for i, (frame, msgs) in enumerate(chunks):
                if not backlog.holding(identity) and self._send(identity, frame):
                    continue
                if identity in self.gone:
                    break
                finals = [m[1] for m in msgs if m[0] in FINAL_ANSWERS]
                if backlog.hold(identity, frame, finals, len(msgs), now):
                    self._cut_off(identity, now, chunks[i + 1:])  # the rest of this turn goes too
                    break
        for identity in backlog.due(now):
            while (frame := backlog.next_frame(identity)) is not None:
                if not self._send(identity, frame):
                    if identity not in self.gone:
                        backlog.blocked(identity, now)
                    break
                backlog.sent(identity)
        self.gone.clear()

    def _send(self, identity: bytes, frame: bytes) -> bool:
        """True if the frame went into the client's pipe; False if the pipe is full, or
        the client is gone (then it is forgotten, and noted in ``gone``)."""
        try:
            self.clients.send_multipart([identity, frame], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError:
            dropped = self.book.drop_client(identity)
            self.backlog.forget(identity)
            self.gone.add(identity)
            log.info("client %r is gone; dropped its %d request(s)", identity, len(dropped))
            return False

    def _cut_off(self, identity: bytes, now: float, unsent: list[tuple[bytes, list[list]]]) -> None:
        """The client went over its backlog's caps: drop what it did not read (and the
        ``unsent`` frames of this turn), fail its requests; it gets one small FAILED per
        request instead."""
        finals, answers, size = self.backlog.cut(identity, unsent=[(len(f), len(m)) for f, m in unsent])
        finals += [m[1] for _, msgs in unsent for m in msgs if m[0] in FINAL_ANSWERS]
        why = self._not_reading()
        out: list[ClientOut] = []
        failed = self.book.fail_client(identity, "gateway", why, out)
        notices = [[wire.FAILED, cid, "gateway", why] for cid in finals] + [m for _, m in out]
        for frame, msgs in client_frames(notices) if notices else ():
            self.backlog.hold(identity, frame, [m[1] for m in msgs], len(msgs), now)
        log.warning("client %r does not read its answers: dropped %d answer(s) (%d bytes) waiting for it, "
                    "failed its %d request(s) in flight; its new requests are refused until it reads",
                    identity, answers, size, failed)

    def _not_reading(self) -> str:
        b = self.backlog
        return (f"the client is not reading its answers: over {b.max_bytes} bytes or {b.max_answers} "
                "answers waited for it at the gateway ([broker] client_backlog_bytes / "
                "client_backlog_answers); its requests were failed")

    def _refuse(self, identity: bytes, cid: int, out: list[ClientOut]) -> None:
        if self.backlog.may_refuse(identity):
            out.append((identity, [wire.FAILED, cid, "gateway", self._not_reading()]))
            self.book.stats.rejected += 1

    def next_wake(self) -> float | None:
        """When the backlog's next retry is due (None: nothing held)."""
        return self.backlog.next_retry()

    def status(self) -> dict[str, Any]:
        g = self.book.stats
        return {"in_flight": len(self.book.requests), "clients": len(self.book.by_client),
                "admitted": g.admitted, "completed": g.completed, "failed": g.failed,
                "rejected": g.rejected, "late_messages": g.late_messages, "duplicates": g.duplicates,
                "bad_frames": self.bad.count, "bad_by_socket": self.bad.status(),
                "backlog": self.backlog.status()}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
