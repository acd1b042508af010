"""Counting what a process drops as malformed, per socket and reason (log lines at a bounded rate)."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from alto_bus.protocol.wire import WireError

LOG_EVERY = 10.0  # seconds between log lines about bad frames, after the first few


class BadFrames:
    """Malformed frames and messages dropped: counted per socket and reason (fixed labels,
    so the table stays small whatever arrives), logged at a bounded rate."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.count = 0
        self.by_socket: dict[str, collections.Counter] = {}
        self._logged_at = 0.0
        self._unlogged = 0

    def __call__(self, socket: str, reason: str, detail: str) -> None:
        self.count += 1
        self.by_socket.setdefault(socket, collections.Counter())[reason] += 1
        now = time.monotonic()
        if self.count <= 20 or now - self._logged_at >= LOG_EVERY:
            more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
            self.log.warning("dropped a malformed %s message (%d so far%s): %s", socket, self.count, more, detail)
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1

    def on(self, socket: str) -> Callable[[WireError], None]:
        """The callback for one socket's decoding errors."""
        return lambda exc: self(socket, exc.reason, str(exc))

    def status(self) -> dict[str, dict[str, int]]:
        return {socket: dict(c) for socket, c in self.by_socket.items()}
