"""Seeded FacTool-style workload: questions, scripted LM outputs, and a retrieval corpus.

Every question asks about one made-up entity (a person, a town, a river, a company or a
mountain). For each question the generator writes what each LM stage of the pipeline
would output, keyed the way the sim engine looks outputs up (``(prompt_name, key)``):

=========  ===================  ==================================================
prompt     script key           scripted output
=========  ===================  ==================================================
answer     the question text    the answer: sentences in one paragraph
claims     one sentence         its claims, one per line, numbered ``"1. ..."``
claims     a whole answer       the claims of all its sentences, renumbered (FacTool's
                                claim extraction over the whole response: the baseline)
queries    one claim            1-3 search queries, one per line, ``"- ..."``
verify     one claim            ``{"reasoning": ..., "factuality": true|false}``
=========  ===================  ==================================================

Distributions (defaults of :class:`Params`; per request unless stated):

* sentences per answer: 2-8, skewed to the short side, weights
  2:10%, 3:20%, 4:22%, 5:18%, 6:13%, 7:10%, 8:7% (mean about 4.6).
* claims per sentence: 0-3, weights 0:15%, 1:40%, 2:30%, 3:15% (mean 1.45); a sentence
  with no claim is a remark ("Here is a short overview of ...") whose claim output is
  empty. So claims per answer range from 0 to 24 (mean about 6.5): fan-out varies.
* queries per claim: 1-3, weights 1:25%, 2:50%, 3:25% (FacTool's examples give 2).
* false claims: each claim independently false with probability 15% (one value of the
  fact changed: a year, a number or a name); the answer states the false value, the
  corpus the true one, and the verify output says ``false``.
* answer length: 2-8 sentences of 5-28 words (about 12 on average: a fact sentence
  names its subject, a pronoun or "The <noun>"); answers are 15-120 words, about 55 on
  average (300 characters, 75 tokens).
* corpus: for each asked entity, its facts (the true version of those in the answer,
  plus 1-3 more) written as passages of about 2-5 fact sentences, a third of them with a
  neutral remark added (10-65 words, about 30 on average); distractors: 0.5 unasked
  entities per question (2-6 facts each), and 25% of asked entities are also named in
  passing in a distractor passage. 200 questions give about 680 passages; BM25 puts the
  passage holding a claim's fact in the top 3 of one of its queries for 99% of claims.

Every key is unique across the workload (entity names are unique, every claim and
remark names its entity, and sentences that would repeat fall back to the name), so a
lookup never has to pick between two outputs. Texts contain no abbreviations and no
decimals, so any sentence splitter that splits after ". " before an upper-case letter
finds the same sentences.

The generator is :mod:`alto_workers.factool.workload_gen`; this module reads and writes the
file and answers the sim engine's lookups.

CLI: ``python -m alto_workers.factool.workload --n 200 --seed 1 --out FILE.json.gz``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
PROMPT_NAMES = ("answer", "claims", "queries", "verify")
DEFAULT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "topology", "data", "factool_workload.json.gz",
)


# ---------------------------------------------------------------------------------------
# The workload


@dataclass
class Workload:
    """Questions, the scripted outputs of every LM stage, and the retrieval corpus."""

    questions: list[dict[str, str]]                 # {"id", "question"}
    script: dict[str, dict[str, str]]               # prompt name -> key -> output text
    corpus: list[dict[str, str]]                    # {"id", "text"}
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim -> truth, passage
    meta: dict[str, Any] = field(default_factory=dict)

    def script_lookup(self, prompt_name: str, key: str) -> str | None:
        """The scripted output of ``prompt_name`` for ``key``, or None if none is scripted.

        ``claims`` also takes a whole answer (FacTool extracts claims from the whole
        response): its output is the claims of the answer's sentences, in order,
        numbered 1..n. It is derived, not stored, so the file keeps one key per sentence.
        """
        out = self.script.get(prompt_name, {}).get(key)
        if out is None and prompt_name == "claims":
            out = self._answer_claims(key)
        return out

    def _answer_claims(self, answer: str) -> str | None:
        per_sentence = [self.script["claims"].get(s) for s in split_sentences(answer)]
        if len(per_sentence) < 2 or None in per_sentence:
            return None     # not a scripted answer (one sentence is a sentence key)
        claims = [line.split(". ", 1)[1] for text in per_sentence for line in text.splitlines()]
        return "\n".join(f"{i}. {c}" for i, c in enumerate(claims, 1))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write gzip'd JSON; the bytes depend only on the content (no timestamp)."""
        doc = {"version": FORMAT_VERSION, "meta": self.meta, "questions": self.questions,
               "script": self.script, "corpus": self.corpus, "labels": self.labels}
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                    filename="", compresslevel=9) as f:
            f.write(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str] = DEFAULT_PATH) -> Workload:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"workload file not found: {path}")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"workload file {path}: format version {doc.get('version')!r}, "
                             f"this code reads {FORMAT_VERSION}")
        missing = [p for p in PROMPT_NAMES if p not in doc.get("script", {})]
        if missing:
            raise ValueError(f"workload file {path}: no script for prompt(s) {missing}")
        return cls(doc["questions"], doc["script"], doc["corpus"], doc.get("labels", {}),
                   doc.get("meta", {}))


_SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: a break after ".", "?" or "!" and spaces before a capital."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alto_workers.factool.workload",
                                 description="Generate a seeded FacTool-style workload.")
    ap.add_argument("--n", type=int, default=200, help="number of questions (200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=DEFAULT_PATH, help="gzip'd JSON output file")
    ap.add_argument("--corpus-out", help="also write the corpus as gzip'd JSONL here")
    args = ap.parse_args(argv)
    from alto_workers.factool.workload_gen import generate

    wl = generate(args.n, args.seed)
    wl.save(args.out)
    if args.corpus_out:
        with open(args.corpus_out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                               mtime=0, filename="") as f:
            for p in wl.corpus:
                f.write((json.dumps(p, ensure_ascii=False) + "\n").encode())
    n_claims = len(wl.script["verify"])
    print(f"{args.out}: {len(wl.questions)} questions, {n_claims} claims, "
          f"{len(wl.corpus)} passages, {os.path.getsize(args.out):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def script(path: str | os.PathLike[str] = DEFAULT_PATH) -> Callable[[str, str | None], str | None]:
    """The sim engine's script for a workload file: ``script(prompt_name, key) -> output``."""
    return Workload.load(path).script_lookup
