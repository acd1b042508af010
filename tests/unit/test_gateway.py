"""The gateway's request book, without sockets."""

from __future__ import annotations

from alto_bus.protocol import wire
from alto_bus.control.request_book import Gateway


def book(**kw) -> Gateway:
    return Gateway(request_timeout=kw.get("timeout", 10.0), max_inflight=kw.get("max_inflight", 100))


def feed(g: Gateway, msgs) -> list:
    out = []
    for m in msgs:
        g.on_message(m, out)
    return out


def test_leaves_in_any_order_give_the_list_ordered_by_path():
    g = book()
    rid = g.admit(b"c", 1, False, None, 0.0)
    out = feed(g, [wire.data([rid, 1, 0], 0, "b0", True, 0), wire.end([rid, 1], 1, 0),
                   wire.data([rid, 0], 0, "a", True, 0), wire.drop([rid, 2], 0)])
    assert out == []
    out = feed(g, [wire.end([rid], 3, 0)])
    assert out == [(b"c", [wire.RESULT, 1, ["a", "b0"]])]
    assert not g.requests and b"c" not in g.by_client  # nothing kept for an idle client


def test_the_requests_own_item_is_a_single_value_and_chunks_are_joined():
    g = book()
    rid = g.admit(b"c", 1, True, None, 0.0)
    out = feed(g, [wire.data([rid], 0, "Hel", False, 0), wire.data([rid], 1, "lo", True, 0)])
    assert out[:2] == [(b"c", [wire.PARTIAL, 1, [], 0, "Hel", False]), (b"c", [wire.PARTIAL, 1, [], 1, "lo", True])]
    assert out[2] == (b"c", [wire.RESULT, 1, "Hello"])


def test_an_error_ends_the_request_once_and_later_messages_are_counted_late():
    g = book()
    rid = g.admit(b"c", 1, False, None, 0.0)
    out = feed(g, [wire.error([rid, 0], "s", "boom", 0), wire.data([rid, 1], 0, "x", True, 0)])
    assert out == [(b"c", [wire.FAILED, 1, "s", "boom"])]
    assert g.stats.late_messages == 1 and g.stats.failed == 1


def test_deadline_names_what_the_request_was_waiting_on():
    g = book(timeout=1.0)
    rid = g.admit(b"c", 1, False, None, 0.0)
    feed(g, [wire.end([rid], 2, 0), wire.data([rid, 0], 0, "a", True, 0)])
    out = []
    assert g.expire(0.5, out) == [] and out == []
    assert g.expire(1.5, out) == [rid]
    (_, msg), = out
    assert msg[0] == wire.FAILED and msg[2] == "gateway"
    assert "deadline exceeded" in msg[3] and "1 of 2 children" in msg[3]


def test_admission_limits_and_bad_requests():
    g = book(max_inflight=1)
    assert isinstance(g.admit(b"c", 1, False, None, 0.0), int)
    assert g.admit(b"c", 2, False, None, 0.0).startswith("overloaded")
    g2 = book()
    assert g2.admit(b"c", 1, False, -1, 0.0).startswith("bad request")
    g2.admit(b"c", 1, False, None, 0.0)
    assert "already in flight" in g2.admit(b"c", 1, False, None, 0.0)


def test_inconsistent_ancestry_fails_the_request_clearly():
    g = book()
    rid = g.admit(b"c", 1, False, None, 0.0)
    out = feed(g, [wire.end([rid], 1, 0), wire.end([rid], 1, 0)])
    assert out[0][1][0] == wire.FAILED and "second END" in out[0][1][3]


def test_a_departed_client_is_forgotten():
    g = book()
    for cid in range(5):
        g.admit(b"gone", cid, False, None, 0.0)
    assert len(g.drop_client(b"gone")) == 5
    assert not g.requests and b"gone" not in g.by_client


def test_the_oldest_epoch_in_flight_follows_the_requests_that_end():
    g = book()
    assert g.oldest_epoch(7) == 7                       # nothing in flight: the current one
    a = g.admit(b"c", 1, False, None, 0.0, 3)
    b = g.admit(b"c", 2, False, None, 0.0, 5)
    g.admit(b"c", 3, False, None, 0.0, 5)
    assert g.oldest_epoch(6) == 3
    feed(g, [wire.data([a], 0, "x", True, 3)])          # the epoch-3 request ends
    assert g.oldest_epoch(6) == 5
    feed(g, [wire.data([b], 0, "y", True, 5)])
    assert g.oldest_epoch(6) == 5                       # one epoch-5 request is still on its way
