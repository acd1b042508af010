"""Streamed-item reassembly: the chunks of an item, joined once its final chunk arrives.

An item may reach a stage as several ``DATA`` chunks (``final`` marks the last). One
sender streams an item over one PUSH socket, so its chunks arrive in order; chunks of
different items interleave freely. A stage that needs whole items feeds every chunk
here and gets the item back when it is complete. Pure: no sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from alto_bus.protocol.ancestry import forget_requests, requests_of
from alto_bus.protocol.wire import join_chunks


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


# What :meth:`Chunks.feed` returns while an item is incomplete (None is a valid payload).
PENDING: Final = _Pending()


class Chunks:
    """The chunks of the items still streaming in, keyed by path."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[tuple, list] = {}

    def feed(self, path: Sequence[int], payload: Any, final: bool) -> Any:
        """The whole item once ``final`` arrives (chunks joined), else :data:`PENDING`."""
        if not final:
            self._open.setdefault(tuple(path), []).append(payload)
            return PENDING
        # Most items arrive as one chunk: skip the lookup while nothing streams.
        if self._open and (chunks := self._open.pop(tuple(path), None)) is not None:
            chunks.append(payload)
            return join_chunks(chunks)
        return payload

    def cancel(self, rids: Iterable[int]) -> None:
        """Forget the partial items of these requests (ended: failed, cancelled, gone)."""
        forget_requests(self._open, rids)

    def held(self) -> set[int]:
        """Request ids with an item still streaming (what a failure here loses)."""
        return requests_of(self._open)

    def streaming(self) -> list[tuple]:
        """The paths of the items still streaming, in the order they started."""
        return list(self._open)

    def __len__(self) -> int:
        return len(self._open)
