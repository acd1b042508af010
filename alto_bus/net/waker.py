"""Wake a thread blocked in ``zmq.Poller.poll`` from any other thread.

A socket-owning thread (the client's I/O thread, a worker's control link, the CURVE
guard) sleeps in ``poll`` on its ZeroMQ sockets; other threads hand it work through a
queue and then :meth:`Waker.wake` it. The poller watches the read end of a socketpair
(:meth:`fileno`), so no thread polls with sleeps.
"""

from __future__ import annotations

import socket


class Waker:
    """A socketpair: ``wake()`` from any thread, ``clear()`` from the polling thread."""

    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        # A full pipe already holds a pending wake-up: never block the waking thread.
        self._w.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to register with a poller (``zmq.POLLIN``)."""
        return self._r.fileno()

    def wake(self) -> None:
        try:
            self._w.send(b"x")
        except OSError:
            pass  # closed, or full (a wake-up is pending anyway)

    def clear(self) -> None:
        """Take the pending wake-ups, so the next poll sleeps until the next one."""
        try:
            while self._r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained; or closed
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
