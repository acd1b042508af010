"""Wire format: round trips, frame counts and sizes, and refusal of malformed input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus.protocol import wire


def test_every_kind_round_trips_in_one_frame():
    msgs = [wire.data([7, 0], 0, {"text": "hi"}, True, 3), wire.end([7], 2, 3), wire.drop([7, 1], 3),
            wire.error([7], "split", "ValueError: bad", 3)]
    b = wire.FrameBuilder("split")
    for m in msgs:
        b.add(m)
    assert len(b) == 4
    frame = b.take()
    assert len(b) == 0 and b.nbytes == 0
    stage, got = wire.decode_frame(frame)
    assert stage == "split" and got == msgs
    assert [wire.check_message(m) for m in got] == [wire.DATA, wire.END, wire.DROP, wire.ERROR]
    assert frame == wire.encode_frame("split", msgs)


def test_builder_reports_exact_size_so_the_caller_can_cut_frames():
    b = wire.FrameBuilder("s")
    sizes = [b.add(wire.data([1, i], 0, "x" * 100, True, 0)) for i in range(10)]
    assert sizes == sorted(sizes) and sizes[-1] == b.nbytes
    frame = b.take()
    assert abs(len(frame) - sizes[-1]) < 16  # the header is all that is added


def test_builder_is_empty_after_take_and_reusable():
    b = wire.FrameBuilder("s")
    b.add(wire.drop([1], 0))
    first = b.take()
    b.add(wire.drop([2], 0))
    assert wire.decode_frame(b.take())[1] == [wire.drop([2], 0)]
    assert wire.decode_frame(first)[1] == [wire.drop([1], 0)]


@pytest.mark.parametrize("frame, words", [
    (b"\xc1", "does not decode"),
    (msgpack.packb(5), "not an array"),
    (msgpack.packb([99, "s"]), "protocol version 99"),
    (msgpack.packb([wire.VERSION, 3]), "not a string"),
])
def test_bad_frames_are_refused_with_a_reason(frame, words):
    with pytest.raises(wire.WireError, match=words):
        wire.decode_frame(frame)


@pytest.mark.parametrize("msg, words", [
    ([], "non-empty array"),
    ("x", "non-empty array"),
    ([42, [1]], "unknown message kind 42"),
    ([wire.DATA, [1], 0], "DATA message has 3 fields, needs 6"),
    ([wire.END, [], 1, 0], "bad path"),
    ([wire.DROP, ["a"], 0], "bad path"),
    ([wire.DROP, [1, 2.5], 0], "bad path"),
])
def test_bad_messages_are_refused_with_a_reason(msg, words):
    with pytest.raises(wire.WireError, match=words):
        wire.check_message(msg)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_wire_error(data):
    try:
        stage, msgs = wire.decode_frame(data)
    except wire.WireError:
        return
    for m in msgs:
        try:
            wire.check_message(m)
        except wire.WireError:
            pass


def test_control_and_client_frames_round_trip():
    assert wire.decode_control(wire.encode_control("hello", {"stage": "a"})) == ("hello", {"stage": "a"})
    msgs = [[wire.SUBMIT, 1, "q", False, 3.0], [wire.BYE]]
    assert wire.decode_client_frame(wire.encode_client_frame(msgs)) == msgs
    with pytest.raises(wire.WireError):
        wire.decode_control(msgpack.packb([wire.VERSION, 1, {}]))


def test_join_chunks():
    assert wire.join_chunks(["a", "b"]) == "ab"
    assert wire.join_chunks([[1], [2, 3]]) == [1, 2, 3]
    assert wire.join_chunks([{"a": 1}]) == {"a": 1}


def test_the_epoch_is_read_at_its_own_index_even_when_fields_are_appended():
    for msg in (wire.data([1, 0], 2, "x", True, 7), wire.end([1], 3, 7), wire.drop([1, 2], 7)):
        assert wire.epoch_of(msg) == 7
        assert wire.epoch_of(msg + ["a field a later version appends"]) == 7
