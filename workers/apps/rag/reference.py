"""Single-process reference of the RAG application: each request's exact result.

It walks the topology's stages in one process (the same retrievers, the same fusion, the
answer LM's script standing in for the LM) and splits the answer into sentences with a
plain rule (a break after ".", "?" or "!" and spaces, before a capital or a digit), not
with the streaming splitter the LM stage uses.

CLI: ``python -m alto_workers.apps.rag.reference`` prints the workload's statistics.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any

from alto_workers.apps.cli import summary_main
from alto_workers.apps.expect import Expected
from alto_workers.apps.rag import handlers
from alto_workers.apps.rag.workload import DEFAULT_QUESTIONS, DEFAULT_SEED, NOT_FOUND, answer_text, generate

_BREAK = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _BREAK.split(text) if s.strip()]


class Reference:
    def __init__(self, seed: int = DEFAULT_SEED, n_questions: int = DEFAULT_QUESTIONS, k: int = 5,
                 dim: int = 512) -> None:
        self.workload = generate(seed, n_questions)
        self.plans = self.workload.by_text()
        self.bm25 = handlers.bm25(k, seed)
        self.dense = handlers.dense(k, dim, seed)

    def joined(self, payload: Any) -> dict[str, Any]:
        """The rerank stage's output for a request."""
        item = handlers.question(payload)
        return handlers.fuse({"bm25": [self.bm25(item)], "dense": [self.dense(item)]})

    def result(self, payload: Any) -> list[str]:
        """What the pipeline returns for ``payload``: the answer's sentences, in order."""
        item = self.joined(payload)
        return sentences(answer_text(item["question"], item["passages"], self.plans.get(item["question"])))

    def expected(self, payload: Any) -> Expected:
        """The result, or the entry stage's refusal of a request that is not a question."""
        try:
            return Expected(self.result(payload))
        except ValueError as exc:
            return Expected(error_stage="question", error_words=str(exc))

    def requests(self, n: int) -> list[Any]:
        """``n`` requests: the workload's questions in order, round again when ``n`` is larger."""
        qs = self.workload.questions
        return [qs[i % len(qs)].question for i in range(n)]


def summary(ref: Reference) -> dict[str, Any]:
    qs = ref.workload.questions
    results = [ref.result(q.question) for q in qs]
    found = [not r[0].startswith(NOT_FOUND.split(";")[0]) for r in results]
    bm25_hit = [any(q.fact in p["text"] for p in ref.bm25({"question": q.question})["passages"][:3]) for q in qs]
    dense_hit = [any(q.fact in p["text"] for p in ref.dense({"question": q.question})["passages"][:3]) for q in qs]
    words = [len(p["text"].split()) for p in ref.workload.corpus]
    return {
        "questions": len(qs), "passages": len(ref.workload.corpus),
        "passage_words": {"min": min(words), "mean": round(statistics.mean(words), 1), "max": max(words)},
        "answer_sentences": dict(sorted(Counter(map(len, results)).items())),
        "fact_in_bm25_top3": sum(bm25_hit) / len(qs), "fact_in_dense_top3": sum(dense_hit) / len(qs),
        "fact_in_reranked_top3": sum(found) / len(qs),
    }


def main(argv: list[str] | None = None) -> int:
    return summary_main(argv, "rag", DEFAULT_QUESTIONS, DEFAULT_SEED, lambda seed, n: summary(Reference(seed, n)))


if __name__ == "__main__":
    raise SystemExit(main())
