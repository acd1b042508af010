"""Running a stage instance embedded in a host process: on a thread of its own, or as a
coroutine in the host's asyncio loop (the Worker's embedding API, apart from its data plane)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from alto_bus.runtime.stage import describe

log = logging.getLogger("alto.worker")


class WorkerError(RuntimeError):
    """The worker could not join or keep its place in the topology."""


class Embedded:
    """start/stop on a background thread, wait_registered for run() in the host's loop.
    The Worker provides ``run``, ``_begin_stop`` and the fields used here."""

    stage: str
    connect_timeout: float
    drain_timeout: float
    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None
    _started: threading.Event
    _start_error: BaseException | None

    async def run(self) -> None:  # the Worker's
        raise NotImplementedError

    def _begin_stop(self, drain: bool = True) -> None:  # the Worker's
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Any:
        """Run in a background thread; returns once registered (raises WorkerError if not)."""
        self._thread = threading.Thread(target=self._thread_main, name=f"alto-worker-{self.stage}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout or self.connect_timeout + 5):
            raise WorkerError(f"worker for stage {self.stage!r} did not register within the timeout")
        if self._start_error is not None:
            self._thread.join(5)
            raise self._start_error
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Leave the topology gracefully (drain), then return. For ``start()`` workers."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout or self.drain_timeout + 5)
            if self._thread.is_alive():
                raise WorkerError(f"worker for stage {self.stage!r} did not stop in time")

    def request_stop(self, drain: bool = True) -> None:
        """Ask the worker to stop (thread-safe): drain first, or stop now."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._begin_stop, drain)
        except RuntimeError:
            pass  # the loop already stopped

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as exc:  # before registration run() reports it to start()
            if self._start_error is None:
                log.error("worker for stage %s stopped with an error: %s", self.stage, describe(exc))

    async def wait_registered(self, timeout: float | None = None) -> None:
        """For ``run()`` in the host's loop: returns once registered, raises if joining failed."""
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, self._started.wait, timeout or self.connect_timeout + 5)
        if not ok:
            raise WorkerError(f"worker for stage {self.stage!r} did not register in time")
        if self._start_error is not None:
            raise self._start_error

