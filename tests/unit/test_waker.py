"""The socketpair waker: a wake-up makes a poller return, clear() takes it, and waking
never blocks or raises (many wake-ups, after close)."""

from __future__ import annotations

import threading
from contextlib import closing

import zmq

from alto_bus.net.waker import Waker


def readable(waker: Waker, timeout_ms: int) -> bool:
    poller = zmq.Poller()
    poller.register(waker.fileno(), zmq.POLLIN)
    return waker.fileno() in dict(poller.poll(timeout_ms))


def test_wake_makes_the_poll_return_and_clear_takes_it() -> None:
    with closing(Waker()) as waker:
        assert not readable(waker, 0)
        waker.wake()
        assert readable(waker, 1000)
        waker.clear()
        assert not readable(waker, 0)


def test_a_wake_from_another_thread_ends_a_blocking_poll() -> None:
    with closing(Waker()) as waker:
        threading.Timer(0.05, waker.wake).start()
        assert readable(waker, 5000)


def test_waking_never_blocks_even_when_nobody_clears() -> None:
    with closing(Waker()) as waker:
        for _ in range(200_000):  # far more than a socketpair's buffer holds
            waker.wake()
        assert readable(waker, 0)
        waker.clear()
        assert not readable(waker, 0)
    waker.wake()   # after close: ignored
    waker.clear()
