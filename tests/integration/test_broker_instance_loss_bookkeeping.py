"""The broker's record of what its gateway sent to each entry instance, when instances die
together (a host lost) or die while draining: every request that was on its way to one of
them must fail at once, naming it. A broker in this process, real sockets, driven tick by
tick with a chosen clock: no worker processes, no sleeps."""

from __future__ import annotations

import contextlib

import zmq

from alto_bus.protocol import wire
from alto_bus.protocol.control_bodies import convert
from alto_bus.protocol.messages import Submit
from alto_bus.control.broker import Broker
from alto_bus.deploy.topology import parse

H = "tests.integration.handlers"


def topology():
    return parse({
        "broker": {"heartbeat_interval": 0.1, "heartbeat_liveness": 3},
        "stage": [
            {"name": "fan", "kind": "function", "handler": f"{H}:split"},
            {"name": "slow", "kind": "function", "handler": f"{H}:upper", "input": "fan"},
        ],
    }, check_handlers=False)


@contextlib.contextmanager
def broker_and_inboxes(n: int):
    ctx = zmq.Context()
    broker = Broker(topology(), ctx=ctx)
    inboxes = []
    try:
        for _ in range(n):
            inbox = ctx.socket(zmq.PULL)
            inbox.bind("tcp://127.0.0.1:*")
            inboxes.append(inbox)
        yield broker, inboxes
    finally:
        for sock in inboxes:
            sock.close(linger=0)
        broker.close()
        ctx.term()


def register(broker: Broker, name: bytes, stage: str, address: str, now: float) -> int:
    broker._op_ready(name, convert("ready", {"stage": stage, "address": address, "pid": 1,
                                             "host": name.decode()}), now)
    broker._publish_table()  # what the loop does after a turn of control messages
    return broker.members.by_identity[name]


def submit_and_deliver(broker: Broker, inbox: zmq.Socket, cid: int, now: float) -> int:
    out: list = []
    broker._submit(b"client", Submit(cid, f"item {cid}", False, 30.0), now, out)
    assert not out, out
    for _ in range(500):  # the link queues only once connected (IMMEDIATE): flush until it is
        broker._flush_entries()
        if inbox.poll(10):
            break
    else:
        raise AssertionError("the request did not reach the entry instance")
    _, msgs = wire.decode_frame(inbox.recv())
    return msgs[0].path[0]


def failures(broker: Broker) -> dict[int, tuple[str, str]]:
    return {m[1]: (m[2], m[3]) for m in broker.gateway_io.pending.get(b"client", []) if m[0] == wire.FAILED}


def test_instances_that_die_in_the_same_tick_all_fail_what_was_sent_to_them():
    with broker_and_inboxes(1) as (broker, (inbox,)):
        address = inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        # The later stage registers first, so the broker meets its death first; the new
        # table it publishes then no longer lists the entry instance.
        register(broker, b"slow-on-h3", "slow", "tcp://127.0.0.1:9", now=0.0)
        fan = register(broker, b"fan-on-h3", "fan", address, now=0.0)
        # Delivered into the instance's inbox, after its last heartbeat: in no "held" report.
        submit_and_deliver(broker, inbox, cid=1, now=0.0)
        broker._tick(10.0)  # both silent far past liveness
        assert not broker.members.instances
        failed = failures(broker)
        assert 1 in failed, "a request sent to the dead entry instance was not failed"
        stage, message = failed[1]
        assert stage == "fan" and f"instance {fan} of stage 'fan'" in message and "died" in message


def test_a_draining_entry_instance_that_dies_fails_what_it_was_sent_before_leaving():
    with broker_and_inboxes(2) as (broker, inboxes):
        addresses = [s.getsockopt(zmq.LAST_ENDPOINT).decode() for s in inboxes]
        register(broker, b"slow", "slow", "tcp://127.0.0.1:9", now=0.0)
        first = register(broker, b"fan-1", "fan", addresses[0], now=0.0)
        register(broker, b"fan-2", "fan", addresses[1], now=0.0)
        broker.entries[first + 1].backlog.append(b"")  # not writable: the request goes to fan-1
        submit_and_deliver(broker, inboxes[0], cid=7, now=0.0)
        broker.entries[first + 1].backlog.clear()
        broker._op_leave(b"fan-1", convert("leave", {}), now=0.0)  # out of the routing table, draining
        assert first not in broker.entries
        for name in (b"slow", b"fan-2"):  # the others stay alive
            broker._op_heartbeat(name, convert("heartbeat", {"depth": 0, "held": []}), now=10.0)
        broker._tick(10.0)
        assert first not in broker.members.instances
        stage, message = failures(broker)[7]
        assert stage == "fan" and f"instance {first} of stage 'fan'" in message and "died" in message
