"""Handler times as the heartbeat carries them: cumulative buckets that read back as they went in."""

from __future__ import annotations

from alto_bus.runtime.handler_seconds import BOUNDS, HandlerSeconds, read_buckets


def test_counts_are_cumulative_per_bound_and_read_back():
    h = HandlerSeconds()
    for s in (0.0002, 0.001, 0.003, 0.003, 1000.0):  # a bound is inclusive; 1000 s is above every bound
        h.observe(s)
    stats = h.stats()
    assert stats["handler_count"] == 5
    assert abs(stats["handler_sum"] - 1000.0072) < 1e-9
    pairs, count, total = read_buckets({**stats, "messages_in": 7})
    assert count == 5 and total == stats["handler_sum"]
    le = dict(pairs)
    assert le[0.0005] == 1 and le[0.001] == 2 and le[0.0025] == 2 and le[0.005] == 4 and le[BOUNDS[-1]] == 4
    assert le[float("inf")] == 5
    assert [b for b, _ in pairs] == [*BOUNDS, float("inf")]


def test_an_instance_without_handler_times_reads_as_none():
    assert read_buckets({"messages_in": 3}) is None


def test_a_function_stage_times_every_kind_of_handler_once_per_item():
    import asyncio
    import time

    from alto_bus.runtime.stage import FunctionStage
    from tests.unit.test_stage_logic import bound

    def slow(x):
        time.sleep(0.003)
        return x

    async def aslow(x):
        await asyncio.sleep(0.003)
        return x

    async def agen(x):
        await asyncio.sleep(0.003)
        yield x

    def fails(x):
        raise ValueError(x)

    for handler in (slow, aslow, agen, fails, lambda x: (i for i in range(2))):
        stage, _ = bound(FunctionStage(handler))
        for rid in (1, 2):
            stage.on_data([rid], 0, "a", True, 0)
        stats = stage.handler_seconds.stats()
        assert stats["handler_count"] == 2, handler
        if handler in (slow, aslow, agen):
            assert stats["handler_le_0.0025"] == 0 and stats["handler_sum"] >= 0.006, handler
