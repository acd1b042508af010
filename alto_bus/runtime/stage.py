"""What a stage does with the messages that reach it: the runtime's handler interface.

The runtime owns sockets, batching, routing and credits; a :class:`StageLogic` sees
decoded messages and answers through an :class:`Emitter`. END and DROP markers are
forwarded unchanged by default, so a stage needs no code for ancestry it does not
change. :class:`FunctionStage` turns any Python callable into a stage: it may return
one output (the path is kept), return ``None`` (the item is dropped), or yield several
outputs (children ``path + [i]`` followed by ``END(path, n)``); sync or async.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from alto_bus.protocol.wire import join_chunks

log = logging.getLogger("alto.stage")


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
    """Any callable as a stage. Streamed input items are reassembled before the call."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"handler {fn!r} is not callable")
        self.fn = fn
        call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)
        self.is_async_gen = inspect.isasyncgenfunction(call)
        self.is_async = inspect.iscoroutinefunction(call)
        self._chunks: dict[tuple, list] = {}

    def on_data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        if not final:
            self._chunks.setdefault(tuple(path), []).append(payload)
            return
        if self._chunks:
            chunks = self._chunks.pop(tuple(path), None)
            if chunks is not None:
                chunks.append(payload)
                payload = join_chunks(chunks)
        if self.is_async_gen:
            self.out.spawn(path[0], self._run_async_gen(path, payload, epoch))
        elif self.is_async:
            self.out.spawn(path[0], self._run_async(path, payload, epoch))
        else:
            try:
                result = self.fn(payload)
            except Exception as exc:
                self._fail(path, exc, epoch)
                return
            if isinstance(result, types.GeneratorType):
                self._fan_out(path, result, epoch)
            elif inspect.isawaitable(result):
                self.out.spawn(path[0], self._await_result(path, result, epoch))
            else:
                self._emit(path, result, epoch)

    def _emit(self, path: list, result: Any, epoch: int) -> None:
        if result is None:
            self.out.drop(path, epoch)
        else:
            self.out.data(path, 0, result, True, epoch)

    def _fan_out(self, path: list, gen: Iterable[Any], epoch: int) -> None:
        n = 0
        try:
            for child in gen:
                self.out.data([*path, n], 0, child, True, epoch)
                n += 1
        except Exception as exc:
            self._fail(path, exc, epoch)
            return
        self.out.end(path, n, epoch)

    async def _run_async(self, path: list, payload: Any, epoch: int) -> None:
        try:
            result = await self.fn(payload)
        except Exception as exc:
            self._fail(path, exc, epoch)
            return
        self._emit(path, result, epoch)

    async def _await_result(self, path: list, awaitable: Awaitable[Any], epoch: int) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            self._fail(path, exc, epoch)
            return
        self._emit(path, result, epoch)

    async def _run_async_gen(self, path: list, payload: Any, epoch: int) -> None:
        n = 0
        try:
            async for child in self.fn(payload):
                self.out.data([*path, n], 0, child, True, epoch)
                n += 1
        except Exception as exc:
            self._fail(path, exc, epoch)
            return
        self.out.end(path, n, epoch)

    def _fail(self, path: list, exc: Exception, epoch: int) -> None:
        log.warning("stage %s: handler raised on item %s: %s", self.out.stage, path, describe(exc),
                    exc_info=log.isEnabledFor(logging.DEBUG))
        self.out.error(path, f"handler raised {describe(exc)}", epoch)

    def held(self) -> Iterable[int]:
        return {p[0] for p in self._chunks}

    def cancel(self, rids: set[int]) -> None:
        for p in [p for p in self._chunks if p[0] in rids]:
            del self._chunks[p]
