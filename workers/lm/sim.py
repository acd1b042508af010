"""``sim``: a continuous-batching GPU engine emulated on asyncio, no GPU needed.

The scheduling and the step times come from the pure core (``sim_model.SimCore``);
this module owns time and text. At submission a request's whole output is decided
(a scripted text, or seeded filler English) and tokenized once; the engine loop then
runs one step, sleeps until the step's emulated end (times ``time_scale``), publishes
the new step count and wakes the consumers. A consumer turns the published step count
into a token count and sends the slice of precomputed text and ids it has not sent
yet, so a token costs a slice, not an object per step. An idle engine waits on an
Event; it never polls.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from alto_workers.lm.engine import EngineOutput, EngineStats, PromptStats, SamplingParams
from alto_workers.lm.sim_model import (
    ABORTED,
    BOS_ID,
    EOS_ID,
    SimCore,
    SimParams,
    SimSeq,
    block_hashes,
    split_pieces,
    tokenize,
)

__all__ = ["OutputPlan", "Script", "SimEngine", "SimStats", "fallback_text", "plan_output"]

Script = Callable[[str, str | None], str | None]


@dataclass
class SimStats(EngineStats):
    """EngineStats plus the timing counters benchmarks want."""

    steps: int = 0                 # engine iterations run
    busy_s: float = 0.0            # emulated seconds spent in steps (before time_scale)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    finished: int = 0              # sequences that ran to completion
    running: int = 0
    waiting: int = 0
    kv_free_blocks: int = 0        # free or evictable
    kv_cached_blocks: int = 0
    kv_evictions: int = 0


# ---------------------------------------------------------------------- output text


@dataclass(eq=False)
class OutputPlan:
    """A request's whole output, decided before it starts.

    The engine produces ``ids[k]`` at its k-th step; after ``k`` steps the consumer may
    have seen ``text[:ends[k]]``. Text past a stop string is never shown (the sim knows
    the future, so it needs no hold-back buffer); an EOS step shows no text.
    """

    text: str
    ids: tuple[int, ...]
    ends: list[int]
    reason: str                    # "stop" or "length"

    @property
    def n_steps(self) -> int:
        return len(self.ids)


def plan_output(text: str, params: SamplingParams, natural_end: bool = True) -> OutputPlan:
    """Cut ``text`` by ``stop`` strings and ``max_tokens`` the way a real engine would."""
    if params.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {params.max_tokens}")
    pieces, ids = tokenize(text)
    ends = list(accumulate(map(len, pieces)))
    limit = params.max_tokens
    stop = _first_stop(text, params.stop)
    if stop is not None:
        cut, done_at = stop
        n = bisect.bisect_left(ends, done_at) + 1   # the token that completes the stop string
        if n <= limit:
            return _plan(text[:cut], ids[:n], ends[:n], cut, "stop")
    if len(ids) >= limit or not natural_end:
        n = min(limit, len(ids))
        visible = ends[n - 1] if n else 0
        return _plan(text[:visible], ids[:n], ends[:n], visible, "length")
    # Ran out of text below the limit: one more step emits end-of-sequence.
    return _plan(text, [*ids, EOS_ID], [*ends, len(text)], len(text), "stop")


def _plan(text: str, ids: list[int], ends: list[int], visible: int, reason: str) -> OutputPlan:
    return OutputPlan(text, tuple(ids), [0, *(min(e, visible) for e in ends)], reason)


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, int] | None:
    """(start, end) of the stop-string occurrence that completes first."""
    best: tuple[int, int] | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or (i + len(s), i) < (best[1], best[0])):
            best = (i, i + len(s))
    return best


_SUBJECTS = (
    "The committee", "Researchers at the university", "The city council", "A recent study",
    "The company", "Local officials", "The museum", "A team of engineers", "The annual report",
    "Historians", "The national agency", "Several experts", "The original survey", "The court",
)
_VERBS = (
    "reviewed", "described", "confirmed", "examined", "published", "approved", "questioned",
    "measured", "documented", "announced", "compared", "estimated", "criticized", "supported",
)
_OBJECTS = (
    "a new policy", "the annual budget", "the results of the survey", "several changes to the plan",
    "the early records", "a proposal for the river crossing", "the cost of the program",
    "the findings of the panel", "a revised schedule", "the main causes of the delay",
    "the number of visitors", "an agreement with the region", "the design of the bridge",
)
_TAILS = (
    "in {year}", "last year", "after a long debate", "during the spring of {year}",
    "according to public records", "with broad support", "for the first time",
    "before the end of {year}", "in a statement on Monday", "despite some objections",
)
_EXTRAS = (
    "The figure was close to {n} percent.", "About {n} people took part.",
    "The change took effect in {year}.", "Critics said the evidence was incomplete.",
    "Further work is expected next year.", "The decision was welcomed by most residents.",
)


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.2:
        s = rng.choice(_EXTRAS)
    else:
        parts = (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
        s = " ".join(rng.choice(words) for words in parts) + "."
    return s.format(year=rng.randint(1950, 2024), n=rng.randint(2, 95))


def fallback_text(key: str, max_tokens: int, *, fill: bool = False) -> str:
    """Plausible English sentences, a pure function of ``key``.

    Ends at a sentence boundary within ``max_tokens`` tokens (unless the first sentence
    alone is longer); with ``fill`` it runs to at least ``max_tokens`` tokens.
    """
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    target = max_tokens if fill else rng.randint(max(1, max_tokens // 4), max(1, max_tokens))
    parts: list[str] = []
    n = 0
    while n < target:
        s = _sentence(rng)
        if parts:
            s = " " + s
        k = len(split_pieces(s))
        if parts and n + k > max_tokens and not fill:
            break
        parts.append(s)
        n += k
    return "".join(parts)


# --------------------------------------------------------------------------- engine


class _Request:
    """What a consumer needs besides the core's view of its sequence."""

    __slots__ = ("seq", "plan", "started", "abort_at")

    def __init__(self, seq: SimSeq, plan: OutputPlan, started: asyncio.Future[None]) -> None:
        self.seq = seq
        self.plan = plan
        self.started = started      # resolved once its first token is published
        self.abort_at = -1          # tokens shown when it was aborted


