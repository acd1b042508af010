"""Reading what is ready on a broker socket without blocking.

The broker's loop owns several sockets; each turn it takes at most ``limit`` messages from
each, so that one busy socket cannot starve the others (or the tick).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from alto_bus.protocol.bad_frames import BadFrames


def drain(sock: zmq.Socket, handle: Callable[[bytes], None], limit: int = 1000) -> None:
    """Hand each ready single-frame message to ``handle``."""
    for _ in range(limit):
        try:
            frame = sock.recv(zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return
        handle(frame)


def drain_routed(sock: zmq.Socket, handle: Callable[[bytes, bytes], None], bad: BadFrames,
                 socket: str, limit: int = 1000) -> None:
    """Hand each ready ROUTER message to ``handle(identity, frame)``."""
    for _ in range(limit):
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(parts) != 2:
            bad(socket, "multipart", f"{len(parts)}-part message (expected identity + frame)")
            continue
        handle(parts[0], parts[1])
