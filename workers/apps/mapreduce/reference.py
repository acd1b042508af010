"""Single-process reference of map-reduce summarisation: each request's exact result.

It walks ``topology/mapreduce.toml``'s stages in order in one process, the script standing
in for both LMs.

CLI: ``python -m alto_workers.apps.mapreduce.reference`` prints the workload's statistics.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

from alto_workers.apps.cli import summary_main
from alto_workers.apps.expect import Expected
from alto_workers.apps.mapreduce import handlers
from alto_workers.apps.mapreduce.workload import DEFAULT_REQUESTS, DEFAULT_SEED, generate, script


class Reference:
    def __init__(self, seed: int = DEFAULT_SEED, n_requests: int = DEFAULT_REQUESTS) -> None:
        self.workload = generate(seed, n_requests)
        self.model = script()

    def result(self, payload: Any) -> list[dict[str, Any]]:
        out = []
        for doc in handlers.documents(payload):
            parts = [{**c, "summary": self.model("summarise", c["chunk"])} for c in handlers.split(doc)]
            reduced = handlers.reduce(parts)
            out.append({**reduced, "summary": self.model("final", json.dumps(reduced, sort_keys=True))})
        return out

    def expected(self, payload: Any) -> Expected:
        try:
            return Expected(self.result(payload))
        except ValueError as exc:
            return Expected(error_stage="documents", error_words=str(exc))

    def requests(self, n: int) -> list[Any]:
        return [self.workload[i % len(self.workload)] for i in range(n)]


def summary(ref: Reference) -> dict[str, Any]:
    docs = [d for r in ref.workload for d in r["documents"]]
    words = [len(d["text"].split()) for d in docs]
    n_chunks = [len(handlers.chunks(d["text"])) for d in docs]
    return {
        "requests": len(ref.workload),
        "documents_per_request": dict(sorted(Counter(len(r["documents"]) for r in ref.workload).items())),
        "document_words": {"min": min(words), "mean": round(statistics.mean(words)), "max": max(words)},
        "chunks_per_document": {"min": min(n_chunks), "mean": round(statistics.mean(n_chunks), 1),
                                "max": max(n_chunks)},
        "chunks_per_request": {"mean": round(sum(n_chunks) / len(ref.workload), 1)},
    }


def main(argv: list[str] | None = None) -> int:
    return summary_main(argv, "mapreduce", DEFAULT_REQUESTS, DEFAULT_SEED, lambda seed, n: summary(Reference(seed, n)))


if __name__ == "__main__":
    raise SystemExit(main())
