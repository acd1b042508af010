"""Non-LM glue of the fact-verification pipeline, named in the topology as ``module:function``.

Item shapes, stage by stage (``path`` is the item's ancestry; ``rid`` the request id,
``s``, ``c``, ``q`` the index of a sentence, claim, query among its siblings)::

    stage        kind                 path            item
    -----------  -------------------  --------------  -------------------------------------
    (request)    client payload       [rid]           {"question"}
    answer       LM, sentences        [rid, s]        {"question", "sentence"}
    claims       LM, lines            [rid, s, c]     {"question", "sentence", "claim"}
    queries      LM, lines            [rid, s, c, q]  {"question", "sentence", "claim", "query"}
    retrieve     retrieve, 1:1        [rid, s, c, q]  the same + "passages": [{"id","text","score"}]
    evidence     aggregate depth 3    [rid, s, c]     build_verify_input(group) ->
                                                      {"claim", "evidence", "passages"}
    verify       LM, whole output     [rid, s, c]     the same + "verdict": JSON text
    verdict      aggregate depth 1    [rid]           build_verdict(group) -> the result

An LM stage's output item is its input item with the new piece of text added under the
stage's output field (``sentence``, ``claim``, ``query``, ``verdict``), so every item
carries the claim it descends from. The retrieve stage is
``alto_workers.retrieve.make_handler(corpus, k=3, field="query", out_field="passages")``.
A sentence with no claim fans out to zero claims (``END(path, 0)``); it adds nothing to
the verdict. ``evidence`` is the passages rendered for the verify prompt: ``[1] text``
lines, best first.

The result of a request::

    {"factual": bool,          # every claim verified (claims with no verdict count as factual)
     "n_claims": int, "n_false": int,
     "claims": [{"claim", "factual": bool | None, "reason", "evidence": [passages]}, ...]}

with the claims in path order (answer order). The aggregating functions are the
aggregate stage's user callables (``op = "alto_workers.factool.handlers:build_verdict"``):
they take the group's items in path order (what ``alto_workers.aggregate`` passes), or as
``(path, item)`` pairs in any order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

NO_EVIDENCE = "(no evidence was found)"


def _in_path_order(group: Iterable[Any]) -> list[Any]:
    """Items of a group; ``(path, item)`` pairs are sorted by path and unwrapped."""
    items = list(group)
    if items and all(_is_path_pair(x) for x in items):
        return [item for _, item in sorted(items, key=lambda pair: tuple(pair[0]))]
    return items


def _is_path_pair(x: Any) -> bool:
    return (isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], (list, tuple))
            and all(isinstance(i, int) for i in x[0]))


def merge_passages(lists: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Union of passage lists: one entry per id with its best score, best first, then by id.

    The order depends only on the set of passages, not on the order in which the
    queries' results arrived, so a distributed run and the reference agree.
    """
    best: dict[str, dict[str, Any]] = {}
    for passages in lists:
        for p in passages:
            seen = best.get(p["id"])
            if seen is None or p["score"] > seen["score"]:
                best[p["id"]] = {"id": p["id"], "text": p["text"], "score": p["score"]}
    return sorted(best.values(), key=lambda p: (-p["score"], p["id"]))


def render_evidence(passages: Sequence[dict[str, Any]]) -> str:
    """Passages as the verify prompt's ``{evidence}``: numbered lines."""
    if not passages:
        return NO_EVIDENCE
    return "\n".join(f"[{i}] {p['text']}" for i, p in enumerate(passages, 1))


def build_verify_input(group: Iterable[Any], *, claim: str | None = None) -> dict[str, Any]:
    """The evidence group of one claim -> the verify stage's input.

    ``group`` holds the retrieve stage's outputs for the claim's queries: items with
    ``"claim"`` and ``"passages"``, or bare passage lists (then ``claim`` must be given).
    ``claim`` is keyword-only: the aggregate stage passes a second positional argument
    (the group's path) to callables that take one.
    """
    lists = []
    for item in _in_path_order(group):
        if isinstance(item, dict):
            if claim is None:
                claim = item.get("claim")
            lists.append(item.get("passages", []))
        elif isinstance(item, (list, tuple)):
            lists.append(item)
        else:
            raise ValueError(f"evidence item is neither a dict nor a passage list: {item!r:.80}")
    if not claim:
        raise ValueError("evidence group carries no claim: the items need a 'claim' field")
    passages = merge_passages(lists)
    return {"claim": claim, "evidence": render_evidence(passages), "passages": passages}


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_verdict(text: Any) -> tuple[bool | None, str]:
    """``(factuality, reasoning)`` from the verify LM's output; ``None`` when unreadable.

    Tolerates what LMs add around JSON: code fences and text before or after the object.
    """
    if isinstance(text, dict):
        obj: Any = text
    else:
        s = _FENCE.sub("", str(text).strip())
        start, end = s.find("{"), s.rfind("}")
        if start < 0 or end <= start:
            return None, ""
        try:
            obj = json.loads(s[start:end + 1])
        except json.JSONDecodeError:
            return None, ""
        if not isinstance(obj, dict):
            return None, ""
    verdict = obj.get("factuality")
    if isinstance(verdict, str):
        verdict = {"true": True, "false": False}.get(verdict.strip().lower())
    reason = obj.get("reasoning")
    return (verdict if isinstance(verdict, bool) else None,
            reason if isinstance(reason, str) else "")


def build_verdict(group: Iterable[Any]) -> dict[str, Any]:
    """All verify outputs of one request -> the request's result (see the module docstring).

    A claim whose verdict is missing or unreadable is listed with ``factual: None`` and
    counts as factual, as in FacTool; a request with no claims is factual.
    """
    claims = []
    for item in _in_path_order(group):
        factual, reason = parse_verdict(item.get("verdict", ""))
        if factual is None and not reason:
            reason = (f"the verifier's output holds no verdict ({str(item.get('verdict', ''))[:60]!r}); "
                      f"on the sim engine, a question outside the bundled workload gets filler text")
        claims.append({"claim": item.get("claim", ""), "factual": factual, "reason": reason,
                       "evidence": list(item.get("passages", []))})
    n_false = sum(c["factual"] is False for c in claims)
    return {"factual": n_false == 0, "n_claims": len(claims), "n_false": n_false,
            "claims": claims}
