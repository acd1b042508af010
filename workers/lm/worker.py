"""The ``lm`` stage kind: render a prompt per item, generate, split the stream into items.

Each input item fills the prompt template's named fields; the engine's output is cut
by the splitter (``emit``) into items while the generation runs (``stream = true``) or
once it has ended (``stream = false``, the baseline that waits for whole outputs).
``emit = "text"`` keeps one item per input (1:1); the other splitters fan out: child
``i`` gets the path ``parent + [i]`` and ``END(parent, n)`` follows. With
``output_field`` and a dict input, an output item is the input item plus that field,
so what an item descends from travels with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from alto_bus.runtime.stage import StageLogic, describe
from alto_bus.deploy.topology import StageConfig, TopologyError, import_object
from alto_bus.runtime.handler_seconds import HandlerSeconds
from alto_bus.runtime.kinds import StageKind
from alto_bus.telemetry.stage_spans import note_generation
from alto_workers.lm.engine import Engine, SamplingParams
from alto_workers.lm.splitters import SplitterError, make_splitter

log = logging.getLogger("alto.lm")


class PromptError(ValueError):
    """An input item the stage's prompt cannot take; the message says why."""


class Template:
    """A ``str.format`` template with named fields taken from the input item."""

    def __init__(self, text: str) -> None:
        import string

        self.text = text
        self.fields = tuple(sorted({f for _, f, _, _ in string.Formatter().parse(text) if f}))

    def as_map(self, item: Any) -> dict:
        """The item as a map of the prompt's fields: a bare value fills a one-field prompt
        (a request "Who wrote Hamlet?" to a prompt on {question} is {"question": ...})."""
        if isinstance(item, dict):
            return item
        if len(self.fields) == 1:
            return {self.fields[0]: item}
        raise PromptError(f"the prompt needs a map with the fields {list(self.fields)}; got {item!r:.80}")

    def render(self, item: Any) -> str:
        values = self.as_map(item)
        for f in self.fields:
            v = values.get(f)
            if v is None:
                raise PromptError(f"the prompt needs field {f!r}; the item has {sorted(values)}")
            if isinstance(v, str) and not v.strip():
                raise PromptError(f"field {f!r} is empty")
            if not isinstance(v, str):
                raise PromptError(f"field {f!r} must be text, got {type(v).__name__} {v!r:.40}")
        return self.text.format_map({f: values[f] for f in self.fields})


def make_engine(f: dict, label: str | None = None) -> Engine:
    """The engine described by a stage's or a pool's fields; ``label`` ("stage 'gen'")
    starts the engine's error messages."""
    args = dict(f.get("engine_args") or {})
    if f["engine"] == "openai":
        from alto_workers.lm.openai_engine import make_openai_engine

        return make_openai_engine(f, label or (f"pool {f['name']!r}" if f.get("name") else "engine 'openai'"))
    if f["engine"] == "sim":
        from alto_workers.lm.sim import SimEngine

        script = None
        if f.get("script"):
            script = import_object(f["script"])(**(f.get("script_args") or {}))
        return SimEngine(args, script=script, seed=int(f.get("seed") or 0))
    from alto_workers.lm.vllm_engine import VllmEngine

    host = os.environ.get("ALTO_HOST_IP", "127.0.0.1")
    return VllmEngine(f["model"], args, host_ip=host)


