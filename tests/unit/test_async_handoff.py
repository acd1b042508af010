"""How AsyncClient's results cross from the client's I/O thread to the event loop (no sockets)."""

from __future__ import annotations

import asyncio
import threading

from alto_bus.client import _Handoff, _LoopFuture


def test_results_set_from_another_thread_reach_their_awaiters():
    async def run():
        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop)
        futs = [loop.create_future() for _ in range(500)]
        slots = [_LoopFuture(handoff, f) for f in futs]
        gone = futs[7]
        gone.cancel()  # its caller stopped waiting: a result for it is dropped, not an error

        def io_thread():
            for i, slot in enumerate(slots):
                if i % 2:
                    slot.set_exception(ValueError(f"no {i}"))
                else:
                    slot.set_result(i)
                assert slot.done()

        t = threading.Thread(target=io_thread)
        t.start()
        await loop.run_in_executor(None, t.join)
        done = await asyncio.gather(*(f for f in futs if f is not gone), return_exceptions=True)
        return done

    done = asyncio.run(run())
    expected = [i if i % 2 == 0 else f"no {i}" for i in range(500) if i != 7]
    assert [d if isinstance(d, int) else str(d) for d in done] == expected


def test_a_result_for_a_closed_loop_is_dropped_quietly():
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    loop.close()
    slot = _LoopFuture(_Handoff(loop), fut)
    slot.set_result(1)  # the I/O thread must not die of it
    assert slot.done()


def test_a_wake_up_left_queued_on_a_closed_loop_does_not_hold_back_the_next_loop():
    from alto_bus.client import AsyncClient

    class Waker:
        def __init__(self) -> None:
            self.wakes = 0

        def wake(self) -> None:
            self.wakes += 1

    client = AsyncClient.__new__(AsyncClient)  # no I/O thread: only the wake-up bookkeeping
    client._wake_due, client._client = None, type("C", (), {"_waker": Waker()})()
    old = asyncio.new_event_loop()
    client._wake_soon(old)  # queued, never run: the loop closes first
    old.close()

    async def next_loop():
        client._wake_soon(asyncio.get_running_loop())
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert client._client._waker.wakes == 1
