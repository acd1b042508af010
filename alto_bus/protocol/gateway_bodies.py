"""Control bodies between the broker and the gateways beside it (``[broker] gateways > 1``).

A gateway process connects to the broker's control socket like a worker. It says
``gw_hello`` (its index and addresses), reports each tick (``gw_report``: requests that
ended, the oldest epoch it still uses, its figures) and at once when requests end early
(``gw_cancel``: workers drop their work). The broker sends it a ``gw_view`` each tick and
with each new epoch (alto_bus.control.membership_mirror), and forwards what a gateway
needs to fail or retry its own requests: ``gw_departed`` (an instance died or left, with
the request ids of this gateway it held), ``gw_lost`` and ``gw_resent`` (a sender's
reports). Every body is checked field by field before use, as the workers' are.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec

from alto_bus.protocol.control_bodies import BODIES, MAX_IDS, Body, Name, convert_to
from alto_bus.protocol.messages import Count

# The environment variable alto launch sets for the broker and its gateways: a secret a
# gateway's hello must carry (no other peer of the control socket can pose as a gateway).
TOKEN_ENV = "ALTO_GATEWAY_TOKEN"

Ids = Annotated[list[Count], msgspec.Meta(max_length=MAX_IDS)]
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Hex = Annotated[str, msgspec.Meta(max_length=512, pattern="^([0-9a-f]{2})*$")]


# -- from a gateway to the broker ------------------------------------------------------

class GatewayHello(Body):
    index: Annotated[int, msgspec.Meta(ge=1, le=63)]
    gateway: Address
    results: Address
    pid: Count = 0
    host: str = "?"
    token: Annotated[str, msgspec.Meta(max_length=128)] = ""  # the launch's secret (ALTO_GATEWAY_TOKEN)


class GatewayReport(Body):
    ended: Ids = []
    oldest: Union[Count, None] = None   # the oldest epoch it routes by: its oldest request's, or its view's
    status: dict[Annotated[str, msgspec.Meta(max_length=64)], Any] = {}


class GatewayCancel(Body):
    rids: Ids


# -- from the broker to a gateway ------------------------------------------------------

class View(Body):
    epoch: Count
    missing: list[Name] = []                           # stages with no live instance
    entry: list[tuple[Count, Address]] = []            # routable entry-stage instances
    entry_members: Ids = []                            # entry-stage members, draining ones too
    pool_members: dict[Count, Name] = {}               # entry on a pool: instance -> member
    loads: dict[Count, Count] = {}                     # the entry stage's instances
    placements: Union[dict[str, Any], None] = None     # the entry pool's placement
    member_loads: Union[dict[str, Any], None] = None
    returned: list[Hex] = []                           # departed identities that registered again
    held: Ids = []                                     # this gateway's requests live instances hold


class Departed(Body):
    iid: Count
    stage: Name
    pid: Count = 0
    host: str = "?"
    identity: Hex = ""
    why: str = "departed"
    retry: bool = True
    held: Ids = []


class Lost(Body):
    iid: Count
    rids: Ids
    older: Ids = []


class Welcome(Body):
    index: Count
    heartbeat_interval: Annotated[float, msgspec.Meta(gt=0)]
    liveness: Annotated[int, msgspec.Meta(ge=1)]


# What the broker takes from a gateway goes with the workers' ops (control_bodies.BODIES).
BODIES.update({"gw_hello": GatewayHello, "gw_report": GatewayReport, "gw_cancel": GatewayCancel})

TO_GATEWAY: dict[str, type[Body]] = {
    "gw_welcome": Welcome, "gw_view": View, "gw_departed": Departed, "gw_lost": Lost, "gw_resent": Lost,
    "reregister": Body, "shutdown": Body, "reject": Body, "error": Body,
}


def convert(op: str, body: dict) -> Body:
    """``body`` as the record of ``op`` (a message to a gateway); BodyError names the field."""
    return convert_to(TO_GATEWAY, op, body)
