"""The LM worker's engine on any OpenAI-compatible server (vLLM, SGLang, TGI, hosted).

``engine = "openai"``: each generation is one streamed ``POST {base_url}/completions``
(or ``/chat/completions`` with ``chat = true``); its server-sent events are parsed as
they arrive and handed on as deltas, so the stage streams exactly as with an
in-process engine. Ending a request early (abort, or its iterator closed) closes its
HTTP connection, which is how such a server learns to abort the generation.

Connect errors, 429 and 503 are retried with exponential backoff (bounded in count and
in total time, honouring ``Retry-After``); only before any delta arrived, since a
stream cannot be resumed. Any other failure is an error naming the stage.

Figures: requests in flight per prompt are counted here; KV use, prefix-cache queries
and hits come from the server's ``/metrics`` when it is vLLM, polled in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from alto_workers.lm.engine import EngineOutput, EngineStats, PromptStats, SamplingParams
from alto_workers.lm.openai_metrics import ServerFigures, metrics_url, parse_vllm_metrics

log = logging.getLogger("alto.lm.openai")
T = TypeVar("T")

_RETRY_STATUS = (429, 503)


class EngineError(RuntimeError):
    """A generation the server could not or would not do; the message says which stage and why."""


@dataclass(frozen=True)
class ClientOptions:
    """``engine_args`` of an ``openai`` engine (all optional)."""

    timeout: float = 600.0        # s without any byte from the server before giving up
    connect_timeout: float = 10.0
    retries: int = 5              # further attempts after a connect error, 429 or 503
    retry_base_s: float = 0.5     # first backoff; doubles each attempt
    retry_max_s: float = 60.0     # total time a request may spend waiting to retry
    metrics_interval: float = 2.0  # s between /metrics polls; 0: never poll
    extra_body: dict | None = None  # merged into every request body (server extensions)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientOptions:
        """Raise ``ValueError`` naming the argument that is unknown or out of range."""
        known = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} for engine 'openai' "
                             f"(known: {', '.join(sorted(known))})")
        for name, value in d.items():
            if name == "extra_body":
                if not isinstance(value, dict):
                    raise ValueError(f"argument 'extra_body' must be a table, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"argument {name!r} must be a number, got {value!r}")
            if name == "retries" and (not isinstance(value, int) or not 0 <= value <= 100):
                raise ValueError(f"argument 'retries' must be an integer in 0..100, got {value!r}")
            if value < 0 or (value == 0 and name in ("timeout", "connect_timeout")):
                raise ValueError(f"argument {name!r} must be > 0, got {value!r}")
        opts = cls(**d)
        if 0 < opts.metrics_interval < 0.25:   # bounded rate: at most 4 polls a second
            raise ValueError("argument 'metrics_interval' must be 0 (off) or >= 0.25 s")
        return opts


class OpenAIEngine:
    """An OpenAI-compatible HTTP server behind the LM worker's ``Engine`` protocol."""

    def __init__(self, base_url: str, model: str, *, label: str = "engine 'openai'",
                 api_key: str | None = None, chat: bool = False,
                 options: ClientOptions | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.label = label            # "stage 'gen'": starts every error message
        self.api_key = api_key
        self.chat = chat
        self.options = options or ClientOptions()
        self.url = self.base_url + ("/chat/completions" if chat else "/completions")
        self._client: Any = None      # httpx.AsyncClient once started
        self._prompts: dict[str, PromptStats] = {}
        self._live: dict[str, asyncio.Event] = {}   # request id -> set when aborted
        self._server: ServerFigures | None = None   # the last /metrics figures
        self._poller: asyncio.Task | None = None
        self.is_vllm: bool | None = None             # unknown until /metrics answers
        self.member_index: int | None = None         # a pool's remote member: its index in 'members'

    async def start(self) -> None:
        if self._client is not None:
            return
        import httpx

        o = self.options
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # No pool limit: every in-flight generation holds one streamed connection.
        self._client = httpx.AsyncClient(
            headers=headers, trust_env=False,   # never a proxy from the environment
            timeout=httpx.Timeout(o.timeout, connect=o.connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        if o.metrics_interval > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_metrics())

    async def generate(
        self,
        request_id: str,
        prompt: str,
        params: SamplingParams,
        *,
        prompt_name: str = "",
        script_key: str | None = None,
    ) -> AsyncIterator[EngineOutput]:
        client = self._client
        if client is None:
            raise RuntimeError("OpenAIEngine.generate() before start()")
        stats = self._prompts.setdefault(prompt_name, PromptStats())
        aborted = self._live.setdefault(request_id, asyncio.Event())
        stats.running += 1
        response = None
        try:
            response = await self._send(client, self._body(prompt, params), aborted)
            if response is None:   # aborted before the server answered
                yield EngineOutput("", (), finished=True, finish_reason="abort")
                return
            # Closed explicitly when the consumer stops early, before the response is.
            async with contextlib.aclosing(self._events(response, aborted, stats)) as events:
                async for out in events:
                    yield out
        finally:
            stats.running -= 1
            self._live.pop(request_id, None)
            if response is not None:   # closes the connection if the stream is unfinished
                await response.aclose()

    async def abort(self, request_id: str) -> None:
        event = self._live.get(request_id)
        if event is not None:
            event.set()

    def stats(self) -> EngineStats:
        s = self._server or ServerFigures()
        return EngineStats(
            prompts={name: replace(p) for name, p in self._prompts.items()},
            cache_queries=s.cache_queries, cache_hits=s.cache_hits,
            kv_capacity_tokens=s.kv_capacity_tokens, kv_used_tokens=s.kv_used_tokens,
            requests_running=s.running, requests_waiting=s.waiting,
        )

    async def shutdown(self) -> None:
        for event in self._live.values():   # open streams end with "abort"
            event.set()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- requests ---------------------------------------------------------------

    def _body(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True,
                                "stream_options": {"include_usage": True},
                                "max_tokens": params.max_tokens, "temperature": params.temperature}
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        # Optional ones only when set: strict servers refuse parameters they lack.
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True     # a vLLM extension
        body.update(self.options.extra_body or {})
        return body

    async def _send(self, client: Any, body: dict, aborted: asyncio.Event) -> Any:
        """The streamed response (status 200), after retries; None if aborted meanwhile."""
        import httpx

        o = self.options
        t0 = time.monotonic()
        for attempt in range(o.retries + 1):
            request = client.build_request("POST", self.url, json=body)
            retry_after = None
            try:
                sent = await _unless(aborted, client.send(request, stream=True))
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                # RemoteProtocolError here: the connection dropped before any response
                # (a keep-alive connection the server had closed): nothing was generated.
                why = f"cannot connect ({type(exc).__name__}: {exc or 'no detail'})"
            else:
                if sent is _ABORTED:
                    return None
                if sent.status_code == 200:
                    return sent
                message = await _server_message(sent)
                await sent.aclose()
                why = f"the server answered {sent.status_code}: {message}"
                if sent.status_code not in _RETRY_STATUS:
                    raise EngineError(f"{self.label}: {self.url}: {why}")
                retry_after = _retry_after(sent.headers.get("retry-after"))
            delay = retry_after if retry_after is not None else \
                o.retry_base_s * 2 ** attempt * random.uniform(0.8, 1.2)  # jitter: no herd
            spent = time.monotonic() - t0
            if attempt == o.retries or spent + delay > o.retry_max_s:
                raise EngineError(f"{self.label}: {self.url}: gave up after {attempt + 1} attempt(s) "
                                  f"in {spent:.1f} s: {why}")
            log.info("%s: %s; retrying in %.2f s", self.label, why, delay)
            try:   # an abort ends the wait
                await asyncio.wait_for(aborted.wait(), delay)
                return None
            except asyncio.TimeoutError:
                pass
        raise AssertionError("unreachable")

    async def _events(self, response: Any, aborted: asyncio.Event,
                      stats: PromptStats) -> AsyncIterator[EngineOutput]:
        """The deltas of one streamed response, as its server-sent events arrive."""
        import httpx

        lines = response.aiter_lines()
        try:
            data: list[str] = []
            reason: str | None = None
            n = 0
            while True:
                try:
                    line = await _unless(aborted, anext(lines, None))
                except httpx.ReadTimeout:
                    raise EngineError(f"{self.label}: {self.url}: no data from the server for "
                                      f"{self.options.timeout:g} s") from None
                except (httpx.TransportError, httpx.StreamError) as exc:
                    raise EngineError(f"{self.label}: {self.url}: the stream broke after {n} deltas: "
                                      f"{type(exc).__name__}: {exc or 'connection lost'}") from None
                if aborted.is_set() or line is _ABORTED:
                    yield EngineOutput("", (), finished=True, finish_reason="abort")
                    return
                if line is None:   # end of the body
                    if reason is None:
                        raise EngineError(f"{self.label}: {self.url}: the stream ended after {n} deltas "
                                          "before the generation finished")
                    break
                if line:           # an event is its data lines up to a blank line
                    field, _, value = line.partition(":")
                    if field == "data":
                        data.append(value[1:] if value.startswith(" ") else value)
                    continue
                if not data:
                    continue
                payload, data = "\n".join(data), []
                if payload == "[DONE]":
                    if reason is None:
                        raise EngineError(f"{self.label}: {self.url}: [DONE] without a finish reason")
                    break
                chunk = self._chunk(payload)
                _count_usage(chunk.get("usage"), stats)
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
                    ids = tuple(choice.get("token_ids") or ())
                    if text or ids:
                        n += 1
                        yield EngineOutput(text or "", ids)
                    if choice.get("finish_reason"):
                        reason = str(choice["finish_reason"])
            # Usage arrives after the finish reason: the end is told once the stream is over.
            yield EngineOutput("", (), finished=True, finish_reason=reason)
        finally:   # the body's reader goes first, then the caller closes the response
            await lines.aclose()

    def _chunk(self, payload: str) -> dict:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise EngineError(f"{self.label}: {self.url}: an event that is not JSON: {payload[:200]!r}") \
                from None
        if not isinstance(chunk, dict):
            raise EngineError(f"{self.label}: {self.url}: an event that is not an object: {payload[:200]!r}")
        if chunk.get("error"):   # vLLM reports a failure inside the stream this way
            raise EngineError(f"{self.label}: {self.url}: the server failed mid-stream: "
                              f"{_message_of(chunk)}")
        return chunk

    # --- /metrics ---------------------------------------------------------------

    async def poll_metrics(self) -> ServerFigures | None:
        """Read the server's /metrics once: the figures, or None if it is not vLLM."""
        response = await self._client.get(metrics_url(self.base_url))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        figures = parse_vllm_metrics(response.text)
        if figures is not None:
            self._server = figures
        return figures

    async def _poll_metrics(self) -> None:
        """Poll until shutdown (which cancels it); stop for good on a server that is not vLLM."""
        interval = self.options.metrics_interval
        wait = interval
        while self._client is not None:
            try:
                figures = await self.poll_metrics()
            except Exception as exc:   # unreachable for now: try again, less often
                log.debug("%s: /metrics: %s", self.label, exc)
                wait = min(wait * 2, 60.0)
            else:
                if figures is None:
                    log.info("%s: %s has no vLLM /metrics: figures are requests in flight only",
                             self.label, self.base_url)
                    self.is_vllm = False
                    return
                self.is_vllm = True
                wait = interval
            await asyncio.sleep(wait)


_ABORTED = object()


async def _unless(aborted: asyncio.Event, step: Awaitable[T]) -> T | object | None:
    """``await step`` unless ``aborted`` is set first: then ``step`` is cancelled and
    the result is ``_ABORTED``."""
    if aborted.is_set():
        if asyncio.iscoroutine(step):
            step.close()
        return _ABORTED
    task = asyncio.ensure_future(step)
    waiter = asyncio.ensure_future(aborted.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return _ABORTED
    return task.result()


def _count_usage(usage: Any, stats: PromptStats) -> None:
    """Token counts from the usage the server sends last (``include_usage``)."""
    if not isinstance(usage, dict):
        return
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    stats.cached_tokens += cached
    stats.prefill_tokens += max(0, prompt - cached)
    stats.decode_tokens += int(usage.get("completion_tokens") or 0)


async def _server_message(response: Any) -> str:
    """What the server said in an error body, short."""
    try:
        raw = await response.aread()
    except Exception as exc:   # the body itself failed: say so rather than hide the status
        return f"(no body: {type(exc).__name__})"
    text = raw.decode("utf-8", "replace")
    try:
        return _message_of(json.loads(text))
    except ValueError:
        return text.strip()[:300] or response.reason_phrase or "(empty body)"


def _message_of(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if err.get(key):
                    return str(err[key])[:300]
        elif isinstance(err, str):
            return err[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
    return json.dumps(body)[:300]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- fields -----------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_openai_fields(fields: dict, label: str, error: Callable[[str], Exception]) -> None:
    """Validate an ``engine = "openai"`` stage's (or pool's) fields (no network, no environment).

    A pool lists its remote servers in ``members`` (one pool member each); a stage names
    one in ``base_url``."""
    members = fields.get("members")
    if fields.get("pool"):   # an LM stage on a pool: the pool's table names the servers
        return
    if "policy" in fields and members is None:   # only pools have a policy
        raise error(f"{label}: field 'engine': a [[pool]] with engine 'openai' needs field 'members' "
                    "(its servers' base URLs, one member each), e.g. "
                    "members = [\"http://10.0.0.5:8000/v1\", \"http://10.0.0.6:8000/v1\"]")
    if members is not None:
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise error(f"{label}: field 'members': must be a non-empty list of base URLs, got {members!r}")
        for m in members:
            _check_url(m, "members", label, error)
    else:
        url = fields.get("base_url")
        if not url:
            raise error(f"{label}: missing required field 'base_url' (engine 'openai'), "
                        "e.g. \"http://127.0.0.1:8000/v1\"")
        _check_url(url, "base_url", label, error)
    name = fields.get("api_key_env")
    if name is not None and not _ENV_NAME.match(name):
        raise error(f"{label}: field 'api_key_env': must name an environment variable "
                    f"(letters, digits, _), got {name!r}")
    try:
        ClientOptions.from_dict(fields.get("engine_args") or {})
    except ValueError as exc:
        raise error(f"{label}: field 'engine_args': {exc}") from None


def _check_url(url: str, field: str, label: str, error: Callable[[str], Exception]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(f"{label}: field {field!r}: must be an http:// or https:// URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise error(f"{label}: field {field!r}: must not have a query or fragment, got {url!r}")


def make_openai_engine(fields: dict, label: str) -> OpenAIEngine:
    """The engine of a stage's fields; reads the API key from its environment variable.

    For a pool member, ``fields`` holds the pool's ``members`` and this member's
    ``member_index`` (0-based): the member talks to ``members[member_index]``."""
    api_key = None
    name = fields.get("api_key_env")
    if name:
        api_key = os.environ.get(name)
        if not api_key:
            raise EngineError(f"{label}: field 'api_key_env': environment variable {name!r} is not set")
    url = fields.get("base_url")
    members = fields.get("members")
    if members:
        index = fields.get("member_index")
        if not isinstance(index, int) or not 0 <= index < len(members):
            raise EngineError(f"{label}: member index {index!r} is not one of the "
                              f"{len(members)} member(s) of field 'members'")
        url = members[index]
        label = f"{label} member {index} ({url})"
    engine = OpenAIEngine(url, fields["model"], label=label, api_key=api_key,
                          chat=bool(fields.get("chat")),
                          options=ClientOptions.from_dict(fields.get("engine_args") or {}))
    if members:
        engine.member_index = fields["member_index"]   # reported, so the broker can name its server
    return engine
