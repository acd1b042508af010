"""A scripted workload for shared LM pools: a chain of LM prompts with long fixed prefixes
and a fan-out that shifts, with every request's exact result known in advance.

Used by ``tests/integration/test_pools.py`` and ``scripts/bench_policies.py``.

A workload is a chain ``intake (function) -> prompt 1 -> prompt 2 -> ...`` on one pool.
Every prompt is a fixed prefix of ``prefix`` tokens (the same text for every call, so
its 16-token blocks hit the sim's prefix cache) followed by the one input field it
reads. The sim's script gives each call's output from the id carried in its key:

* request ``r000123p2`` (request 123 of phase 2) enters as ``{"rid": "r000123p2"}``;
* a ``lines`` prompt answers ``f`` lines ``"<tag> <id>.<i> <words>"`` (``i`` in 0..f-1),
  ``f`` drawn per id from the prompt's fan-out choices for the request's phase;
* a ``text`` prompt answers one text ``"<tag> <id> <words>"`` (1:1);
* the next prompt's key is that output (the stage's ``output_field``): its id is the
  second word.

Items carry every field they descend from (``output_field``), so a request's result is
the list of its leaf items, each ``{"rid", <field of every prompt>}``, in ancestry order,
and :func:`expected` builds it without running anything.

Token counts: filler words have at most five letters, so each is one sim token with
its leading space (``workers/lm/sim_model.py`` tokenizer, ~4 characters a token).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODULE = "tests.integration.pool_script"

_WORDS = (
    "river stone field light north south plain board cloud water metal grain paper trade "
    "route price cable glass wheel tower ridge shore coast delta bank fleet horse sheep "
    "wool salt iron coal fort gate wall road mill farm barn crop seed root leaf bark "
    "pine oak elm ash birch maple cedar fern moss reed lake pond creek brook marsh dune "
    "cliff cave peak hill vale glen moor heath grove wood town city port dock pier quay"
).split()


@dataclass(frozen=True)
class Prompt:
    name: str
    prefix: int                    # tokens of fixed prompt text before the input
    reads: str                     # the item field rendered into the prompt
    writes: str                    # output_field
    emit: str                      # "lines" (fan-out) or "text" (1:1)
    fanout: tuple[tuple[int, ...], tuple[int, ...]] = ((1,), (1,))   # choices, phase 1 / 2
    tokens: tuple[int, int] = (12, 12)   # per line (lines) or whole output (text), phase 1 / 2
    key: str | None = None         # the field the script is keyed by (script_key): reads

    @property
    def script_key(self) -> str:
        return self.key or self.reads

    @property
    def tag(self) -> str:
        return self.name[:5]


# The benchmark: four prompts of 350-600 prefix tokens. Calls per request: triage 1,
# plan 1, expand 2 (f in 1-3), check 3 in phase 1 and 9 in phase 2 (expand's fan-out
# triples), so the demand is skewed (check has most of it) and shifts halfway.
BENCH = (
    Prompt("triage", 450, "rid", "label", "text", tokens=(30, 30)),
    Prompt("plan", 550, "label", "step", "lines", ((1, 2, 2, 3), (1, 2, 2, 3)), tokens=(14, 14)),
    Prompt("expand", 350, "step", "task", "lines", ((1, 1, 2, 2), (3, 3, 6, 6)), tokens=(14, 14)),
    Prompt("check", 600, "task", "verdict", "text", tokens=(40, 40)),
)

# The tests: two prompts. Phase 1: "a" writes one long line per request and "b" answers
# it in a few tokens (b's prompt shows only the request id, so b has little demand);
# phase 2: "a" writes six short lines and "b" answers each at length (b has most of it).
TEST = (
    Prompt("a", 300, "rid", "item", "lines", ((1,), (6,)), tokens=(60, 10)),
    Prompt("b", 400, "rid", "out", "text", tokens=(10, 60), key="item"),
)

WORKLOADS: dict[str, tuple[Prompt, ...]] = {"bench": BENCH, "test": TEST}


def _rng(*parts: Any) -> random.Random:
    seed = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(seed, "big"))


def _words(n: int, *seed: Any) -> str:
    rng = _rng(*seed)
    return " ".join(rng.choice(_WORDS) for _ in range(max(0, n)))


def prefix_text(workload: str, p: Prompt) -> str:
    """``p.prefix`` sim tokens of fixed instructions: a title, then lines of 12 one-token
    words (a line break is one more token); no braces, so it is a safe template."""
    n = max(1, (p.prefix - 3) * 12 // 13)          # words: title ~2 tokens, line breaks
    words = _words(n, "prefix", workload, p.name).split()
    lines = [" ".join(words[k:k + 12]) for k in range(0, len(words), 12)]
    return f"{p.name.upper()}:\n" + "\n".join(lines)


def template(workload: str, p: Prompt) -> str:
    return prefix_text(workload, p) + "\n\nInput: {" + p.reads + "}\nOutput:\n"


def phase_of(ident: str) -> int:
    """``r000123p2.1.0`` -> 2."""
    return int(ident.split(".", 1)[0].rsplit("p", 1)[1])


def rid(n: int, phase: int) -> str:
    return f"r{n:06d}p{phase}"


def _ident(key: str) -> str:
    return key.split()[1] if " " in key else key


def outputs(workload: str, p: Prompt, ident: str) -> list[str]:
    """The items prompt ``p`` makes for the item with id ``ident``, in order."""
    phase = phase_of(ident)
    n = p.tokens[phase - 1] - 8    # the tag and the id take about 8 tokens
    if p.emit == "text":
        return [f"{p.tag} {ident} " + _words(max(1, n), workload, p.name, ident)]
    f = _rng("fanout", workload, p.name, ident).choice(p.fanout[phase - 1])
    return [f"{p.tag} {ident}.{i} " + _words(max(1, n), workload, p.name, ident, i)
            for i in range(f)]


def output_text(workload: str, p: Prompt, ident: str) -> str:
    items = outputs(workload, p, ident)
    return "\n".join(items) if p.emit == "lines" else items[0]


def script(workload: str = "bench") -> Callable[[str, str | None], str | None]:
    """The sim's ``script(prompt_name, key) -> text`` (a pool's ``script``)."""
    by_name = {p.name: p for p in WORKLOADS[workload]}

    def run(prompt_name: str, key: str | None) -> str | None:
        p = by_name.get(prompt_name)
        if p is None or not key:
            return None
        return output_text(workload, p, _ident(key))

    return run


def intake(request: Any) -> dict:
    """The entry stage: ``"r000123p2"`` or ``{"rid": ...}`` -> ``{"rid": ...}``."""
    if isinstance(request, dict):
        return {"rid": str(request["rid"])}
    return {"rid": str(request)}


def expected(workload: str, request_id: str) -> list[dict] | dict:
    """The exact result of one request: its leaf items in ancestry order (one item when
    no prompt fans out)."""
    items = [({"rid": request_id}, request_id)]
    fans = False
    for p in WORKLOADS[workload]:
        nxt = []
        for item, ident in items:
            for out in outputs(workload, p, ident):
                nxt.append(({**item, p.writes: out}, _ident(out)))
        fans = fans or p.emit == "lines"
        items = nxt
    leaves = [item for item, _ in items]
    return leaves if fans else leaves[0]


def calls(workload: str, request_id: str) -> dict[str, int]:
    """LM calls per prompt that one request makes."""
    out: dict[str, int] = {}
    idents = [request_id]
    for p in WORKLOADS[workload]:
        out[p.name] = len(idents)
        idents = [_ident(o) for i in idents for o in outputs(workload, p, i)]
    return out


def topology(workload: str = "bench", *, policy: str = "prompt-aware", replicas: int = 4,
             engine_args: dict | None = None, policy_args: dict | None = None,
             broker: dict | None = None, intake_replicas: int = 1,
             max_tokens: int = 256) -> dict:
    """The chain as a topology dict (``tests.support.running`` / ``to_toml``)."""
    stages: list[dict] = [{"name": "intake", "kind": "function", "handler": f"{MODULE}:intake",
                           "replicas": intake_replicas}]
    prev = "intake"
    for p in WORKLOADS[workload]:
        stages.append({"name": p.name, "kind": "lm", "pool": "llm", "input": prev,
                       "prompt_from": f"{MODULE}:PROMPTS.{workload}_{p.name}",
                       "emit": p.emit, "output_field": p.writes, "script_key": p.script_key,
                       "max_tokens": max_tokens})
        prev = p.name
    pool: dict[str, Any] = {"name": "llm", "engine": "sim", "replicas": replicas, "policy": policy,
                            "script": f"{MODULE}:script", "script_args": {"workload": workload}}
    if engine_args:
        pool["engine_args"] = dict(engine_args)
    if policy_args:
        pool["policy_args"] = dict(policy_args)
    topo: dict[str, Any] = {"broker": dict(broker or {}), "pool": [pool], "stage": stages}
    if not topo["broker"]:
        del topo["broker"]
    return topo


class _Prompts:
    """``PROMPTS.<workload>_<prompt>``: the templates, for ``prompt_from``."""

    def __getattr__(self, name: str) -> str:
        workload, _, prompt = name.partition("_")
        for p in WORKLOADS.get(workload, ()):
            if p.name == prompt:
                return template(workload, p)
        raise AttributeError(name)


PROMPTS = _Prompts()
