"""Handlers of the retries tests: deterministic, and able to hold an item on a gate.

An item carries the test's gate directory. While the file ``gate`` exists there, a
handler that meets its held item writes a marker ``held-<pid>-<request tag>`` and waits;
the test kills the process that holds it (no sleeps in the test: it waits for markers),
then removes the gate so that the items sent again go through.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

GATE_LIMIT = 120.0  # a handler never waits longer than this on a gate


async def _hold(gate_dir: str, tag: str) -> None:
    gate = os.path.join(gate_dir, "gate")
    if not os.path.exists(gate):
        return
    marker = os.path.join(gate_dir, f"held-{os.getpid()}-{tag}")
    with open(marker, "w"):
        pass
    deadline = time.monotonic() + GATE_LIMIT
    while os.path.exists(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def fan(req: dict) -> Iterator[dict]:
    """One child per index: {"i", "tag", "gate", "hold"}."""
    for i in range(req["n"]):
        yield {"i": i, "tag": req["tag"], "gate": req["gate"], "hold": req.get("hold", -1)}


async def times_ten(item: dict) -> int:
    """The middle stage: child ``hold`` waits on the gate; every child gives i * 10."""
    if item["i"] == item["hold"]:
        await _hold(item["gate"], item["tag"])
    return item["i"] * 10


async def fan_then_hold(req: dict) -> AsyncIterator[dict]:
    """An entry that sends all children but the last, waits on the gate, then the last."""
    n = req["n"]
    for i in range(n):
        if i == n - 1:
            await _hold(req["gate"], req["tag"])
        yield {"i": i, "tag": req["tag"]}


async def held_echo(req: dict) -> dict:
    """An entry stage that waits on the gate, then answers its input."""
    await _hold(req["gate"], req["tag"])
    return {"tag": req["tag"], "n": req["n"]}


def index(item: dict) -> int:
    return item["i"]
