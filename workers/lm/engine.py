"""The one interface every LM engine (vllm, sim, openai) implements for the LM worker.

The LM worker renders a prompt from its template and the input item, then iterates
``engine.generate(...)``; each output carries only what is new since the previous one
(delta text and delta token ids), the way vLLM's ``RequestOutputKind.DELTA`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class EngineOutput:
    text: str                      # delta text since the previous output
    token_ids: tuple[int, ...]     # delta token ids since the previous output
    finished: bool = False
    finish_reason: str | None = None   # "stop", "length", "abort"


@dataclass
class PromptStats:
    """Counters an engine keeps per prompt name (monotonic; the reader takes differences)."""

    prefill_tokens: int = 0        # prompt tokens actually computed (cache misses)
    cached_tokens: int = 0         # prompt tokens served from the prefix cache
    decode_tokens: int = 0         # output tokens generated
    running: int = 0               # sequences of this prompt running now (gauge)
    waiting: int = 0               # sequences of this prompt queued now (gauge)


@dataclass
class EngineStats:
    prompts: dict[str, PromptStats] = field(default_factory=dict)
    cache_queries: int = 0         # prompt tokens looked up in the prefix cache (monotonic)
    cache_hits: int = 0            # of which were hits (monotonic)
    kv_capacity_tokens: int = 0    # KV cache size in tokens (0: the engine does not say)
    kv_used_tokens: int = 0        # held by sequences now (cached prefixes nobody uses are free)
    # Engine-wide gauges where the engine says (a remote vLLM server's /metrics: they
    # count every client's requests, not only this stage's); 0 otherwise.
    requests_running: int = 0
    requests_waiting: int = 0


class Engine(Protocol):
    async def start(self) -> None: ...

    def generate(
        self,
        request_id: str,
        prompt: str,
        params: SamplingParams,
        *,
        prompt_name: str = "",
        script_key: str | None = None,
    ) -> AsyncIterator[EngineOutput]:
        """Stream the outputs of one generation; the last one has ``finished=True``.

        ``prompt_name`` names the stage's prompt (per-prompt stats, the sim's script);
        ``script_key`` is the key the sim engine looks its scripted output up by
        (real engines ignore it).
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a generation; its iterator ends with ``finish_reason="abort"``."""
        ...

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...
