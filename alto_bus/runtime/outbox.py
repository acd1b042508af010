"""A worker's outboxes: one PUSH per destination, its coalescing batches, its parked frames.

What the stage emits for one destination is coalesced into one frame per stage name
(a batch), sent when asked to flush or when it reaches the size bound. A send that would
block parks the frame: the outbox is "blocked" until a sender task gets the backlog out,
and the worker stops reading its inbox meanwhile (backpressure). Each outbox to a stage
instance also remembers the request ids it sent there (:mod:`alto_bus.routing.sent_ids`).

The sockets are given to the outboxes (``connect``), so the logic runs on fakes in tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import zmq
import zmq.asyncio

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Message
from alto_bus.routing.route_table import GATEWAY
from alto_bus.routing.sent_ids import SentIds

log = logging.getLogger("alto.worker")

# Request ids an outbox remembers beyond its recent window (until the broker says they
# ended): a bound for when "ended" notices go missing. A request in flight stays in memory.
OLDER_MEMORY = 200_000

# Ids per "lost" control message: keeps control frames bounded.
LOST_CHUNK = 50_000

# Frames an outbox parks for a peer that is not taking input (each at most batch_bytes)
# before the peer counts as full: when every instance of a next stage is, the sender
# stops reading its inbox. Below it, only that peer's items wait.
PEER_PARK_FRAMES = 64
# ... and what one peer may have parked while its stage's other instances still take input.
PEER_PARK_MAX = 4 * PEER_PARK_FRAMES

Budget = Callable[[int], int | None]  # request id -> its time left in ms (None: unknown)

# pyzmq copies a frame smaller than this even when asked not to: asking for the copy
# skips its zero-copy checks on the hot path.
_ZERO_COPY_MIN = zmq.COPY_THRESHOLD
_NOBLOCK = int(zmq.NOBLOCK)


class Outbox:
    """One PUSH to one destination, its coalescing batches and its parked frames."""

    __slots__ = ("dest", "address", "asock", "sock", "batches", "backlog", "sender", "sent", "budget",
                 "pending", "_dirty")

    def __init__(self, dest: int, address: str, asock: Any, window: int,
                 budget: Budget | None = None, dirty: list[Outbox] | None = None) -> None:
        self.dest = dest
        self.address = address
        self.asock = asock  # asyncio socket: awaited sends of parked frames
        # Sync sends on the hot path, on the same socket (a fake in tests serves both).
        real = isinstance(asock, zmq.asyncio.Socket)
        self.sock = zmq.Socket.shadow(asock.underlying) if real else asock
        self.batches: dict[str, wire.FrameBuilder] = {}
        self.backlog: collections.deque[bytes] = collections.deque()
        self.sender: asyncio.Task | None = None
        self.sent = SentIds(window, OLDER_MEMORY)
        self.budget = budget  # a request's time left, stamped on its first message here
        self.pending = False  # something was added since the last seal
        self._dirty = dirty   # the outboxes to flush: this one joins it when it gets something

    def _note(self, msg: Message) -> None:
        """``msg``'s request was sent here (for lost reports); on its first message here this
        interval, the request's time left (its deadline travels)."""
        rid = msg.path[0]
        current = self.sent.recent[-1]
        if rid not in current:
            current.add(rid)
            if self.budget is not None:
                left = self.budget(rid)
                if left is not None:
                    msg.left_ms = left

    def add(self, msg: Message, stage: str) -> int:
        """Coalesce ``msg`` into the batch for ``stage``; returns that batch's size in bytes."""
        if self.dest > GATEWAY:  # a gateway does not die under its senders (nor takes lost reports)
            self._note(msg)
        if not self.pending:
            self.pending = True
            if self._dirty is not None:
                self._dirty.append(self)
        batch = self.batches.get(stage)
        if batch is None:
            batch = self.batches[stage] = wire.FrameBuilder(stage)
        return batch.add(msg)

    def lone_frame(self, msg: Message, stage: str | tuple[str, int]) -> bytes | None:
        """``msg`` in a frame of its own, noted as :meth:`add` notes it, when nothing here
        is to go before it (no batch, no parked frame); else None: batch it."""
        if self.pending or self.backlog:
            return None
        if self.dest > GATEWAY:
            self._note(msg)
        return wire.encode_frame(stage, [msg])

    def seal(self) -> None:
        """Every non-empty batch becomes a frame at the end of the backlog."""
        self.pending = False
        for batch in self.batches.values():
            if batch.nbytes:
                self.backlog.append(batch.take())

    def send_ready(self) -> int:
        """Send the backlog without blocking; returns the frames sent. What is left (the
        peer's queue is full) waits for :meth:`send_parked`."""
        backlog = self.backlog
        n = 0
        send = self.sock.send
        while backlog:
            frame = backlog[0]
            try:
                send(frame, _NOBLOCK, copy=len(frame) < _ZERO_COPY_MIN)
            except zmq.Again:
                break
            backlog.popleft()
            n += 1
        return n

    async def send_parked(self, on_frame: Callable[[], None]) -> None:
        """Wait for the peer to take each parked frame, in order."""
        while self.backlog:
            await self.asock.send(self.backlog[0], copy=False)
            self.backlog.popleft()
            on_frame()

    def unsent(self) -> tuple[int, set[int]]:
        """(frames not sent, the request ids in them): what is lost if the outbox goes."""
        frames = list(self.backlog) + [b.take() for b in self.batches.values() if len(b)]
        rids: set[int] = set()
        for frame in frames:
            try:
                _, msgs = wire.decode_frame(frame)  # our own frames: they decode
                rids.update(m.path[0] for m in msgs)
            except wire.WireError:
                continue
        return len(frames), rids

    def lost_reports(self, unsent: set[int]) -> Iterator[dict[str, Any]]:
        """The destination died: "lost" control bodies naming what may have died with it
        (``unsent`` and what was sent lately; what was sent earlier and has not ended)."""
        recent, older = self.sent.lost(also=unsent)
        for i in range(0, max(len(recent), len(older)), LOST_CHUNK):
            yield {"iid": self.dest, "rids": recent[i:i + LOST_CHUNK],
                   "older": older[i:i + LOST_CHUNK]}

    def rotate(self, ended: list[int]) -> None:
        """A heartbeat interval passed: a new generation of sent ids; forget ended requests."""
        self.sent.forget(ended)
        forgotten = self.sent.rotate()
        if forgotten:
            log.warning("instance %d: %d requests sent there without word that they ended; "
                        "forgetting the oldest %d", self.dest, len(self.sent.older) + forgotten,
                        forgotten)


