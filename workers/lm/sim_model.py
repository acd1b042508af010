"""The sim engine's pure core: step-time model, KV-cache admission, prefix cache.

No asyncio, no sockets, no wall clock. ``SimCore.step()`` schedules and executes one
engine iteration (vLLM-style continuous batching with chunked prefill) and returns its
emulated duration; the caller owns time: the asyncio engine (``sim.py``) sleeps for it,
``scripts/validate_sim.py`` adds it to a virtual clock.

Step time, with the published figures behind each default in the comments of SimParams::

    max(a + b*B, (D + P) / R) + c * ctx / 1000

B sequences in the batch, D of them decoding (one token each), P prefill tokens, ctx
the context tokens the batch's attention reads (tokens already in the KV cache).

A decoding sequence costs O(1) per step: its token count is derived from the step at
which it produced its first token, and it is only touched again at the step it ends
(found in a dict keyed by step), or if it is aborted.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class SimParams:
    """Every knob of the emulated engine. Defaults: A100-80GB, Llama-3-8B, vLLM.

    A dagger (†) marks a fit or an inference, not a published number.
    """

    # a: light-load TPOT is 13-14 ms (vLLM v0.6.0 blog, A100_8B plot; sglang
    # benchmark_vllm_060 README, 14.1 ms median at 4 req/s)†
    step_base_ms: float = 12.0
    # b: least-squares fit to the Vidur A100 Llama-3-8B linear-layer profile
    # (9.7 ms at 1 token .. 19.5 ms at 256, summed over 32 layers)†
    step_per_seq_ms: float = 0.045
    # c: 128 KiB of KV per token (vLLM issue #19996) read at ~1.8 TB/s effective†;
    # gives 22.6 ms for 32 x 4k context vs Sarathi-Serve's ~20 ms (Table 3)
    step_per_kctx_ms: float = 0.07
    # R: TensorRT-LLM performance.md, A100 TTFT 133 ms for 2,048 tokens (15.4K tok/s)
    prefill_tokens_per_s: float = 15_000.0
    # KV capacity: 410,128 tokens on H100-80GB at gpu_memory_utilization 0.9
    # (vLLM issue #19996); the same on A100-80GB is an inference†
    kv_capacity_tokens: int = 410_000
    # block size 16, only full blocks cached (vLLM blog, "Inside vLLM")
    block_size: int = 16
    # vllm/engine/arg_utils.py get_batch_defaults, A100 API server
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2_048
    # per-sequence prefill chunk: Sarathi-Serve's strict token budget of 512 (§5.1)
    max_prefill_chunk: int = 512
    # vLLM V1 enables prefix caching by default (V1 alpha release blog)
    enable_prefix_caching: bool = True
    # emulated seconds -> wall seconds; 2.0 runs the engine at half speed
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"sim parameter {f.name!r} must be a bool, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"sim parameter {f.name!r} must be a number, got {value!r}")
            if f.type == "int" and value != int(value):
                raise ValueError(f"sim parameter {f.name!r} must be an integer, got {value!r}")
            if value < 0 or (value == 0 and f.name != "time_scale"):
                raise ValueError(f"sim parameter {f.name!r} must be positive, got {value!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM has the same rule: every running sequence must fit in one step's budget.
            raise ValueError(
                f"sim parameter 'max_num_batched_tokens' ({self.max_num_batched_tokens}) "
                f"must be at least 'max_num_seqs' ({self.max_num_seqs})"
            )
        if self.kv_capacity_tokens < self.block_size:
            raise ValueError("sim parameter 'kv_capacity_tokens' is smaller than one block")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None) -> SimParams:
        """Build from a topology's ``[engine]`` table; ``preset`` picks a base set."""
        values = dict(values or {})
        base = dict(PRESETS[_preset_name(values.pop("preset", "a100-llama3-8b"))])
        names = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in names:
                known = ", ".join(sorted(names))
                raise ValueError(f"unknown sim parameter {key!r}; known: {known}")
            if names[key] == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            base[key] = value
        return cls(**base)

    def num_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def step_time(self, seqs: int, tokens: int, context: int) -> float:
        """Emulated seconds of one step: ``seqs`` in the batch, ``tokens`` computed."""
        compute = max(
            self.step_base_ms + self.step_per_seq_ms * seqs,
            1000.0 * tokens / self.prefill_tokens_per_s,
        )
        return (compute + self.step_per_kctx_ms * context / 1000.0) / 1000.0


