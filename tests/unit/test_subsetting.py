"""Load subsetting's groups: coverage, balance, few moves on a join or a leave, fallback. Pure."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus.routing.subsetting import block, candidates, eligible, group_count, sender_group


def groups_of(ids: list[int], n_groups: int) -> list[list[int]]:
    return [list(block(ids, g, n_groups)) for g in range(n_groups)]


def group_index(ids: list[int], n_groups: int) -> dict[int, int]:
    return {i: g for g, members in enumerate(groups_of(ids, n_groups)) for i in members}


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 600), senders=st.integers(1, 400), size=st.integers(1, 64))
def test_every_instance_is_in_exactly_one_group_and_every_group_has_a_sender(n, senders, size):
    ids = list(range(7, 7 + 3 * n, 3))  # ids need not be dense
    n_groups = group_count(n, senders, size)
    groups = groups_of(ids, n_groups)
    assert sorted(i for g in groups for i in g) == ids, "each instance in exactly one group"
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1, "balanced"
    covered = {sender_group(r, n_groups) for r in range(senders)}
    assert covered == set(range(n_groups)), "every group (so every instance) is some sender's subset"
    per_group = [sum(1 for r in range(senders) if sender_group(r, n_groups) == g) for g in range(n_groups)]
    assert max(per_group) - min(per_group) <= 1, "senders spread evenly over the groups"
    if senders >= -(-n // size):
        assert max(sizes) <= size, "with enough senders no subset is bigger than asked"


def test_no_subsetting_when_the_stage_fits_in_one_subset_or_it_is_off():
    assert group_count(32, 100, 32) == 1
    assert group_count(1000, 100, 0) == 1
    assert group_count(1000, 1, 32) == 1      # one sender must reach every instance
    assert group_count(1000, 10, 32) == 10    # never more groups than senders
    assert group_count(1000, 500, 32) == 32


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 400), size=st.integers(2, 40), where=st.floats(0, 1), join=st.booleans())
def test_one_join_or_leave_moves_at_most_one_instance_across_each_group_boundary(n, size, where, join):
    before = list(range(1, n + 1))
    if join:  # a new instance has the newest id
        after = before + [n + 1]
    else:
        after = before[:int(where * (n - 1))] + before[int(where * (n - 1)) + 1:]
    senders = 10_000
    n_groups = group_count(len(before), senders, size)
    if group_count(len(after), senders, size) != n_groups:
        return  # G itself changed: the blocks are cut afresh (documented)
    old, new = group_index(before, n_groups), group_index(after, n_groups)
    moved = [i for i in old if i in new and old[i] != new[i]]
    assert len(moved) <= n_groups - 1
    for g, (a, b) in enumerate(zip(groups_of(before, n_groups), groups_of(after, n_groups))):
        joiner_or_leaver = set(before) ^ set(after)
        gained, lost = set(b) - set(a) - joiner_or_leaver, set(a) - set(b) - joiner_or_leaver
        assert len(gained) + len(lost) <= 2, f"group {g}: +{gained} -{lost}: one per boundary"


def test_the_join_of_a_sender_with_the_newest_id_moves_no_other_sender():
    n_groups = 8
    before = {r: sender_group(r, n_groups) for r in range(40)}
    after = {r: sender_group(r, n_groups) for r in range(41)}
    assert all(after[r] == g for r, g in before.items())


def test_a_subset_with_no_live_member_falls_back_to_the_whole_stage():
    listed = list(range(1, 11))
    assert list(candidates(listed, listed, (1, 5))) == [3, 4]
    live = [i for i in listed if i not in (3, 4)]  # the group's two members died
    assert list(candidates(listed, live, (1, 5))) == live
    assert list(candidates(listed, listed[2:], (1, 5))) == [3, 4]
    assert list(candidates(listed, [3, 5], (1, 5))) == [3], "the live ones of the group"
    assert list(candidates(listed, listed, None)) == listed, "no group: the whole stage"
    # A group the sender's (older) table cannot have: the whole stage, never nothing.
    assert list(candidates([1, 2], [1, 2], (7, 9))) == [1, 2]
    assert list(candidates([], [], (0, 4))) == []


def test_only_stateless_stages_off_pools_are_subsetted():
    stages = [SimpleNamespace(name="plain", key_depth=None), SimpleNamespace(name="agg", key_depth=2),
              SimpleNamespace(name="lm", key_depth=None)]
    assert eligible(stages, {"lm": "pool"}) == {"plain"}
