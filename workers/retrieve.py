"""Retrieval worker: Okapi BM25 over a local corpus of passages.

The index is built once, at load, as per-term postings (document indices and the
precomputed BM25 weight of the term in each document). A query then touches only
its terms' postings: one vectorised sum over them (``np.bincount``) and a top-k
selection, so a query over 10,000 passages takes about 0.05-0.2 ms. A search keeps
no state, so handlers may call it from several threads.

Scoring (Robertson/Sparck Jones with Lucene's non-negative idf)::

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(q, d) = sum over query terms t (with multiplicity) of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

Results are ordered by score, highest first, ties broken by passage id (string order),
so a search is a pure function of the corpus, the parameters and the query.

Corpus files: JSONL (one ``{"id", "text"}`` object per line), optionally gzip'd
(``.gz``), or a JSON document (optionally gzip'd) whose top level is a list of such
objects or an object with a ``"corpus"`` list, such as a FacTool workload file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

Passage = dict[str, Any]

# Function words that carry no evidence; kept short on purpose (BM25's idf already
# discounts frequent words, the list only keeps postings short).
STOP_WORDS = frozenset(
    """a an and are as at be been by for from has have in is it its of on or that the
    this to was were what when where which who whom why how with did do does""".split()
)

_WORD = re.compile(r"[a-z0-9]+")

# Up to this many postings in total, a query sums them sparsely; beyond, densely.
_SPARSE_LIMIT = 2048


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric words, stop words removed."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


class BM25Index:
    """An immutable BM25 index over ``passages`` (each a mapping with ``id`` and ``text``)."""

    def __init__(self, passages: Iterable[Passage], k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        ids: list[str] = []
        texts: list[str] = []
        seen: set[str] = set()
        for i, p in enumerate(passages):
            try:
                pid, text = str(p["id"]), str(p["text"])
            except (KeyError, TypeError):
                raise ValueError(
                    f"passage #{i} is not an object with 'id' and 'text': {p!r:.80}"
                ) from None
            if pid in seen:
                raise ValueError(f"duplicate passage id {pid!r}")
            seen.add(pid)
            ids.append(pid)
            texts.append(text)
        if not ids:
            raise ValueError("the corpus holds no passages")
        self.ids = ids
        self.texts = texts
        n = len(ids)
        # Rank of each passage in id order: the tie-breaker, as an integer sort key.
        self._id_rank = np.empty(n, dtype=np.int64)
        self._id_rank[sorted(range(n), key=ids.__getitem__)] = np.arange(n)

        # One flat (term, doc, tf) triple per distinct term of each doc, sorted by term:
        # each term's postings are then a slice, and all weights come from one vector
        # expression instead of one small array per term.
        self.vocab: dict[str, int] = {}
        t_ids: list[int] = []
        d_ids: list[int] = []
        tfs: list[int] = []
        lengths = np.empty(n, dtype=np.float64)
        for d, text in enumerate(texts):
            counts = Counter(tokenize(text))
            lengths[d] = sum(counts.values())
            for term, tf in counts.items():
                t_ids.append(self.vocab.setdefault(term, len(self.vocab)))
                d_ids.append(d)
                tfs.append(tf)
        self.doc_lengths = lengths
        self.avgdl = float(lengths.mean()) or 1.0  # an all-stop-word corpus must not divide by 0
        norm = self.k1 * (1.0 - self.b + self.b * lengths / self.avgdl)

        order = np.argsort(np.asarray(t_ids, dtype=np.int64), kind="stable")
        terms = np.asarray(t_ids, dtype=np.int64)[order]
        self._docs = np.asarray(d_ids, dtype=np.int64)[order]   # ascending within a term
        tf_arr = np.asarray(tfs, dtype=np.float64)[order]
        df = np.bincount(terms, minlength=len(self.vocab)).astype(np.float64)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        # Final weights: k1 and b are fixed for the index's lifetime.
        self._weights = self.idf[terms] * tf_arr * (self.k1 + 1.0) / (tf_arr + norm[self._docs])
        self._starts = np.concatenate(([0], np.cumsum(df, dtype=np.int64)))

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices, weights) of ``term``; empty arrays for an unknown term."""
        t = self.vocab.get(term)
        if t is None:
            return self._docs[:0], self._weights[:0]
        lo, hi = self._starts[t], self._starts[t + 1]
        return self._docs[lo:hi], self._weights[lo:hi]

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """The ``k`` best passages for ``query`` as ``{"id", "text", "score"}``, best first.

        An empty or blank query is an error; a query whose words are all stop words or
        absent from the corpus matches nothing and returns ``[]``.
        """
        if not isinstance(query, str):
            raise TypeError(f"a query is a string, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("empty query: BM25 needs at least one word to search for")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        postings = [
            (self.postings(t), qtf) for t, qtf in Counter(tokenize(query)).items()
            if t in self.vocab
        ]
        if not postings:
            return []
        # Sum the weights of the query's postings. np.bincount adds in input order, so
        # both paths add each document's terms in query-term order from 0.0 and give
        # bit-identical scores.
        total = sum(len(p[0]) for p, _ in postings)
        if len(postings) == 1:
            (cand, weights), qtf = postings[0]
            cand_scores = weights * qtf
        else:
            docs = np.concatenate([p[0] for p, _ in postings])
            weights = np.concatenate([p[1] * qtf for p, qtf in postings])
            if total <= _SPARSE_LIMIT:
                # Short postings (rare terms): sort-merge them, cost independent of corpus size.
                cand, inverse = np.unique(docs, return_inverse=True)
                cand_scores = np.bincount(inverse, weights=weights, minlength=len(cand))
            else:
                # Long postings (common terms): one dense pass over the corpus beats sorting.
                dense = np.bincount(docs, weights=weights, minlength=len(self.ids))
                cand = np.flatnonzero(dense)  # weights are > 0, so nonzero = matched
                cand_scores = dense[cand]
        if len(cand) > k:
            # Keep everything tied with the k-th best so the id tie-break sees all of it.
            kth = np.partition(cand_scores, len(cand) - k)[len(cand) - k]
            keep = cand_scores >= kth
            cand, cand_scores = cand[keep], cand_scores[keep]
        order = np.lexsort((self._id_rank[cand], -cand_scores))[:k]
        return [
            {"id": self.ids[d], "text": self.texts[d], "score": round(float(s), 6)}
            for d, s in zip(cand[order].tolist(), cand_scores[order].tolist())
        ]


