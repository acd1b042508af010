"""Handlers of the test of one instance that stops taking input (tests/integration/test_stuck_peer.py)."""

from __future__ import annotations

import os
import time

_stuck = False


def stuck_in_one(item: dict) -> int:
    """The first instance to run it claims the file ``item["claim"]`` and from then on holds
    each item until the file ``item["gate"]`` exists (bounded); the others answer at once."""
    global _stuck
    if not _stuck:
        try:
            os.close(os.open(item["claim"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            _stuck = True
        except FileExistsError:
            pass
    deadline = time.monotonic() + 60
    while _stuck and not os.path.exists(item["gate"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(item["blob"])


def identity(item: dict) -> dict:
    return item
