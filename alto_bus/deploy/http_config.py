"""The topology's optional ``[http]`` table: where ``alto launch`` serves the HTTP front door.

    [http]
    listen = "127.0.0.1:0"   # HOST:PORT; port 0 picks a free one (printed as "http http://...")
    timeout = 30.0           # deadline of a request that gives none, in seconds
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from alto_bus.deploy.topology import Topology, TopologyError, _fields

HTTP_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), "127.0.0.1:0"),
    "timeout": ((int, float), 30.0),
}


@dataclass(frozen=True)
class HttpConfig:
    listen: str
    timeout: float


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) -> (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8000; port 0 picks a free one)")
    return host, int(port)


def with_http(topo: Topology, raw: dict[str, Any]) -> Topology:
    """Validate ``[http]`` (absent: no HTTP door unless ``alto launch --http`` asks for one)."""
    if "http" not in raw:
        return topo
    where = f"{topo.source}: [http]"
    values = _fields(raw["http"], HTTP_FIELDS, where)
    try:
        parse_listen(values["listen"])
    except ValueError as exc:
        raise TopologyError(f"{where} field 'listen': {exc}") from None
    if values["timeout"] <= 0:
        raise TopologyError(f"{where} field 'timeout' must be > 0, got {values['timeout']}")
    return dataclasses.replace(topo, http=HttpConfig(listen=values["listen"], timeout=float(values["timeout"])))
