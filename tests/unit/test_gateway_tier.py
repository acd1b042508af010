"""The pure pieces of several gateways: who admits which request id, where a result goes,
what a gateway knows of the membership, and that nothing the broker's socket carries can
crash a gateway process."""

from __future__ import annotations

import random

import time

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from alto_bus.control.broker_gateways import own_ids
from alto_bus.control.gateway_process import gateway_address
from alto_bus.control.membership_mirror import MembershipMirror
from alto_bus.control.request_book import Gateway
from alto_bus.deploy.topology import parse
from alto_bus.protocol import gateway_bodies, wire
from alto_bus.protocol.control_bodies import BodyError
from alto_bus.routing.route_table import GATEWAY, PARK, RouteTable, gateway_dest


def test_gateway_g_of_n_admits_only_ids_that_are_g_mod_n_and_the_sink_sends_them_back_to_it():
    n = 3
    books = [Gateway(30.0, 100, g, n) for g in range(n)]
    for g, book in enumerate(books):
        rids = [book.admit(b"c", cid, False, None, 0.0) for cid in range(50)]
        assert all(r % n == g for r in rids) and len(set(rids)) == 50
        assert {gateway_dest(r, n) for r in rids} == {-g}
    assert gateway_dest(12345, 1) == GATEWAY
    assert own_ids([3, 4, 5, 6, 7], 1, 3) == [4, 7]


def test_the_last_stage_routes_each_result_to_its_gateway_and_parks_it_while_that_one_is_unknown():
    sink = RouteTable("last", results=["tcp://g0:1", "", "tcp://g2:1"])
    msg = wire.data([9], 0, "x", True, 1)
    assert sink.route(msg, [9]) == 0          # 9 % 3 == 0: the broker's own gateway
    assert sink.route(msg, [11]) == -2
    assert sink.route(msg, [10]) is PARK      # gateway 1 has not said hello yet
    assert sink.address(-2) == "tcp://g2:1"
    sink.apply({"epoch": 2, "stages": {}, "results": ["tcp://g0:1", "tcp://g1:1", "tcp://g2:1"]})
    assert sink.route(msg, [10]) == -1
    # A gateway restarted elsewhere: its link is dropped as moved; one not yet known is kept.
    assert sink.gone({-1: "tcp://old:1", -2: "tcp://g2:1", 0: "tcp://g0:1"}) == [(-1, "moved")]
    one = RouteTable("last", results="tcp://g0:1")
    assert one.route(msg, [10]) == GATEWAY and one.address(GATEWAY) == "tcp://g0:1"


def test_a_fixed_port_moves_by_two_per_gateway_and_port_zero_stays_any():
    assert gateway_address("tcp://127.0.0.1:0", 3) == "tcp://127.0.0.1:0"
    assert gateway_address("tcp://10.0.0.1:5001", 1) == "tcp://10.0.0.1:5003"
    assert gateway_address("tcp://10.0.0.1:5002", 2) == "tcp://10.0.0.1:5006"
    assert gateway_address("ipc:///tmp/gw", 1) == "ipc:///tmp/gw"


def view(**fields) -> gateway_bodies.View:
    return gateway_bodies.convert("gw_view", {"epoch": 4, **fields})


def test_the_mirror_answers_admission_from_the_broker_view_and_goes_stale_without_it():
    m = MembershipMirror("entry", stale_after=2.0)
    assert not m.fresh(0.0) and not m.complete and m.routable("entry") == []
    assert m.update(view(entry=[[1, "tcp://a:1"], [2, "tcp://b:1"]], entry_members=[1, 2, 3],
                         loads={1: 5}, held=[7, 8], returned=[b"\x01w".hex()], missing=[]), 10.0)
    assert m.fresh(11.0) and m.complete and m.epoch == 4
    assert m.routable("entry") == [1, 2] and m.routable("other") == []
    assert m.table["stages"]["entry"] == [[1, "tcp://a:1"], [2, "tcp://b:1"]]
    assert 3 in m.member_ids and m.held() == {7, 8} and m.loads() == {1: 5}
    assert b"\x01w" in m.by_identity
    assert not m.update(view(entry=[[1, "tcp://a:1"], [2, "tcp://b:1"]], missing=["later"]), 11.0)
    assert not m.complete and m.count("later") == 0 and m.count("entry") == 1
    assert not m.fresh(13.5), "a view older than stale_after counts as none"


