"""Load subsetting: which of a stateless stage's instances one sender routes among. Pure.

Without it every sender of a stage is told every change of every instance of the stage it
feeds: with a tenth of N instances changing a beat, 0.1 N x N/2 entries a tick. With it,
the consumer stage's live instances (sorted by id, as the routing table lists them) are
cut into ``G = ceil(n / size)`` groups (a stage of at most ``size`` is not cut), and the
sender of rank ``r`` (its place among its own stage's instances, sorted by id) routes
only among group ``r % G`` and is sent only that group's loads: about ``size`` entries
whatever N, so the bytes of a tick grow as N.

The groups are *contiguous blocks* of the sorted ids. Their sizes differ by at most one,
and a join or a leave anywhere moves at most one instance across each block boundary (at
most G - 1 moves; a subset changes by at most two instances besides the one that joined
or left, one at each of its ends). The alternatives: dealing the ids round-robin
(``rank % G``) moves nothing when the newest id joins, but a leave shifts every instance
above it into another group; hashing ids to groups moves only the joiner but cannot keep
the groups within one of each other. When G itself changes (every ``size`` joins or
leaves) the blocks are cut afresh. Senders are dealt round-robin (``r % G``): a new
sender (the newest id) moves no other, a sender leaving moves those above it to another
group, and each of those is then sent its new group's loads whole (``size`` entries).

``G`` never exceeds the number of senders, so every group has a sender (coverage):
every instance of the consumer stage gets items.

The broker computes each sender's group (it knows the sender's rank; the sender does not,
and a rank is per instance while table views are encoded once per stage) and names it in
the loads report, which it encodes once per group. Both sides cut the same table listing
with :func:`block`, so they agree on the members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def eligible(stages: Iterable[Any], pool_of: Mapping[str, str]) -> frozenset[str]:
    """The stages whose senders may route among a subset: stateless ones. A keyed stage's
    owner is fixed by its key table, and an LM pool's policy places prompts on members,
    so neither may be narrowed."""
    return frozenset(s.name for s in stages if s.key_depth is None and s.name not in pool_of)


def group_count(consumers: int, senders: int, size: int) -> int:
    """How many groups ``consumers`` instances are cut into for ``senders`` senders (1: no subsetting)."""
    if size <= 0 or consumers <= size or senders <= 1:
        return 1
    return min(-(-consumers // size), senders)


def block(ids: Sequence[int], group: int, groups: int) -> Sequence[int]:
    """The members of ``group`` of ``groups``: a contiguous slice of ``ids`` (sorted)."""
    n = len(ids)
    return ids[group * n // groups:(group + 1) * n // groups]


def sender_group(rank: int, groups: int) -> int:
    """The group the sender of ``rank`` (0-based, among its stage's instances by id) routes among."""
    return rank % groups


def candidates(listed: Sequence[int], live: Sequence[int], group: tuple[int, int] | None) -> Sequence[int]:
    """What a sender picks among: the live members of its group in ``listed`` (its table's
    instances of the stage), or all of ``live`` when it has no group or none of the group is
    live (a subset never parks or fails an item)."""
    if group is None:
        return live
    g, n_groups = group
    if not 0 <= g < n_groups:
        return live
    alive = set(live)
    chosen = [i for i in block(listed, g, n_groups) if i in alive]
    return chosen or live
