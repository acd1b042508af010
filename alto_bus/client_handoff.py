"""Results of an ``AsyncClient``'s requests, handed from the client's I/O thread to the
event loop that awaits them: one ``call_soon_threadsafe`` per burst, not one per result."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Handoff:
    """Results for one event loop, handed over from the I/O thread in bursts: one
    ``call_soon_threadsafe`` for every result of a frame, not one per result (each is a
    wake-up of the loop and a GIL hand-off)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._due: list[tuple[asyncio.Future, Any, BaseException | None]] = []

    def put(self, fut: asyncio.Future, value: Any, error: BaseException | None) -> None:  # the I/O thread
        with self._lock:
            self._due.append((fut, value, error))
            first = len(self._due) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # its loop is closed: nobody awaits these
                pass

    def _deliver(self) -> None:  # the loop
        with self._lock:
            due, self._due = self._due, []
        for fut, value, error in due:
            if not fut.done():  # not cancelled meanwhile
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(value)


class LoopFuture:
    """What :class:`alto_bus.client.Client` keeps for an ``AsyncClient.submit`` in place of a concurrent
    future: setting it queues the outcome for the loop's asyncio future."""

    __slots__ = ("_handoff", "_fut", "_set")

    def __init__(self, handoff: Handoff, fut: asyncio.Future) -> None:
        self._handoff, self._fut, self._set = handoff, fut, False

    def done(self) -> bool:
        return self._set

    def set_result(self, value: Any) -> None:
        self._set = True
        self._handoff.put(self._fut, value, None)

    def set_exception(self, error: BaseException) -> None:
        self._set = True
        self._handoff.put(self._fut, None, error)
