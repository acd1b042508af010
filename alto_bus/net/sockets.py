"""The one socket factory: type, bind or connect, high-water marks, linger, identity.

Every socket alto_bus opens goes through :func:`make_socket`, so that bounds (no
unbounded high-water mark on a data path), linger (a closing process never hangs on
unsent frames) and address handling (``tcp://host:0`` binds a free port whose real
number is read back) are decided in one place.
"""

from __future__ import annotations

import re
from typing import Any

import zmq

# Frames queued per peer before a sender blocks (or sees EAGAIN). Frames are batches,
# so this bounds memory at roughly HWM x max frame size per link.
DEFAULT_HWM = 1000

_TCP_ZERO_PORT = re.compile(r"^(tcp://.+):0$")


def normalise_bind(address: str) -> str:
    """ZeroMQ spells "any free port" ``*``; the topology may also say ``0``."""
    m = _TCP_ZERO_PORT.match(address)
    return f"{m.group(1)}:*" if m else address


def check_address(address: str, where: str) -> None:
    """Raise ValueError naming ``where`` unless ``address`` is ``tcp://host:port`` or ``ipc://path``."""
    if not isinstance(address, str):
        raise ValueError(f"{where}: address must be a string, got {address!r}")
    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return
    if re.match(r"^tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-*]+):(\d+|\*)$", address):
        return
    raise ValueError(f"{where}: {address!r} is not tcp://host:port or ipc://path")


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = 0,
    identity: bytes | None = None,
    immediate: bool = False,
    options: dict[int, Any] | None = None,
    curve: Any = None,
) -> zmq.Socket:
    """Make a socket and bind or connect it. ``ctx`` may be a ``zmq.asyncio.Context``.

    ``curve``: an :class:`alto_bus.net.curve.CurveServer` or ``CurveClient`` (authenticated,
    encrypted links); a client takes its server's public key off an address that carries one.
    """
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, linger_ms)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        if immediate:
            # Queue only to completed connections: a send to a dead peer fails at once
            # (EAGAIN) instead of piling up for a reconnect that may never come.
            sock.setsockopt(zmq.IMMEDIATE, 1)
        for opt, value in (options or {}).items():
            sock.setsockopt(opt, value)
        if curve is not None:
            address = curve.apply(sock, connect if connect is not None else bind)
            if connect is not None:
                connect = address
        if bind is not None:
            sock.bind(normalise_bind(bind))
        if connect is not None:
            sock.connect(connect)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


def bound_address(sock: zmq.Socket) -> str:
    """The address a bound socket really listens on (the port ZeroMQ picked for ``:0``)."""
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else endpoint


def advertised(address: str, host: str | None) -> str:
    """The address peers should dial: a wildcard bind host is replaced by ``host``."""
    if not address.startswith("tcp://"):
        return address
    hostport = address[len("tcp://") :]
    bind_host, _, port = hostport.rpartition(":")
    if host is None:
        if bind_host in ("0.0.0.0", "*", "[::]", "::"):
            raise ValueError(f"{address} binds every interface; give an advertised address for peers")
        return address
    return f"tcp://{host}:{port}"