class Outboxes:
    """Every outbox of one worker: made on first use, flushed together, blocked or not.

    ``connect(dest)`` returns ``(address, asyncio socket)`` for a destination;
    ``on_unblocked()`` is called when an outbox got its parked frames out (or went away).
    """

    def __init__(self, connect: Callable[[int], tuple[str, Any]], on_unblocked: Callable[[], None],
                 stats: collections.Counter, window: int = 6, budget: Budget | None = None) -> None:
        self.connect = connect
        self.budget = budget
        self.on_unblocked = on_unblocked
        self.stats = stats
        self.window = window  # heartbeat intervals of request ids kept per outbox (liveness + 2)
        self.outs: dict[int, Outbox] = {}
        self.blocked: set[int] = set()
        self.dirty: list[Outbox] = []  # outboxes with batches not sealed yet: a flush looks at no other

    def get(self, dest: int) -> Outbox:
        out = self.outs.get(dest)
        if out is None:
            address, asock = self.connect(dest)
            out = self.outs[dest] = Outbox(dest, address, asock, self.window, self.budget, self.dirty)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.outs))

    def has_backlog(self) -> bool:
        return any(o.backlog for o in self.outs.values())

    def parked_frames(self, dest: int) -> int:
        out = self.outs.get(dest)
        return len(out.backlog) if out is not None else 0

    def over_budget(self, choices: Iterable[Sequence[int]] = ()) -> bool:
        """Reading more input would only park more (backpressure): every instance of some
        next stage (``choices``: the instances each route picks from) has its budget parked,
        or one peer (a key's owner, which nothing else can stand in for) has PEER_PARK_MAX.
        Until then only items for a full peer wait; the others go on."""
        outs = self.outs
        parked = {d: len(outs[d].backlog) for d in self.blocked if d in outs}
        if not parked:
            return False
        if max(parked.values()) > PEER_PARK_MAX:
            return True
        return any(ids and all(parked.get(d, 0) > PEER_PARK_FRAMES for d in ids) for ids in choices)

    def rotate(self, ended: list[int]) -> None:
        for out in self.outs.values():
            out.rotate(ended)

    def forget(self, rids: list[int]) -> None:
        """These requests are over here (past their deadline): nothing to account for."""
        for out in self.outs.values():
            out.sent.forget(rids)

    def flush(self, out: Outbox) -> None:
        out.seal()
        if out.sender is not None:
            return  # the sender task owns the order of what is parked
        self.stats["frames_out"] += out.send_ready()
        if out.backlog:
            self._park(out)

    def send_lone(self, out: Outbox, msg: Message, stage: str | tuple[str, int]) -> bool:
        """Send ``msg`` now in a frame of its own, past the batches and the flush (a lone
        message at low load waits for nothing); False, and nothing done, when something
        waits to go before it there. A full peer parks the frame as a flush would."""
        frame = out.lone_frame(msg, stage)
        if frame is None:
            return False
        try:
            out.sock.send(frame, _NOBLOCK, copy=len(frame) < _ZERO_COPY_MIN)
        except zmq.Again:
            out.backlog.append(frame)
            self._park(out)
        else:
            self.stats["frames_out"] += 1
        return True

    def _park(self, out: Outbox) -> None:
        """The peer takes no more now: its frames wait for a sender task, and it is blocked."""
        self.blocked.add(out.dest)
        out.sender = asyncio.get_running_loop().create_task(self._send_parked(out))

    def flush_all(self) -> None:
        """Flush every outbox that got something since its last flush (none else has
        anything to send: one with parked frames has a sender task at them)."""
        dirty = self.dirty
        if not dirty:
            return
        outs = dirty[:]
        dirty.clear()
        live = self.outs
        for out in outs:
            if live.get(out.dest) is out:  # not dropped since
                self.flush(out)

    async def _send_parked(self, out: Outbox) -> None:
        def sent() -> None:
            self.stats["frames_out"] += 1

        try:
            await out.send_parked(sent)
        finally:
            out.sender = None
            self.blocked.discard(out.dest)
            if out.backlog and not out.pending and self.outs.get(out.dest) is out:
                out.pending = True  # the sender failed: the next flush tries again
                self.dirty.append(out)
            self.on_unblocked()

    def drop(self, dest: int) -> tuple[Outbox, int, set[int]]:
        """Close the outbox to ``dest``: (the outbox, its unsent frames, their request ids)."""
        out = self.outs.pop(dest)
        if out.sender is not None:
            out.sender.cancel()
        n, rids = out.unsent()
        out.asock.close(linger=0)
        self.blocked.discard(dest)
        return out, n, rids

    async def close(self) -> None:
        """Give parked frames a moment to leave, then close every socket."""
        try:
            self.flush_all()
            pending = [o.sender for o in self.outs.values() if o.sender is not None]
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        finally:
            # Cancelled senders must run to their end before their sockets close, or a
            # sender is left pending on a dead future and destroyed with the loop.
            senders = [o.sender for o in self.outs.values() if o.sender is not None]
            for task in senders:
                task.cancel()
            if senders:
                await asyncio.wait(senders, timeout=1.0)
            for out in self.outs.values():
                out.asock.close(linger=500)
            self.outs.clear()
            self.dirty.clear()
