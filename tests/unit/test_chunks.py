"""Streamed-item reassembly: whatever the chunking and however streams interleave (each
stream in order, as one PUSH socket delivers it), every item comes out whole, once, at
its final chunk; cancel forgets a request's partial items."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto_bus.protocol.chunks import PENDING, Chunks
from alto_bus.protocol.wire import join_chunks

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

paths = st.lists(st.integers(0, 3), min_size=0, max_size=2).flatmap(
    lambda tail: st.integers(1, 4).map(lambda rid: (rid, *tail)))


@st.composite
def streams(draw: st.DrawFn) -> dict[tuple, list]:
    """Items by path, each split into one or more chunks (text, token lists or one object)."""
    out: dict[tuple, list] = {}
    for path in draw(st.sets(paths, min_size=1, max_size=8)):
        kind = draw(st.sampled_from(["text", "ids", "object"]))
        if kind == "object":
            small_maps = st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
            out[path] = [draw(st.one_of(st.none(), st.integers(), small_maps))]
            continue
        value = (draw(st.text(max_size=12)) if kind == "text"
                 else draw(st.lists(st.integers(), max_size=12)))
        cuts = sorted(draw(st.lists(st.integers(0, len(value)), max_size=4)))
        bounds = [0, *cuts, len(value)]
        out[path] = [value[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return out


def interleave(draw: st.DrawFn, items: dict[tuple, list]) -> list[tuple[tuple, Any, bool]]:
    """Arrival order: any interleaving of the streams, each stream's chunks in order."""
    left = {p: list(c) for p, c in items.items()}
    order = []
    while left:
        path = draw(st.sampled_from(sorted(left)))
        chunk = left[path].pop(0)
        order.append((path, chunk, not left[path]))
        if not left[path]:
            del left[path]
    return order


@SETTINGS
@given(st.data())
def test_every_item_comes_out_whole_once_at_its_final_chunk(data: st.DataObject) -> None:
    items = data.draw(streams())
    chunks = Chunks()
    whole: dict[tuple, Any] = {}
    for path, chunk, final in interleave(data.draw, items):
        got = chunks.feed(list(path), chunk, final)
        if not final:
            assert got is PENDING
            assert path[0] in chunks.held()
            continue
        assert got is not PENDING and path not in whole
        whole[path] = got
    assert whole == {p: join_chunks(c) for p, c in items.items()}
    assert len(chunks) == 0 and chunks.held() == set() and chunks.streaming() == []


@SETTINGS
@given(st.data())
def test_text_and_token_streams_join_back_to_the_value_that_was_split(data: st.DataObject) -> None:
    value = data.draw(st.one_of(st.text(min_size=1, max_size=20),
                                st.lists(st.integers(), min_size=1, max_size=20)))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(value)), max_size=5)))
    bounds = [0, *cuts, len(value)]
    parts = [value[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    chunks = Chunks()
    results = [chunks.feed([7], part, i == len(parts) - 1) for i, part in enumerate(parts)]
    assert results[:-1] == [PENDING] * (len(parts) - 1)
    assert results[-1] == value


@SETTINGS
@given(st.data())
def test_cancel_forgets_exactly_the_partial_items_of_those_requests(data: st.DataObject) -> None:
    items = data.draw(streams())
    order = interleave(data.draw, items)
    cut = data.draw(st.integers(0, len(order)))
    chunks = Chunks()
    for path, chunk, final in order[:cut]:
        chunks.feed(path, chunk, final)
    open_before = set(chunks.streaming())
    gone = data.draw(st.sets(st.integers(1, 4)))
    chunks.cancel(gone)
    assert set(chunks.streaming()) == {p for p in open_before if p[0] not in gone}
    assert chunks.held() == {p[0] for p in open_before} - gone


def test_a_single_final_chunk_is_the_item_and_none_is_a_payload() -> None:
    chunks = Chunks()
    assert chunks.feed([1], None, True) is None
    assert chunks.feed([1, 0], {"a": 1}, True) == {"a": 1}
    assert chunks.feed((2,), "ab", False) is PENDING
    assert chunks.streaming() == [(2,)]
    assert chunks.feed([2], "c", True) == "abc"
    assert len(chunks) == 0
