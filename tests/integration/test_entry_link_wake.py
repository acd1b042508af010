"""An entry instance that stops reading: the gateway parks frames on its link and wakes
when the link has room again, instead of waking every millisecond to retry. A broker in
this process with real sockets, driven turn by turn (no worker processes, no sleeps)."""

from __future__ import annotations

import zmq

from alto_bus.protocol.messages import Submit
from tests.integration.test_broker_instance_loss_bookkeeping import broker_and_inboxes, register


def test_a_full_entry_link_is_watched_for_room_not_polled():
    with broker_and_inboxes(1) as (broker, inboxes):
        inbox = inboxes[0]
        inbox.setsockopt(zmq.RCVHWM, 1)
        address = inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        register(broker, b"slow", "slow", "tcp://127.0.0.1:9", now=0.0)
        iid = register(broker, b"fan-1", "fan", address, now=0.0)
        link = broker.entries[iid]
        link.sock.close(linger=0)  # the same link with a queue of one frame (set before connecting)
        link.sock = broker.ctx.socket(zmq.PUSH)
        link.sock.setsockopt(zmq.SNDHWM, 1)
        link.sock.setsockopt(zmq.IMMEDIATE, 1)
        link.sock.connect(address)
        poller = broker._poller = zmq.Poller()
        # Requests until the link parks frames (its peer reads nothing): one frame each.
        for cid in range(2000):
            out: list = []
            broker._submit(b"client", Submit(cid, "x" * 20_000, False, 30.0), 0.0, out)
            broker._send_entry(link)
            if link.backlog:
                break
        assert link.backlog, "the link never filled"
        broker._watch_entries()
        broker._tick(0.0)  # the next tick is a heartbeat interval (0.1 s) away
        assert broker._next_wake(0.0) == broker._next_tick == 0.1, "a parked frame must not busy-wake the loop"
        assert link.sock in broker._pollout, "the parked link is watched for room to send"
        # The instance reads again: the link's room wakes the loop, and the frames go out.
        parked = len(link.backlog)
        got = 0
        for _ in range(200):
            while inbox.poll(0):
                inbox.recv()
                got += 1
            if dict(poller.poll(100)).get(link.sock) == zmq.POLLOUT:
                broker._flush_entries()
                broker._watch_entries()
            if not link.backlog:
                break
        assert not link.backlog, f"{len(link.backlog)} of {parked} frames still parked"
        sent = cid + 1   # one request per frame
        while got < sent and inbox.poll(5000):
            inbox.recv()
            got += 1
        assert got == sent, f"{got} of {sent} requests reached the instance"
        assert link.sock not in broker._pollout, "an empty link is not watched"
