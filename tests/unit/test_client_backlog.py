"""What the gateway keeps for a client that does not read (alto_bus.control.client_backlog), without sockets."""

from __future__ import annotations

import pytest

from alto_bus.control.client_backlog import ClientBacklogs


def test_frames_are_sent_again_in_order_and_an_emptied_client_is_served_again():
    b = ClientBacklogs(max_bytes=1000, max_answers=100)
    assert not b.hold(b"c", b"one", [1], 2, now=0.0)
    assert not b.hold(b"c", b"two", [], 1, now=0.0)
    assert b.holding(b"c") and b.status()["bytes"] == 6 and b.status()["answers"] == 3
    assert b.next_frame(b"c") == b"one"
    b.sent(b"c")
    assert b.next_frame(b"c") == b"two"
    b.sent(b"c")
    assert b.next_frame(b"c") is None
    assert not b.holding(b"c") and b.status()["clients"] == 0 and b.status()["bytes"] == 0


def test_a_client_that_takes_nothing_is_retried_ever_less_often_up_to_the_max_pause():
    b = ClientBacklogs(max_bytes=1000, max_answers=100, first_pause=0.001, max_pause=0.1)
    b.hold(b"c", b"x", [], 1, now=0.0)
    assert b.due(0.0) == [] and b.due(0.001) == [b"c"]
    now, pauses = 0.001, []
    for _ in range(12):
        b.blocked(b"c", now)
        nxt = b.next_retry()
        pauses.append(round(nxt - now, 6))
        assert b.due(nxt - 1e-9) == [] and b.due(nxt) == [b"c"]
        now = nxt
    assert pauses[:4] == [0.001, 0.002, 0.004, 0.008]
    assert pauses[-1] == 0.1 and max(pauses) == 0.1   # a stuck client: ten tries a second, no more
    # Some progress brings the short pause back (a slow reader is not made to wait long).
    b.hold(b"c", b"y", [], 1, now)
    b.sent(b"c")
    b.blocked(b"c", now)
    assert b.next_retry() == pytest.approx(now + 0.001)


@pytest.mark.parametrize("frame, answers", [(b"x" * 101, 1), (b"x", 11)])
def test_over_either_cap_the_client_is_cut_off_and_what_it_did_not_read_is_dropped(frame, answers):
    b = ClientBacklogs(max_bytes=100, max_answers=10)
    assert not b.hold(b"c", b"small", [7], 1, now=0.0)
    assert b.hold(b"c", frame, [8, 9], answers, now=0.0)  # over: the caller cuts it off
    finals, dropped, size = b.cut(b"c")
    assert finals == [7, 8, 9] and dropped == answers + 1 and size == 5 + len(frame)
    st = b.status()
    assert st["bytes"] == 0 and st["cut_off"] == 1 and st["cut_off_now"] == 1
    assert st["dropped_answers"] == answers + 1 and st["dropped_bytes"] == 5 + len(frame)
    assert b.is_cut(b"c") and not b.is_cut(b"other")
    # The notices that replace the answers do not trip the cap a second time.
    assert not b.hold(b"c", b"n" * 200, [7, 8, 9], 3, now=0.0)


def test_a_cut_off_client_gets_refusals_while_they_fit_then_nothing_and_it_is_all_counted():
    b = ClientBacklogs(max_bytes=1000, max_answers=3)
    b.hold(b"c", b"x", [], 4, now=0.0)
    b.cut(b"c")
    for _ in range(3):
        assert b.may_refuse(b"c")
        b.hold(b"c", b"refusal", [1], 1, now=0.0)
    assert not b.may_refuse(b"c") and not b.may_refuse(b"c")
    st = b.status()
    assert st["refused"] == 3 and st["unanswered"] == 2 and st["answers"] == 3
    # Once it has read everything it is served again.
    while b.next_frame(b"c") is not None:
        b.sent(b"c")
    assert not b.is_cut(b"c") and not b.holding(b"c")


def test_a_cut_off_client_with_nothing_left_to_read_is_served_again():
    b = ClientBacklogs(max_bytes=10, max_answers=10)
    b.hold(b"c", b"x" * 11, [], 1, now=0.0)
    b.cut(b"c")
    assert b.is_cut(b"c") and b.next_frame(b"c") is None and not b.is_cut(b"c")


def test_a_gone_client_costs_nothing_and_bad_caps_are_refused():
    b = ClientBacklogs(max_bytes=10, max_answers=10)
    b.hold(b"c", b"x", [], 1, now=0.0)
    b.forget(b"c")
    assert b.status()["clients"] == 0 and b.next_retry() is None
    with pytest.raises(ValueError, match="caps must be >= 1"):
        ClientBacklogs(max_bytes=0, max_answers=10)


def test_a_turns_answers_to_one_client_are_cut_into_frames_of_bounded_size_in_order():
    from alto_bus.control.gateway import CLIENT_FRAME_BYTES, client_frames
    from alto_bus.protocol import wire

    msgs = [[wire.PARTIAL, 1, [i], 0, "x" * 1000, True] for i in range(300)]   # ~300 KB
    frames = client_frames(msgs)
    assert len(frames) >= 5
    assert all(len(f) <= CLIENT_FRAME_BYTES + 2000 for f, _ in frames)
    assert [m for f, part in frames for m in wire.decode_client_frame(f)] == msgs
    assert [m for _, part in frames for m in part] == msgs
    big = [[wire.RESULT, 2, "y" * (2 * CLIENT_FRAME_BYTES)]]     # one message larger goes whole
    assert [part for _, part in client_frames(big)] == [big]