def test_a_bad_body_from_the_broker_is_refused_naming_the_op_and_field():
    with pytest.raises(BodyError) as err:
        gateway_bodies.convert("gw_view", {"epoch": "four"})
    assert err.value.reason == "gw_view epoch"
    with pytest.raises(BodyError) as err:
        gateway_bodies.convert("gw_departed", {"iid": 3, "stage": "s", "held": [1, -2]})
    assert err.value.reason == "gw_departed held"


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                      | st.binary(max_size=20),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                      max_leaves=12)


@pytest.fixture(scope="module")
def gateway_process():
    """A real gateway 1 on loopback (no broker answers it): its message handling whole."""
    from alto_bus.control.gateway_process import GatewayProcess

    topo = parse({"broker": {"gateways": 2},
                  "stage": [{"name": "s", "kind": "function", "handler": "tests.integration.handlers:upper",
                             "retries": 1}]}, check_handlers=False)
    gw = GatewayProcess(topo, "tcp://127.0.0.1:9", 1)
    gw._poller = zmq.Poller()
    yield gw
    gw.close()


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(sorted(gateway_bodies.TO_GATEWAY)),
       body=st.dictionaries(st.sampled_from(["epoch", "entry", "loads", "held", "iid", "stage", "rids", "older",
                                             "identity", "retry", "entry_members", "pool_members", "returned",
                                             "placements", "missing", "index", "why", "reason"]), values, max_size=6))
def test_no_message_on_the_broker_socket_crashes_a_gateway(gateway_process, op, body):
    """Well-formed msgpack of every op a gateway takes, with fields of any type and size:
    each is refused (counted) or handled; none raises, and the gateway still admits."""
    gw = gateway_process
    if op in ("reject", "shutdown"):
        return  # they end the process on purpose
    gw._on_broker(msgspec.msgpack.encode([wire.VERSION, op, body]))
    gw._on_broker(msgspec.msgpack.encode([wire.VERSION, "no such op", body]))
    rng = random.Random(len(body))
    gw._on_broker(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
    gw._tick(time.monotonic())
    assert not gw.stopping


def test_key_tables_stay_published_for_the_epoch_a_gateway_admits_with_before_it_reports():
    """A gateway stamps requests with its view's epoch: the broker keeps the key tables of
    that epoch from the moment it sends the view (hello), then by what the gateway reports
    (its oldest request's epoch, or its view's), never only by its own requests."""
    from types import SimpleNamespace

    from alto_bus.control.broker_gateways import BrokerGateways

    class Tier(BrokerGateways):
        def __init__(self) -> None:
            self.cfg = SimpleNamespace(gateways=2, heartbeat_interval=0.5, heartbeat_liveness=4)
            self.members = SimpleNamespace(epoch=4)
            self.gateway = Gateway(30.0, 100, 0, 2)
            self.sent: list[tuple] = []
            self._init_gateways()

        def _send_control(self, identity, op, body=None):
            self.sent.append((op, body))

        def _membership_changed(self):
            pass

        def _send_views(self, *a):
            pass

    tier = Tier()
    assert tier._oldest_epoch() == 4
    hello = gateway_bodies.GatewayHello(index=1, gateway="tcp://g:1", results="tcp://g:2")
    now = time.monotonic()
    tier._op_gw_hello(b"gw1", hello, now)
    tier.members.epoch = 6          # two registrations later, no request in flight at gateway 0
    assert tier._oldest_epoch() == 4, "gateway 1 may still admit with the view of epoch 4"
    tier._op_gw_report(b"gw1", gateway_bodies.GatewayReport(oldest=6), now)
    assert tier._oldest_epoch() == 6
    tier._op_gw_report(b"gw1", gateway_bodies.GatewayReport(oldest=5), now)
    assert tier._oldest_epoch() == 5
    tier.peers[1].last_seen = now - 2.5  # silent for more than 4 beats of 0.5 s: gone
    assert tier._oldest_epoch() == 6
    assert ("gw_welcome", {"index": 1, "heartbeat_interval": 0.5, "liveness": 4}) in tier.sent
