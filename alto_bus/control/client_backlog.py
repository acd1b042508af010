"""Answers the gateway could not hand to a client yet, bounded per client (pure: no sockets).

A client that reads slowly, or not at all, first fills its ZeroMQ pipe (the gateway
ROUTER's send high-water mark, in frames). Past that the gateway keeps the client's
answers here, as the encoded frames it tried to send, in order, and tries again after a
pause that doubles from ``first_pause`` to ``max_pause`` while the client takes nothing:
a client that stopped reading costs a few wakes a second, not one per millisecond.
(A ROUTER's POLLOUT says that *some* peer has room, not which one, so it cannot tell
when this client has room again.)

Over ``max_bytes`` or ``max_answers`` the client is *cut off*: its frames are dropped
(counted), and the gateway fails its requests, queueing one small FAILED per request
instead of the answers. Until it has read everything left here, its new requests are
refused with a FAILED of the same kind, and once even those would pass the caps they
are dropped unanswered (counted). A client that reads everything is served again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

FIRST_PAUSE = 0.001
MAX_PAUSE = 0.1


@dataclass
class HeldFrame:
    frame: bytes
    finals: list[int]   # client request ids whose RESULT or FAILED this frame carries
    answers: int        # messages in the frame


@dataclass
class Backlog:
    """One client's frames that did not fit into its pipe."""

    frames: deque[HeldFrame] = field(default_factory=deque)
    bytes: int = 0
    answers: int = 0
    retry_at: float = 0.0
    pause: float = FIRST_PAUSE
    cut: bool = False   # cut off for not reading; served again once this backlog is sent


@dataclass
class BacklogStats:
    cut_off: int = 0            # times a client was cut off for not reading
    dropped_answers: int = 0    # answers dropped when a client was cut off
    dropped_bytes: int = 0
    refused: int = 0            # requests refused from a cut-off client
    unanswered: int = 0         # requests of a cut-off client dropped with no answer (even refusals over the caps)


class ClientBacklogs:
    def __init__(self, max_bytes: int, max_answers: int, first_pause: float = FIRST_PAUSE,
                 max_pause: float = MAX_PAUSE) -> None:
        if max_bytes < 1 or max_answers < 1:
            raise ValueError(f"client backlog caps must be >= 1, got {max_bytes} bytes, {max_answers} answers")
        self.max_bytes = max_bytes
        self.max_answers = max_answers
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.clients: dict[bytes, Backlog] = {}
        self.stats = BacklogStats()

    def holding(self, client: bytes) -> bool:
        """Frames are waiting for ``client``: a new one must queue behind them (order)."""
        return client in self.clients

    def is_cut(self, client: bytes) -> bool:
        b = self.clients.get(client)
        return b is not None and b.cut

    def hold(self, client: bytes, frame: bytes, finals: list[int], answers: int, now: float) -> bool:
        """Keep a frame that did not fit; True when the client just went over a cap
        (the caller then calls :meth:`cut`)."""
        b = self.clients.get(client)
        if b is None:
            b = self.clients[client] = Backlog(retry_at=now + self.first_pause, pause=self.first_pause)
        b.frames.append(HeldFrame(frame, finals, answers))
        b.bytes += len(frame)
        b.answers += answers
        return not b.cut and (b.bytes > self.max_bytes or b.answers > self.max_answers)

    def cut(self, client: bytes, unsent: list[tuple[int, int]] = ()) -> tuple[list[int], int, int]:
        """Drop every frame held for ``client`` and mark it cut off; returns the request ids
        whose final answer was dropped, and the answers and bytes dropped (with those of
        the ``unsent`` frames, (bytes, answers) each, that the caller drops too)."""
        b = self.clients[client]
        finals = [cid for held in b.frames for cid in held.finals]
        answers = b.answers + sum(n for _, n in unsent)
        size = b.bytes + sum(n for n, _ in unsent)
        self.stats.cut_off += 1
        self.stats.dropped_answers += answers
        self.stats.dropped_bytes += size
        b.frames.clear()
        b.bytes = b.answers = 0
        b.cut = True
        return finals, answers, size

    def has_room(self, client: bytes) -> bool:
        b = self.clients.get(client)
        return b is None or (b.bytes < self.max_bytes and b.answers < self.max_answers)

    def may_refuse(self, client: bytes) -> bool:
        """A cut-off client's new request: True if a refusal still fits under the caps
        (counted as refused), False if it is dropped unanswered (counted)."""
        if self.has_room(client):
            self.stats.refused += 1
            return True
        self.stats.unanswered += 1
        return False

    def due(self, now: float) -> list[bytes]:
        """Clients whose pause is over: try their frames again."""
        return [c for c, b in self.clients.items() if b.retry_at <= now]

    def next_frame(self, client: bytes) -> bytes | None:
        """The frame to try next; None when nothing is left (the client is served again)."""
        b = self.clients.get(client)
        if b is None:
            return None
        if not b.frames:
            del self.clients[client]
            return None
        return b.frames[0].frame

    def sent(self, client: bytes) -> None:
        """The first frame went into the pipe."""
        b = self.clients[client]
        held = b.frames.popleft()
        b.bytes -= len(held.frame)
        b.answers -= held.answers
        b.pause = self.first_pause

    def blocked(self, client: bytes, now: float) -> None:
        """The pipe is still full: wait twice as long before the next try (up to ``max_pause``)."""
        b = self.clients[client]
        b.retry_at = now + b.pause
        b.pause = min(b.pause * 2, self.max_pause)

    def forget(self, client: bytes) -> None:
        """The client is gone: nothing is kept for it."""
        self.clients.pop(client, None)

    def next_retry(self) -> float | None:
        return min((b.retry_at for b in self.clients.values()), default=None)

    def status(self) -> dict[str, Any]:
        s = self.stats
        held = self.clients.values()
        return {"clients": len(self.clients), "cut_off_now": sum(b.cut for b in held),
                "bytes": sum(b.bytes for b in held), "answers": sum(b.answers for b in held),
                "largest_bytes": max((b.bytes for b in held), default=0),
                "max_bytes": self.max_bytes, "max_answers": self.max_answers,
                "cut_off": s.cut_off, "dropped_answers": s.dropped_answers, "dropped_bytes": s.dropped_bytes,
                "refused": s.refused, "unanswered": s.unanswered}
