"""Items a worker holds for want of a routing table: the broker has not sent one yet, or
the next stage has no instance. Pure.

They are routed when a table comes; past ``memory`` of them, waiting longer would only
grow the worker, so they all go and their requests fail with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterable

from alto_bus.protocol.messages import Message

# Items parked for want of a routing table before their requests fail.
PARKED_MEMORY = 100_000

Parked = tuple[int, Message, list]  # (consumer index, the item, its path)


class ParkedItems:
    __slots__ = ("memory", "items")

    def __init__(self, memory: int = PARKED_MEMORY) -> None:
        self.memory = memory
        self.items: list[Parked] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, consumer: int, msg: Message, path: list) -> set[int]:
        """Park one item. Past ``memory``, every parked item goes: returns their request
        ids (to fail); else an empty set."""
        self.items.append((consumer, msg, path))
        if len(self.items) <= self.memory:
            return set()
        items, self.items = self.items, []
        return {p[0] for _, _, p in items}

    def take(self) -> list[Parked]:
        """Every parked item, oldest first, to route now; none is left parked."""
        items, self.items = self.items, []
        return items

    def drop_requests(self, rids: Iterable[int]) -> None:
        """These requests are over: their parked items go."""
        gone = set(rids)
        if self.items and gone:
            self.items = [p for p in self.items if p[2][0] not in gone]
