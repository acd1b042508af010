"""A lone message takes the short way through a worker: its frame is read in one decode,
and the item it yields leaves at once in a frame of its own, past the batches and the
flush. It still gets everything the long way gives: its time left, its request id noted
for lost reports, the counts, the handler's time; and what comes with other messages is
still coalesced. On fake sockets: no ZeroMQ I/O."""

from __future__ import annotations

import asyncio
import collections
import random

import msgspec
import pytest

from alto_bus.deploy.topology import StageConfig
from alto_bus.protocol import wire
from alto_bus.protocol.messages import Data
from alto_bus.routing.consumer_routes import ConsumerRoutes
from alto_bus.runtime.build_logic import build_logic
from alto_bus.runtime.outbox import Outboxes
from alto_bus.runtime.worker import Worker
from tests.unit.test_outbox import FakeSocket, msgs_of

STAGE_A = {"name": "a", "kind": "function", "input": None, "replicas": 1, "inbox": "tcp://127.0.0.1:0",
           "advertise": None, "queue": 1000, "concurrency": 256, "flush_ms": 1.0, "batch_bytes": 65536,
           "fields": {}, "next": "b", "fans_out": False, "out_depth": 1, "key_depth": None}
NEXT = 5  # the one instance of stage b


def upper(text: str) -> str:
    return text.upper()


def worker_to_b(loop: asyncio.AbstractEventLoop, room: int = 1000) -> tuple[Worker, dict[int, FakeSocket]]:
    """A worker of stage a whose items go to instance NEXT of stage b, on fake sockets."""
    w = Worker("a", handler=upper, broker="tcp://127.0.0.1:1")
    w._loop = loop
    w.config = StageConfig.from_dict(STAGE_A)
    welcome = {"consumers": [{"config": {"name": "b", "inputs": ["a"]}, "pool": None}], "results": "tcp://gw:1"}
    w.routes = ConsumerRoutes.from_welcome("a", welcome, random.Random(1))
    w.routes.apply({"epoch": 1, "dead": [], "stages": {"b": [[NEXT, "tcp://h:5"]]}})
    sockets: dict[int, FakeSocket] = {}

    def connect(dest: int) -> tuple[str, FakeSocket]:
        sockets[dest] = FakeSocket(room)
        return w.routes.address(dest), sockets[dest]

    w.outboxes.connect = connect
    w.logic = build_logic(w.config, upper, None)
    w.logic.bind(w)
    return w, sockets


def read(w: Worker, frames: list[bytes]) -> list[int]:
    """What the inbox does with one burst of ``frames``: the frames sent after each one."""
    inbox, sent = w._inbox, []
    inbox.in_burst = inbox.first = True
    for i, frame in enumerate(frames):
        w._on_frame(frame)
        if i == 0:
            inbox.first = False
        sent.append(w.stats["frames_out"])
    inbox.in_burst = False
    w.outboxes.flush_all()
    return sent


def test_a_lone_message_leaves_at_once_with_its_time_left_counted_and_noted_for_lost_reports():
    async def scenario() -> None:
        w, sockets = worker_to_b(asyncio.get_running_loop())
        frame = wire.encode_frame("a", [Data([42, 0], 0, "hi", True, 3, left_ms=5000)])
        assert read(w, [frame]) == [1], "sent while the frame was read, before any flush"
        (target, (msg,)), = msgs_of(sockets[NEXT].frames)
        assert target == "b" and (msg.path, msg.payload, msg.epoch) == ([42, 0], "HI", 3)
        assert 4000 < msg.left_ms <= 5000, "the request's time left travels on"
        assert 42 in w._deadlines.at
        assert {k: w.stats[k] for k in ("frames_in", "messages_in", "frames_out")} == \
            {"frames_in": 1, "messages_in": 1, "frames_out": 1}
        assert w.logic.handler_seconds.stats()["handler_count"] == 1
        out = w.outboxes.outs[NEXT]
        assert not out.batches or not any(b.nbytes for b in out.batches.values())
        reports = list(out.lost_reports(set()))
        assert reports and 42 in reports[0]["rids"], "a lost report for that peer names the request"

    asyncio.run(scenario())


