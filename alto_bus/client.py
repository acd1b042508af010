"""Submit requests to a gateway: futures, streams of partial results, and asyncio.

One I/O thread owns a DEALER socket per gateway; ``submit`` packs the payload in the
caller's thread (so a payload msgpack cannot carry fails there, at once), picks the
gateway (alto_bus.client_gateways) and hands it over.
Thousands of requests can be in flight; each ends in one result or one
:class:`RequestError`. :class:`AsyncClient` wraps the same machinery for asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from alto_bus.client_gateways import GatewaySet, parse_gateways
from alto_bus.client_handoff import Handoff as _Handoff, LoopFuture as _LoopFuture
from alto_bus.protocol import wire
from alto_bus.net.sockets import make_socket
from alto_bus.net.waker import Waker
from alto_bus.telemetry.carry import check_traceparent
from alto_bus.telemetry.tracing import current_traceparent

log = logging.getLogger("alto.client")

# Extra time the client waits beyond a request's deadline before it gives up on the
# gateway itself (the gateway answers expired requests on its own).
GRACE = 5.0


class RequestError(RuntimeError):
    """A request ended in an error; ``stage`` says where."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"stage {stage!r}: {message}")
        self.stage = stage
        self.message = message


@dataclass(frozen=True)
class Partial:
    """One chunk of one item that reached the end of the pipeline."""

    path: tuple[int, ...]   # ancestry below the request (empty: the request's own item)
    seq: int
    data: Any
    final: bool


class Stream:
    """Iterate the partial results of one request; ``result()`` is its final value."""

    def __init__(self, future: concurrent.futures.Future) -> None:
        self.future = future
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def _put(self, item: Partial | None) -> None:
        self._queue.put(item)

    def __iter__(self) -> Iterator[Partial]:
        while True:
            item = self._queue.get()
            if item is None:
                break
            yield item
        self.future.result()  # raises RequestError if the request failed

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)


class _Pending:
    __slots__ = ("future", "stream", "give_up", "gw")

    def __init__(self, future: concurrent.futures.Future, stream: Any, give_up: float, gw: int) -> None:
        self.future = future
        self.stream = stream
        self.give_up = give_up
        self.gw = gw  # the gateway that admitted it (its index): only that one answers or cancels it


