"""The broker's membership table and the record of ended requests that lets senders forget
what they sent (both pure: no sockets)."""

from __future__ import annotations

import random

from alto_bus.protocol import wire
from alto_bus.routing.route_table import RouteTable
from alto_bus.control.request_book import Gateway
from alto_bus.control.membership import Membership


def test_a_pool_member_is_in_the_table_of_the_epoch_that_adds_it():
    m = Membership(["answer"], heartbeat_interval=0.1, liveness=3)
    plain = m.add("answer", b"w1", "tcp://a:1", 11, "h1", now=0.0)
    assert m.table["members"] == {} and plain.pool is None and plain.member is None
    epoch = m.epoch
    inst = m.add("answer", b"w2", "tcp://a:2", 12, "h1", now=0.0, pool="llama", member="m0")
    assert m.epoch == epoch + 1  # one new epoch, whose table already lists the member
    assert (inst.pool, inst.member) == ("llama", "m0")
    assert m.table["epoch"] == m.epoch and m.table["members"] == {inst.iid: "m0"}
    assert [iid for iid, _ in m.table["stages"]["answer"]] == [plain.iid, inst.iid]


def test_time_the_broker_could_not_run_is_not_an_instances_silence():
    m = Membership(["s"], heartbeat_interval=0.2, liveness=3)
    quiet = m.add("s", b"w1", "tcp://a:1", 11, "h1", now=0.0)
    lost = m.add("s", b"w2", "tcp://a:2", 12, "h1", now=0.0)
    m.heartbeat(b"w1", 1.0, 0, [], {})
    m.heartbeat(b"w2", 1.0, 0, [], {})
    m.excuse(3.0, now=4.0)  # paused from 1.0 to 4.0: their heartbeats meanwhile are still queued
    assert m.dead(4.1) == []
    m.heartbeat(b"w1", 4.2, 0, [], {})  # one of them was alive all along
    assert [i.iid for i in m.dead(4.0 + 0.6 + 0.01)] == [lost.iid] and quiet.iid in m.instances


def test_every_way_a_request_ends_is_recorded_once():
    g = Gateway(request_timeout=1.0, max_inflight=10)
    out: list = []
    done = g.admit(b"c", 1, False, None, now=0.0)
    failed = g.admit(b"c", 2, False, None, now=0.0)
    expired = g.admit(b"c", 3, False, 0.5, now=0.0)
    gone = g.admit(b"d", 1, False, None, now=0.0)
    running = g.admit(b"c", 4, False, None, now=0.0)
    g.on_message(wire.data([done], 0, "x", True, 0), out)
    g.fail(failed, "s", "boom", out)
    g.expire(0.6, out)
    g.drop_client(b"d")
    assert sorted(g.ended) == sorted([done, failed, expired, gone])
    assert running in g.requests and running not in g.ended


def test_key_tables_of_every_epoch_in_flight_are_published_and_a_late_sender_uses_them():
    # A new instance upstream of a keyed stage, joining at epoch e+2, still routes the
    # keyed items of requests admitted at epoch e to their owner of epoch e.
    m = Membership(["up", "agg"], heartbeat_interval=0.1, liveness=3, keyed={"agg": 0.25})
    m.add("up", b"u1", "tcp://u:1", 1, "h", now=0.0)
    a1 = m.add("agg", b"a1", "tcp://a:1", 2, "h", now=0.0)
    a2 = m.add("agg", b"a2", "tcp://a:2", 3, "h", now=0.0)
    old_epoch = m.epoch
    old = RouteTable("up", "agg", 2, rng=random.Random(0))
    old.apply(m.published(oldest=old_epoch))
    m.add("agg", b"a3", "tcp://a:3", 4, "h", now=0.0)       # the key table changes
    m.add("up", b"u2", "tcp://u:2", 5, "h", now=0.0)        # the late sender's epoch
    late = RouteTable("up", "agg", 2, rng=random.Random(0))
    late.apply(m.published(oldest=old_epoch))              # requests of old_epoch are in flight
    for rid in range(50):
        path = [rid, 0]
        msg = wire.data(path, 0, "x", True, old_epoch)
        assert late.route(msg, path) == old.route(msg, path) in (a1.iid, a2.iid)
    # Once no request of those epochs is in flight, their tables are no longer published.
    assert [t["epoch"] for t in m.published(oldest=m.epoch - 1)["older"]] == [m.epoch - 1]
    assert "older" not in m.published(oldest=m.epoch)
