"""Handlers of the HTTP front door's tests: a text fans out into words, which are upper-cased.

``"sleep S rest"`` waits S seconds first (a request that outlives its deadline, or one a
caller abandons); a text with ``boom`` in it makes the handler raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def words(text: str) -> AsyncIterator[str]:
    if text.startswith("sleep "):
        _, seconds, text = text.split(" ", 2)
        await asyncio.sleep(float(seconds))
    if "boom" in text:
        raise ValueError(f"cannot take {text!r}")
    for w in text.split():
        yield w


def upper(word: str) -> str:
    return word.upper()
