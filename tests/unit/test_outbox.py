"""Outboxes: coalescing per peer, parking when the peer is full, what is lost with a peer.
On fake sockets: no ZeroMQ I/O."""

from __future__ import annotations

import asyncio
import collections

import zmq

from alto_bus.protocol import wire
from alto_bus.routing.route_table import GATEWAY
from alto_bus.runtime.outbox import Outbox, Outboxes


class FakeSocket:
    """Takes ``room`` frames without blocking, then raises zmq.Again; ``send`` awaited
    waits until ``room`` is raised again."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.frames: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes, flags: int = 0, copy: bool = True):
        if flags & zmq.NOBLOCK:
            if len(self.frames) >= self.room:
                raise zmq.Again()
            self.frames.append(frame)
            return None
        return self._wait_and_send(frame)

    async def _wait_and_send(self, frame: bytes) -> None:
        while len(self.frames) >= self.room:
            await asyncio.sleep(0.001)
        self.frames.append(frame)

    def close(self, linger: int = 0) -> None:
        self.closed = True


def outbox(dest: int = 7, room: int = 1000, window: int = 3) -> tuple[Outbox, FakeSocket]:
    sock = FakeSocket(room)
    return Outbox(dest, "tcp://peer:1", sock, window), sock


def msgs_of(frames: list[bytes]) -> list[tuple[str, list]]:
    return [wire.decode_frame(f) for f in frames]


def test_messages_for_one_stage_are_coalesced_into_one_frame():
    out, sock = outbox()
    for rid in range(5):
        out.add(wire.data([rid], 0, "x", True, 0), "b")
    out.add(wire.data([9], 0, "y", True, 0), "c")
    out.seal()
    assert out.send_ready() == 2
    frames = msgs_of(sock.frames)
    assert [(stage, len(m)) for stage, m in frames] == [("b", 5), ("c", 1)]


def test_the_batch_size_is_reported_so_the_caller_can_flush_early():
    out, _ = outbox()
    small = out.add(wire.data([1], 0, "x", True, 0), "b")
    bigger = out.add(wire.data([1], 1, "x" * 1000, True, 0), "b")
    assert bigger > small + 1000


def test_a_full_peer_parks_frames_in_order():
    out, sock = outbox(room=1)
    for rid in range(3):
        out.add(wire.data([rid], 0, "x", True, 0), "b")
        out.seal()
    assert out.send_ready() == 1
    assert len(out.backlog) == 2
    sock.room = 10

    async def drain() -> None:
        await out.send_parked(lambda: None)

    asyncio.run(drain())
    assert [m[0].path for _, m in msgs_of(sock.frames)] == [[0], [1], [2]]


def test_what_is_unsent_names_its_requests():
    out, _ = outbox(room=0)
    out.add(wire.data([4], 0, "x", True, 0), "b")
    out.seal()
    out.add(wire.data([5], 0, "x", True, 0), "b")
    assert out.unsent() == (2, {4, 5})


def test_a_dead_peer_reports_recent_and_older_requests():
    out, _ = outbox(window=2)
    out.add(wire.data([1], 0, "x", True, 0), "b")
    out.rotate([])
    out.rotate([])  # 1 is now older
    out.add(wire.data([2], 0, "x", True, 0), "b")
    out.add(wire.data([3], 0, "x", True, 0), "b")
    out.rotate([3])  # 3 ended
    assert list(out.lost_reports({8})) == [{"iid": 7, "rids": [2, 8], "older": [1]}]


def test_the_gateway_outbox_does_not_track_requests():
    out, _ = outbox(dest=GATEWAY)
    out.add(wire.data([1], 0, "x", True, 0), "b")
    assert out.sent.lost() == ([], [])


def test_outboxes_block_while_a_peer_is_full_and_unblock_when_it_takes_the_frames():
    sockets: dict[int, FakeSocket] = {}
    unblocked: list[bool] = []

    def connect(dest: int) -> tuple[str, FakeSocket]:
        sockets[dest] = FakeSocket(room=0)
        return f"tcp://peer:{dest}", sockets[dest]

    async def scenario() -> None:
        boxes = Outboxes(connect, lambda: unblocked.append(True), collections.Counter())
        out = boxes.get(3)
        out.add(wire.data([1], 0, "x", True, 0), "b")
        boxes.flush_all()
        assert boxes.blocked == {3} and boxes.has_backlog()
        sockets[3].room = 5
        await asyncio.wait_for(out.sender, 1)
        assert boxes.blocked == set() and unblocked and not boxes.has_backlog()
        assert boxes.stats["frames_out"] == 1
        out.add(wire.data([2], 0, "x", True, 0), "b")
        dropped, frames, rids = boxes.drop(3)
        assert dropped is out and (frames, rids) == (1, {2}) and sockets[3].closed
        assert list(boxes) == []

    asyncio.run(scenario())


def test_a_peer_not_taking_input_parks_only_its_own_frames_up_to_a_budget():
    """One full peer does not stop the sender (head-of-line blocking) while another
    instance of its stage takes input; the sender stops reading when every instance it
    could send to has PEER_PARK_FRAMES parked, or one peer (a key's owner) PEER_PARK_MAX."""
    from alto_bus.runtime.outbox import PEER_PARK_FRAMES, PEER_PARK_MAX

    sockets: dict[int, FakeSocket] = {}

    def connect(dest: int) -> tuple[str, FakeSocket]:
        sockets[dest] = FakeSocket(room=0 if dest == 3 else 10_000)
        return f"tcp://peer:{dest}", sockets[dest]

    async def scenario() -> None:
        boxes = Outboxes(connect, lambda: None, collections.Counter())
        alone, beside = [[3], [4]], [[3, 4]]  # 3 as the only choice of a route, or with 4
        for k in range(PEER_PARK_FRAMES):
            for dest in (3, 4):
                boxes.get(dest).add(wire.data([k], 0, "x", True, 0), "b")
            boxes.flush_all()
            assert boxes.blocked == {3}
            assert not boxes.over_budget(alone), f"stopped reading after {k + 1} frames for the full peer"
        assert boxes.stats["frames_out"] == PEER_PARK_FRAMES, "the other peer got every frame"
        boxes.get(3).add(wire.data([999], 0, "x", True, 0), "b")
        boxes.flush_all()
        assert boxes.over_budget(alone), "past its budget a full peer nothing can stand in for stops the sender"
        assert not boxes.over_budget(beside), "another instance of the stage still takes input"
        for k in range(PEER_PARK_MAX - PEER_PARK_FRAMES):
            boxes.get(3).add(wire.data([1000 + k], 0, "x", True, 0), "b")
            boxes.flush_all()
        assert boxes.over_budget(beside), "past PEER_PARK_MAX one full peer stops the sender"
        boxes.drop(3)
        assert not boxes.over_budget(alone) and boxes.blocked == set()

    asyncio.run(scenario())


def test_a_requests_time_left_rides_on_its_first_message_to_each_peer_each_interval():
    left = {1: 1500, 2: None}  # request 2: no deadline known (an older peer sent it)
    sock = FakeSocket()
    out = Outbox(7, "tcp://peer:1", sock, window=3, budget=left.get)
    for msg in (wire.data([1, 0], 0, "a", True, 0), wire.data([1, 1], 0, "b", True, 0), wire.end([1], 2, 0),
                wire.data([2, 0], 0, "c", True, 0)):
        out.add(msg, "b")
    out.rotate([])  # the next interval: stamped once more
    left[1] = 900
    out.add(wire.drop([1, 2], 0), "b")
    out.add(wire.drop([1, 3], 0), "b")
    out.seal()
    out.send_ready()
    got = [(m.path, m.left_ms) for _, ms in msgs_of(sock.frames) for m in ms]
    assert got == [([1, 0], 1500), ([1, 1], None), ([1], None), ([2, 0], None), ([1, 2], 900), ([1, 3], None)]


def test_messages_to_the_gateway_carry_no_time_left():
    sock = FakeSocket()
    out = Outbox(GATEWAY, "tcp://gateway:1", sock, window=3, budget=lambda rid: 1500)
    out.add(wire.data([1], 0, "a", True, 0), wire.GATEWAY_STAGE)
    out.seal()
    out.send_ready()
    assert [m.left_ms for _, ms in msgs_of(sock.frames) for m in ms] == [None]
