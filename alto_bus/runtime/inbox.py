"""A worker's PULL inbox, read in bursts from the event loop, paused under backpressure.

The inbox is read from a reader callback, not a coroutine: a frame costs no future, no
task switch. ZeroMQ's FD is edge-triggered, so every read drains until ZMQ_EVENTS says
nothing is queued (or hands the rest to the next turn of the loop). What the first frame
of a burst emits is flushed before the socket is asked for more, so a lone message waits
for nothing; what later frames of the burst emit is coalesced and flushed after it.
While the worker may not take more input (an outbox is blocked, or the stage has as much
work in hand as its concurrency allows), the inbox is not read: its queue fills, and the
senders' sends block in turn.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import zmq

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Message

# Frames read in one turn of the loop before others get a turn.
BURST_FRAMES = 256

# Plain ints: pyzmq's flag enums cost more per call than the call itself.
_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)


class Inbox:
    """Reads frames into ``on_frame`` while ``may_read()``; ``after_burst()`` (the worker
    flushes its outboxes) after the first frame of a burst, and after the burst if it read
    more than one."""

    def __init__(self, on_frame: Callable[[bytes], None], may_read: Callable[[], bool],
                 after_burst: Callable[[], None]) -> None:
        self.on_frame = on_frame
        self.may_read = may_read
        self.after_burst = after_burst
        self.sock: zmq.Socket | None = None
        self.paused = False       # stopped reading for backpressure, until resume()
        self.in_burst = False     # reading a burst now: what it emits is flushed after it
        self.first = False        # reading a burst's first frame now (its output may skip the batches)
        self.last_input = 0.0     # loop time of the last burst that read a frame
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None

    def open(self, sock: zmq.Socket) -> None:
        """Start reading ``sock`` from the running loop."""
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self.on_readable)
        self.on_readable()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None

    def resume(self) -> None:
        """The worker may take input again: read what waited."""
        if self.paused and self.may_read():
            self.paused = False
            self._loop.call_soon(self.on_readable)

    def on_readable(self) -> None:
        if not self.may_read():
            self.paused = True
            return
        sock, on_frame = self.sock, self.on_frame
        n = 0
        more = False
        self.in_burst = self.first = True
        try:
            while True:
                try:
                    frame = sock.recv(_NOBLOCK)
                except zmq.Again:  # a wake-up with nothing queued
                    more = bool(sock.getsockopt(_EVENTS) & _POLLIN)
                    break
                on_frame(frame)
                n += 1
                if n == 1:  # its output leaves now, not after the question below (a syscall)
                    self.first = False
                    self.after_burst()
                # Asking EVENTS (not a recv that raises zmq.Again: a few us per burst, the
                # cost of a lone message) says whether another frame waits, and re-arms the
                # edge-triggered FD when none does.
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    break
                if n >= BURST_FRAMES or not self.may_read():
                    more = True
                    break
        finally:
            self.in_burst = self.first = False
        if n:
            if n > 1:
                self.after_burst()
            self.last_input = self._loop.time()
        if more:
            self._loop.call_soon(self.on_readable)


def checked_messages(frame: bytes, stage: str, stats: collections.Counter,
                     bad: Callable[[wire.WireError], None], inputs: int = 1) -> tuple[int, list[Message]]:
    """``(input index, the well-formed messages of frame)``, every field checked. A frame
    that does not decode or is for another stage (or, for a stage with several inputs,
    names none of them), and a malformed message, go to ``bad`` (never raise)."""
    stats["frames_in"] += 1
    if inputs < 2:  # a frame of one message for this stage: one decode
        msg = wire.lone_message(frame, stage)
        if msg is not None:
            stats["messages_in"] += 1
            return 0, [msg]
    try:
        target, parts = wire.split_frame(frame)
    except wire.WireError as exc:
        bad(exc)
        return 0, []
    index = 0
    if type(target) is tuple:
        target, index = target
        if inputs < 2 or index >= inputs:
            target = f"{target}[{index}]"  # not an input this stage has
    elif inputs > 1:
        target = f"{target} (no input index)"
    if target != stage:
        bad(wire.WireError(f"frame for stage {target!r:.40} reached an instance of {stage!r}", "misaddressed"))
        return 0, []
    stats["messages_in"] += len(parts)
    return index, wire.message_list(parts, bad)