# H100 variant: a fit† for the same model for the same model (vLLM blog H100_8B
# plot); max_num_seqs / max_num_batched_tokens are vLLM's H100 defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "a100-llama3-8b": {},
    "h100-llama3-8b": {
        "step_base_ms": 7.0,
        "step_per_seq_ms": 0.015,
        "step_per_kctx_ms": 0.04,
        "prefill_tokens_per_s": 45_000.0,
        "max_num_seqs": 1_024,
        "max_num_batched_tokens": 8_192,
    },
}


def _preset_name(name: Any) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown sim preset {name!r}; known: {', '.join(PRESETS)}")
    return name


# ------------------------------------------------------------------------ tokenizer

VOCAB_SIZE = 32_000    # Llama-2's vocabulary size†: ids only feed hashing and the wire
BOS_ID, EOS_ID = 1, 2  # Llama-2's ids 0-2 are <unk>, <s>, </s>; text never maps to them
_FIRST_TEXT_ID = 3
# ~4 characters a token on English prose: a word piece of up to 5 letters, up to 3
# digits or 2 punctuation marks, each with the space before it; or a whitespace run.
_PIECE = re.compile(r" ?[^\W\d_]{1,5}| ?\d{1,3}| ?[^\w\s]{1,2}|\s+|_")


def split_pieces(text: str) -> list[str]:
    """The token strings of ``text``; they join back to ``text`` exactly."""
    return _PIECE.findall(text)


def token_id(piece: str) -> int:
    return _FIRST_TEXT_ID + zlib.crc32(piece.encode()) % (VOCAB_SIZE - _FIRST_TEXT_ID)


def tokenize(text: str) -> tuple[list[str], list[int]]:
    """Cheap, deterministic stand-in for a real tokenizer: (pieces, ids)."""
    pieces = _PIECE.findall(text)
    first, span, crc = _FIRST_TEXT_ID, VOCAB_SIZE - _FIRST_TEXT_ID, zlib.crc32
    return pieces, [first + crc(p.encode()) % span for p in pieces]


_ROOT_HASH = 0x5EED_B10C   # parent of a prompt's first block


def block_hashes(ids: list[int], block_size: int) -> list[int]:
    """One hash per full block, each chained to its parent's (as vLLM does), so a
    block matches only when the whole prefix up to it matches."""
    out, h = [], _ROOT_HASH
    for start in range(0, len(ids) - block_size + 1, block_size):
        # hash() of a tuple of ints is the same in every process (no str salting)
        h = hash((h, tuple(ids[start : start + block_size])))
        out.append(h)
    return out


# ------------------------------------------------------------------------- KV cache


