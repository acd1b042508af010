"""The broker's failure ledger, without sockets: what a user of the bus would check when an
instance dies, is suspected, or retires while draining."""

from __future__ import annotations

from alto_bus.control.failure_ledger import Departure, FailureLedger

WAIT = 0.3  # liveness x heartbeat interval


def died(stage: str = "fan", host: str = "h3", identity: bytes = b"w1") -> Departure:
    return Departure(stage, 42, host, identity, "died (no heartbeat for 1.0 s)")


def nothing_held() -> set[int]:
    return set()


def test_every_request_held_by_a_dead_instance_is_failed_once_naming_stage_instance_and_host():
    ledger = FailureLedger(WAIT)
    failures = ledger.departed(7, died(), now=0.0, held=[1, 2], recent=[2, 3])
    assert sorted(f.rid for f in failures) == [1, 2, 3]
    for f in failures:
        assert f.stage == "fan"
        assert "instance 7 of stage 'fan'" in f.message and "on h3" in f.message and "died" in f.message
    # Nothing of it comes back later: those requests were settled at once.
    assert ledger.settle(10.0, in_flight={1, 2, 3}, alive=set(), held=nothing_held) == []


def test_items_sent_earlier_are_failed_when_due_unless_they_ended_or_live_work_holds_them():
    ledger = FailureLedger(WAIT)
    ledger.departed(7, died(), now=0.0, held=[1], older=[1, 10, 11, 12])
    assert ledger.settle(0.1, in_flight={10, 11, 12}, alive=set(), held=nothing_held) == []  # not due
    # 10 ended meanwhile; 11 is held by a live instance; 12 is nobody's.
    failures = ledger.settle(1.0, in_flight={11, 12}, alive=set(), held=lambda: {11})
    assert [(f.rid, f.stage, f.cause) for f in failures] == [(12, "fan", "doubtful")]
    assert "instance 7 of stage 'fan'" in failures[0].message
    # Once the live instance no longer holds 11 and it is still in flight, it fails.
    assert [f.rid for f in ledger.settle(2.0, in_flight={11}, alive=set(), held=nothing_held)] == [11]


def test_a_reported_loss_fails_after_the_wait_unless_the_instance_comes_back():
    ledger = FailureLedger(WAIT)
    ledger.departed(7, died(identity=b"w7"), now=0.0)
    ledger.departed(8, died(identity=b"w8"), now=0.0)
    ledger.reported_lost(7, [1, 2], now=0.0)
    ledger.reported_lost(8, [3], now=0.0)
    assert ledger.settle(0.1, in_flight={1, 2, 3}, alive=set(), held=nothing_held) == []
    # w8 registered again: it was only slow, and it has request 3's items.
    failures = ledger.settle(1.0, in_flight={1, 3}, alive={b"w8"}, held=nothing_held)
    assert [(f.rid, f.iid, f.cause) for f in failures] == [(1, 7, "lost")]  # 2 ended meanwhile
    assert "items of this request were sent to it" in failures[0].message


def test_a_request_named_twice_is_failed_once():
    ledger = FailureLedger(WAIT)
    ledger.departed(7, died(), now=0.0, older=[5])
    ledger.reported_lost(7, [5], now=0.0, older=[5])
    ledger.reported_lost(7, [5], now=0.0)
    failures = ledger.settle(1.0, in_flight={5}, alive=set(), held=nothing_held)
    assert [f.rid for f in failures] == [5]


def test_a_retired_instances_link_stays_until_it_departs():
    ledger = FailureLedger(WAIT)
    link = object()
    ledger.retired_from_routing(4, link)
    assert ledger.state(4) == "retired" and ledger.retired_link(4) is link
    ledger.settle(100.0, in_flight=set(), alive=set(), held=nothing_held)
    assert ledger.retired == {4: link}, "settling other things must not drop a draining instance's link"
    ledger.departed(4, died(), now=100.0, recent=[9])
    assert ledger.retired_link(4) is None and ledger.state(4) == "gone"


def test_a_retired_link_goes_when_its_instance_is_no_member_any_more():
    ledger = FailureLedger(WAIT)
    ledger.retired_from_routing(4, object())
    ledger.left_membership(members={5})
    assert ledger.retired == {} and ledger.records == {}


def test_nothing_grows_without_bound_once_settled():
    ledger = FailureLedger(WAIT, memory=50)
    for iid in range(1, 1001):
        ledger.departed(iid, died(identity=b"w%d" % iid), now=float(iid), held=[iid], older=[iid + 10_000])
        ledger.reported_lost(iid, [iid + 20_000], now=float(iid))
        ledger.settle(float(iid) + 1.0, in_flight=set(), alive=set(), held=nothing_held)
    assert len(ledger.records) <= 50
    assert all(not r.suspects and not r.doubtful for r in ledger.records.values())
    # The newest are the ones remembered: a late report about them still names the instance.
    assert ledger.state(1000) == "gone" and ledger.state(1) is None


def test_a_loss_reported_for_an_instance_never_seen_leaving_is_settled_and_forgotten():
    ledger = FailureLedger(WAIT)
    ledger.reported_lost(3, [1], now=0.0)
    assert ledger.state(3) == "suspected"
    failures = ledger.settle(1.0, in_flight={1}, alive=set(), held=nothing_held)
    assert [f.rid for f in failures] == [1] and "instance 3" in failures[0].message
    assert ledger.records == {}
