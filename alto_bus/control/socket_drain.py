"""Reading what is ready on a broker socket without blocking, and counting malformed frames.

The broker's loop owns several sockets; each turn it takes at most ``limit`` messages from
each, so that one busy socket cannot starve the others (or the tick).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq


class BadFrames:
    """Malformed frames dropped (counted, logged sparingly: a flood must not flood the log)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.count = 0

    def __call__(self, what: str) -> None:
        self.count += 1
        if self.count <= 20 or self.count % 1000 == 0:
            self.log.warning("dropped a malformed frame (%d so far): %s", self.count, what)


def drain(sock: zmq.Socket, handle: Callable[[bytes], None], limit: int = 1000) -> None:
    """Hand each ready single-frame message to ``handle``."""
    for _ in range(limit):
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return
        handle(frame)


def drain_routed(sock: zmq.Socket, handle: Callable[[bytes, bytes], None], bad: BadFrames,
                 limit: int = 1000) -> None:
    """Hand each ready ROUTER message to ``handle(identity, frame)``."""
    for _ in range(limit):
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(parts) != 2:
            bad(f"{len(parts)}-part message on a ROUTER socket (expected identity + frame)")
            continue
        handle(parts[0], parts[1])
