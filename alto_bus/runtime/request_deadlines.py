"""When each request a worker has seen runs out, on this process's own clock. Pure.

The gateway stamps a request's time left (milliseconds, ``left_ms``) on its first
message, and every sender stamps it again on the first message of a request to each
destination (once a heartbeat interval at most: runtime/outbox.py). A receiver turns it
into a deadline on its own monotonic clock the first time it hears of the request. Time
left, not a wall-clock instant, so clocks of different hosts never need to agree; each
hop adds its transit time to the deadline, which only ever frees state later, never
early.

Past its deadline the gateway has already answered the request (``deadline exceeded``),
so once ``GRACE`` more has passed the worker frees what it holds for it by itself: a
request whose broker died, or whose cancel or "ended" notice was lost, leaves nothing
behind. Requests that end normally are forgotten here as they end.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

# After its deadline the gateway answers the request; this much later its state goes.
GRACE = 1.0

# Requests with a known deadline, at most: past it new requests are not clocked (their
# state is freed by the broker's notices only) and the caller is told (``note`` -> False).
MEMORY = 200_000


class RequestDeadlines:
    """Request id -> deadline (seconds, the caller's monotonic clock), soonest first out."""

    __slots__ = ("grace", "memory", "at", "_heap")

    def __init__(self, grace: float = GRACE, memory: int = MEMORY) -> None:
        self.grace = grace
        self.memory = memory
        self.at: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []  # may hold forgotten entries (skipped)

    def __len__(self) -> int:
        return len(self.at)

    def note(self, rid: int, left_ms: int, now: float) -> bool:
        """A message said ``rid`` has ``left_ms`` left; the first word of a request counts
        (a later stamp names the same deadline, later by its transit). False: over memory."""
        if rid in self.at:
            return True
        if len(self.at) >= self.memory:
            return False
        deadline = now + left_ms / 1000
        self.at[rid] = deadline
        heapq.heappush(self._heap, (deadline, rid))
        return True

    def left_ms(self, rid: int, now: float) -> int | None:
        """What to stamp on a message of ``rid`` sent now (None: no deadline known)."""
        deadline = self.at.get(rid)
        if deadline is None:
            return None
        left = (deadline - now) * 1000
        return int(left) if left > 0 else 0

    def expired(self, now: float) -> list[int]:
        """The requests whose deadline and grace have passed; they are forgotten here."""
        heap, at = self._heap, self.at
        out: list[int] = []
        limit = now - self.grace
        while heap and heap[0][0] <= limit:
            deadline, rid = heapq.heappop(heap)
            if at.get(rid) == deadline:
                del at[rid]
                out.append(rid)
        return out

    def forget(self, rids: Iterable[int]) -> None:
        """These requests ended (or were cancelled): no deadline to keep."""
        at = self.at
        for rid in rids:
            at.pop(rid, None)
        heap = self._heap
        if len(heap) > 2 * len(at) + 1024:  # forgotten entries would outlive them: rebuild
            self._heap = [(d, r) for r, d in at.items()]
            heapq.heapify(self._heap)

    def next_expiry(self) -> float | None:
        """When :meth:`expired` will next have something (the caller's clock), if ever."""
        heap, at = self._heap, self.at
        while heap and at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # forgotten
        return heap[0][0] + self.grace if heap else None
