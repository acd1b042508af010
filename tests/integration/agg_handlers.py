"""Handlers of the aggregation tests, and a single-process reference over the same handlers.

Fan-outs and drops are pseudo-random but a pure function of the item's text (a keyed
blake2b, identical in every process, unlike ``hash()``), so :func:`reference3` and
:func:`reference2`, which walk the same handlers in plain Python, know the exact result of
every request. Some items fan out into zero children, some are dropped (a handler returns
``None``), some whole aggregation groups are dropped (their root), some groups are empty.

The fact-checking shape of the ALTO paper: a request (an answer) fans out into
sentences, a sentence into claims, a claim into search queries; the results of one
claim's queries are aggregated per claim (``key = "claims"``), judged, and aggregated per
request (``key = "request"``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from hashlib import blake2b
from typing import Any

Group = tuple  # an aggregation group's path (rid, ...); the reference passes rid = None


def h(text: str, salt: str) -> int:
    """A 64-bit hash of ``text``, the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(blake2b(f"{salt}|{text}".encode(), digest_size=8).digest(), "little")


def _fan(text: str, salt: str) -> int:
    # 0..4 children, 0 for about one item in six.
    r = h(text, salt) % 12
    return 0 if r < 2 else 1 + r % 4


# -- the fact-checking pipeline's stateless stages ------------------------------------


def sentences(text: str) -> Iterator[str]:
    """Fan-out level 1: an answer into sentences."""
    for i in range(_fan(text, "sentences")):
        yield f"{text}.s{i}"


def claims(sentence: str) -> Iterator[str]:
    """Fan-out level 2: a sentence into claims."""
    for i in range(_fan(sentence, "claims")):
        yield f"{sentence}.c{i}"


def checkworthy(claim: str) -> str | None:
    """Drops about one claim in seven: the whole per-claim group is dropped at its root."""
    return None if h(claim, "checkworthy") % 7 == 0 else claim


def queries(claim: str) -> Iterator[str]:
    """Fan-out level 3: a claim into search queries."""
    for i in range(_fan(claim, "queries")):
        yield f"{claim}.q{i}"


def search(query: str) -> dict | None:
    """One evidence record per query; drops about one query in six (no evidence found)."""
    v = h(query, "search")
    if v % 6 == 0:
        return None
    return {"q": query, "score": v % 100, "support": v % 3 != 0}


async def slow_claims(sentence: str):
    """``claims``, but about one sentence in 20 takes 3 s before its first claim (and its END)."""
    if h(sentence, "slow claims") % 20 == 0:
        await asyncio.sleep(3.0)
    for claim in claims(sentence):
        yield claim


async def slow_search(query: str) -> dict | None:
    """``search``, but about one query in 40 takes 1.5 s (a slow retriever)."""
    if h(query, "slow") % 40 == 0:
        await asyncio.sleep(1.5)
    return search(query)


async def die_on(query: str) -> dict | None:
    """``search``, but the item ``kill<n>.s0.c1`` kills this process (no goodbye, no error).

    It dies 1.5 s later, after its siblings reached the aggregate: the group is open, partial.
    """
    if query.startswith("kill") and query.endswith(".s0.c1"):
        await asyncio.sleep(1.5)
        os._exit(17)
    return search(query)


def verdict(evidence: list[dict], group: Group) -> dict:
    """The per-claim aggregate (a user callable): sees the claim's complete group, in path order.

    ``pid`` says which aggregate instance produced the group's output; the reference
    leaves it out (:func:`strip_pids`).
    """
    return {
        "claim": list(group[1:]),
        "n": len(evidence),
        "supported": all(e["support"] for e in evidence),
        "best": max((e["score"] for e in evidence), default=None),
        "qs": [e["q"] for e in evidence],
        "pid": os.getpid(),
    }


def judge(v: Any) -> dict | None:
    """One label per claim (its aggregate); drops about one in five."""
    key = repr(strip_pids(v))
    r = h(key, "judge")
    if r % 5 == 0:
        return None
    return {"label": ["true", "false", "unsure"][r % 3], "verdict": v}


# -- the reference --------------------------------------------------------------------


def collect(items: list, group: Group) -> list:
    return list(items)


def verify_op(op: str):
    return {"collect": collect, "verdict": verdict}[op]


def reference3(text: str, verify: str = "collect") -> list:
    """sentences -> claims -> checkworthy -> queries -> search -> [per claim] -> judge -> [per request]."""
    agg = verify_op(verify)
    per_request = []
    for si, s in enumerate(sentences(text)):
        for ci, c in enumerate(claims(s)):
            if checkworthy(c) is None:
                continue  # the group's root was dropped: no output for it downstream
            evidence = [e for q in queries(c) if (e := search(q)) is not None]
            j = judge(agg(evidence, (None, si, ci)))
            if j is not None:
                per_request.append(j)
    return per_request  # the per-request aggregate is collect


