"""The heartbeat body, made on the worker's event loop and read by its control thread.

Only the event loop may iterate the worker's own sets and maps (requests in flight, the
keys a stage holds): the control thread iterating them while the loop changes them died
of "dictionary changed size during iteration". So the loop publishes a snapshot once a
heartbeat interval, and the control thread sends the latest one. When the loop cannot
run (a handler holds it) the snapshot ages, and the heartbeat says for how long, so the
broker can tell a stalled instance from a healthy one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("alto.worker")


class HeartbeatBoard:
    def __init__(self, make: Callable[[], dict[str, Any]], clock: Callable[[], float] = time.monotonic) -> None:
        self.make = make            # the body, from the loop's own state (loop thread only)
        self.clock = clock
        self.interval = 0.0         # from the broker's welcome
        self._stopped = False
        self._published: tuple[float, dict[str, Any]] = (clock(), {"depth": 0, "held": []})

    def start(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        """Publish now, then once an interval (call on the loop)."""
        self.interval = interval
        self._loop = loop
        self._publish()

    def stop(self) -> None:
        self._stopped = True

    def latest(self) -> dict[str, Any]:
        """The body to send (control thread); older than two intervals, it says "stalled"."""
        at, body = self._published
        stalled = self.clock() - at
        if self.interval and stalled > 2 * self.interval:
            body = {**body, "stalled": round(stalled, 3)}
        return body

    def _publish(self) -> None:
        try:
            self._published = (self.clock(), self.make())
        except Exception:  # a stage's held()/depth() bug must not stop the heartbeats
            log.exception("heartbeat snapshot failed")
        if self.interval and not self._stopped:
            self._loop.call_later(self.interval, self._publish)


def snapshot(worker: Any) -> dict[str, Any]:
    """A worker's heartbeat body: what it holds and how deep its queue is (on its loop)."""
    logic = worker.logic
    held = set(worker._inflight)
    depth = worker._inflight_total
    body: dict[str, Any] = {"depth": depth, "stats": dict(worker.stats),
                            "bad": worker._bad_frames.status().get("inbox", {})}
    if logic is not None:
        held.update(logic.held())
        body["depth"] = depth + logic.depth()
        timing = getattr(logic, "handler_seconds", None)
        if timing is not None:  # flat numbers in stats (runtime/handler_seconds.py)
            body["stats"].update(timing.stats())
        prompt_stats = getattr(logic, "prompt_stats", None)
        if prompt_stats is not None:
            body["prompt"] = prompt_stats()
    if worker.routes.pool is not None:
        body["spills"] = worker.routes.pool.policy.drain_spills()
    body["held"] = list(held)[:100_000]
    return body
