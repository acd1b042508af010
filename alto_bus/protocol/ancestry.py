"""Nested ancestry: paths, END counts and group completion. Pure, no sockets.

A request enters with path ``(rid,)``. A stage that fans out item ``p`` gives its
children the paths ``p + (i,)`` and announces ``END(p, n)`` once it knows ``n``. A
group rooted at ``root`` is complete when every node of its subtree has its END count
and every leaf has arrived or was dropped, in whatever order the markers came.

The tracker keeps, per open internal node, the announced child count and a bitmap of
the children already complete, and frees both the moment the node completes. A bitmap
rather than a count, so that a duplicate marker or a child index outside ``0..n-1``
is a reported contradiction instead of a premature completion. A leaf costs one bit
once counted, so the state of an open group is proportional to its open internal
nodes, not to its items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Path = tuple[int, ...]


class AncestryError(ValueError):
    """A marker that contradicts what the tracker already knows (a protocol violation)."""


class GroupError(ValueError):
    """A group (or item) a keyed stage cannot complete; its state is already freed.

    ``path`` is the group's (or the item's): the stage reports an ERROR for its request.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class GroupTracker:
    """Completion of the subtree rooted at ``root``."""

    __slots__ = ("root", "_depth", "_ends", "_done", "complete")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._depth = len(root)
        self._ends: dict[Path, int] = {}  # announced child count of open nodes
        self._done: dict[Path, int] = {}  # bitmap of the complete children of open nodes
        self.complete = False

    def _check(self, path: Path) -> None:
        if self.complete:
            raise AncestryError(
                f"path {list(path)} arrived after group {list(self.root)} completed"
            )
        depth = self._depth
        if len(path) < depth or path[:depth] != self.root:
            raise AncestryError(f"path {list(path)} is outside group {list(self.root)}")
        # A completed node has its bit set in the bitmap of its nearest open ancestor's
        # line; any marker at or below it is a duplicate or a contradiction.
        done = self._done
        q = path
        while len(q) > depth:
            parent = q[:-1]
            bits = done.get(parent)
            if bits is not None and q[-1] >= 0 and bits >> q[-1] & 1:
                where = "" if q == path else f" inside {list(q)}"
                raise AncestryError(f"path {list(path)}{where} already complete")
            q = parent

    def leaf(self, path: Path) -> bool:
        """A leaf arrived whole (DATA with final) or was dropped. True when the group completes."""
        self._check(path)
        if path in self._ends or path in self._done:
            raise AncestryError(f"{list(path)} arrived as a leaf but has children")
        return self._node_complete(path)

    drop = leaf

    def end(self, path: Path, n: int) -> bool:
        """``END(path, n)``: ``path`` fanned out into exactly ``n`` children."""
        self._check(path)
        if not isinstance(n, int) or n < 0:
            raise AncestryError(f"END of {list(path)} announces {n!r} children")
        if path in self._ends:
            raise AncestryError(f"second END for {list(path)}")
        bits = self._done.get(path, 0)
        if bits.bit_length() > n:
            raise AncestryError(
                f"END of {list(path)} announces {n} children, child {bits.bit_length() - 1} arrived"
            )
        if bits.bit_count() == n:
            self._done.pop(path, None)
            return self._node_complete(path)
        self._ends[path] = n
        return False

    def _node_complete(self, path: Path) -> bool:
        # Walk up while each parent thereby reaches its announced count.
        depth = self._depth
        while len(path) > depth:
            parent, i = path[:-1], path[-1]
            if i < 0:
                raise AncestryError(f"negative child index in {list(path)}")
            expected = self._ends.get(parent)
            if expected is not None and i >= expected:
                raise AncestryError(
                    f"{list(parent)} announced {expected} children, got {list(path)}"
                )
            bits = self._done.get(parent, 0)
            if bits >> i & 1:
                raise AncestryError(f"{list(path)} completed twice")
            bits |= 1 << i
            if expected is None or bits.bit_count() < expected:
                self._done[parent] = bits
                return False
            del self._ends[parent]
            self._done.pop(parent, None)
            path = parent
        self.complete = True
        if self._ends or self._done:
            # Only reachable when a node arrived as a leaf after some of its descendants.
            stale = sorted(self._ends.keys() | self._done.keys())[0]
            raise AncestryError(f"group {list(self.root)} completed with {list(stale)} still open")
        return True

    def open_nodes(self) -> int:
        """Internal nodes still waiting (for diagnostics: what a stuck group waits on)."""
        return len(self._ends) + len(self._done.keys() - self._ends.keys())

    def waiting_on(self, limit: int = 5) -> list[tuple[list[int], int, int]]:
        """A few ``(path, announced, arrived)`` triples; announced is -1 when no END came yet."""
        rows = []
        for path in sorted(self._ends.keys() | self._done.keys()):
            arrived = self._done.get(path, 0).bit_count()
            rows.append((list(path), self._ends.get(path, -1), arrived))
            if len(rows) >= limit:
                break
        if not rows:
            rows.append((list(self.root), -1, 0))
        return rows


# -- state kept per path, owned by requests -----------------------------------------------
# A stage's state (open groups, items still streaming) is a dict keyed by path; a path's
# first element is its request id. These two answer cancel() and held() for any of them.


def forget_requests(table: dict[Path, Any], rids: Iterable[int]) -> list[Path]:
    """Delete the entries of these requests from ``table``; return their paths."""
    rids = set(rids)
    gone = [path for path in table if path[0] in rids]
    for path in gone:
        del table[path]
    return gone


def requests_of(table: dict[Path, Any]) -> set[int]:
    """The request ids that own an entry of ``table``."""
    return {path[0] for path in table}
