"""A worker's control link to the broker: its own thread and its own DEALER socket.

Heartbeats must keep flowing while a handler computes, so the control plane never
shares a thread with the data plane. The link delivers every broker message to the
worker's event loop (``deliver`` is called from this thread and must be thread-safe),
and sends what the worker queues; a socketpair wakes its poll, so nothing polls with
sleeps.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from alto_bus.protocol import wire
from alto_bus.net.sockets import make_socket
from alto_bus.net.waker import Waker

log = logging.getLogger("alto.control")
# This many failed turns within the window and the link gives up (and the worker exits 1).
MAX_FAILED_TURNS, FAILURE_WINDOW = 20, 60.0


class ControlLink(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        broker: str,
        deliver: Callable[[str, dict], None],
        snapshot: Callable[[], dict[str, Any]],
        *,
        identity: bytes | None = None,
        broker_timeout: float | None = None,
        curve: Any = None,
    ) -> None:
        super().__init__(name="alto-control", daemon=True)
        self.curve = curve  # alto_bus.net.curve.CurveClient: an authenticated link to the broker
        self.ctx = ctx
        self.broker = broker
        self.deliver = deliver
        self.snapshot = snapshot
        self.identity = identity or f"w-{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}".encode()
        self.broker_timeout = broker_timeout
        self.heartbeat_interval: float | None = None   # set once registered
        self.ready_body: dict | None = None            # re-sent if the broker forgets us
        self._outbox: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self._waker = Waker()
        self._halt = threading.Event()
        self.last_heard = time.monotonic()

    def send(self, op: str, body: dict | None = None) -> None:
        """Queue a message to the broker (any thread)."""
        self._outbox.put((op, body or {}))
        self._waker.wake()

    def stop(self) -> None:
        self._halt.set()
        self._waker.wake()

    def run(self) -> None:
        sock = make_socket(self.ctx, zmq.DEALER, connect=self.broker, identity=self.identity, hwm=10_000,
                           curve=self.curve)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        self._next_beat = time.monotonic()
        failures: collections.deque[float] = collections.deque(maxlen=MAX_FAILED_TURNS)
        try:
            while not self._halt.is_set():
                try:
                    self._turn(sock, poller)
                except Exception:
                    # Never die silently: a thread that stops sending heartbeats leaves a
                    # zombie the broker declares dead. Carry on; if turns keep failing, the
                    # worker is told and exits non-zero so that its supervisor sees it.
                    now = time.monotonic()
                    failures.append(now)
                    log.exception("control link: a turn failed (%d in the last %g s)", len(failures),
                                  FAILURE_WINDOW)
                    if len(failures) == MAX_FAILED_TURNS and now - failures[0] < FAILURE_WINDOW:
                        self.deliver("control_failed", {"turns": len(failures)})
                        return
            self._send_queued(sock)  # a last "bye"
        finally:
            sock.close(linger=200)
            self._waker.close()

    def _turn(self, sock: zmq.Socket, poller: zmq.Poller) -> None:
        self._send_queued(sock)
        now = time.monotonic()
        if self.heartbeat_interval is not None and self.ready_body is not None and now >= self._next_beat:
            self._next_beat = now + self.heartbeat_interval
            self._heartbeat(sock)
        timeout = 0.25 if self.heartbeat_interval is None else max(0.0, self._next_beat - now)
        events = dict(poller.poll(timeout * 1000))
        if self._waker.fileno() in events:
            self._waker.clear()
        if sock in events:
            self._receive(sock)
        # Armed once registered: before that the broker owes us nothing (a stage may
        # take a minute to start its engine between "welcome" and "ready").
        if (self.broker_timeout is not None and self.ready_body is not None
                and time.monotonic() - self.last_heard > self.broker_timeout):
            self.deliver("broker_lost", {"silent": time.monotonic() - self.last_heard})
            self.last_heard = time.monotonic()

    def _send_queued(self, sock: zmq.Socket) -> None:
        while True:
            try:
                op, body = self._outbox.get_nowait()
            except queue.Empty:
                return
            if op == "ready":
                self.ready_body = body
                self.last_heard = time.monotonic()
            try:
                sock.send(wire.encode_control(op, body), zmq.NOBLOCK)
            except zmq.Again:
                log.warning("control message %s to the broker dropped: its queue is full", op)

    def _heartbeat(self, sock: zmq.Socket) -> None:
        try:
            sock.send(wire.encode_control("heartbeat", self.snapshot()), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the broker is not reading; it will notice the silence itself

    def _receive(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                op, body = wire.decode_control(frame)
            except wire.WireError as exc:
                log.warning("dropped a malformed control frame from the broker: %s", exc)
                continue
            if op == "welcome":
                self.heartbeat_interval = float(body.get("heartbeat_interval", 0.5))
            if op == "reregister" and self.ready_body is not None:
                log.warning("the broker does not know this worker (restarted?); registering again")
                sock.send(wire.encode_control("ready", self.ready_body), zmq.NOBLOCK)
                continue
            self.deliver(op, body)
