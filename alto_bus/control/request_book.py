"""The gateway's request book: admission, request ids, deadlines, result assembly.

No sockets: the broker process feeds it client requests and the messages that reach
the end of the pipeline, and sends what it returns. A request is complete by the same
ancestry counting an aggregate stage uses: its result is the request's own item when
that item reached the end whole, else the list of its leaves ordered by ancestry path
(dropped leaves leave no entry). It ends in exactly one RESULT or one FAILED.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Data, Drop, End, Message
from alto_bus.protocol.ancestry import AncestryError, GroupTracker
from alto_bus.protocol.chunks import PENDING, Chunks
from alto_bus.protocol.duplicates import Duplicates

ClientOut = tuple[bytes, list]  # (client identity, client-plane message)


def left_ms(deadline: float, now: float) -> int:
    """A request's time left, as its first messages carry it (protocol/messages.py)."""
    return max(0, int((deadline - now) * 1000))


@dataclass
class Request:
    rid: int
    client: bytes
    cid: int
    stream: bool
    deadline: float
    admitted: float
    epoch: int
    tracker: GroupTracker
    leaves: dict[tuple, Any] = field(default_factory=dict)
    partial: Chunks = field(default_factory=Chunks)  # leaves still streaming
    entry: int = 0       # the entry-stage instance it was sent to
    kept: Any = None     # an entry stage with retries: its input, sent again if that instance dies


@dataclass
class GatewayStats:
    admitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    late_messages: int = 0      # for requests already ended (failed, expired, cancelled)
    duplicates: int = 0         # repeats of what a retried stage had sent already, dropped