class LMStage(StageLogic):
    def __init__(self, engine: Engine, template: Template, params: SamplingParams, *, emit: str,
                 stream: bool, prompt_name: str, script_key: str | None, output_field: str | None,
                 max_prompt_chars: int | None = None, owns_engine: bool = True) -> None:
        self.engine = engine
        self.owns_engine = owns_engine  # False on a pool: the worker starts and stops it once
        self.template = template
        self.params = params
        self.emit = emit
        self.stream = stream
        self.prompt_name = prompt_name
        self.script_key = script_key
        self.output_field = output_field
        self.max_prompt_chars = max_prompt_chars
        self.fans_out = emit != "text"
        make_splitter(emit if emit != "text" else "tokens")  # refuse an unknown emit now
        self._running: dict[int, set[str]] = {}  # rid -> engine request ids
        self.handler_seconds = HandlerSeconds()   # each generation, submitted to last output (heartbeat)

    async def start(self) -> None:
        if self.owns_engine:
            await self.engine.start()

    async def close(self) -> None:
        if self.owns_engine:
            await self.engine.shutdown()

    def on_data(self, path: list, seq: int, payload: Any, final: bool, epoch: int) -> None:
        if not final:
            raise PromptError("an LM stage takes whole items; put a function stage before it to join streams")
        self.out.spawn(path[0], self._generate(path, payload, epoch))

    async def _generate(self, path: list, item: Any, epoch: int) -> None:
        try:
            if self.output_field is not None:
                item = self.template.as_map(item)  # so the outputs carry their input along
            prompt = self.template.render(item)
        except PromptError as exc:
            self.out.error(path, f"cannot take item {path[1:]}: {exc}", epoch)
            return
        if self.max_prompt_chars is not None and len(prompt) > self.max_prompt_chars:
            self.out.error(path, f"cannot take item {path[1:]}: the prompt is {len(prompt)} characters, "
                                 f"more than max_prompt_chars {self.max_prompt_chars}", epoch)
            return
        key = self._script_key(item)
        request_id = f"{self.prompt_name}:{'.'.join(map(str, path))}"
        rid = path[0]
        self._running.setdefault(rid, set()).add(request_id)
        started = time.perf_counter()
        splitter = make_splitter("tokens" if self.emit == "text" else self.emit)
        n = seq = tokens = 0
        whole: list[str] = []
        # Text streams as chunks of one item, unless the item must carry its input along.
        chunked = self.stream and self.emit == "text" and self.output_field is None
        try:
            async for out in self.engine.generate(request_id, prompt, self.params,
                                                  prompt_name=self.prompt_name, script_key=key):
                if out.finish_reason == "abort":
                    return
                tokens += len(out.token_ids)
                if self.emit == "tokens":  # one item per token batch, with its ids
                    if out.token_ids or out.text:
                        batch = {"text": out.text, "token_ids": list(out.token_ids)}
                        if self.stream:
                            self.out.data([*path, n], 0, self._item(item, batch), True, epoch)
                            n += 1
                        else:
                            whole.append(batch)
                    continue
                if not out.text:
                    continue
                if chunked:
                    self.out.data(path, seq, out.text, False, epoch)
                    seq += 1
                elif not self.stream or self.emit == "text":
                    whole.append(out.text)
                else:
                    for piece in splitter.feed(out.text):
                        self.out.data([*path, n], 0, self._item(item, piece), True, epoch)
                        n += 1
            note_generation(self.out, path, **{"gen_ai.usage.output_tokens": tokens,  # traced: on its span
                            "gen_ai.response.model": getattr(self.engine, "model", None)})
            if self.emit == "text":
                if chunked:
                    self.out.data(path, seq, "", True, epoch)
                else:
                    self.out.data(path, 0, self._item(item, "".join(whole)), True, epoch)
                return
            if self.emit == "tokens":
                pieces = whole
            else:
                pieces = [*(splitter.feed("".join(whole)) if whole else []), *splitter.finish()]
            for piece in pieces:
                self.out.data([*path, n], 0, self._item(item, piece), True, epoch)
                n += 1
            self.out.end(path, n, epoch)
        except SplitterError as exc:
            self.out.error(path, f"the output of prompt {self.prompt_name!r} does not split as "
                                 f"{self.emit}: {exc}", epoch)
        except Exception as exc:
            self.out.error(path, f"engine failed: {describe(exc)}", epoch)
        finally:
            self.handler_seconds.observe(time.perf_counter() - started)
            ids = self._running.get(rid)
            if ids is not None:
                ids.discard(request_id)
                if not ids:
                    del self._running[rid]

    def _item(self, item: Any, piece: Any) -> Any:
        if self.output_field is not None and isinstance(item, dict):
            return {**item, self.output_field: piece}
        return piece

    def _script_key(self, item: Any) -> str | None:
        if self.script_key is not None and isinstance(item, dict):
            value = item.get(self.script_key)
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if isinstance(item, str):
            return item
        return json.dumps(item, sort_keys=True, default=str)

    def cancel(self, rids: set[int]) -> None:
        loop = asyncio.get_running_loop()
        for rid in rids & self._running.keys():
            for request_id in list(self._running[rid]):
                loop.create_task(self.engine.abort(request_id))

    def held(self) -> Iterable[int]:
        return list(self._running)

    def prompt_stats(self) -> dict[str, Any]:
        """This prompt's engine counters, for the broker's pool scheduler (any thread)."""
        st = self.engine.stats()
        p = st.prompts.get(self.prompt_name)
        out: dict[str, Any] = {"cache_queries": st.cache_queries, "cache_hits": st.cache_hits,
                               "kv_capacity": st.kv_capacity_tokens, "kv_used": st.kv_used_tokens,
                               "requests_running": st.requests_running, "requests_waiting": st.requests_waiting}
        member_index = getattr(self.engine, "member_index", None)   # a pool's remote member
        if member_index is not None:   # is it vLLM (its /metrics answered)? then the figures are its own
            out.update(member_index=member_index, server_metrics=int(bool(getattr(self.engine, "is_vllm", False))))
        if p is not None:
            out.update(prefill_tokens=p.prefill_tokens, cached_tokens=p.cached_tokens,
                       decode_tokens=p.decode_tokens, running=p.running, waiting=p.waiting)
        return out



def _prompt_text(f: dict) -> str:
    if f.get("prompt") is not None:
        return f["prompt"]
    return import_object(f["prompt_from"])


def build_stage(config: StageConfig, engine: Engine | None = None) -> LMStage:
    """The LM stage; with ``engine`` given (a pool's), the stage shares it and does not own it."""
    f = config.fields
    params = SamplingParams(max_tokens=f["max_tokens"], temperature=f["temperature"],
                            stop=tuple(f.get("stop") or ()), ignore_eos=f["ignore_eos"], seed=f.get("seed"))
    return LMStage(engine or make_engine(f, f"stage {config.name!r}"), Template(_prompt_text(f)), params, emit=f["emit"],
                   stream=f["stream"], prompt_name=f.get("prompt_name") or config.name,
                   script_key=f.get("script_key"), output_field=f.get("output_field"),
                   max_prompt_chars=f.get("max_prompt_chars"), owns_engine=engine is None)


