"""Single-process reference of the fact-verification pipeline.

For each question it computes the exact result the distributed pipeline must deliver,
walking the same stages in order with the workload's script standing in for the LMs,
the same BM25 retriever, and the glue of :mod:`.handlers`. End-to-end tests compare
the pipeline's results with :meth:`Reference.result`.

Splitting rules (any sensible streaming splitter agrees on the generated texts):

* sentences: split after ". ", "? " or "! " when an upper-case letter follows;
* lines (claims, queries): one item per non-blank line, stripped of a leading list
  marker ("1.", "2)", "-", "*", "•") and surrounding spaces.

CLI: ``python -m alto_workers.factool.reference [--workload FILE] [--k 3]`` prints the
fan-out and verdict statistics of a workload.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from alto_workers.factool.handlers import build_verdict, build_verify_input
from alto_workers.factool.workload import DEFAULT_PATH, Workload, split_sentences
from alto_workers.retrieve import BM25Index

_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+")


def split_lines(text: str) -> list[str]:
    """Non-blank lines of ``text`` without list markers."""
    out = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        if line:
            out.append(line)
    return out


@dataclass
class Trace:
    """One request walked through the pipeline: its fan-out and its result."""

    question: str
    sentences: list[str] = field(default_factory=list)
    claims: list[list[str]] = field(default_factory=list)     # per sentence
    queries: list[list[str]] = field(default_factory=list)    # per claim, answer order
    result: dict[str, Any] = field(default_factory=dict)


class Reference:
    """The pipeline in one process over ``workload`` (the script plays the LMs).

    With ``strict`` (the default) a script lookup that misses raises ``KeyError``; every
    lookup is recorded in ``lookups`` as ``(prompt_name, key)``.
    """

    def __init__(self, workload: Workload, k: int = 3, k1: float = 1.2, b: float = 0.75,
                 strict: bool = True) -> None:
        self.workload = workload
        self.k = k
        self.strict = strict
        self.index = BM25Index(workload.corpus, k1=k1, b=b)
        self.lookups: list[tuple[str, str]] = []

    def _lm(self, prompt_name: str, key: str) -> str:
        self.lookups.append((prompt_name, key))
        out = self.workload.script_lookup(prompt_name, key)
        if out is None:
            if self.strict:
                raise KeyError(f"no scripted {prompt_name!r} output for key {key!r}")
            return ""   # what an LM with nothing to say would give
        return out

    def trace(self, question: str) -> Trace:
        tr = Trace(question)
        request = {"question": question}
        verified = []
        tr.sentences = split_sentences(self._lm("answer", question))
        for sentence in tr.sentences:
            s_item = {**request, "sentence": sentence}
            claims = split_lines(self._lm("claims", sentence))
            tr.claims.append(claims)
            for claim in claims:
                c_item = {**s_item, "claim": claim}
                queries = split_lines(self._lm("queries", claim))
                tr.queries.append(queries)
                retrieved = [{**c_item, "query": q, "passages": self.index.search(q, self.k)}
                             for q in queries]
                v_in = build_verify_input(retrieved, claim=claim)
                verified.append({**v_in, "verdict": self._lm("verify", v_in["claim"])})
        tr.result = build_verdict(verified)
        return tr

    def result(self, question: str) -> dict[str, Any]:
        """The final result the pipeline must produce for ``question``."""
        return self.trace(question).result

    def results(self) -> dict[str, dict[str, Any]]:
        """Results of every workload question, by question id."""
        return {q["id"]: self.result(q["question"]) for q in self.workload.questions}


def summary(workload: Workload, k: int = 3) -> dict[str, Any]:
    """Fan-out and verdict statistics of ``workload`` as the pipeline sees it."""
    ref = Reference(workload, k=k)
    traces = [ref.trace(q["question"]) for q in workload.questions]
    sents = [len(t.sentences) for t in traces]
    claims_per_sentence = [len(c) for t in traces for c in t.claims]
    claims = [sum(map(len, t.claims)) for t in traces]
    queries = [len(q) for t in traces for q in t.queries]
    words = [len(workload.script_lookup("answer", t.question).split()) for t in traces]
    labels = workload.labels
    false = sum(not v["factual"] for v in labels.values())
    return {
        "questions": len(traces),
        "sentences_per_answer": dict(sorted(Counter(sents).items())),
        "claims_per_sentence": dict(sorted(Counter(claims_per_sentence).items())),
        "claims_per_answer": {"min": min(claims), "mean": statistics.mean(claims),
                              "max": max(claims), "distinct": len(set(claims))},
        "queries_per_claim": dict(sorted(Counter(queries).items())),
        "answer_words": {"min": min(words), "mean": statistics.mean(words), "max": max(words)},
        "false_claim_fraction": false / max(1, len(labels)),
        "factual_answers": sum(t.result["factual"] for t in traces) / len(traces),
        "passages": len(workload.corpus),
        "lookups": len(ref.lookups),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alto_workers.factool.reference",
                                 description="Fan-out and verdict statistics of a workload.")
    ap.add_argument("--workload", default=DEFAULT_PATH)
    ap.add_argument("--k", type=int, default=3, help="passages per query (3)")
    args = ap.parse_args(argv)
    for key, value in summary(Workload.load(args.workload), k=args.k).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
