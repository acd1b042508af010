"""The inbox drains its socket by asking ZMQ_EVENTS, and still wakes for later frames."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import zmq

from alto_bus.runtime.inbox import Inbox


@contextlib.contextmanager
def _pair(name: str) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A PULL bound and a PUSH connected on inproc ``name``, closed however the test ends."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind(f"inproc://{name}")
        push.connect(f"inproc://{name}")
        yield pull, push
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_inbox_reads_every_frame_and_wakes_again_after_draining() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        got: list[bytes] = []
        bursts = 0
        arrived = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            got.append(frame)
            if len(got) in (3, 4, 6):
                arrived.set()

        def after_burst() -> None:
            nonlocal bursts
            bursts += 1

        with _pair("inbox-drain") as (pull, push):
            inbox = Inbox(on_frame, lambda: True, after_burst)
            for i in range(3):
                push.send(b"a%d" % i)
            inbox.open(pull)
            try:
                await asyncio.wait_for(arrived.wait(), 5)
                # Drained: the edge-triggered FD must still wake the loop for each lone frame.
                for i, want in ((3, 4), (4, 6)):
                    arrived.clear()
                    push.send(b"b%d" % i)
                    if want == 6:
                        push.send(b"b5")
                    await asyncio.wait_for(arrived.wait(), 5)
            finally:
                inbox.close()
        return got, bursts

    got, bursts = asyncio.run(scenario())
    assert got == [b"a0", b"a1", b"a2", b"b3", b"b4", b"b5"]
    assert bursts >= 3


def test_paused_inbox_reads_nothing_until_resumed() -> None:
    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        allowed = [False]
        done = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            got.append(frame)
            if len(got) == 2:
                done.set()

        with _pair("inbox-pause") as (pull, push):
            inbox = Inbox(on_frame, lambda: allowed[0], lambda: None)
            push.send(b"x")
            push.send(b"y")
            inbox.open(pull)
            try:
                assert inbox.paused and got == []
                allowed[0] = True
                inbox.resume()
                await asyncio.wait_for(done.wait(), 5)
            finally:
                inbox.close()
        return got

    assert asyncio.run(scenario()) == [b"x", b"y"]


def test_what_the_first_frame_of_a_burst_yields_is_flushed_before_more_is_read() -> None:
    """A lone message waits for nothing (not even the question whether more frames wait);
    the frames read after it in the burst are flushed together once the burst ends."""
    async def scenario() -> list[str]:
        events: list[str] = []
        done = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            events.append(frame.decode())

        def after_burst() -> None:
            events.append("flush")
            if events.count("flush") == 2:
                done.set()

        with _pair("inbox-first") as (pull, push):
            inbox = Inbox(on_frame, lambda: True, after_burst)
            for name in ("f0", "f1", "f2"):
                push.send(name.encode())
            inbox.open(pull)
            try:
                await asyncio.wait_for(done.wait(), 5)
            finally:
                inbox.close()
        return events

    assert asyncio.run(scenario()) == ["f0", "flush", "f1", "f2", "flush"]