class Gateway:
    def __init__(self, request_timeout: float, max_inflight: int, index: int = 0, count: int = 1) -> None:
        self.request_timeout = request_timeout
        self.max_inflight = max_inflight
        self.requests: dict[int, Request] = {}
        self.by_client: dict[bytes, dict[int, int]] = {}  # identity -> cid -> rid
        self._deadlines: list[tuple[float, int]] = []
        # Unlikely to meet a previous run's ids. Gateway ``index`` of ``count`` admits the ids
        # ``rid % count == index``: the last stage sends each result to its own gateway.
        self._next_rid = (int(time.time() * 1000) << 16) // count * count + index
        self._rid_step = count
        self.stats = GatewayStats()
        self.cancelled: list[int] = []  # requests that ended early: workers drop their work
        self.ended: list[int] = []      # requests that ended since the broker last said so (any way)
        # A topology with retries: repeats of a re-run's output are dropped (duplicates.py).
        self.duplicates: Duplicates | None = None

    # -- admission ---------------------------------------------------------------------

    def admit(self, client: bytes, cid: int, stream: bool, timeout: float | None, now: float,
              epoch: int = 0) -> int | str:
        """A new request's id, or the reason it is refused."""
        if len(self.requests) >= self.max_inflight:
            self.stats.rejected += 1
            return f"overloaded: {len(self.requests)} requests in flight (max_inflight {self.max_inflight})"
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            self.stats.rejected += 1
            return f"bad request: timeout must be a positive number of seconds, got {timeout!r}"
        cids = self.by_client.setdefault(client, {})
        if cid in cids:
            self.stats.rejected += 1
            return f"bad request: request id {cid} is already in flight for this client"
        rid = self._next_rid
        self._next_rid += self._rid_step
        deadline = now + (timeout or self.request_timeout)
        self.requests[rid] = Request(rid, client, cid, bool(stream), deadline, now, epoch,
                                     GroupTracker((rid,)))
        cids[cid] = rid
        heapq.heappush(self._deadlines, (deadline, rid))
        self.stats.admitted += 1
        return rid

    def unadmit(self, rid: int) -> None:
        """Forget a request that could not be sent to the pipeline after all."""
        req = self.requests.pop(rid, None)
        if req is not None:
            cids = self.by_client.get(req.client, {})
            cids.pop(req.cid, None)
            if not cids:
                self.by_client.pop(req.client, None)
            self.stats.admitted -= 1
            self.stats.rejected += 1

    # -- results -----------------------------------------------------------------------

    def on_message(self, msg: Message, out: list[ClientOut]) -> None:
        """One data-plane message (decoded, so its fields are checked) that reached the end
        of the pipeline."""
        path = msg.path
        req = self.requests.get(path[0])
        if req is None:
            self.stats.late_messages += 1
            return
        kind = type(msg)
        dup = self.duplicates
        if dup is not None and not dup.fresh(msg):
            self._repeat(req, msg, out)
            return
        try:
            if kind is Data:
                self._on_data(req, tuple(path), msg, out)
            elif kind is End:
                if req.tracker.end(tuple(path), msg.n):
                    self._complete(req, out)
            elif kind is Drop:
                if req.tracker.drop(tuple(path)):
                    self._complete(req, out)
            else:
                self._fail(req, msg.stage, msg.message, out)
        except AncestryError as exc:
            self._fail(req, "gateway", f"inconsistent ancestry: {exc}", out)

    def _repeat(self, req: Request, msg: Message, out: list[ClientOut]) -> None:
        """An exact repeat (a retried stage ran the item again): dropped, unless a whole
        item came back with another payload (a handler that is not deterministic)."""
        self.stats.duplicates += 1
        if type(msg) is Data and msg.final and msg.seq == 0:
            path = tuple(msg.path)
            if path in req.leaves and req.leaves[path] != msg.payload:
                self._fail(req, "gateway", f"inconsistent retry: item {list(path)} arrived again with another "
                                           "payload (a stage with retries must be deterministic)", out)

    def _on_data(self, req: Request, path: tuple, msg: Data, out: list[ClientOut]) -> None:
        payload, final = msg.payload, msg.final
        if req.stream:
            out.append((req.client, [wire.PARTIAL, req.cid, list(path[1:]), msg.seq, payload, final]))
        payload = req.partial.feed(path, payload, final)
        if payload is PENDING:
            return
        if path in req.leaves:
            raise AncestryError(f"item {list(path)} arrived twice")
        req.leaves[path] = payload
        if req.tracker.leaf(path):
            self._complete(req, out)

    def _complete(self, req: Request, out: list[ClientOut]) -> None:
        root = (req.rid,)
        if root in req.leaves:
            value = req.leaves[root]
        else:
            value = [req.leaves[p] for p in sorted(req.leaves)]
        self._forget(req)
        self.stats.completed += 1
        out.append((req.client, [wire.RESULT, req.cid, value]))

    def _fail(self, req: Request, stage: str, message: str, out: list[ClientOut]) -> None:
        self._forget(req)
        self.cancelled.append(req.rid)
        self.stats.failed += 1
        out.append((req.client, [wire.FAILED, req.cid, stage, message]))

    def _forget(self, req: Request) -> None:
        del self.requests[req.rid]
        if self.duplicates is not None:
            self.duplicates.forget((req.rid,))
        self.ended.append(req.rid)
        cids = self.by_client.get(req.client)
        if cids is not None:
            cids.pop(req.cid, None)
            if not cids:  # a client with nothing in flight costs nothing
                del self.by_client[req.client]

    # -- failures from outside the data plane ------------------------------------------

    def fail(self, rid: int, stage: str, message: str, out: list[ClientOut]) -> bool:
        req = self.requests.get(rid)
        if req is None:
            return False
        self._fail(req, stage, message, out)
        return True

    def cancel(self, client: bytes, cid: int, out: list[ClientOut]) -> int | None:
        rid = self.by_client.get(client, {}).get(cid)
        if rid is not None:
            self.fail(rid, "client", "cancelled by the client", out)
        return rid

    def fail_client(self, client: bytes, stage: str, message: str, out: list[ClientOut]) -> int:
        """Fail every request of ``client`` in flight (one FAILED each); how many."""
        rids = list(self.by_client.get(client, {}).values())
        for rid in rids:
            self.fail(rid, stage, message, out)
        return len(rids)

    def drop_client(self, client: bytes) -> list[int]:
        """The client went away: forget its requests (their late results are discarded)."""
        cids = self.by_client.pop(client, {})
        if self.duplicates is not None:
            self.duplicates.forget(cids.values())
        for rid in cids.values():
            if self.requests.pop(rid, None) is not None:
                self.stats.failed += 1
                self.cancelled.append(rid)
                self.ended.append(rid)
        return list(cids.values())

    def expire(self, now: float, out: list[ClientOut]) -> list[int]:
        """Fail every request whose deadline passed; returns their ids."""
        expired = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            req = self.requests.get(rid)
            if req is None:
                continue
            waiting = "; ".join(
                f"{p[1:] or 'the request'}: {'no END yet' if n < 0 else f'{got} of {n} children'}"
                for p, n, got in req.tracker.waiting_on()
            )
            self._fail(req, "gateway",
                       f"deadline exceeded: no complete result after {now - req.admitted:.1f} s "
                       f"(timeout {req.deadline - req.admitted:.1f} s; still waiting on {waiting})", out)
            expired.append(rid)
        return expired

    def oldest_epoch(self, current: int) -> int:
        """The oldest routing epoch a request in flight still uses (O(1), every tick).

        Requests are admitted in order into an insertion-ordered dict and epochs only
        grow, so the oldest request in flight has the lowest epoch."""
        for req in self.requests.values():
            return req.epoch
        return current

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][1] not in self.requests:
            heapq.heappop(heap)
        return heap[0][0] if heap else None
