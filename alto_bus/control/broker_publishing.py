"""What the broker publishes as membership changes: each instance's view of the routing
table (alto_bus.control.table_reports), and the gateway's entry links, which follow the
epoch (a mixin of alto_bus.control.broker.Broker, like broker_retries).

An epoch is published when the turn of the broker's loop that changed membership is done,
at most every ~50 ms per thousand instances while they join (a death or a drain goes out
at once: the caller publishes). An entry link whose peer is not taking input parks its
frames and is watched for room to send, so the broker's loop never busy-waits on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container

import zmq

from alto_bus.net.sockets import make_socket
from alto_bus.protocol import control_bodies, wire
from alto_bus.routing.sent_ids import SentIds

log = logging.getLogger("alto.broker")

# Frames parked on an entry link before the gateway refuses new requests for it.
ENTRY_BACKLOG_FRAMES = 64


class EntryLink:
    """The gateway's PUSH to one entry-stage instance, with its coalescing batch."""

    def __init__(self, sock: zmq.Socket, stage: str) -> None:
        self.sock = sock
        self.batch = wire.FrameBuilder(stage)
        self.backlog: list[bytes] = []
        # Requests sent there: since its last heartbeat, and in the interval before (that
        # heartbeat may predate them); then "older" (see alto_bus.routing.sent_ids).
        self.sent = SentIds(window=2)


class BrokerPublishing:
    """Needs the broker's members, gateway, ledger, topology, sockets and control sends."""

    def _init_publishing(self) -> None:
        self.entries: dict[int, EntryLink] = {}
        self._table_due = False                    # membership changed: an epoch to publish
        self._published_at = 0.0
        self._poller: zmq.Poller | None = None     # serve()'s
        self._pollout: set[zmq.Socket] = set()     # entry links it watches for room to send

    def _membership_changed(self) -> None:
        self._table_due = True  # published when this turn of the loop is done

    def _publish_table(self, views: bool = True) -> None:
        """The new epoch's table: each instance gets its stage's view (whole, or the changes
        since the view it had); the gateway's entry links follow it. ``views=False``: the
        caller (a tick) sends the other gateways their view right after, with the loads."""
        self._table_due = False
        self._published_at = time.monotonic()
        epoch = self.members.epoch
        table = self.members.published(self._oldest_epoch())
        table["results"] = self.results_addresses()
        instances = self.members.instances
        for iid, frame in self.table_reports.frames(table, {i: inst.stage for i, inst in instances.items()}):
            self._send_frame(instances[iid].identity, frame, "table")
        log.debug("epoch %d published: %d bytes", epoch, self.table_reports.bytes_last)
        self._sync_entries()
        if views:
            self._send_views()  # the gateways beside this one follow it too

    def _publish_at(self) -> float:
        """When registrations may cut the next epoch: every epoch sends each instance its
        view, so while thousands join, an epoch gathers those of ~50 ms per thousand."""
        gap = min(self.cfg.heartbeat_interval, 0.05 * len(self.members.instances) / 1000)
        return self._published_at + gap

    def _op_resync(self, identity: bytes, body: control_bodies.Empty, now: float) -> None:
        """A worker missed a table delta or a loads report: the whole of both again."""
        inst = self.members.instances.get(self.members.by_identity.get(identity, -1))
        if inst is None:
            self._send_control(identity, "reregister", {})
            return
        if self._table_due:
            self._publish_table()
        self.load_reports.resync(inst.iid)
        frame = self.table_reports.resync(inst.iid, inst.stage)
        if frame is not None:
            self._send_frame(identity, frame, "table")

    def _sync_entries(self) -> None:
        entry = self.topology.entry.name
        want = dict(self.members.table["stages"].get(entry, []))
        for iid in list(self.entries):
            if iid not in want:
                link = self.entries.pop(iid)
                if link.sock in self._pollout:
                    self._poller.unregister(link.sock)
                    self._pollout.discard(link.sock)
                link.sock.close(linger=0)
                if iid in self._member_ids():
                    self.ledger.retired_from_routing(iid, link)
        self.ledger.left_membership(self._member_ids())
        for iid, address in want.items():
            if iid not in self.entries:
                sock = make_socket(self.ctx, zmq.PUSH, connect=address, immediate=True,
                                   curve=self.curve and self.curve.to_peer(f"gateway to {entry} instance {iid}"))
                self.entries[iid] = EntryLink(sock, entry)

    def _member_ids(self) -> Container[int]:
        return self.members.instances

    def _send_entry(self, link: EntryLink) -> None:
        if len(link.batch):
            link.backlog.append(link.batch.take())
        while link.backlog:
            try:
                link.sock.send(link.backlog[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.backlog.pop(0)

    def _watch_entries(self) -> None:
        """Entry links with frames parked wake the loop once they can send (no busy wake)."""
        want = {link.sock for link in self.entries.values() if link.backlog}
        if want or self._pollout:
            for sock in self._pollout - want:
                self._poller.unregister(sock)
            for sock in want - self._pollout:
                self._poller.register(sock, zmq.POLLOUT)
            self._pollout = want

    def _flush_entries(self) -> None:
        for link in self.entries.values():
            if len(link.batch) or link.backlog:
                self._send_entry(link)
