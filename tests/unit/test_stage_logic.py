"""The stage adapters without sockets: a function stage and the keyed stages (aggregate,
barrier) take streamed items whole, forward markers above the key, fail a broken group
as an ERROR of its request, and drop a cancelled request's partial state."""

from __future__ import annotations

import asyncio
from typing import Any

from alto_workers.aggregate_stage import AggregateStage
from alto_workers.barrier import BarrierStage

from alto_bus.runtime.stage import FunctionStage, KeyedStage


class Recorder:
    """An Emitter that writes down what the stage sent; spawned work runs at once."""

    stage = "s"

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        self.sent.append(("data", list(path), payload, epoch))

    def end(self, path: list, n: int, epoch: int) -> None:
        self.sent.append(("end", list(path), n, epoch))

    def drop(self, path: list, epoch: int) -> None:
        self.sent.append(("drop", list(path), epoch))

    def error(self, path: list, message: str, epoch: int) -> None:
        self.sent.append(("error", list(path), epoch))

    def spawn(self, rid: int, work: Any) -> None:
        asyncio.run(work)


def bound(stage: Any) -> tuple[Any, Recorder]:
    out = Recorder()
    stage.bind(out)
    return stage, out


def test_a_function_stage_calls_the_handler_once_on_the_whole_streamed_item() -> None:
    calls = []
    stage, out = bound(FunctionStage(lambda x: calls.append(x) or x.upper()))
    stage.on_data([1], 0, "ab", False, 3)
    stage.on_data([2], 0, "x", True, 3)
    assert set(stage.held()) == {1}
    stage.on_data([1], 1, "c", True, 3)
    assert calls == ["x", "abc"]
    assert out.sent == [("data", [2], "X", 3), ("data", [1], "ABC", 3)]
    assert set(stage.held()) == set()


def test_a_function_stage_cancel_drops_partial_items() -> None:
    stage, _ = bound(FunctionStage(str))
    stage.on_data([1, 0], 0, "a", False, 0)
    stage.on_data([2], 0, "a", False, 0)
    stage.cancel({1})
    assert set(stage.held()) == {2}


def gen_then_fail(x: int):
    yield x
    yield x + 1
    raise ValueError("boom")


async def agen(x: int):
    for i in range(x):
        yield i


async def agen_then_fail(x: int):
    yield x
    raise ValueError("boom")


def test_fan_out_numbers_children_then_ends_or_fails_without_end() -> None:
    stage, out = bound(FunctionStage(lambda x: (i for i in range(x))))
    stage.on_data([5], 0, 2, True, 1)
    assert out.sent == [("data", [5, 0], 0, 1), ("data", [5, 1], 1, 1), ("end", [5], 2, 1)]
    stage, out = bound(FunctionStage(gen_then_fail))
    stage.on_data([5], 0, 10, True, 1)
    assert out.sent == [("data", [5, 0], 10, 1), ("data", [5, 1], 11, 1), ("error", [5], 1)]


def test_async_fan_out_and_async_results_behave_like_sync_ones() -> None:
    stage, out = bound(FunctionStage(agen))
    stage.on_data([5], 0, 2, True, 1)
    assert out.sent == [("data", [5, 0], 0, 1), ("data", [5, 1], 1, 1), ("end", [5], 2, 1)]
    stage, out = bound(FunctionStage(agen_then_fail))
    stage.on_data([5], 0, 10, True, 1)
    assert out.sent == [("data", [5, 0], 10, 1), ("error", [5], 1)]

    async def double(x: int) -> int | None:
        return None if x == 0 else 2 * x

    stage, out = bound(FunctionStage(double))
    stage.on_data([4], 0, 3, True, 2)
    stage.on_data([6], 0, 0, True, 2)
    assert out.sent == [("data", [4], 6, 2), ("drop", [6], 2)]

    async def needs_two(x: int, y: int) -> int:
        return x + y

    stage, out = bound(FunctionStage(needs_two))  # a TypeError of the call is the handler's error
    stage.on_data([4], 0, 3, True, 2)
    assert out.sent == [("error", [4], 2)]


def test_keyed_stages_share_the_base() -> None:
    assert isinstance(AggregateStage(1, "collect"), KeyedStage)
    assert isinstance(BarrierStage(1), KeyedStage)


def test_aggregate_stage_joins_streamed_items_and_forwards_markers_above_the_key() -> None:
    stage, out = bound(AggregateStage(2, "collect"))
    stage.on_data([1, 0], 0, "a", False, 0)
    stage.on_data([1, 0], 1, "b", True, 0)
    stage.on_end([1], 2, 0)          # above the key (depth 2): forwarded unchanged
    stage.on_data([1, 1, 0], 0, "c", True, 0)
    stage.on_end([1, 1], 1, 0)
    assert out.sent == [("data", [1, 0], ["ab"], 0), ("end", [1], 2, 0), ("data", [1, 1], ["c"], 0)]
    stage.on_drop([2], 0)
    assert out.sent[-1] == ("drop", [2], 0)
    assert stage.depth() == 0


def test_barrier_stage_replays_a_whole_group_with_joined_items() -> None:
    stage, out = bound(BarrierStage(1))
    stage.on_data([1, 0], 0, [1], False, 4)
    stage.on_data([1, 1], 0, "x", True, 4)
    assert out.sent == [] and stage.depth() == 1 and set(stage.held()) == {1}
    stage.on_data([1, 0], 1, [2], True, 4)
    stage.on_end([1], 2, 4)
    assert out.sent == [("data", [1, 1], "x", 4), ("data", [1, 0], [1, 2], 4), ("end", [1], 2, 4)]
    assert stage.depth() == 0 and set(stage.held()) == set()


def test_a_broken_group_is_an_error_of_its_request_and_cancel_frees_everything() -> None:
    for make in (lambda: AggregateStage(1, "count"), lambda: BarrierStage(1)):
        stage, out = bound(make())
        stage.on_end([1], 1, 7)
        stage.on_end([1], 1, 7)       # a second END: the group is broken
        assert out.sent[-1] == ("error", [1], 7)
        stage.on_data([2, 0], 0, "a", False, 7)   # streaming
        stage.on_data([3, 0], 0, "a", True, 7)    # held in an open group
        assert set(stage.held()) == {2, 3}
        stage.cancel({2, 3})
        assert set(stage.held()) == set() and stage.depth() == 0