def test_what_a_frame_of_several_messages_or_a_later_frame_of_the_burst_yields_is_still_coalesced():
    async def scenario() -> None:
        w, sockets = worker_to_b(asyncio.get_running_loop())
        two = wire.encode_frame("a", [Data([1], 0, "x", True, 0), Data([2], 0, "y", True, 0)])
        later = [wire.encode_frame("a", [Data([rid], 0, "z", True, 0)]) for rid in (3, 4)]
        assert read(w, [two, *later]) == [0, 0, 0], "nothing goes before the flush"
        (_, msgs), = msgs_of(sockets[NEXT].frames)
        assert [m.path for m in msgs] == [[1], [2], [3], [4]]

    asyncio.run(scenario())


def test_a_lone_message_waits_behind_what_is_already_batched_for_its_peer():
    async def scenario() -> None:
        w, sockets = worker_to_b(asyncio.get_running_loop())
        w._send(w.outboxes.get(NEXT), Data([1], 0, "early", True, 0), "b")  # e.g. an async handler's result
        read(w, [wire.encode_frame("a", [Data([2], 0, "late", True, 0)])])
        assert [m.path for _, ms in msgs_of(sockets[NEXT].frames) for m in ms] == [[1], [2]]
        w._flush_handle.cancel()

    asyncio.run(scenario())


def test_a_lone_message_to_a_full_peer_is_parked_and_sent_in_order_when_it_takes_input():
    async def scenario() -> None:
        boxes = Outboxes(lambda dest: ("tcp://peer:1", sock), lambda: None, collections.Counter())
        sock = FakeSocket(room=0)
        out = boxes.get(NEXT)
        assert boxes.send_lone(out, wire.data([1], 0, "a", True, 0), "b")
        assert boxes.blocked == {NEXT} and len(out.backlog) == 1 and boxes.stats["frames_out"] == 0
        assert not boxes.send_lone(out, wire.data([2], 0, "b", True, 0), "b"), "not past a parked frame"
        out.add(wire.data([2], 0, "b", True, 0), "b")
        boxes.flush_all()
        sock.room = 10
        await asyncio.wait_for(out.sender, 5)
        assert [m.path for _, ms in msgs_of(sock.frames) for m in ms] == [[1], [2]]
        assert boxes.stats["frames_out"] == 2 and not boxes.blocked

    asyncio.run(scenario())


def test_a_dropped_outbox_is_not_flushed_after_it_is_gone():
    boxes = Outboxes(lambda dest: ("tcp://peer:1", FakeSocket()), lambda: None, collections.Counter())
    out = boxes.get(NEXT)
    out.add(wire.data([1], 0, "a", True, 0), "b")
    _, frames, rids = boxes.drop(NEXT)
    assert (frames, rids) == (1, {1})
    boxes.flush_all()  # would send on the closed socket
    assert out.asock.frames == [] and boxes.stats["frames_out"] == 0


# -- the one-decode read of a lone frame ----------------------------------------------


def test_a_lone_frame_reads_as_the_general_path_reads_it():
    msg = Data([7, 1], 2, {"k": [1, 2]}, False, 4, trace=None, turns=1, left_ms=900)
    frame = wire.encode_frame("a", [msg])
    assert wire.lone_message(frame, "a") == msg == wire.decode_frame(frame)[1][0]


@pytest.mark.parametrize("frame", [
    wire.encode_frame("b", [Data([1], 0, "x", True, 0)]),                      # for another stage
    wire.encode_frame(("a", 1), [Data([1], 0, "x", True, 0)]),                 # for an input of a merge
    wire.encode_frame("a", [Data([1], 0, "x", True, 0), Data([2], 0, "y", True, 0)]),  # two messages
    msgspec.msgpack.encode([1, "a", [0, ["one"], 0, "x", True, 0]]),          # a bad path
    msgspec.msgpack.encode([2, "a", [0, [1], 0, "x", True, 0]]),              # another protocol version
    msgspec.msgpack.encode([True, "a", [0, [1], 0, "x", True, 0]]),           # a version that is not an int
    b"", b"\x93",
])
def test_any_other_frame_is_left_to_the_general_path(frame):
    assert wire.lone_message(frame, "a") is None


def test_a_bad_lone_message_is_still_reported_by_what_is_wrong_with_it():
    async def scenario() -> None:
        w, _ = worker_to_b(asyncio.get_running_loop())
        reasons = []
        w._bad = lambda exc: reasons.append(exc.reason)
        read(w, [msgspec.msgpack.encode([1, "a", [0, [1], "zero", "x", True, 0]])])
        assert reasons == ["DATA seq"] and w.stats["frames_out"] == 0 and w.stats["messages_in"] == 1

    asyncio.run(scenario())
