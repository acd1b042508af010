"""The broker's part in ``[broker] gateways = N`` (a mixin of alto_bus.control.broker.Broker).

The broker is gateway 0; gateways 1 .. N-1 are processes of their own
(alto_bus.control.gateway_process) that connect to its control socket. Gateway ``g``
admits the request ids ``rid % N == g`` (alto_bus.control.request_book), and the last
stage sends each result to the gateway of its request (alto_bus.routing.route_table), so
no result passes through two gateways. The control plane stays here, one: the broker
sends each gateway a view of what it admits by (``gw_view``, every tick and every epoch)
and forwards what it needs to fail or retry its own requests (an instance's departure, a
sender's lost and resent reports, each cut to that gateway's ids). A gateway reports the
requests that ended (the workers' bookkeeping), its oldest epoch and its figures each
tick, and its cancels at once.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from alto_bus.control.membership import Instance
from alto_bus.protocol import control_bodies, gateway_bodies
from alto_bus.protocol.gateway_bodies import TOKEN_ENV

log = logging.getLogger("alto.broker")

# Figures of gateways that are summed into the broker's "gateway" status (the metrics'
# and the dashboard's totals).
SUMMED = ("in_flight", "clients", "admitted", "completed", "failed", "rejected", "late_messages",
          "duplicates", "bad_frames")


@dataclass
class GatewayPeer:
    index: int
    identity: bytes
    gateway: str
    results: str
    pid: int
    host: str
    last_seen: float
    oldest: int | None = None
    status: dict[str, Any] = field(default_factory=dict)


def own_ids(rids: Iterable[int], index: int, n: int) -> list[int]:
    """The request ids gateway ``index`` of ``n`` admitted."""
    return [r for r in rids if r % n == index]


class BrokerGateways:
    """Needs the broker's members, gateway, ledger, addresses, cfg and control sends."""

    def _init_gateways(self) -> None:
        self.gateway_count = self.cfg.gateways
        self.peers: dict[int, GatewayPeer] = {}  # index -> the gateway process, once it said hello
        # alto launch gives the broker and its gateways a secret: no other peer of the control
        # socket can pose as a gateway (and take its results). Unset: any hello is taken.
        self.gateway_token = os.environ.get(TOKEN_ENV, "")

    def results_addresses(self) -> str | list[str]:
        """What workers send results to: one address, or one per gateway ("" until it is up)."""
        if self.gateway_count == 1:
            return self.addresses["results"]
        return [self.addresses["results"], *(p.results if (p := self.peers.get(g)) else ""
                                             for g in range(1, self.gateway_count))]

    def _oldest_epoch(self) -> int:
        """The oldest epoch a request in flight at any gateway still uses. A gateway silent
        for ``heartbeat_liveness`` beats does not hold tables back: its requests are lost
        with it (one that comes back says hello, and counts again from then)."""
        epoch = self.members.epoch
        now = time.monotonic()
        silent_after = self.cfg.heartbeat_interval * self.cfg.heartbeat_liveness
        return min([self.gateway.oldest_epoch(epoch), *(p.oldest for p in self.peers.values()
                                                       if p.oldest is not None and now - p.last_seen <= silent_after)])

    # -- what the gateways say ---------------------------------------------------------

    def _op_gw_hello(self, identity: bytes, body: gateway_bodies.GatewayHello, now: float) -> None:
        if self.gateway_token and not hmac.compare_digest(body.token, self.gateway_token):
            self.bad("control", "gw_hello token", f"a gateway hello for index {body.index} without the launch's token")
            return
        if body.index >= self.gateway_count:
            self._send_control(identity, "reject", {"reason": f"gateway {body.index} of a topology with gateways = "
                                                              f"{self.gateway_count} ({self.topology.source})"})
            return
        old = self.peers.get(body.index)
        # Until its first report it may admit with the view sent now: that epoch's tables stay.
        self.peers[body.index] = GatewayPeer(body.index, identity, body.gateway, body.results, body.pid, body.host,
                                             now, oldest=self.members.epoch)
        if old is None or old.identity != identity:
            log.info("gateway %d %s (pid %d on %s, results %s)", body.index, "is back" if old else "is up",
                     body.pid, body.host, body.results)
        self._send_control(identity, "gw_welcome", {"index": body.index, "heartbeat_interval": self.cfg.heartbeat_interval,
                                                    "liveness": self.cfg.heartbeat_liveness})
        if old is None or old.results != body.results:
            self._membership_changed()  # the workers' tables name its results address
        self._send_views()

    def _peer(self, identity: bytes) -> GatewayPeer | None:
        for peer in self.peers.values():
            if peer.identity == identity:
                return peer
        self._send_control(identity, "reregister", {})  # a restarted broker: say hello again
        return None

    def _op_gw_report(self, identity: bytes, body: gateway_bodies.GatewayReport, now: float) -> None:
        peer = self._peer(identity)
        if peer is None:
            return
        peer.last_seen, peer.oldest, peer.status = now, body.oldest, body.status
        self.gateway.ended.extend(body.ended)  # the workers forget them with the next loads report

    def _op_gw_cancel(self, identity: bytes, body: gateway_bodies.GatewayCancel, now: float) -> None:
        if self._peer(identity) is not None:
            self.gateway.cancelled.extend(body.rids)  # broadcast to the workers this turn

    # -- what the broker tells them ----------------------------------------------------

    def _send_views(self, placements: dict | None = None, member_loads: dict | None = None) -> None:
        if not self.peers:
            return
        entry = self.topology.entry.name
        members = self.members
        routable = members.routable(entry)
        loads = members.loads()
        common = {
            "epoch": members.epoch,
            "missing": [n for n in self.stage_names if not members.count(n)],
            "entry": [[i, members.instances[i].address] for i in routable],
            "entry_members": [i.iid for i in members.instances.values() if i.stage == entry],
            "pool_members": {i: members.instances[i].member for i in routable if members.instances[i].member},
            "loads": {i: loads.get(i, 0) for i in routable},
            "returned": [rec.departure.identity.hex() for rec in self.ledger.records.values()
                         if rec.departure is not None and rec.departure.identity in members.by_identity],
        }
        if self.entry_pool is not None and placements is not None:
            common["placements"] = placements.get(self.entry_pool)
            common["member_loads"] = (member_loads or {}).get(self.entry_pool)
        held = self._held()
        for peer in self.peers.values():
            self._send_control(peer.identity, "gw_view", {**common, "held": own_ids(held, peer.index, self.gateway_count)})

    def _departed_elsewhere(self, inst: Instance, why: str, retry: bool) -> None:
        for peer in self.peers.values():
            self._send_control(peer.identity, "gw_departed", {
                "iid": inst.iid, "stage": inst.stage, "pid": inst.pid, "host": inst.host,
                "identity": inst.identity.hex(), "why": why, "retry": retry,
                "held": own_ids(inst.held, peer.index, self.gateway_count)})

    def _forward_ids(self, op: str, body: control_bodies.Lost) -> None:
        """A sender's lost or resent report, each gateway's part of it."""
        n = self.gateway_count
        for peer in self.peers.values():
            rids, older = own_ids(body.rids, peer.index, n), own_ids(body.older, peer.index, n)
            if rids or older:
                self._send_control(peer.identity, op, {"iid": body.iid, "rids": rids, "older": older})

    # -- status ------------------------------------------------------------------------

    def gateway_list(self) -> list[dict[str, Any]]:
        """Each gateway: its addresses, whether it reports, its figures."""
        now = time.monotonic()
        silent_after = self.cfg.heartbeat_interval * self.cfg.heartbeat_liveness
        out = [{"index": 0, "gateway": self.addresses["gateway"], "results": self.addresses["results"],
                "pid": None, "up": True, **self.gateway_io.status()}]
        for g in range(1, self.gateway_count):
            p = self.peers.get(g)
            if p is None:
                out.append({"index": g, "up": False})
            else:
                out.append({"index": g, "gateway": p.gateway, "results": p.results, "pid": p.pid, "host": p.host,
                            "up": now - p.last_seen <= silent_after, **p.status})
        return out

    def gateways_status(self) -> dict[str, Any]:
        """The gateway figures of ``alto status``: the broker's own, with every gateway's summed in."""
        total = self.gateway_io.status()
        for p in self.peers.values():
            for k in SUMMED:
                v = p.status.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
        return total
