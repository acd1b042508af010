"""The HTTP front door: a Starlette app that is one ordinary client of the gateway.

    POST /v1/requests   {"input": ..., "stream": false, "timeout": 30}  -> 200 {"result": ...}
                        "stream": true (or Accept: text/event-stream): server-sent events,
                        one ``data: {"path", "data", "final"}`` per partial, then ``data: {"result": ...}``
    GET  /v1/status     the broker's status (what ``alto status --json`` prints)
    GET  /metrics       Prometheus text (alto_bus.service.metrics)
    GET  /healthz       {"ok": true} while this process serves
    GET  /              the live dashboard (alto_bus.service.dashboard), fed by GET /v1/dashboard

Errors are ``{"error": {"stage": ..., "message": ...}}`` with the status code of
:func:`alto_bus.service.errors.classify`; the front door's own refusals (a body that is
not JSON, a wrong field) name the stage ``"http"``. A streamed request that fails
before its first partial gets its error status; after that the stream is already
``200``, so an ``{"error": ...}`` event ends it instead. A caller that disconnects
cancels its request at the gateway (the workers drop its work, LM generations abort);
a request watches for that from ``WATCH_AFTER`` into it (most end sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from alto_bus.client import AsyncClient, RequestError
from alto_bus.service.dashboard import Dashboard
from alto_bus.service.dashboard_series import DashboardSeries
from alto_bus.service.errors import HttpError, classify
from alto_bus.service.metrics import FrontDoorMetrics
from alto_bus.telemetry.carry import header_traceparent

MAX_BODY = 16 * 1024 * 1024   # a request body larger than this is refused (413), unread
MAX_TIMEOUT = 24 * 3600.0
BODY_FIELDS = ("input", "stream", "timeout")
STATUS_TIMEOUT = 2.0          # how long /v1/status and a scrape wait for the broker
WATCH_AFTER = 0.02            # a request still running after this many seconds watches for its caller leaving


class BadBody(Exception):
    """A request body the front door refuses; ``status`` is 400 (not JSON) or 422 (wrong shape)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads/json.dumps with any option build a new decoder/encoder per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(default=repr, separators=(",", ":"))


