"""Wire format: round trips, frame counts and sizes, and refusal of malformed input."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Bye, Cancel, Data, Drop, End, Error, Submit


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
    assert [type(m) for m in got] == [Data, End, Drop, Error]
    assert frame == wire.encode_frame("split", msgs)


def test_typed_messages_are_the_documented_arrays_byte_for_byte():
    # DATA [0, path, seq, payload, final, epoch, trace, turns, left_ms] etc.: a peer that sends
    # plain arrays is understood (and one that stops at epoch: the appended fields take their defaults).
    short = msgpack.packb([wire.VERSION, "split", [wire.DATA, [7, 0], 0, "x", True, 3]])
    assert wire.decode_frame(short)[1] == [wire.data([7, 0], 0, "x", True, 3)]
    as_lists = [[wire.DATA, [7, 0], 0, {"text": "hi"}, True, 3, None, 0, None], [wire.END, [7], 2, 3, None],
                [wire.DROP, [7, 1], 3, None], [wire.ERROR, [7], "split", "ValueError: bad", 3, None]]
    typed = [wire.data([7, 0], 0, {"text": "hi"}, True, 3), wire.end([7], 2, 3), wire.drop([7, 1], 3),
             wire.error([7], "split", "ValueError: bad", 3)]
    frame = msgpack.packb([wire.VERSION, "split", *as_lists], use_bin_type=True)
    assert wire.encode_frame("split", typed) == frame
    assert wire.decode_frame(frame)[1] == typed


@pytest.mark.parametrize("left", [-1, "5", 1.5, 10**13, [1]])
def test_a_time_left_that_is_not_a_count_of_milliseconds_is_refused_naming_the_field(left):
    ok = msgpack.packb([wire.VERSION, "s", [wire.END, [7], 2, 3, 1500]])
    assert wire.decode_frame(ok)[1][0].left_ms == 1500
    bad = msgpack.packb([wire.VERSION, "s", [wire.END, [7], 2, 3, left]])
    with pytest.raises(wire.WireError, match="left_ms"):
        wire.decode_frame(bad)


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
    (b"\xc1", "do not decode"),
    (msgpack.packb(5), "not an array"),
    (msgpack.packb([1]), "not an array"),
    (msgpack.packb([99, "s"]), "protocol version 99"),
    (msgpack.packb([True, "s"]), "protocol version True"),
    (msgpack.packb([wire.VERSION, 3]), "not a string"),
])
def test_bad_frames_are_refused_with_a_reason(frame, words):
    with pytest.raises(wire.WireError, match=words):
        wire.decode_frame(frame)


@pytest.mark.parametrize("msg, words", [
    ([], "not an array of a known kind"),
    ("x", "not an array of a known kind"),
    ([42, [1]], "not an array of a known kind"),
    ([wire.DATA, [1], 0], "DATA message .*length"),
    ([wire.END, [], 1, 0], "END message .*field path"),
    ([wire.DROP, ["a"], 0], "DROP message .*field path"),
    ([wire.DROP, [1, 2.5], 0], "field path"),
    ([wire.DROP, [1, -2], 0], "field path: Expected `int` >= 0"),
    ([wire.DATA, [1], "0", "x", True, 0], "field seq: Expected `int`, got `str`"),
    ([wire.DATA, [1], 0, "x", 1, 0], "field final: Expected `bool`, got `int`"),
    ([wire.DATA, [1], 0, "x", True, -1], "field epoch"),
    ([wire.END, [1], True, 0], "field n: Expected `int`, got `bool`"),
    ([wire.END, [1], 2**64 - 1, 0], "field n"),
    ([wire.ERROR, [1], 5, "m", 0], "field stage: Expected `str`"),
    ([wire.ERROR, [1], "s", ["m"], 0], "field message"),
])
def test_bad_messages_are_refused_naming_the_field(msg, words):
    with pytest.raises(wire.WireError, match=words):
        wire.decode_message(msgpack.packb(msg))


def well_formed_but_wrong() -> st.SearchStrategy:
    """msgpack-valid arrays with a known kind first and any values after: wrong types,
    sizes and ranges in every field (random bytes rarely decode at all)."""
    value = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
                         | st.text(max_size=8) | st.binary(max_size=8),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                      max_size=3),
                         max_leaves=8)
    return st.tuples(st.integers(-1, 5), st.lists(value, max_size=7)).map(lambda t: [t[0], *t[1]])


@settings(max_examples=500, deadline=None)
@given(st.lists(well_formed_but_wrong(), max_size=4))
def test_well_formed_messages_of_wrong_types_are_refused_one_by_one(msgs):
    frame = msgpack.packb([wire.VERSION, "s", *msgs])
    bad: list[str] = []
    _, parts = wire.split_frame(frame)
    good = list(wire.messages(parts, bad.append))
    assert len(good) + len(bad) == len(msgs)
    for m in good:   # what passes has the documented types
        assert all(type(i) is int and i >= 0 for i in m.path) and m.path
        assert type(m.epoch) is int and m.epoch >= 0
    assert all("message" in str(why) for why in bad)
    # Counted by a fixed label: a kind and a field, never the value that came.
    labels = {"unknown kind"} | {f"{k} {f}" for k in ("DATA", "END", "DROP", "ERROR")
                                 for f in ("length", "path", "seq", "payload", "final", "epoch", "n",
                                           "stage", "message")}
    assert all(why.reason in labels for why in bad), [why.reason for why in bad]


@settings(max_examples=300, deadline=None)
@given(st.lists(well_formed_but_wrong(), max_size=4))
def test_client_messages_of_wrong_types_are_refused_one_by_one(msgs):
    bad: list[str] = []
    good = list(wire.client_messages(msgpack.packb([wire.VERSION, *msgs]), bad.append))
    assert len(good) + len(bad) == len(msgs)
    for m in good:
        if isinstance(m, Submit):
            assert type(m.cid) is int and type(m.stream) is bool
            assert m.timeout is None or (type(m.timeout) is float and m.timeout > 0)


def test_a_submit_whose_request_id_is_a_list_is_refused_naming_the_field():
    # The frame that used to take the broker down (unhashable request id).
    bad: list[wire.WireError] = []
    frame = msgpack.packb([1, [0, [1, 2], "x y", False, 5.0], [0, 3, "ok", False, None]])
    got = list(wire.client_messages(frame, bad.append))
    assert got == [Submit(3, "ok", False, None)]
    assert len(bad) == 1 and bad[0].reason == "SUBMIT cid", bad
    assert "SUBMIT message" in str(bad[0]) and "field cid" in str(bad[0])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_wire_error(data):
    try:
        stage, parts = wire.split_frame(data)
    except wire.WireError:
        return
    list(wire.messages(parts, lambda why: None))
    list(wire.client_messages(data, lambda why: None))


def test_control_and_client_frames_round_trip():
    assert wire.decode_control(wire.encode_control("hello", {"stage": "a"})) == ("hello", {"stage": "a"})
    msgs = [[wire.SUBMIT, 1, "q", False, 3.0], [wire.CANCEL, 1], [wire.BYE]]
    frame = wire.encode_client_frame(msgs)
    assert list(wire.client_messages(frame, pytest.fail)) == [Submit(1, "q", False, 3.0), Cancel(1), Bye()]
    assert wire.decode_client_frame(frame) == msgs
    with pytest.raises(wire.WireError):
        wire.decode_control(msgpack.packb([wire.VERSION, 1, {}]))


def test_join_chunks():
    assert wire.join_chunks(["a", "b"]) == "ab"
    assert wire.join_chunks([[1], [2, 3]]) == [1, 2, 3]
    assert wire.join_chunks([{"a": 1}]) == {"a": 1}


def test_fields_appended_by_a_later_version_are_ignored_and_missing_defaults_filled():
    for msg in (wire.data([1, 0], 2, "x", True, 7), wire.end([1], 3, 7), wire.drop([1, 2], 7)):
        later = msgpack.unpackb(wire.encode_frame("s", [msg]))[2] + ["a field a later version appends"]
        assert wire.decode_message(msgpack.packb(later)) == msg
    assert wire.decode_message(msgpack.packb([wire.ERROR, [1], "s", "m"])).epoch == 0
    assert list(wire.client_messages(msgpack.packb([1, [0, 4, "q", True]]), pytest.fail)) == [
        Submit(4, "q", True, None)]
