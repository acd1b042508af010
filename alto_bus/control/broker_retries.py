"""The broker's part in ``retries`` (a mixin of alto_bus.control.broker.Broker).

When an instance of a stage with ``retries = N`` dies or leaves before finishing, its
requests are not failed while attempts remain (alto_bus.control.retry_book counts them):
once the routing table without it is out, the broker tells the instances that send to
that stage to send their kept items again ("resend"; alto_bus.runtime.resend), and the
gateway sends an entry stage's requests again itself. Each sender reports what it sent
again ("resent"), which counts an attempt for those requests; the departure that would be
attempt N + 1 fails them naming the stage, the instance and "after N retries".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from alto_bus.control.failure_ledger import Departure, Failure
from alto_bus.control.membership import Instance
from alto_bus.control.request_book import left_ms
from alto_bus.control.retry_book import RetryBook
from alto_bus.deploy.topology import Topology
from alto_bus.protocol import control_bodies
from alto_bus.protocol.duplicates import Duplicates
from alto_bus.protocol.messages import Data
from alto_bus.routing.route_table import choose_instance

log = logging.getLogger("alto.broker")


class BrokerRetries:
    """Needs the broker's members, gateway, ledger, entries, loads and control sends."""

    def _init_retries(self, topology: Topology) -> None:
        # Stages with retries: who sends to each (they keep copies), attempts per request.
        self.retry_book = RetryBook({s.name: s.retries for s in topology.stages})
        self.feeders = {name: {t.name for t in topology.stages if name in t.consumers}
                        for name in self.retry_book.limits}
        if self.retry_book.limits:
            self.gateway.duplicates = Duplicates()  # a re-run's repeats reach the gateway too

    def _op_resent(self, identity: bytes, body: control_bodies.Lost, now: float) -> None:
        """A sender sent its kept items for these requests again (their instance departed):
        each costs that request an attempt at the instance's stage, unless already counted."""
        if identity not in self.members.by_identity:
            self.bad("control", "resent from a non-member", f"resent report from unregistered peer {identity!r:.40}")
            return
        self._count_resent(body.iid, body.rids)
        self._forward_ids("gw_resent", body)

    def _count_resent(self, iid: int, rids: list[int]) -> None:
        rec = self.ledger.records.get(iid)
        if rec is None or rec.departure is None:
            return  # a departure long forgotten: nothing to count against
        requests = self.gateway.requests
        _, exhausted = self.retry_book.departed(iid, rec.departure.stage, [r for r in rids if r in requests])
        self._fail_exhausted(iid, rec.departure, exhausted)

    def _retry_departed(self, inst: Instance, departure: Departure, now: float, rids: Iterable[int]) -> None:
        """An instance of a stage with retries went: its requests are not failed but sent
        again (once the table without it is out, see _settle_lost), while attempts remain."""
        self.ledger.departed(inst.iid, departure, now)  # recorded: later reports name it
        requests = self.gateway.requests
        retry, exhausted = self.retry_book.departed(inst.iid, inst.stage, [r for r in rids if r in requests])
        self._fail_exhausted(inst.iid, departure, exhausted)
        self.retry_book.pending.append((inst.iid, inst.stage))
        log.log(logging.WARNING if retry or exhausted else logging.INFO,
                "%s; its senders send its items again (%d request(s) known now, %d out of retries)",
                departure.describe(inst.iid), len(retry), len(exhausted))

    def _fail_exhausted(self, iid: int, departure: Departure, rids: list[int]) -> None:
        if rids:
            n = self.retry_book.retries(departure.stage)
            message = f"{departure.describe(iid)}; failed after {n} {'retry' if n == 1 else 'retries'}"
            self._fail([Failure(rid, departure.stage, message, iid, "held") for rid in rids],
                       "failed %d request(s) out of retries; the last instance that had them: %d")

    def _send_resends(self) -> None:
        """Tell the senders to each departed instance's stage to send their kept items again."""
        if getattr(self, "_table_due", False):
            return  # the table without them goes out first: the resends must use it
        pending, self.retry_book.pending = self.retry_book.pending, []
        for iid, stage in pending:
            feeders = self.feeders.get(stage, ())
            for inst in self.members.instances.values():
                if inst.stage in feeders:
                    self._send_control(inst.identity, "resend", {"iid": iid})
            if stage == self.topology.entry.name:
                self._resend_entry(iid)

    def _resend_entry(self, iid: int) -> None:
        """The gateway's own resend: each request in flight it had sent to ``iid``."""
        entry = self.topology.entry
        ids = [i for i in self.members.routable(entry.name) if i in self.entries]
        waiting = [r for r in self.gateway.requests.values() if r.entry == iid and r.kept is not None]
        if waiting and not ids:  # no instance now: tried again next tick, until their deadlines
            self.retry_book.pending.append((iid, entry.name))
            return
        for req in waiting:
            new = choose_instance(ids, self.loads, self.rng, self.entry_route)
            self.loads.note_sent(new)
            link = self.entries[new]
            link.sent.add(req.rid)
            req.entry = new
            again = Data([req.rid], 0, req.kept, True, req.epoch, None, 0, left_ms(req.deadline, time.monotonic()))
            if link.batch.add(again) >= entry.batch_bytes:
                self._send_entry(link)
