"""Handlers of the test of deadlines kept by the workers themselves."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator


def fan(item: dict) -> Iterator[dict]:
    """Two children: one goes straight through, one waits for ``item["gate"]``."""
    yield {"text": "a"}
    yield {"text": "b", "wait_for": item["gate"]}


async def wait_for_gate(item: dict) -> str:
    """An async handler that waits (bounded) until the file ``item["wait_for"]`` exists."""
    path, deadline = item.get("wait_for"), time.monotonic() + 60
    while path and not os.path.exists(path) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return item["text"].upper()
