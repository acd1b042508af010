"""Small handlers for the example topologies and the tests."""

from __future__ import annotations

from collections.abc import Iterator


def words(text: str) -> Iterator[str]:
    """Fan out: one item per word."""
    yield from text.split()


def upper(word: str) -> str:
    return word.upper()


def tag(word: str) -> dict:
    return {"word": word, "length": len(word)}
