"""The heartbeat board: the loop publishes, the control thread reads; a stalled loop shows."""

from __future__ import annotations

import asyncio

from alto_bus.runtime.heartbeat import HeartbeatBoard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_latest_body_is_what_the_loop_made_and_a_stalled_loop_says_for_how_long():
    clock, n = Clock(), [0]

    def make() -> dict:
        n[0] += 1
        return {"depth": n[0], "held": [n[0]]}

    board = HeartbeatBoard(make, clock)
    loop = asyncio.new_event_loop()
    try:
        board.start(loop, interval=0.5)           # publishes at once, then once an interval
        assert board.latest() == {"depth": 1, "held": [1]}
        clock.now += 0.9                          # within two intervals: not stalled
        assert "stalled" not in board.latest()
        clock.now += 0.6                          # the loop has not published for 1.5 s
        assert board.latest() == {"depth": 1, "held": [1], "stalled": 1.5}
        board._publish()                          # the loop runs again
        assert board.latest() == {"depth": 2, "held": [2]}
    finally:
        board.stop()
        loop.close()


def test_a_failing_snapshot_keeps_the_last_body_and_the_schedule():
    clock = Clock()
    calls = []

    def make() -> dict:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a stage's held() is broken")
        return {"depth": 0, "held": []}

    board = HeartbeatBoard(make, clock)
    loop = asyncio.new_event_loop()
    try:
        board.start(loop, interval=0.01)
        board._publish()                          # raises inside: logged, not propagated
        assert board.latest() == {"depth": 0, "held": []}
        loop.run_until_complete(asyncio.sleep(0.05))  # the schedule survived: it ran again
        assert len(calls) >= 3
    finally:
        board.stop()
        loop.close()