class KVCache:
    """KV blocks: private to one sequence, or cached (findable by chained hash).

    A cached block is ref-counted by the sequences using it; at zero it stays cached
    but becomes evictable, least recently released first. Free blocks that hold nothing
    reusable are used before any cached block is evicted.
    """

    def __init__(self, num_blocks: int, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self.free = num_blocks                              # blocks holding nothing reusable
        self._refs: dict[int, int] = {}                     # cached block -> sequences using it
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached, unused; oldest first
        self.evictions = 0

    def available(self) -> int:
        return self.free + len(self._idle)

    def cached(self) -> int:
        return len(self._refs)

    def __contains__(self, h: int) -> bool:
        return h in self._refs

    def match(self, hashes: list[int]) -> int:
        """How many leading blocks of a prompt are cached."""
        if not self.caching:
            return 0
        n = 0
        for h in hashes:
            if h not in self._refs:
                break
            n += 1
        return n

    def allocate(self, hits: list[int], new: int) -> bool:
        """Pin the cached blocks ``hits`` and take ``new`` private blocks, or do nothing."""
        refs = self._refs
        revived = sum(1 for h in hits if refs[h] == 0)      # idle hits stop being evictable
        if new > self.free + len(self._idle) - revived:
            return False
        for h in hits:
            r = refs[h]
            if r == 0:
                del self._idle[h]
            refs[h] = r + 1
        take = min(new, self.free)
        self.free -= take
        for _ in range(new - take):
            h, _ = self._idle.popitem(last=False)
            del refs[h]
            self.evictions += 1
        return True

    def register(self, h: int) -> bool:
        """A private block just filled with a full prompt block: make it findable."""
        if not self.caching or h in self._refs:
            return False
        self._refs[h] = 1
        return True

    def release(self, hashes: list[int], private: int) -> None:
        self.free += private
        # Release the tail first so that it is evicted before the shared head (as vLLM does).
        for h in reversed(hashes):
            r = self._refs[h] - 1
            self._refs[h] = r
            if r == 0:
                self._idle[h] = None


# ------------------------------------------------------------------------ sequences

WAITING, PREFILL, DECODE, FINISHED, ABORTED = range(5)


@dataclass(eq=False, slots=True)
class SimSeq:
    """One request as the scheduler sees it. ``n_steps`` is known up front: the sim
    decides the output (and so its length) before it starts."""

    rid: str
    prompt_name: str
    prompt_len: int
    hashes: list[int]            # chained hashes of the prompt's full blocks
    n_steps: int                 # engine iterations it takes part in (one output token each)
    payload: Any = None          # the caller's (the engine hangs its output plan here)
    state: int = WAITING
    computed: int = 0            # prompt tokens in the KV cache (hits included)
    cached_tokens: int = 0
    held: list[int] = field(default_factory=list)   # cached blocks it pins
    private: int = 0             # private blocks it holds
    registered: int = 0          # leading prompt blocks already offered to the cache
    first_step: int = -1         # step that produced its first output token
    end_step: int = -1           # step that produces its last one

    def blocks_needed(self, block_size: int) -> int:
        # The whole known length is reserved at admission, so the sim never preempts†
        # (vLLM allocates as it goes and preempts when the cache runs out).
        return -(-(self.prompt_len + self.n_steps) // block_size)

    def generated(self, steps_done: int) -> int:
        """Output tokens produced once ``steps_done`` steps have completed."""
        if self.first_step < 0 or steps_done <= self.first_step:
            return 0
        return min(steps_done - self.first_step, self.n_steps)


class PromptCounters:
    """Per-prompt counters; decode tokens are derived, not counted per step."""

    __slots__ = ("prefill", "cached", "waiting", "running", "decoding", "first_sum", "done_tokens")

    def __init__(self) -> None:
        self.prefill = self.cached = self.waiting = self.running = 0
        self.decoding = self.first_sum = self.done_tokens = 0

    def decode_tokens(self, steps_done: int) -> int:
        # A decoding sequence that started at step e has made steps_done - e tokens.
        return self.decoding * steps_done - self.first_sum + self.done_tokens


@dataclass(slots=True)
class StepResult:
    duration: float              # emulated seconds (before time_scale)
    batch: int                   # sequences in the step
    prefill_tokens: int
    started: list[SimSeq]        # produced their first token in this step
    finished: list[SimSeq]       # produced their last token in this step


# ---------------------------------------------------------------------- scheduler


class SimCore:
    """Continuous batching with chunked prefill, KV admission and a prefix cache."""

    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.kv = KVCache(params.num_blocks(), params.enable_prefix_caching)
        self.waiting: deque[SimSeq] = deque()
        self.prefilling: list[SimSeq] = []
        self.decoding = 0
        self._ends: dict[int, list[SimSeq]] = {}   # step -> sequences ending in it
        self._context = 0                          # KV tokens the decoders read next step
        self.steps = 0                             # completed steps
        self.busy_s = 0.0                          # emulated seconds spent in steps
        self.prompts: dict[str, PromptCounters] = {}
        self.cache_queries = 0
        self.cache_hits = 0
        self.prefill_tokens = 0
        self.finished = 0

    # -- requests

    def add(self, seq: SimSeq) -> None:
        need = seq.blocks_needed(self.params.block_size)
        if need > self.kv.num_blocks:
            raise ValueError(
                f"request {seq.rid!r} needs {seq.prompt_len + seq.n_steps} tokens of KV cache; "
                f"the cache holds {self.kv.num_blocks * self.params.block_size}"
            )
        if seq.n_steps < 1 or seq.prompt_len < 1:
            raise ValueError(f"request {seq.rid!r} needs a prompt token and a step to run")
        seq.state = WAITING
        self.waiting.append(seq)
        self._counters(seq).waiting += 1

    def abort(self, seq: SimSeq) -> bool:
        """Remove a sequence wherever it is and free its KV. False if it already ended."""
        c = self._counters(seq)
        if seq.state == WAITING:
            self.waiting.remove(seq)
            c.waiting -= 1
        elif seq.state == PREFILL:
            self.prefilling.remove(seq)
            c.running -= 1
            self.kv.release(seq.held, seq.private)
        elif seq.state == DECODE:
            self._ends[seq.end_step].remove(seq)
            self.decoding -= 1
            done = self.steps - seq.first_step
            self._context -= seq.prompt_len + done
            c.running -= 1
            c.decoding -= 1
            c.first_sum -= seq.first_step
            c.done_tokens += done
            self.kv.release(seq.held, seq.private)
        else:
            return False
        seq.state = ABORTED
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding)

    def running(self) -> int:
        return len(self.prefilling) + self.decoding

    def decode_tokens(self) -> int:
        return sum(c.decode_tokens(self.steps) for c in self.prompts.values())

    # -- one iteration

    def step(self) -> StepResult | None:
        """Schedule and run one step; None when there is nothing to run."""
        p = self.params
        s = self.steps
        n_dec = self.decoding
        budget = p.max_num_batched_tokens - n_dec
        context = self._context
        chunks: list[tuple[SimSeq, int]] = []
        tokens = 0
        # Running sequences first (vLLM's order), then admissions in arrival order.
        for seq in self.prefilling:
            if tokens >= budget:
                break
            chunk = min(seq.prompt_len - seq.computed, p.max_prefill_chunk, budget - tokens)
            chunks.append((seq, chunk))
            tokens += chunk
            context += seq.computed
        while self.waiting and tokens < budget and self.running() < p.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq):
                break                                  # FCFS: no one jumps the queue
            self.waiting.popleft()
            chunk = min(seq.prompt_len - seq.computed, p.max_prefill_chunk, budget - tokens)
            chunks.append((seq, chunk))
            tokens += chunk
            context += seq.computed
        batch = n_dec + len(chunks)
        if batch == 0:
            return None
        duration = p.step_time(batch, n_dec + tokens, context)

        # Every decoder gains one token; then sequences start and end.
        self._context += n_dec
        started: list[SimSeq] = []
        finished: list[SimSeq] = []
        for seq, chunk in chunks:
            seq.computed += chunk
            self.prefill_tokens += chunk
            self._counters(seq).prefill += chunk
            self._register(seq)
            if seq.computed == seq.prompt_len:
                started.append(seq)
        if started:
            self.prefilling = [q for q in self.prefilling if q.computed < q.prompt_len]
            for seq in started:
                self._start_decode(seq, s, finished)
        for seq in self._ends.pop(s, ()):
            self.decoding -= 1
            self._context -= seq.prompt_len + s + 1 - seq.first_step
            c = self._counters(seq)
            c.decoding -= 1
            c.first_sum -= seq.first_step
            self._finish(seq, c, finished)
        self.steps = s + 1
        self.busy_s += duration
        return StepResult(duration, batch, tokens, started, finished)

    # -- internals

    def _counters(self, seq: SimSeq) -> PromptCounters:
        c = self.prompts.get(seq.prompt_name)
        if c is None:
            c = self.prompts[seq.prompt_name] = PromptCounters()
        return c

    def _admit(self, seq: SimSeq) -> bool:
        bs = self.params.block_size
        # At least one prompt token is always computed: it yields the first output.
        hit = min(self.kv.match(seq.hashes), (seq.prompt_len - 1) // bs)
        hits = seq.hashes[:hit]
        if not self.kv.allocate(hits, seq.blocks_needed(bs) - hit):
            return False
        seq.state = PREFILL
        seq.held = hits
        seq.private = seq.blocks_needed(bs) - hit
        seq.registered = hit
        seq.computed = seq.cached_tokens = hit * bs
        self.prefilling.append(seq)
        c = self._counters(seq)
        c.waiting -= 1
        c.running += 1
        c.cached += seq.cached_tokens
        if self.kv.caching:
            self.cache_queries += seq.prompt_len
            self.cache_hits += seq.cached_tokens
        return True

    def _register(self, seq: SimSeq) -> None:
        full = min(seq.computed // self.params.block_size, len(seq.hashes))
        for h in seq.hashes[seq.registered : full]:
            if self.kv.register(h):
                seq.private -= 1
                seq.held.append(h)
        seq.registered = max(seq.registered, full)

    def _start_decode(self, seq: SimSeq, s: int, finished: list[SimSeq]) -> None:
        seq.first_step = s
        seq.end_step = s + seq.n_steps - 1
        c = self._counters(seq)
        if seq.n_steps == 1:
            self._finish(seq, c, finished)
            return
        seq.state = DECODE
        self.decoding += 1
        self._context += seq.prompt_len + 1
        self._ends.setdefault(seq.end_step, []).append(seq)
        c.decoding += 1
        c.first_sum += s

    def _finish(self, seq: SimSeq, c: PromptCounters, finished: list[SimSeq]) -> None:
        seq.state = FINISHED
        c.running -= 1
        c.done_tokens += seq.n_steps
        self.kv.release(seq.held, seq.private)
        self.finished += 1
        finished.append(seq)
