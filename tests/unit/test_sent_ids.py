"""Request ids sent to a peer, kept in case it dies: recent window, older ids. No sockets."""

from __future__ import annotations

from alto_bus.routing.sent_ids import SentIds


def test_ids_stay_recent_for_the_window_then_become_older():
    sent = SentIds(window=3)
    sent.add(1)
    sent.rotate()
    sent.add(2)
    sent.rotate()
    assert sent.lost() == ([1, 2], [])
    sent.rotate()  # 1 was sent three intervals ago
    assert sent.lost() == ([2], [1])


def test_a_window_of_two_is_since_the_last_heartbeat_and_the_interval_before():
    sent = SentIds(window=2)
    sent.add(1)
    sent.rotate()
    sent.add(2)
    assert sent.lost() == ([1, 2], [])
    sent.rotate()
    assert sent.lost() == ([2], [1])


def test_ended_requests_are_forgotten_everywhere():
    sent = SentIds(window=2)
    for rid in (1, 2, 3):
        sent.add(rid)
        sent.rotate()
    sent.forget([1, 3])
    assert sent.lost() == ([], [2])


def test_only_requests_still_in_flight_become_older_when_asked():
    sent = SentIds(window=1)
    sent.add(1)
    sent.add(2)
    sent.rotate(keep_if={2})
    assert sent.lost() == ([], [2])


def test_what_is_also_lost_joins_the_recent_ids_and_leaves_the_older():
    sent = SentIds(window=1)
    sent.add(5)
    sent.rotate()
    assert sent.lost(also=[5, 9]) == ([5, 9], [])


def test_older_ids_are_bounded_forgetting_the_oldest():
    sent = SentIds(window=1, memory=3)
    for rid in range(5):
        sent.add(rid)
    assert sent.rotate() == 2
    assert sent.lost() == ([], [2, 3, 4])
