"""A small OpenAI-compatible server on 127.0.0.1 for the ``openai`` engine's fault tests.

The prompt (or the chat message) names what the server does with the request:

- ``normal``: four deltas, then ``finish_reason="stop"``, a usage chunk and ``[DONE]``;
- ``slow``: one delta, then waits until the test calls ``release("slow")``;
- ``hold``: one delta, then waits until the client goes away (records ``disconnected``);
- ``cut``: two deltas, then ends the body cleanly without a finish reason;
- ``broken``: two deltas, then drops the connection mid-body;
- ``429-once`` / ``503-once``: that status (``Retry-After: 0``) the first time, then ``normal``;
- ``429-always``, ``500``, ``400``: that status with an OpenAI-style error body.

``fail_with`` (set by a test) makes every request that scenario instead, whatever its
prompt: one member of a pool of fake servers can fail while the others serve.

It runs uvicorn in a daemon thread on a socket bound before the thread starts, so it
accepts connections at once (no start-up wait). Everything it sees is recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

DELTAS = ["Hello", ",", " world", "!"]
HOLD_LIMIT_S = 60.0    # a held stream ends by itself after this, so no test can hang on it

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1200.0
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 300.0
vllm:prefix_cache_hits_created{engine="0",model_name="tiny"} 1.7e9
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100",prefix_caching="True"} 1.0
"""


class _Broken(Exception):
    """Raised inside a streamed body: uvicorn then drops the connection mid-body."""


class _QuietBroken(logging.Filter):
    """uvicorn logs the deliberate ``broken`` drop as an application error: keep it out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Broken))


logging.getLogger("uvicorn.error").addFilter(_QuietBroken())


class FakeOpenAIServer:
    def __init__(self, metrics: str | None = VLLM_METRICS) -> None:
        self.metrics = metrics          # None: /metrics is 404 (not a vLLM server)
        self.fail_with: str | None = None   # a scenario every request gets instead of its own
        self.requests: list[dict[str, Any]] = []   # body + path + authorization of each request
        self.events: list[tuple[str, str]] = []    # (what, scenario) in the order they happened
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/chat/completions", self._completions, methods=["POST"]),
            Route("/metrics", self._metrics),
        ])
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        daemon=True, name="fake-openai")

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    # --- what the test calls -------------------------------------------------------

    def release(self, scenario: str) -> None:
        """Let a ``slow`` stream go on."""
        assert self._loop is not None, "no request reached the server yet"
        self._loop.call_soon_threadsafe(lambda: self._gate(scenario).set())

    def wait_for(self, what: str, scenario: str, timeout: float = 30.0) -> bool:
        """True once the server has recorded ``(what, scenario)``, within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: (what, scenario) in self.events, timeout)

    def count(self, scenario: str) -> int:
        return self._counts.get(scenario, 0)

    # --- the app ----------------------------------------------------------------

    def _record(self, what: str, scenario: str) -> None:
        with self._cond:
            self.events.append((what, scenario))
            self._cond.notify_all()

    def _gate(self, scenario: str) -> asyncio.Event:
        return self._gates.setdefault(scenario, asyncio.Event())

    async def _metrics(self, request: Request) -> Response:
        if self.metrics is None:
            return PlainTextResponse("not found", status_code=404)
        return PlainTextResponse(self.metrics)

    async def _completions(self, request: Request) -> Response:
        self._loop = asyncio.get_running_loop()
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        scenario = body["messages"][-1]["content"] if chat else body["prompt"]
        self.requests.append({**body, "path": request.url.path,
                              "authorization": request.headers.get("authorization")})
        scenario = self.fail_with or scenario
        n = self._counts[scenario] = self._counts.get(scenario, 0) + 1
        self._record("request", scenario)
        status = {"429-once": 429 if n == 1 else None, "503-once": 503 if n == 1 else None,
                  "429-always": 429, "500": 500, "400": 400}.get(scenario)
        if status is not None:
            headers = {"Retry-After": "0"} if status in (429, 503) else {}
            message = {400: "max_tokens is too large for this model", 429: "slow down",
                       500: "the engine fell over", 503: "warming up"}[status]
            return JSONResponse({"error": {"message": message, "type": "fake", "code": status}},
                                status_code=status, headers=headers)
        return StreamingResponse(self._stream(request, scenario, body, chat), media_type="text/event-stream")

    async def _held(self, request: Request, scenario: str) -> bool:
        """Wait until released (True) or the client is gone (False), at most HOLD_LIMIT_S."""
        gate = self._gate(scenario)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_LIMIT_S
        # The server's own loop: it must notice a client that went away while it sends nothing.
        while loop.time() < deadline:
            if gate.is_set():
                return True
            if await request.is_disconnected():
                return False
            try:
                await asyncio.wait_for(gate.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        self._record("held too long", scenario)
        return False

    async def _stream(self, request: Request, scenario: str, body: dict, chat: bool) -> AsyncIterator[str]:
        model = body.get("model")

        def chunk(text: str | None, finish: str | None = None, **extra: Any) -> str:
            if chat:
                choice = {"index": 0, "delta": {"content": text} if text is not None else {},
                          "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, **extra}
            return "data: " + json.dumps({"id": "x", "model": model, "choices": [choice]}) + "\n\n"

        try:
            if scenario in ("slow", "hold"):
                yield chunk("first")
                self._record("sent first", scenario)
                if not await self._held(request, scenario):
                    self._record("disconnected", scenario)
                    return
                yield chunk(" second", "stop")
            elif scenario in ("cut", "broken"):
                yield chunk("one")
                yield chunk(" two")
                if scenario == "broken":
                    raise _Broken("drop the connection")
                self._record("ended early", scenario)
                return
            else:
                for i, text in enumerate(DELTAS):
                    last = i == len(DELTAS) - 1
                    event = chunk(text, "stop" if last else None, token_ids=[10 + i])
                    if i == 1:   # one event over two data lines: legal SSE, joined by "\n"
                        event = event.replace(', "model"', '\ndata: , "model"', 1)
                    yield event
                    if i == 0:   # a comment line: legal SSE, ignored
                        yield ": keep-alive\n\n"
            usage = {"prompt_tokens": 7, "completion_tokens": len(DELTAS), "total_tokens": 7 + len(DELTAS),
                     "prompt_tokens_details": {"cached_tokens": 3}}
            yield "data: " + json.dumps({"id": "x", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            self._record("finished", scenario)
        except (asyncio.CancelledError, GeneratorExit):   # Starlette stops the body: client gone
            self._record("disconnected", scenario)
            raise
