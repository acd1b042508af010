"""A client's choice among several gateways and its view of their liveness
(alto_bus.client_gateways), on a clock the test drives, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus import Client
from alto_bus.client_gateways import PROBE_MAX, GatewaySet, parse_gateways

A, B, C = "tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002", "ipc:///tmp/alto-gw-3"


def test_one_address_several_joined_by_commas_or_a_sequence():
    assert parse_gateways(A) == (A,)
    assert parse_gateways(f"{A},{B}") == (A, B)
    assert parse_gateways(f" {A} , {B},{C} ") == (A, B, C)
    assert parse_gateways([A, B]) == (A, B) and parse_gateways((C,)) == (C,)


@pytest.mark.parametrize("gateway, named", [
    ("http://127.0.0.1:1", r"Client gateway: 'http://127.0.0.1:1' is not tcp://host:port"),  # as before
    (f"{A},http://x:2", r"Client gateway 2 of 2 .*'http://x:2' is not tcp://host:port"),
    (f"{A},,{B}", r"Client gateway 2 of 3 .*'' is not tcp://host:port"),
    (f"{A},", r"Client gateway 2 of 2 .*''"),
    ([A, 5], r"Client gateway 2 of 2 .*must be a string, got 5"),
    (f"{A},{B},{A}", rf"'{A}' is given twice"),
    ([], r"no address given"),
    (None, r"a sequence of strings, got None"),
    (A.encode(), r"a sequence of strings, got b'tcp"),
])
def test_a_bad_gateway_is_refused_naming_it(gateway, named):
    with pytest.raises(ValueError, match=named):
        parse_gateways(gateway)


def test_the_client_refuses_a_bad_address_among_several_before_it_opens_anything():
    with pytest.raises(ValueError, match=r"Client gateway 2 of 2 .*'tcp://nowhere'"):
        Client(f"{A},tcp://nowhere")


def test_ties_are_taken_in_turn_and_the_fewest_pending_wins():
    gws = GatewaySet([A, B, C], silence=5.0, now=0.0)
    picks = []
    for _ in range(6):  # every request ends at once: all tie, each gateway in turn
        g = gws.choose()
        gws.admitted(g, 0.0)
        gws.ended(g)
        picks.append(g)
    assert picks == [0, 1, 2, 0, 1, 2]
    for _ in range(4):
        gws.admitted(0, 0.0)  # a slow gateway: four requests still pending there
    picks = []
    for _ in range(6):
        g = gws.choose()
        gws.admitted(g, 0.0)
        picks.append(g)
    assert picks.count(0) == 0 and sorted(picks) == [1, 1, 1, 2, 2, 2]
    assert gws.pending == [4, 3, 3]


def test_a_silent_gateway_is_taken_for_gone_only_while_it_has_work_and_comes_back_when_heard():
    gws = GatewaySet([A, B], silence=2.0, now=0.0)
    assert gws.silent(100.0) == []          # nothing pending: silence does not count
    gws.admitted(0, 100.0)                  # the clock starts with its first request
    gws.admitted(1, 100.0)
    gws.heard_from(1, 101.5)
    assert gws.silent(102.0) == []
    assert gws.silent(102.5) == [(0, 2.5)]  # only A: B was heard 1 s ago
    assert gws.down == [True, False]
    gws.cleared(0)                          # the client failed A's requests
    assert [gws.choose() for _ in range(3)] == [1, 1, 1]
    assert gws.silent(110.0) == [(1, 8.5)]
    gws.cleared(1)
    assert gws.choose() is None
    text = gws.none_live_text(110.0)
    assert A in text and B in text and "(10.0 s)" in text and "(8.5 s)" in text
    assert gws.heard_from(0, 111.0) and not gws.heard_from(0, 111.5)  # True once: it is back
    assert gws.choose() == 0


def test_with_one_gateway_the_refusal_reads_as_its_silence():
    gws = GatewaySet([A], silence=1.0, now=0.0)
    gws.admitted(0, 0.0)
    assert gws.silent(1.5) == [(0, 1.5)] and gws.choose() is None
    assert gws.none_live_text(3.0) == (f"no gateway answers: the gateway at {A} has not answered "
                                       "for 3.0 s (gone, or not a gateway)")


def test_pings_go_to_gateways_with_work_and_ever_less_often_to_gone_ones():
    gws = GatewaySet([A, B], silence=1.5, now=0.0)
    assert gws.every == 0.5 and gws.pings_due(0.0) == []  # idle: no pings
    gws.admitted(0, 0.0)
    assert gws.pings_due(0.0) == [0]        # the first request goes with a ping (its PONG names the run)
    assert gws.pings_due(0.4) == [] and gws.pings_due(0.5) == [0]
    gws.silent(2.0)                         # A is taken for gone
    gws.cleared(0)
    times, t = [], 2.0
    while t < 120:
        if gws.pings_due(t):
            times.append(t)
        t = round(t + 0.1, 1)
    pauses = [round(b - a, 1) for a, b in zip(times, times[1:])]
    assert pauses[:4] == [0.5, 1.0, 2.0, 4.0] and max(pauses) == PROBE_MAX and pauses[-1] == PROBE_MAX
    gws.heard_from(0, 120.0)                # back: pinged again only while it has work
    assert gws.pings_due(200.0) == []


def test_a_new_run_is_told_apart_from_the_first_and_from_the_same_one():
    gws = GatewaySet([A, B], silence=5.0, now=0.0)
    assert not gws.restarted(0, "run-1") and not gws.restarted(0, "run-1")
    assert not gws.restarted(1, "other")    # each gateway has its own run
    assert gws.restarted(0, "run-2") and not gws.restarted(0, "run-2")


@pytest.mark.parametrize("silence", [0, -1.0, float("nan")])
def test_a_silence_that_is_not_a_positive_number_is_refused(silence):
    with pytest.raises(ValueError, match="gateway_silence must be a positive number"):
        GatewaySet([A], silence=silence, now=0.0)


ops = st.lists(st.tuples(st.sampled_from(["submit", "end", "silent", "heard"]), st.integers(0, 3)),
               max_size=200)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 4), ops=ops)
def test_each_request_goes_to_a_live_gateway_with_the_fewest_pending(n, ops):
    gws = GatewaySet([f"tcp://127.0.0.1:{5000 + i}" for i in range(n)], silence=1.0, now=0.0)
    now, last = 0.0, None
    for op, k in ops:
        g = k % n
        now += 0.3
        if op == "submit":
            live = [i for i in range(n) if not gws.down[i]]
            chosen = gws.choose()
            if not live:
                assert chosen is None
                continue
            fewest = min(gws.pending[i] for i in live)
            assert chosen in live and gws.pending[chosen] == fewest
            if last is not None and n > 1:  # ties: the first tied one after the last pick
                ties = [i for i in live if gws.pending[i] == fewest]
                assert chosen == min(ties, key=lambda i: (i - last - 1) % n)
            gws.admitted(chosen, now)
            last = chosen
        elif op == "end" and gws.pending[g]:
            gws.ended(g)
        elif op == "silent":
            for gone, _ in gws.silent(now + 2.0):
                assert gws.down[gone]
                gws.cleared(gone)
        elif op == "heard":
            gws.heard_from(g, now)
            assert not gws.down[g]
        assert all(p >= 0 for p in gws.pending)


@given(start=st.lists(st.integers(0, 20), min_size=2, max_size=5), extra=st.integers(0, 100))
def test_requests_that_stay_pending_even_out_the_gateways(start, extra):
    gws = GatewaySet([f"tcp://127.0.0.1:{5000 + i}" for i in range(len(start))], silence=1.0, now=0.0)
    gws.pending = list(start)
    admits = len(start) * max(start) - sum(start) + extra  # enough to fill every gap, and more
    for _ in range(admits):
        gws.admitted(gws.choose(), 0.0)
    assert max(gws.pending) - min(gws.pending) <= 1   # even: the busy ones got fewer new ones
    assert sum(gws.pending) == sum(start) + admits