def reference2(text: str, verify: str = "collect") -> list:
    """sentences -> claims -> search -> [per sentence] -> judge -> [per request]."""
    agg = verify_op(verify)
    per_request = []
    for si, s in enumerate(sentences(text)):
        evidence = [e for c in claims(s) if (e := search(c)) is not None]
        j = judge(agg(evidence, (None, si)))
        if j is not None:
            per_request.append(j)
    return per_request


def strip_pids(value: Any) -> Any:
    """``value`` without the ``pid`` fields :func:`verdict` adds."""
    if isinstance(value, dict):
        return {k: strip_pids(v) for k, v in value.items() if k != "pid"}
    if isinstance(value, list):
        return [strip_pids(v) for v in value]
    return value


def pids(value: Any) -> list[int]:
    """Every ``pid`` field in ``value``, in order."""
    if isinstance(value, dict):
        own = [value["pid"]] if "pid" in value else []
        return own + [p for k, v in value.items() if k != "pid" for p in pids(v)]
    if isinstance(value, list):
        return [p for v in value for p in pids(v)]
    return []


# -- operators end to end -------------------------------------------------------------


def groups(text: str) -> Iterator[str]:
    for i in range(_fan(text, "groups")):
        yield f"{text}.g{i}"


def items(group: str) -> Iterator[dict]:
    for i in range(_fan(group, "items")):
        name = f"{group}.i{i}"
        v = h(name, "item")
        yield {"name": name, "x": v % 10, "score": v % 37, "ok": v % 4 != 0,
               "tag": ["keep", "skip", "maybe"][v % 3]}


def keep_item(item: dict, path: list) -> bool:
    """A ``filter`` predicate ``where`` with the item's path: keep x >= 3, and every first item."""
    return item["x"] >= 3 or path[-1] == 0


def group_summary(payloads: list[dict], group: Group) -> dict:
    """A user callable that sees its complete group in path order."""
    return {"group": list(group[1:]), "names": [p["name"] for p in payloads],
            "total": sum(p["x"] for p in payloads)}


# op name -> (its topology options, a reference over the group's payloads in path order)
FILTERS = {
    "tag=keep": ({"field": "tag", "equals": "keep"}, lambda p, path: p["tag"] == "keep"),
    "where": ({"where": "tests.integration.agg_handlers:keep_item"}, keep_item),
    "x>3": ({"field": "x", "gt": 3}, lambda p, path: p["x"] > 3),
    "tag in": ({"field": "tag", "in": ["keep", "maybe"]}, lambda p, path: p["tag"] in ("keep", "maybe")),
    "tag!=skip": ({"field": "tag", "not_equals": "skip"}, lambda p, path: p["tag"] != "skip"),
    "ok": ({"field": "ok"}, lambda p, path: p["ok"]),
}

OPS = {
    "count": ({}, lambda ps, g: len(ps)),
    "sum x": ({"field": "x"}, lambda ps, g: sum(p["x"] for p in ps)),
    "sum": ({}, lambda ps, g: sum(ps)),
    "all ok": ({"field": "ok"}, lambda ps, g: all(p["ok"] for p in ps)),
    "any ok": ({"field": "ok"}, lambda ps, g: any(p["ok"] for p in ps)),
    "any": ({}, lambda ps, g: any(ps)),
    "all": ({}, lambda ps, g: all(ps)),
    "collect": ({}, lambda ps, g: list(ps)),
    "top_k 2": ({"k": 2}, lambda ps, g: sorted(ps, reverse=True)[:2]),
    "top_k 2 total": ({"k": 2, "score": "total"},
                      lambda ps, g: sorted(ps, key=lambda p: p["total"], reverse=True)[:2]),
    "summary": ({}, group_summary),
}


def op_name(label: str) -> str:
    """The topology's ``op`` for an :data:`OPS` label."""
    if label == "summary":
        return "tests.integration.agg_handlers:group_summary"
    return label.split()[0]


def reference_ops(text: str, keep: str, per_group: str, per_request: str) -> Any:
    """groups -> items -> filter(keep) -> [per group] per_group -> [per request] per_request."""
    test = FILTERS[keep][1]
    outs = []
    for gi, g in enumerate(groups(text)):
        kept = [p for ii, p in enumerate(items(g)) if test(p, [None, gi, ii])]
        outs.append(OPS[per_group][1](kept, (None, gi)))
    return OPS[per_request][1](outs, (None,))


# -- barrier: items made one after another, stamped when they pass on ------------------


async def staggered(text: str):
    """One item per word, 20 ms apart, each with the machine-wide time it was made."""
    for i, word in enumerate(text.split()):
        if i:
            await asyncio.sleep(0.02)
        yield {"word": word, "made": time.monotonic()}


def seen(item: dict) -> dict:
    return {**item, "seen": time.monotonic()}
