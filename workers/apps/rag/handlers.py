"""Stages of the RAG application (``topology/rag.toml``), named there as ``module:function``.

Item shapes (``rid`` the request id)::

    stage     kind                 path    item
    --------  -------------------  ------  ---------------------------------------------
    question  function (entry)     [rid]   {"question"}
    bm25      function             [rid]   {"question", "passages": [{"id","text","score"}]}
    dense     function             [rid]   the same, from the dense retriever
    rerank    aggregate, join      [rid]   fuse({"bm25": [item], "dense": [item]}) ->
                                           {"question", "context", "passages": [...]}
    answer    LM, sentences        [rid,s] one sentence of the answer (the result's items)

``bm25`` and ``dense`` both take the question (a fork); ``rerank`` is complete when both
have delivered it. A request's result is the list of the answer's sentences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alto_workers.apps.rag.dense import DenseIndex
from alto_workers.apps.rag.workload import DEFAULT_SEED, generate
from alto_workers.retrieve import BM25Index

MAX_QUESTION_CHARS = 500
FUSED_K = 3        # passages given to the LM
RRF_K = 60         # reciprocal rank fusion: score = sum over retrievers of 1 / (RRF_K + rank)


def question(payload: Any) -> dict[str, str]:
    """A request (the question text, or ``{"question": ...}``) -> ``{"question"}``."""
    q = payload.get("question") if isinstance(payload, dict) else payload
    if not isinstance(q, str):
        raise ValueError(f"a request is a question (text) or {{'question': text}}; got {payload!r:.80}")
    q = q.strip()
    if not q:
        raise ValueError("the question is empty")
    if len(q) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question has {len(q)} characters, more than {MAX_QUESTION_CHARS}")
    return {"question": q}


def _retriever(search: Callable[[str, int], list], k: int) -> Callable[[dict], dict]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def handler(item: dict) -> dict:
        return {"question": item["question"], "passages": search(item["question"], k)}

    return handler


def bm25(k: int = 5, seed: int = DEFAULT_SEED) -> Callable[[dict], dict]:
    """Handler factory: BM25 (``alto_workers.retrieve``) over the workload's corpus."""
    return _retriever(BM25Index(generate(seed).corpus).search, k)


def dense(k: int = 5, dim: int = 512, seed: int = DEFAULT_SEED) -> Callable[[dict], dict]:
    """Handler factory: the hashed-embedding dense retriever over the same corpus."""
    return _retriever(DenseIndex(generate(seed).corpus, dim).search, k)


def fuse(groups: dict[str, list[dict]]) -> dict[str, Any]:
    """The join of both retrievers' results for one question -> the answer LM's input.

    Reciprocal rank fusion: each passage scores ``sum 1 / (RRF_K + rank)`` over the lists
    it is in (rank from 1); the best ``FUSED_K``, ties by id. The order depends only on
    the two lists, not on which branch arrived first.
    """
    lists = {name: items for name, items in groups.items() if items}
    if not lists:
        raise ValueError("the join got no retriever results")
    q = next(iter(lists.values()))[0]["question"]
    fused: dict[str, dict[str, Any]] = {}
    for name in sorted(lists):
        for rank, p in enumerate(lists[name][0]["passages"], 1):
            entry = fused.setdefault(p["id"], {"id": p["id"], "text": p["text"], "score": 0.0})
            entry["score"] += 1.0 / (RRF_K + rank)
            entry[f"{name}_rank"] = rank
    best = sorted(fused.values(), key=lambda p: (-p["score"], p["id"]))[:FUSED_K]
    for p in best:
        p["score"] = round(p["score"], 6)
    context = "\n".join(f"[{p['id']}] {p['text']}" for p in best) or "(no sources were found)"
    return {"question": q, "context": context, "passages": best}