def parse_body(raw: bytes, accept: str, default_timeout: float) -> tuple[Any, bool, float]:
    """(input, stream, timeout) of a POST /v1/requests body; BadBody says what is wrong."""
    try:
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))  # as json.loads
    except RecursionError:
        raise BadBody(400, "the body is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN
        raise BadBody(400, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadBody(422, f'the body must be a JSON object like {{"input": ...}}, got {type(body).__name__}')
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise BadBody(422, f"unknown field {unknown[0]!r} (known: {', '.join(BODY_FIELDS)})")
    if "input" not in body:
        raise BadBody(422, "missing field 'input' (the request the pipeline's entry stage takes)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadBody(422, f"field 'stream' must be true or false, got {stream!r:.80}")
    timeout = body.get("timeout", default_timeout)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT):
        raise BadBody(422, f"field 'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}], "
                           f"got {timeout!r:.80}")
    return body["input"], stream or "text/event-stream" in accept, float(timeout)


def dumps(obj: Any) -> bytes:
    """JSON of a result or event; values JSON has no type for (bytes) as their repr, like ``alto submit``."""
    return _ENCODER.encode(obj).encode()


def error_body(stage: str, message: str) -> bytes:
    return dumps({"error": {"stage": stage, "message": message}})


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class FrontDoor:
    """What every endpoint shares: the gateway client, the broker's status, the metrics."""

    def __init__(self, gateway: str, control: str | None = None, *, timeout: float = 30.0,
                 curve: Any = None) -> None:
        self.gateway = gateway
        self.control = control
        self.timeout = timeout
        self.curve = curve
        self.client: AsyncClient | None = None
        self.metrics = FrontDoorMetrics(self.status if control else None)
        self.on_client_failure: Any = None  # called if the gateway client's I/O thread dies (http_server)
        self.series = DashboardSeries()  # the dashboard's window (event loop only)
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, from its lifespan

    def status(self) -> dict[str, Any] | None:
        """The broker's status, or None when it does not answer in time (blocking: a thread)."""
        if self.control is None:
            return None
        from alto_bus.deploy.status_probe import StatusProbe

        with StatusProbe(self.control, curve=self.curve) as probe:
            return probe.query(timeout=STATUS_TIMEOUT)

    def failed(self, reason: str) -> None:
        self.metrics.failed.labels(reason).inc()


class Serve:
    """Answers one admitted request over ASGI; the caller going away cancels it."""

    def __init__(self, door: FrontDoor, payload: Any, stream: bool, timeout: float, t0: float,
                 traceparent: str | None = None) -> None:
        self.door, self.payload, self.stream, self.timeout, self.t0 = door, payload, stream, timeout, t0
        self.traceparent = traceparent  # the caller's W3C trace context: the request's trace joins it
        self.answered = False  # the last byte of the answer is being sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = self.door.metrics
        m.in_flight.inc()
        # The work runs in this task. A request still running after WATCH_AFTER starts a
        # watcher task that waits for the caller to leave and then cancels this one, which
        # cancels the request at the gateway. (Most requests end sooner and never pay for
        # a second task: it would cost about a tenth of the front door's work on one.)
        task = asyncio.current_task(self.door.loop)  # the loop given: no lookup (a getpid() each)
        assert task is not None
        loop = task.get_loop()
        gone: asyncio.Task | None = None
        left = served = False

        def on_gone(watcher: asyncio.Task) -> None:
            nonlocal left
            # The server reports a disconnect after the answer too: only one before it counts.
            if not watcher.cancelled() and not served:
                left = True
                task.cancel()

        def watch() -> None:
            nonlocal gone
            if not served:
                gone = loop.create_task(_disconnected(receive))
                gone.add_done_callback(on_gone)

        timer = loop.call_later(WATCH_AFTER, watch)
        try:
            await (self._stream(send) if self.stream else self._once(send))
        except asyncio.CancelledError:
            if not left:
                raise  # we were cancelled ourselves (server shutdown)
            _uncancel(task)
            if not self.answered:
                self.door.failed("cancelled")
        finally:
            served = True
            m.in_flight.dec()
            timer.cancel()
            if gone is not None:
                gone.cancel()

    async def _once(self, send: Send) -> None:
        assert self.door.client is not None
        self.door.metrics.admitted.inc()
        try:
            result = await self.door.client.submit(self.payload, timeout=self.timeout, traceparent=self.traceparent)
        except RequestError as exc:
            return await self._error(send, exc.stage, exc.message, classify(exc.stage, exc.message))
        except TypeError as exc:  # msgpack cannot carry it (an integer beyond 64 bits, ...)
            return await self._error(send, "http", f"field 'input': {exc}", HttpError(422, "bad_request"))
        try:
            body = dumps({"result": result})
        except (TypeError, ValueError, RecursionError) as exc:
            return await self._error(send, "http", f"the result cannot be encoded as JSON: {exc}",
                                     HttpError(500, "internal"))
        self._completed()
        await _send(send, 200, body, "application/json")

    async def _stream(self, send: Send) -> None:
        assert self.door.client is not None
        self.door.metrics.admitted.inc()
        try:
            s = self.door.client.open_stream(self.payload, timeout=self.timeout, traceparent=self.traceparent)
        except TypeError as exc:
            return await self._error(send, "http", f"field 'input': {exc}", HttpError(422, "bad_request"))
        except RequestError as exc:  # refused at once (the client's I/O thread is gone)
            return await self._error(send, exc.stage, exc.message, classify(exc.stage, exc.message))
        started = False
        try:
            async for part in s:
                if not started:  # answer 200 only once the request has produced something
                    self.door.metrics.first_partial.observe(time.monotonic() - self.t0)
                    await _start(send, 200, "text/event-stream", {"cache-control": "no-cache",
                                                                  "x-accel-buffering": "no"})
                    started = True
                await _chunk(send, _event({"path": list(part.path), "data": part.data, "final": part.final}))
            try:
                result = await s.result()
            except RequestError as exc:
                err = classify(exc.stage, exc.message)
                if not started:
                    return await self._error(send, exc.stage, exc.message, err)
                self.answered = True
                self.door.failed(err.reason)
                return await _end(send, _event({"error": {"stage": exc.stage, "message": exc.message}}))
            if not started:
                await _start(send, 200, "text/event-stream", {"cache-control": "no-cache"})
            self._completed()
            await _end(send, _event({"result": result}))
        finally:
            if not s.future.done():
                s.cancel()

    def _completed(self) -> None:
        self.answered = True
        self.door.metrics.completed.inc()
        now = time.monotonic()
        self.door.metrics.e2e.observe(now - self.t0)
        self.door.series.latencies.add(now, now - self.t0)

    async def _error(self, send: Send, stage: str, message: str, err: HttpError) -> None:
        self.answered = True
        self.door.failed(err.reason)
        await _send(send, err.status, error_body(stage, message), "application/json", err.headers())


def _uncancel(task: asyncio.Task) -> None:
    """Count the cancel a caller's disconnect asked for as handled (asyncio.timeout and
    TaskGroup read a task with cancels pending as one being cancelled)."""
    if hasattr(task, "uncancel"):  # Python 3.11+
        task.uncancel()


def _event(obj: Any) -> bytes:
    try:
        data = dumps(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        data = dumps({"error": {"stage": "http", "message": f"cannot be encoded as JSON: {exc}"}})
    return b"data: " + data + b"\n\n"


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _start(send: Send, status: int, media_type: str, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", media_type.encode())] + [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def _chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _end(send: Send, data: bytes = b"") -> None:
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _send(send: Send, status: int, body: bytes, media_type: str, headers: dict[str, str] | None = None) -> None:
    await _start(send, status, media_type, {"content-length": str(len(body)), **(headers or {})})
    await _end(send, body)


class _Gone(Exception):
    """The caller disconnected before its body was read."""


async def _read_body(receive: Receive, declared: bytes | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadBody(413, f"the body is {declared.decode()} bytes; at most {MAX_BODY} are taken")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadBody(413, f"the body is over {MAX_BODY} bytes; at most {MAX_BODY} are taken")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class FrontDoorApp:
    """POST /v1/requests straight on ASGI (the hot path: no router, no middleware, no
    Request object); everything else, and the lifespan, through Starlette."""

    def __init__(self, door: FrontDoor, rest: Starlette) -> None:
        self.door, self.rest = door, rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/requests":
            return await self.rest(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, error_body("http", f"{scope['method']} /v1/requests: Method Not Allowed"
                                                             " (POST a JSON body)"), "application/json",
                               {"allow": "POST"})
        t0 = time.monotonic()
        door = self.door
        headers = dict(scope["headers"])  # names are lower-case bytes
        try:
            raw = await _read_body(receive, headers.get(b"content-length"))
            payload, stream, timeout = parse_body(raw, headers.get(b"accept", b"").decode("latin-1"), door.timeout)
        except BadBody as exc:
            door.failed("bad_request")
            return await _send(send, exc.status, error_body("http", exc.message), "application/json")
        except _Gone:
            return  # nobody is left to answer
        trace = header_traceparent(headers.get(b"traceparent"))
        await Serve(door, payload, stream, timeout, t0, trace)(scope, receive, send)


def create_app(door: FrontDoor) -> FrontDoorApp:
    """The ASGI app of ``door``; its lifespan opens and closes the gateway client."""

    async def get_status(request: Request) -> Response:
        status = await run_in_threadpool(door.status)
        if status is None:
            why = ("this front door was started without the broker's control address" if door.control is None
                   else f"no answer from the broker at {door.control} within {STATUS_TIMEOUT:g} s")
            return json_response(503, error_body("broker", why), {"Retry-After": "1"})
        return json_response(200, dumps(status))

    async def get_metrics(request: Request) -> Response:
        return Response(await run_in_threadpool(door.metrics.render), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return json_response(200, b'{"ok":true}')

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response(exc.status_code, error_body("http", f"{request.method} {request.url.path}: "
                                                                  f"{exc.detail}"), exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        return json_response(500, error_body("http", f"{type(exc).__name__}: {exc}"))

    dashboard = Dashboard(door.status, door.series)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        door.loop = asyncio.get_running_loop()
        door.client = AsyncClient(door.gateway, timeout=door.timeout, curve=door.curve,
                                  on_failure=door.on_client_failure)
        dashboard.start()
        try:
            yield
        finally:
            await dashboard.stop()
            await door.client.close()

    routes = [Route("/v1/status", get_status, methods=["GET"]),
              Route("/metrics", get_metrics, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]), *dashboard.routes(dumps)]
    rest = Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: unexpected})
    return FrontDoorApp(door, rest)