class SimEngine:
    """The Engine protocol (workers/lm/engine.py) on the emulated GPU.

    ``script(prompt_name, key)`` returns the scripted output for an input, or None for
    seeded filler text; ``key`` is ``script_key``, or the prompt when that is None.
    ``clock`` and ``sleep`` default to the event loop's; tests pass a virtual clock.
    """

    def __init__(
        self,
        params: SimParams | Mapping[str, Any] | None = None,
        script: Script | None = None,
        seed: int = 0,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not isinstance(params, SimParams):
            params = SimParams.from_dict(dict(params or {}))
        self.params = params
        self.seed = seed
        self._script = script
        self._core = SimCore(self.params)
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._requests: dict[str, _Request] = {}
        self._published = 0         # steps whose tokens consumers may see
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._tick: asyncio.Future[None] | None = None
        self._closed = False
        self._failure: BaseException | None = None

    # -- lifecycle

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("sim engine is shut down")
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        self._wake = asyncio.Event()
        self._tick = loop.create_future()
        self._task = loop.create_task(self._run(), name="sim-engine")
        self._task.add_done_callback(self._stopped)

    async def shutdown(self) -> None:
        """Stop stepping; every open generation ends with ``finish_reason="abort"``."""
        if self._closed:
            return
        self._closed = True
        for req in list(self._requests.values()):
            self._abort(req)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # Sequences that ended in the last step still owe their consumers its tokens.
        self._published = self._core.steps
        for req in self._requests.values():
            if not req.started.done():
                req.started.set_result(None)
        self._publish()

    # -- requests

    async def generate(
        self,
        request_id: str,
        prompt: str,
        params: SamplingParams,
        *,
        prompt_name: str = "",
        script_key: str | None = None,
    ) -> AsyncIterator[EngineOutput]:
        await self.start()
        if self._failure is not None:
            raise RuntimeError(f"sim engine failed: {self._failure!r}") from self._failure
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running")
        plan = self._plan(prompt, params, prompt_name, script_key)
        ids = [BOS_ID, *tokenize(prompt)[1]]     # like Llama's tokenizer: never empty
        hashes = block_hashes(ids, self.params.block_size)
        seq = SimSeq(request_id, prompt_name, len(ids), hashes, plan.n_steps)
        self._core.add(seq)                       # raises if it can never fit the cache
        req = _Request(seq, plan, asyncio.get_running_loop().create_future())
        seq.payload = req
        self._requests[request_id] = req
        self._wake.set()
        sent = 0
        done = False
        try:
            await req.started                     # a waiting request costs no wake-ups
            while True:
                if self._failure is not None:
                    raise RuntimeError(f"sim engine failed: {self._failure!r}") from self._failure
                if seq.state == ABORTED:
                    n, done, reason = max(req.abort_at, sent), True, "abort"
                else:
                    n = seq.generated(self._published)
                    done, reason = n == plan.n_steps, plan.reason
                if n > sent or done:
                    out = EngineOutput(
                        plan.text[plan.ends[sent] : plan.ends[n]],
                        plan.ids[sent:n],
                        done,
                        reason if done else None,
                    )
                    sent = n
                    yield out
                    if done:
                        return
                    continue                      # the engine may have run on meanwhile
                await self._tick
        finally:
            if not done:                          # the consumer left early: free its KV
                self._abort(req)

    async def abort(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            self._abort(req)

    def _abort(self, req: _Request) -> None:
        seq = req.seq
        shown = seq.generated(self._published)
        if not self._core.abort(seq):
            return                                # already ended: its last tokens still flow
        if self._requests.get(seq.rid) is req:
            del self._requests[seq.rid]
        req.abort_at = shown
        if not req.started.done():
            req.started.set_result(None)
        self._publish()

    def _plan(
        self, prompt: str, sp: SamplingParams, prompt_name: str, script_key: str | None
    ) -> OutputPlan:
        key = script_key if script_key is not None else prompt
        text = self._script(prompt_name, key) if self._script is not None else None
        filler_key = f"{self.seed}\x00{sp.seed}\x00{prompt_name}\x00{script_key}\x00{prompt}"
        if text is None:
            text = fallback_text(filler_key, sp.max_tokens, fill=sp.ignore_eos)
        elif sp.ignore_eos:
            # Past the scripted end a real engine keeps sampling: continue with filler.
            text = text + " " + fallback_text(filler_key, sp.max_tokens, fill=True)
        return plan_output(text, sp, natural_end=not sp.ignore_eos)

    # -- the loop

    async def _run(self) -> None:
        core, scale, clock = self._core, self.params.time_scale, self._clock
        deadline = clock()
        while True:
            if not core.has_work():
                self._wake.clear()
                await self._wake.wait()
                deadline = max(deadline, clock())     # idle time is not owed to anyone
                continue
            res = core.step()
            if res is None:                           # cannot happen: add() rejects what never fits
                raise RuntimeError("sim engine has work but nothing to schedule")
            # Steps are chained on deadlines, so loop lag does not accumulate: a step
            # that starts late is made up by a shorter sleep (idle time is skipped above).
            deadline += res.duration * scale
            delay = deadline - clock()
            await self._sleep(delay if delay > 0 else 0.0)
            self._published = core.steps
            for seq in res.started:
                req = seq.payload
                if not req.started.done():
                    req.started.set_result(None)
            for seq in res.finished:
                if self._requests.get(seq.rid) is seq.payload:
                    del self._requests[seq.rid]
            self._publish()

    def _publish(self) -> None:
        """Wake every consumer waiting for a step."""
        tick = self._tick
        if tick is None:
            return
        self._tick = asyncio.get_running_loop().create_future()
        if not tick.done():
            tick.set_result(None)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:                           # a bug: fail consumers, don't hang them
            self._failure = exc
            for req in self._requests.values():
                if not req.started.done():
                    req.started.set_result(None)
            self._publish()

    # -- observation

    def stats(self) -> SimStats:
        core = self._core
        steps = core.steps
        prompts = {
            name: PromptStats(c.prefill, c.cached, c.decode_tokens(steps), c.running, c.waiting)
            for name, c in core.prompts.items()
        }
        return SimStats(
            prompts=prompts,
            cache_queries=core.cache_queries,
            cache_hits=core.cache_hits,
            kv_capacity_tokens=core.kv.num_blocks * self.params.block_size,
            kv_used_tokens=(core.kv.num_blocks - core.kv.available()) * self.params.block_size,
            steps=steps,
            busy_s=core.busy_s,
            prefill_tokens=core.prefill_tokens,
            decode_tokens=sum(p.decode_tokens for p in prompts.values()),
            finished=core.finished,
            running=core.running(),
            waiting=len(core.waiting),
            kv_free_blocks=core.kv.available(),
            kv_cached_blocks=core.kv.cached(),
            kv_evictions=core.kv.evictions,
        )
