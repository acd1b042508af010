"""Micro benchmarks of the hot path (run with `pytest --benchmark-only`; skipped otherwise)."""

from __future__ import annotations

import random

from alto_bus.protocol import wire
from alto_bus.protocol.ancestry import GroupTracker
from alto_bus.routing.keytable import KeyTable
from alto_bus.routing.choice import LoadView, pow2_choice

TOKENS16 = list(range(1000, 1016))


def test_encode_a_frame_of_64_token_batches(benchmark):
    msgs = [wire.data([123456789, i], i, TOKENS16, False, 7) for i in range(64)]

    def encode():
        b = wire.FrameBuilder("stage")
        for m in msgs:
            b.add(m)
        return b.take()

    frame = benchmark(encode)
    assert len(wire.decode_frame(frame)[1]) == 64


def test_decode_and_check_a_frame_of_64_token_batches(benchmark):
    frame = wire.encode_frame("stage", [wire.data([123456789, i], i, TOKENS16, False, 7) for i in range(64)])

    def decode():  # what an inbox does: every field of every message checked
        _, parts = wire.split_frame(frame)
        return list(wire.messages(parts, print))

    assert len(benchmark(decode)) == 64


def test_power_of_two_choice(benchmark):
    loads = LoadView()
    loads.update({i: i % 5 for i in range(8)})
    rng = random.Random(0)
    ids = list(range(8))
    assert benchmark(pow2_choice, ids, loads, rng) in ids


def test_key_table_lookup(benchmark):
    table = KeyTable.build(3, list(range(16)))
    assert benchmark(table.owner, (123456789, 4, 2)) in range(16)


def test_group_of_ten_items_completes(benchmark):
    def group():
        t = GroupTracker((1,))
        for i in range(10):
            t.leaf((1, i))
        return t.end((1,), 10)

    assert benchmark(group) is True
