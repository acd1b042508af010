"""An approximate radix tree: the request keys a router sent to one member.

A router cannot see an engine's prefix cache, so it remembers what it sent where and
assumes the engine kept it. One tree per member; a key is a sequence of hashable units
(here blocks of tokens). Edges are compressed (a node's ``label`` is a run of units), so a
long shared prefix is one node however many requests went through it.

Recency is a logical counter bumped on every insert, not a clock, so the tree is pure and
two runs on the same keys evict the same nodes. ``evict_to`` removes least recently used
leaves until the tree holds at most the given number of units.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence

Key = tuple[Hashable, ...]


class _Node:
    __slots__ = ("label", "children", "parent", "used")

    def __init__(self, label: Key, parent: _Node | None, used: int) -> None:
        self.label = label
        self.children: dict[Hashable, _Node] = {}
        self.parent = parent
        self.used = used


def _common(label: Key, key: Key, start: int) -> int:
    """How many leading units of ``label`` equal ``key[start:]``."""
    n = len(label)
    if key[start:start + n] == label:   # the common case: a whole edge matches (C speed)
        return n
    k = 0
    limit = min(n, len(key) - start)
    while k < limit and label[k] == key[start + k]:
        k += 1
    return k


class RadixTree:
    """Keys sent to one member; ``size`` counts the units stored (shared runs once)."""

    def __init__(self) -> None:
        self.root = _Node((), None, 0)
        self.size = 0
        self._clock = 0

    def __len__(self) -> int:
        return self.size

    def match(self, key: Sequence[Hashable]) -> int:
        """Length of the longest prefix of ``key`` the tree holds, in units."""
        key = tuple(key)
        node, i = self.root, 0
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                break
            n = _common(child.label, key, i)
            i += n
            if n < len(child.label):
                break
            node = child
        return i

    def insert(self, key: Sequence[Hashable]) -> None:
        """Add ``key`` and mark every node on its path as just used."""
        key = tuple(key)
        self._clock += 1
        now = self._clock
        node, i = self.root, 0
        node.used = now
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                node.children[key[i]] = _Node(key[i:], node, now)
                self.size += len(key) - i
                return
            n = _common(child.label, key, i)
            if n < len(child.label):
                # Split the edge: the shared head becomes a node of its own, just used;
                # the rest keeps its old recency, so it is evicted first.
                head = _Node(child.label[:n], node, now)
                node.children[key[i]] = head
                child.label = child.label[n:]
                child.parent = head
                head.children[child.label[0]] = child
                child = head
            child.used = now
            node, i = child, i + n

    def evict_to(self, limit: int) -> int:
        """Remove least recently used leaves until ``size <= limit``; units removed."""
        if self.size <= limit:
            return 0
        removed = 0
        order = 0   # tie-break for equal recency: insertion order into the heap
        heap: list[tuple[int, int, _Node]] = []
        for leaf in self._leaves():
            heap.append((leaf.used, order, leaf))
            order += 1
        heapq.heapify(heap)
        while heap and self.size > limit:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            if parent is None:
                continue
            del parent.children[leaf.label[0]]
            leaf.parent = None
            self.size -= len(leaf.label)
            removed += len(leaf.label)
            if parent is not self.root and not parent.children:
                order += 1
                heapq.heappush(heap, (parent.used, order, parent))
        return removed

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out
