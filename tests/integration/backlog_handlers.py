"""Handlers for the slow-reader and thread-failure tests."""

from __future__ import annotations

from collections.abc import Iterator


def burst(item: dict) -> Iterator[str]:
    """``item["n"]`` items of ``item["size"]`` characters each: a request with a lot to say."""
    for i in range(int(item["n"])):
        yield f"{i:06d}" + "x" * int(item["size"])


def echo(item: object) -> object:
    return item
