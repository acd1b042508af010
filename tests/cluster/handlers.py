"""Handlers the cluster tests name in their topologies."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator


def split(text: str) -> Iterator[str]:
    yield from text.split()


def where(word: str) -> dict:
    """The word, upper-cased, and where it was computed (process, its GPUs)."""
    return {"word": word.upper(), "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


async def slow(item: dict) -> dict:
    await asyncio.sleep(item.get("sleep", 0.05))
    return {"i": item["i"], "pid": os.getpid()}


def fan(items: list) -> Iterator:
    """Fan out the elements of a list."""
    yield from items