def fans_out(fields: dict) -> bool:
    return fields["emit"] != "text"


def check_engine(fields: dict, label: str, error: Callable[[str], Exception]) -> None:
    """The engine fields of an LM stage or a pool."""
    if fields.get("engine") is None:
        raise error(f"{label}: missing required field 'engine' ('sim', 'vllm' or 'openai'), or 'pool'")
    if fields["engine"] not in ("sim", "vllm", "openai"):
        raise error(f"{label}: field 'engine' must be 'sim', 'vllm' or 'openai', got {fields['engine']!r}")
    if fields["engine"] in ("vllm", "openai") and not fields.get("model"):
        raise error(f"{label}: missing required field 'model' (engine {fields['engine']!r})")
    if fields["engine"] == "openai":
        from alto_workers.lm.openai_engine import check_openai_fields

        check_openai_fields(fields, label, error)
    else:
        for name in ("base_url", "api_key_env"):
            if fields.get(name) is not None:
                raise error(f"{label}: field {name!r} is for engine 'openai' only")
        if fields.get("chat"):
            raise error(f"{label}: field 'chat' is for engine 'openai' only")
    if fields["engine"] == "sim":
        from alto_workers.lm.sim_model import SimParams

        try:
            SimParams.from_dict(fields.get("engine_args") or {})
        except ValueError as exc:
            raise error(f"{label}: field 'engine_args': {exc}") from None
        if fields.get("script"):
            try:
                import_object(fields["script"])
            except ImportError as exc:
                raise error(f"{label}: field 'script': {exc}") from None


def check(fields: dict, label: str, error: Callable[[str], Exception]) -> None:
    """Validation the topology runs before anything starts."""
    check_engine(fields, label, error)
    if (fields.get("prompt") is None) == (fields.get("prompt_from") is None):
        raise error(f"{label}: give exactly one of the fields 'prompt' and 'prompt_from'")
    try:
        text = _prompt_text(fields)
    except ImportError as exc:
        raise error(f"{label}: field 'prompt_from': {exc}") from None
    if not isinstance(text, str):
        raise error(f"{label}: field 'prompt_from': {fields['prompt_from']!r} is not a string")
    try:
        Template(text)
    except ValueError as exc:
        raise error(f"{label}: field 'prompt': not a valid template: {exc}") from None
    if fields["emit"] not in ("text", "tokens", "sentences", "lines", "json-items"):
        raise error(f"{label}: field 'emit' must be one of text, tokens, sentences, lines, json-items; "
                    f"got {fields['emit']!r}")
    if fields["max_tokens"] < 1:
        raise error(f"{label}: field 'max_tokens' must be >= 1")


FIELDS = {
    "pool": ((str,), None),           # a [[pool]] of LM instances shared with other prompts
    "engine": ((str,), None),         # "sim", "vllm" or "openai" (without a pool)
    "model": ((str,), None),
    "engine_args": ((dict,), None),   # vllm: engine arguments; sim: SimParams overrides; openai: client options
    "base_url": ((str,), None),       # openai: the server's API root, e.g. "http://127.0.0.1:8000/v1"
    "api_key_env": ((str,), None),    # openai: the environment variable holding the API key
    "chat": ((bool,), False),         # openai: /chat/completions (one user message) instead of /completions
    "prompt": ((str,), None),         # a template with {named} fields from the input item
    "prompt_from": ((str,), None),    # or "module:ATTR" holding the template
    "prompt_name": ((str,), None),    # default: the stage name
    "emit": ((str,), "sentences"),    # text, tokens, sentences, lines, json-items
    "stream": ((bool,), True),        # false: wait for the whole output (the baseline)
    "output_field": ((str,), None),
    "max_tokens": ((int,), 256),
    "temperature": ((int, float), 0.0),
    "stop": ((list,), None),
    "ignore_eos": ((bool,), False),
    "seed": ((int,), None),
    "max_prompt_chars": ((int,), None),
    "script": ((str,), None),         # sim: "module:factory" giving script(prompt_name, key)
    "script_args": ((dict,), None),
    "script_key": ((str,), None),     # sim: the input field its script is keyed by
}


def _check_stage(values: dict, input: str | None, label: str, check_handlers: bool) -> bool:
    check(values, label, TopologyError)
    return fans_out(values)


def gpus(fields: dict) -> int:
    """GPUs one instance takes: a vllm engine's tensor x pipeline parallel size; sim none."""
    if fields.get("engine") != "vllm":
        return 0
    args = fields.get("engine_args") or {}
    return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))


KIND = StageKind("lm", FIELDS, build=build_stage, check=_check_stage,
                 check_engine=lambda values, label: check_engine(values, label, TopologyError),
                 make_engine=make_engine, gpus=gpus)
