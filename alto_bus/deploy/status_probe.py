"""Ask a broker for its status over its control socket (supervisors, ``alto status``, tests)."""

from __future__ import annotations

import time
from typing import Any

import zmq

from alto_bus.net.sockets import make_socket
from alto_bus.protocol import wire


class StatusProbe:
    """Ask a broker for its status (used by the launcher and ``alto status``)."""

    def __init__(self, control: str, curve: Any = None) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = make_socket(self.ctx, zmq.DEALER, connect=control,
                                curve=curve.to_broker("status probe") if curve else None)

    def __enter__(self) -> StatusProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close(linger=0)

    def query(self, timeout: float) -> dict | None:
        self.sock.send(wire.encode_control("status"))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(left * 1000):
                return None
            op, body = wire.decode_control(self.sock.recv())
            if op == "status":
                return body
        return None

    def request(self, op: str, timeout: float) -> bool:
        self.sock.send(wire.encode_control(op))
        return bool(self.sock.poll(timeout * 1000))
