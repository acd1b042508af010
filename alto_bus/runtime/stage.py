"""What a stage does with the messages that reach it: the runtime's handler interface.

The runtime owns sockets, batching, routing and credits; a :class:`StageLogic` sees
decoded messages and answers through an :class:`Emitter`. END and DROP markers are
forwarded unchanged by default, so a stage needs no code for ancestry it does not
change. :class:`FunctionStage` turns any Python callable into a stage: it may return
one output (the path is kept), return ``None`` (the item is dropped), or yield several
outputs (children ``path + [i]`` followed by ``END(path, n)``); sync or async.
:class:`KeyedStage` is the base of the keyed stages that take whole items (aggregate,
barrier): chunk joining, markers above the key, cancel/held around a pure core.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from alto_bus.protocol.ancestry import GroupError
from alto_bus.protocol.chunks import PENDING, Chunks
from alto_bus.runtime.handler_seconds import BOUNDS, HandlerSeconds

log = logging.getLogger("alto.stage")
_clock = time.perf_counter
FIRST_BOUND = BOUNDS[0]
# What handlers return most: values that are neither generators nor awaitables, known by
# their type alone (inspect.isawaitable asks the Awaitable ABC, the dearest check here).
_PLAIN = frozenset({str, bytes, int, float, bool, list, dict, tuple, type(None)})


class Emitter(Protocol):
    """The runtime side a stage talks to (all calls are cheap and never block)."""

    stage: str

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None: ...
    def end(self, path: list, n: int, epoch: int) -> None: ...
    def drop(self, path: list, epoch: int) -> None: ...
    def error(self, path: list, message: str, epoch: int) -> None: ...
    def spawn(self, rid: int, work: Awaitable[None]) -> None: ...


class StageLogic:
    """Base class: forwards markers, holds nothing. Subclasses override ``on_data``."""

    out: Emitter
    handler_seconds: HandlerSeconds | None = None  # a kind that times its handler reports it (heartbeat)

    def bind(self, out: Emitter) -> None:
        self.out = out

    async def start(self) -> None:
        """Called once before the first message (open engines, load indexes)."""

    async def close(self) -> None:
        """Called once after the last message."""

    def on_data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        raise NotImplementedError

    def on_end(self, path: list, n: int, epoch: int) -> None:
        self.out.end(path, n, epoch)

    def on_drop(self, path: list, epoch: int) -> None:
        self.out.drop(path, epoch)

    def cancel(self, rids: set[int]) -> None:
        """These requests ended (error, client gone): drop their work."""

    def held(self) -> Iterable[int]:
        """Request ids whose state this stage keeps beyond one call (for failure reports)."""
        return ()

    def depth(self) -> int:
        return 0


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FunctionStage(StageLogic):
    """Any callable as a stage. Streamed input items are reassembled before the call.

    A sync handler runs on the event loop (the fastest for cheap functions), or with
    ``threads = N`` on a pool of N threads of its own, so that a handler that blocks or
    computes for long (a retriever, a tokenizer, file I/O) does not hold the loop: items
    of other requests still move and heartbeats stay current. Children of a generator
    run there are sent as they come, in order.
    """

    def __init__(self, fn: Callable[..., Any], threads: int = 0) -> None:
        if not callable(fn):
            raise TypeError(f"handler {fn!r} is not callable")
        self.fn = fn
        call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
        self.is_async_gen = inspect.isasyncgenfunction(call)
        self.is_async = inspect.iscoroutinefunction(call)
        self._chunks = Chunks()
        self.handler_seconds = HandlerSeconds()
        self._pool = (concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="alto-handler")
                      if threads and not (self.is_async or self.is_async_gen) else None)
        self._on_loop = not (self.is_async_gen or self.is_async or self._pool is not None)  # called inline

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def on_data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        payload = self._chunks.feed(path, payload, final)
        if payload is PENDING:
            return
        if not self._on_loop:
            if self.is_async_gen:
                self.out.spawn(path[0], self._run_async_gen(path, payload, epoch))
            elif self.is_async:
                self.out.spawn(path[0], self._run_async(path, payload, epoch))
            else:
                self.out.spawn(path[0], self._run_in_thread(path, payload, epoch))
            return
        t0 = _clock()
        try:
            result = self.fn(payload)
        except Exception as exc:
            self.handler_seconds.observe(_clock() - t0)
            self._fail(path, exc, epoch)
            return
        if type(result) in _PLAIN:
            if result is None:
                self.out.drop(path, epoch)
            else:
                self.out.data(path, 0, result, True, epoch)
        elif isinstance(result, types.GeneratorType):
            self._fan_out(path, result, epoch)
        elif inspect.isawaitable(result):
            self.out.spawn(path[0], self._await_result(path, result, epoch, t0))
            return
        else:
            self._emit(path, result, epoch)
        # The hot path of cheap handlers: a fast item is counted without a call or a search.
        seconds = _clock() - t0
        timing = self.handler_seconds
        if seconds <= FIRST_BOUND:
            timing.counts[0] += 1
            timing.total += seconds
        else:
            timing.observe(seconds)

    def _emit(self, path: list, result: Any, epoch: int) -> None:
        if result is None:
            self.out.drop(path, epoch)
        else:
            self.out.data(path, 0, result, True, epoch)

    def _fan_out(self, path: list, gen: Iterable[Any], epoch: int) -> None:
        with _Children(self, path, epoch) as child:
            for output in gen:
                child(output)

    async def _run_async(self, path: list, payload: Any, epoch: int) -> None:
        await self._settle(path, lambda: self.fn(payload), epoch, _clock())

    async def _await_result(self, path: list, awaitable: Awaitable[Any], epoch: int, t0: float) -> None:
        await self._settle(path, lambda: awaitable, epoch, t0)

    async def _settle(self, path: list, call: Callable[[], Awaitable[Any]], epoch: int, t0: float) -> None:
        # ``call`` is inside the try: calling an async handler with the wrong arguments
        # raises there, and that is the handler's error, not the runtime's.
        try:
            result = await call()
        except Exception as exc:
            self.handler_seconds.observe(_clock() - t0)
            self._fail(path, exc, epoch)
            return
        self.handler_seconds.observe(_clock() - t0)
        self._emit(path, result, epoch)

    async def _run_in_thread(self, path: list, payload: Any, epoch: int) -> None:
        t0 = _clock()
        loop = asyncio.get_running_loop()
        children = _Children(self, path, epoch)

        def work() -> Any:  # in a pool thread: the loop is told of each child, in order
            result = self.fn(payload)
            if not isinstance(result, types.GeneratorType):
                return result
            for output in result:
                loop.call_soon_threadsafe(children.add, output)
            return children  # the generator ended: its END follows the children

        try:
            result = await loop.run_in_executor(self._pool, work)
        except Exception as exc:
            self.handler_seconds.observe(_clock() - t0)
            self._fail(path, exc, epoch)
            return
        if not inspect.isawaitable(result):  # an awaitable is timed when it settles
            self.handler_seconds.observe(_clock() - t0)
        if result is children:
            children.__exit__(None, None, None)
        elif inspect.isawaitable(result):
            await self._await_result(path, result, epoch, t0)
        else:
            self._emit(path, result, epoch)

    async def _run_async_gen(self, path: list, payload: Any, epoch: int) -> None:
        t0 = _clock()
        with _Children(self, path, epoch) as child:
            async for output in self.fn(payload):
                child(output)
        self.handler_seconds.observe(_clock() - t0)  # also after a failure (it is suppressed)

    def _fail(self, path: list, exc: Exception, epoch: int) -> None:
        log.warning("stage %s: handler raised on item %s: %s", self.out.stage, path, describe(exc),
                    exc_info=log.isEnabledFor(logging.DEBUG))
        self.out.error(path, f"handler raised {describe(exc)}", epoch)

    def held(self) -> Iterable[int]:
        return self._chunks.held()

    def cancel(self, rids: set[int]) -> None:
        self._chunks.cancel(rids)


class _Children:
    """The outputs of one fanned-out item: numbered children, then END with their count.

    Used as ``with _Children(...) as child:`` around the loop over a handler's sync or
    async generator; a handler that raises mid-way fails the item instead (the children
    already sent stay sent, and no END follows).
    """

    __slots__ = ("stage", "path", "epoch", "n")

    def __init__(self, stage: FunctionStage, path: list, epoch: int) -> None:
        self.stage = stage
        self.path = path
        self.epoch = epoch
        self.n = 0

    def __enter__(self) -> Callable[[Any], None]:
        return self.add

    def add(self, output: Any) -> None:
        self.stage.out.data([*self.path, self.n], 0, output, True, self.epoch)
        self.n += 1

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            self.stage.out.end(self.path, self.n, self.epoch)
            return False
        if not isinstance(exc, Exception):
            return False  # cancellation, exit: not the handler's failure
        self.stage._fail(self.path, exc, self.epoch)
        return True


class Groups(Protocol):
    """What a keyed stage's pure core (an aggregator, a barrier) says about its groups."""

    def passes_through(self, path: Sequence[int]) -> bool: ...
    def cancel(self, rids: Iterable[int]) -> object: ...
    def held(self) -> set[int]: ...
    def __len__(self) -> int: ...