def load_corpus(path: str | os.PathLike[str]) -> list[Passage]:
    """Passages from a JSONL / JSON file, gzip'd or not (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None  # not one JSON document: JSONL
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        if isinstance(doc.get("corpus"), list):
            return doc["corpus"]
        if "id" in doc and "text" in doc:  # a one-line JSONL file
            return [doc]
        raise ValueError(f"corpus file {path}: a JSON object needs a 'corpus' list")
    passages = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                passages.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"corpus file {path}, line {lineno}: not JSON ({e})") from None
    return passages


def load_index(path: str | os.PathLike[str], k1: float = 1.2, b: float = 0.75) -> BM25Index:
    """Load a corpus file and index it."""
    try:
        return BM25Index(load_corpus(path), k1=k1, b=b)
    except ValueError as e:
        if os.fspath(path) in str(e):
            raise
        raise ValueError(f"corpus file {os.fspath(path)}: {e}") from None


def make_handler(
    corpus: str,
    k: int = 3,
    field: str | None = None,
    out_field: str | None = None,
    k1: float = 1.2,
    b: float = 0.75,
) -> Callable[[Any], Any]:
    """A runtime handler ``handler(item)`` searching the corpus file ``corpus``.

    ``item`` is the query string, or a dict whose ``field`` holds the query. The handler
    returns the list of passages; with ``out_field`` set and a dict item it returns a copy
    of the item with the passages under ``out_field`` instead, so that whatever the item
    carries (e.g. the claim a query was generated for) travels on with the evidence.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    index = load_index(corpus, k1=k1, b=b)

    def handler(item: Any) -> Any:
        if isinstance(item, dict):
            if field is None:
                raise ValueError(
                    "retrieve got a dict item but no 'field' names the query in it "
                    f"(keys: {sorted(item)})"
                )
            if field not in item:
                raise ValueError(f"retrieve: item has no field {field!r} (keys: {sorted(item)})")
            passages = index.search(item[field], k)
            if out_field is None:
                return passages
            return {**item, out_field: passages}
        return index.search(item, k)

    handler.index = index  # type: ignore[attr-defined]  # handy for tests and the reference
    return handler
