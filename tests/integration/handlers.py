"""Handlers the integration tests name in their topologies."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator


def split(text: str) -> Iterator[str]:
    """Fan out one item per word."""
    yield from text.split()


def letters(word: str) -> Iterator[str]:
    """Second level of fan-out: one item per letter."""
    yield from word


def upper(word: str) -> str:
    return word.upper()


def tag(word: str) -> dict:
    return {"word": word, "pid": os.getpid()}


def keep_short(word: str) -> str | None:
    """Drop words longer than 5 letters."""
    return word if len(word) <= 5 else None


def explode(text: str) -> str:
    """Raise on a given input; the worker must keep serving others."""
    if "boom" in text:
        raise ValueError(f"cannot take {text!r}")
    return text


async def slow_echo(item: dict) -> dict:
    await asyncio.sleep(item.get("sleep", 0.05))
    return item


async def async_split(text: str) -> AsyncIterator[str]:
    for w in text.split():
        await asyncio.sleep(0)
        yield w


def reference(text: str) -> list[dict]:
    """What the split -> upper -> tag pipeline must return (pids aside)."""
    return [w.upper() for w in text.split()]


def stamp(batch: dict) -> dict:
    """Record when a token batch reached this stage (CLOCK_MONOTONIC is machine-wide)."""
    import time

    return {**batch, "seen": time.monotonic()}


def upper_text(batch: dict) -> str:
    return batch["text"].upper()


def block_until(item: dict) -> str:
    """A sync handler that blocks (as a retriever or a file read would) until the file
    ``item["wait_for"]`` exists (bounded), then upper-cases ``item["text"]``."""
    path, deadline = item.get("wait_for"), time.monotonic() + 60
    while path and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return item["text"].upper()