class KeyedStage(StageLogic):
    """A keyed stage that takes whole items (the adapter of an aggregator or a barrier).

    It joins streamed items before they reach the groups, forwards END/DROP markers
    above the key depth (they belong to no group here), reports a group the core
    rejects as an ERROR of its request, and answers cancel/held/depth for the groups
    and the items still streaming. Subclasses say what an item, an END and a DROP do
    to their groups (:meth:`on_item`, :meth:`on_group_end`, :meth:`on_group_drop`).
    """

    def __init__(self, groups: Groups) -> None:
        self.groups = groups
        self._chunks = Chunks()

    def on_data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        item = self._chunks.feed(path, payload, final)
        if item is not PENDING:
            self.on_item(path, item, epoch)

    def on_end(self, path: list, n: int, epoch: int) -> None:
        if self.groups.passes_through(path):
            self.out.end(path, n, epoch)
        else:
            self.on_group_end(path, n, epoch)

    def on_drop(self, path: list, epoch: int) -> None:
        if self.groups.passes_through(path):
            self.out.drop(path, epoch)
        else:
            self.on_group_drop(path, epoch)

    def on_item(self, path: list, payload: Any, epoch: int) -> None:
        raise NotImplementedError

    def on_group_end(self, path: list, n: int, epoch: int) -> None:
        raise NotImplementedError

    def on_group_drop(self, path: list, epoch: int) -> None:
        raise NotImplementedError

    def guarded(self, event: Callable[..., list], epoch: int, *args: Any) -> list:
        """``event(*args)``; a group it breaks (its state freed) becomes an ERROR, and []."""
        try:
            return event(*args)
        except GroupError as exc:
            self.out.error(list(exc.path), str(exc), epoch)
            return []

    def cancel(self, rids: set[int]) -> None:
        self.groups.cancel(rids)
        self._chunks.cancel(rids)

    def held(self) -> Iterable[int]:
        return self.groups.held() | self._chunks.held()

    def depth(self) -> int:
        return len(self.groups)
