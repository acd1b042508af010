"""A worker's control thread never dies silently: a failing turn is logged and the link
carries on; a link whose every turn fails tells the worker, which exits non-zero."""

from __future__ import annotations

import queue

import zmq

from alto_bus.protocol import wire
from alto_bus.runtime.control_link import MAX_FAILED_TURNS, ControlLink


def registered_link(snapshot) -> tuple[ControlLink, zmq.Socket, queue.Queue]:
    ctx = zmq.Context.instance()
    broker = ctx.socket(zmq.ROUTER)
    port = broker.bind_to_random_port("tcp://127.0.0.1")
    events: queue.Queue = queue.Queue()
    link = ControlLink(ctx, f"tcp://127.0.0.1:{port}", lambda op, body: events.put((op, body)), snapshot)
    link.start()
    link.send("ready", {"stage": "s", "address": "tcp://127.0.0.1:9"})
    assert broker.poll(10_000), "the link did not send ready"
    identity, frame = broker.recv_multipart()
    assert wire.decode_control(frame)[0] == "ready"
    broker.send_multipart([identity, wire.encode_control("welcome", {"heartbeat_interval": 0.01})])
    return link, broker, events


def ops_until(events: queue.Queue, op: str, timeout: float = 10.0) -> dict:
    while True:
        got, body = events.get(timeout=timeout)
        if got == op:
            return body


def test_a_link_whose_turns_keep_failing_tells_the_worker_and_ends():
    def broken() -> dict:
        raise RuntimeError("snapshot bug")

    link, broker, events = registered_link(broken)
    try:
        body = ops_until(events, "control_failed")
        assert body == {"turns": MAX_FAILED_TURNS}
        link.join(10)
        assert not link.is_alive()
    finally:
        link.stop()
        broker.close(linger=0)


def test_a_few_failed_turns_do_not_stop_the_heartbeats():
    calls = [0]

    def flaky() -> dict:
        calls[0] += 1
        if calls[0] <= 3:
            raise RuntimeError("a passing bug")
        return {"depth": 0, "held": []}

    link, broker, events = registered_link(flaky)
    try:
        ops = []
        while len(ops) < 3:
            assert broker.poll(10_000), "no heartbeat after the failed turns"
            _, frame = broker.recv_multipart()
            ops.append(wire.decode_control(frame)[0])
        assert ops == ["heartbeat"] * 3
        assert link.is_alive()
        assert [events.get_nowait()[0] for _ in range(events.qsize())] == ["welcome"]
    finally:
        link.stop()
        link.join(5)
        broker.close(linger=0)