class Client:
    def __init__(self, gateway: str | Sequence[str], *, timeout: float = 300.0, curve: Any = None,
                 gateway_silence: float = 5.0, on_failure: Callable[[str], None] | None = None) -> None:
        """``gateway``: an address, several joined by commas, or a sequence of them (a bus
        with several gateways); each request goes to the live one with the fewest pending.

        ``timeout``: default deadline of each request, in seconds (enforced by the gateway).

        ``curve``: this client's keys when the gateway requires CURVE
        (``alto_bus.net.curve.client_curve("me.key_secret", "broker.key")``).

        ``gateway_silence``: a gateway with requests pending that sends nothing (not even
        an answer to the client's pings) for this long is gone: they all fail then, and
        new requests avoid it until it answers a ping.

        ``on_failure(why)``: called (from the I/O thread) if that thread dies, after every
        pending request has failed; the client refuses new ones from then on.
        """
        self.gateways = parse_gateways(gateway)
        self.gateway = gateway if isinstance(gateway, str) else ",".join(self.gateways)
        self.gateway_silence = gateway_silence
        self._gws = GatewaySet(self.gateways, gateway_silence, time.monotonic())  # under _lock
        self._source = 0                   # the gateway whose frame is being read (I/O thread)
        self._broken: str | None = None    # why the I/O thread ended, if it did
        self._on_failure = on_failure
        self._deadlines: list[tuple[float, int]] = []  # (give up, cid): a heap
        self.curve = curve
        self.timeout = timeout
        self._ids = itertools.count(1)     # one sequence: a cid names its request at any gateway
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._outboxes: list[queue.SimpleQueue[bytes]] = [queue.SimpleQueue() for _ in self.gateways]
        self._waker = Waker()  # the I/O thread sleeps in poll until there is work
        self._closed = False
        self._bye = False      # the BYEs are queued: the I/O thread sends them and ends
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._thread = threading.Thread(target=self._io, name="alto-client", daemon=True)
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, payload: Any, *, timeout: float | None = None,
               traceparent: str | None = None) -> concurrent.futures.Future:
        """Send one request; the future holds its result or raises RequestError.

        ``traceparent`` (W3C) makes the request's trace a child of that context; without
        it, the current OpenTelemetry span's (if there is one) is used."""
        return self._submit(payload, timeout, None, traceparent=traceparent)

    def stream(self, payload: Any, *, timeout: float | None = None, traceparent: str | None = None) -> Stream:
        """Send one request and iterate its partial results as they reach the end."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        stream = Stream(fut)
        self._submit(payload, timeout, stream, fut, traceparent)
        return stream

    def _submit(self, payload: Any, timeout: float | None, stream: Any,
                fut: Any = None, traceparent: str | None = None, wake: bool = True) -> Any:
        if self._broken is not None:
            raise RequestError("client", self._broken)
        if self._closed:
            raise RuntimeError("the client is closed")
        timeout = self.timeout if timeout is None else timeout
        trace = check_traceparent(traceparent, "traceparent") or current_traceparent()
        cid = next(self._ids)
        try:
            fields = [wire.SUBMIT, cid, payload, stream is not None, float(timeout)]
            msg = self._packer.pack(fields if trace is None else [*fields, trace])
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"payload cannot be sent (msgpack types only): {exc}") from None
        fut = fut or concurrent.futures.Future()
        now = time.monotonic()
        with self._lock:
            if self._broken is not None:  # it died since the check above: refuse, never a hang
                raise RequestError("client", self._broken)
            g = self._gws.choose()
            if g is not None:
                self._gws.admitted(g, now)
                self._pending[cid] = p = _Pending(fut, stream, now + timeout + GRACE, g)
                heapq.heappush(self._deadlines, (now + timeout + GRACE, cid))
            else:  # every gateway is silent: say so now, not after another silence
                p, why = _Pending(fut, stream, now, -1), self._gws.none_live_text(now)
        if g is None:
            self._finish(p, error=RequestError("client", why))
            return fut
        self._outboxes[g].put(msg)
        if wake:  # else the caller wakes the I/O thread itself (AsyncClient: once per loop turn)
            self._waker.wake()
        return fut

    def in_flight(self) -> int:
        return len(self._pending)

    def cancel(self, future: concurrent.futures.Future) -> bool:
        """Ask the gateway to end the request of ``future`` (from ``submit``, or a stream's);
        its workers drop its work (LM generations are aborted) and the future fails with
        RequestError("client", "cancelled by the client"). False if it had already ended."""
        with self._lock:  # a scan: cancels are rare (a caller gone), submits are not
            cid, p = next(((c, p) for c, p in self._pending.items() if p.future is future), (None, None))
        if p is None or self._closed:
            return False
        # To the gateway that admitted it (own packer: any thread).
        self._outboxes[p.gw].put(msgpack.packb([wire.CANCEL, cid], use_bin_type=True))
        self._waker.wake()
        return True

    def close(self) -> None:
        """Fail what is still pending, tell the gateways, stop the I/O thread."""
        if self._closed:
            return
        self._closed = True
        for box in self._outboxes:
            box.put(self._packer.pack([wire.BYE]))
        self._bye = True
        self._waker.wake()
        self._thread.join(5)
        self._waker.close()
        self._fail_all(RequestError("client", "the client was closed before the result arrived"))

    # -- the I/O thread ----------------------------------------------------------------

    def _io(self) -> None:
        try:
            self._run_io()
        except BaseException as exc:  # never a silent death: every pending future learns why
            self._broken = f"the client's I/O thread failed: {type(exc).__name__}: {exc}"
            log.exception("client for %s: I/O thread failed", self.gateway)
            self._fail_all(RequestError("client", self._broken))
            if self._on_failure is not None:
                try:
                    self._on_failure(self._broken)
                except Exception:
                    log.exception("client for %s: on_failure raised", self.gateway)

    def _fail_all(self, error: RequestError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._deadlines = []
            self._gws.cleared()
        for p in pending.values():
            self._finish(p, error=error)

    def _fail_gateway(self, g: int, error: RequestError, cancel: bool = False) -> None:
        """End every request pending at gateway ``g`` with ``error`` (the others go on)."""
        with self._lock:
            cids = [cid for cid, p in self._pending.items() if p.gw == g]
            ended = [self._pending.pop(cid) for cid in cids]
            self._gws.cleared(g)
        if cancel:  # it may hold some of them still (a new run): let it drop their work
            for cid in cids:
                self._outboxes[g].put(msgpack.packb([wire.CANCEL, cid], use_bin_type=True))
        for p in ended:
            self._finish(p, error=error)

    def _run_io(self) -> None:
        ctx = zmq.Context.instance()
        socks: list[zmq.Socket] = []
        poller = zmq.Poller()
        poller.register(self._waker.fileno(), zmq.POLLIN)
        header = self._packer.pack(wire.VERSION)
        ping = msgpack.packb([wire.PING], use_bin_type=True)
        gws = self._gws
        try:
            for address in self.gateways:
                socks.append(make_socket(ctx, zmq.DEALER, connect=address, hwm=200_000,
                                         curve=self.curve.to_broker("client") if self.curve else None,
                                         identity=f"c-{os.getpid()}-{os.urandom(6).hex()}".encode()))
                poller.register(socks[-1], zmq.POLLIN)
            index = {sock: g for g, sock in enumerate(socks)}
            while True:
                for g in gws.pings_due(time.monotonic()):
                    self._outboxes[g].put(ping)
                bye = self._bye  # read before the sends: then the BYEs go with them
                for g, sock in enumerate(socks):
                    # Nothing waits on a gateway taken for gone (pings, cancels): never block on it.
                    flags = zmq.NOBLOCK if gws.down[g] else 0
                    while self._send(sock, self._outboxes[g], header, flags) and bye:
                        pass
                if bye:
                    return
                for sock, _ in poller.poll(gws.every * 1000):
                    g = index.get(sock)
                    if g is None:
                        self._waker.clear()
                        continue
                    if gws.heard_from(g, time.monotonic()):
                        log.warning("client: the gateway at %s answers again", self.gateways[g])
                    self._receive(g, sock)
                self._expire()
        finally:
            for sock in socks:
                sock.close(linger=200)

    def _send(self, sock: zmq.Socket, box: queue.SimpleQueue, header: bytes, flags: int) -> bool:
        """Send what ``box`` holds in one frame (up to 4096 messages); False if it was empty."""
        parts = []
        while len(parts) < 4096:
            try:
                parts.append(box.get_nowait())
            except queue.Empty:
                break
        if parts:
            try:
                sock.send(b"".join((self._packer.pack_array_header(len(parts) + 1), header, *parts)), flags)
            except zmq.Again:  # (NOBLOCK only) its queue is full: drop what nobody waits for
                pass
        return bool(parts)

    def _receive(self, g: int, sock: zmq.Socket) -> None:
        self._source = g  # read by _on_message, whose signature subclasses may override
        for _ in range(10_000):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msgs = wire.decode_client_frame(frame)
            except wire.WireError as exc:
                log.warning("dropped a malformed frame from the gateway at %s: %s", self.gateways[g], exc)
                continue
            for msg in msgs:
                try:
                    self._on_message(msg)
                except (IndexError, TypeError, ValueError) as exc:
                    log.warning("dropped a malformed message from the gateway at %s: %r (%s)",
                                self.gateways[g], msg, exc)

    def _on_message(self, msg: list) -> None:
        g = self._source
        if msg[0] == wire.PONG:
            if len(msg) > 1:
                self._gateway_run(g, msg[1])
            return
        op, cid = msg[0], msg[1]
        if op == wire.PARTIAL:
            p = self._pending.get(cid)
            if p is not None and p.stream is not None and p.gw == g:
                p.stream._put(Partial(tuple(msg[2]), msg[3], msg[4], bool(msg[5])))
            return
        with self._lock:
            p = self._pending.pop(cid, None)
            if p is None:
                return
            if p.gw != g:  # not this gateway's to answer (it never admitted it)
                self._pending[cid] = p
                return
            self._gws.pending[g] -= 1
        if op == wire.RESULT:
            self._finish(p, value=msg[2])
        elif op == wire.FAILED:
            self._finish(p, error=RequestError(str(msg[2]), str(msg[3])))

    def _gateway_run(self, g: int, boot: Any) -> None:
        """A PONG names the gateway's run: a new one means its broker restarted, and what it
        held is gone. Every request pending there fails at once (some may have reached the
        new run: they are cancelled there), instead of each waiting for its own deadline."""
        if self._gws.restarted(g, boot) and self._gws.pending[g]:
            log.error("client: the gateway at %s restarted; failing %d request(s) in flight",
                      self.gateways[g], self._gws.pending[g])
            self._fail_gateway(g, RequestError("gateway", f"the gateway at {self.gateways[g]} restarted: the "
                                                          "requests in flight when it went down were lost"), True)

    def _finish(self, p: _Pending, value: Any = None, error: BaseException | None = None) -> None:
        if not p.future.done():
            if error is not None:
                p.future.set_exception(error)
            else:
                p.future.set_result(value)
        if p.stream is not None:
            p.stream._put(None)

    def _expire(self) -> None:
        now = time.monotonic()
        gone = []
        with self._lock:
            silent = self._gws.silent(now)  # a gateway taken for gone gets no new request from here on
            while self._deadlines and self._deadlines[0][0] <= now:
                _, cid = heapq.heappop(self._deadlines)
                p = self._pending.get(cid)
                if p is not None and p.give_up <= now:
                    gone.append(self._pending.pop(cid))
                    self._gws.ended(p.gw)
            if len(self._deadlines) > 2 * len(self._pending) + 1024:
                # Most entries belong to requests that ended: rebuild (amortised O(1)).
                self._deadlines = [(p.give_up, cid) for cid, p in self._pending.items()]
                heapq.heapify(self._deadlines)
        for g, seconds in silent:
            log.error("client: the gateway at %s has sent nothing for %.1f s", self.gateways[g], seconds)
            self._fail_gateway(g, RequestError("gateway", self._gws.silence_text(g, seconds)))
        for p in gone:
            self._finish(p, error=RequestError("client", f"no answer from the gateway at {self.gateways[p.gw]}"))


class AsyncStream:
    """One request's partial results (``async for``), then ``await result()``; ``cancel()`` ends it early."""

    def __init__(self, owner: AsyncClient, payload: Any, timeout: float | None, traceparent: str | None = None) -> None:
        self._client = owner._client
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[Partial | None] = asyncio.Queue()
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._client._submit(payload, timeout, self, self.future, traceparent, wake=False)
        owner._wake_soon(self._loop)

    def _put(self, item: Partial | None) -> None:  # the I/O thread
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # its loop is closed: nobody reads this stream (not the I/O thread's fault)
            pass

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Partial:
        item = await self._items.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def result(self) -> Any:
        """The request's value (after its partials); raises RequestError if it failed."""
        return await asyncio.wrap_future(self.future)

    def cancel(self) -> bool:
        return self._client.cancel(self.future)


class AsyncClient:
    """The asyncio face of :class:`Client` (same I/O thread, awaitable results).

    A caller that stops waiting (its task is cancelled, or it leaves a stream early)
    cancels the request at the gateway, so its work stops too."""

    def __init__(self, gateway: str | Sequence[str], *, timeout: float = 300.0, curve: Any = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self._client = Client(gateway, timeout=timeout, curve=curve, on_failure=on_failure)
        self._wake_due: asyncio.AbstractEventLoop | None = None  # the loop a wake-up is queued on
        self._handoff: _Handoff | None = None  # the latest loop's

    def _wake_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the I/O thread once per event-loop turn, after every submit of that turn:
        requests that arrive together (an HTTP server's many connections) leave in one
        frame, which the gateway and the stages then take as one batch; a wake-up per
        request (a syscall, and a GIL hand-off to the I/O thread) sent one frame each and
        cost the broker and the workers about three times their CPU per request."""
        if self._wake_due is not loop:  # (another loop's, one that closed before it ran: queue one here)
            self._wake_due = loop
            loop.call_soon(self._wake_now)

    def _wake_now(self) -> None:
        self._wake_due = None
        self._client._waker.wake()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(self, payload: Any, *, timeout: float | None = None, traceparent: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        handoff = self._handoff
        if handoff is None or handoff.loop is not loop:
            handoff = self._handoff = _Handoff(loop)
        fut = loop.create_future()
        pending = _LoopFuture(handoff, fut)
        self._client._submit(payload, timeout, None, pending, traceparent, wake=False)
        self._wake_soon(loop)
        try:
            return await fut
        except asyncio.CancelledError:
            self._client.cancel(pending)  # type: ignore[arg-type]  # what _pending holds
            raise

    def open_stream(self, payload: Any, *, timeout: float | None = None,
                    traceparent: str | None = None) -> AsyncStream:
        """Send one request; iterate its partials, then ``await result()`` (call in a running loop)."""
        return AsyncStream(self, payload, timeout, traceparent)

    async def stream(self, payload: Any, *, timeout: float | None = None,
                     traceparent: str | None = None) -> AsyncIterator[Partial]:
        s = self.open_stream(payload, timeout=timeout, traceparent=traceparent)
        try:
            async for item in s:
                yield item
            await s.result()
        finally:
            if not s.future.done():  # left early (break, aclose, cancelled)
                s.cancel()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._client.close)
