"""A dense retriever with numpy: hashed bag-of-words embeddings, cosine top-k.

A text's vector has ``dim`` dimensions; each of its words (``alto_workers.retrieve``'s
tokenizer) and each character trigram of a word (``"#po", "pop", ...``, weight 0.5) adds
+-1 at a position chosen by a CRC-32 of the feature, then the vector is L2-normalised. So
it matches on word pieces ("populated" against "population") where BM25 needs the whole
word, and no model weights are needed. The hash is CRC-32, not ``hash()``, so every process
computes the same vectors.

Results are ordered by cosine, highest first, ties broken by passage id, scores rounded to
6 digits: a search is a pure function of the corpus, ``dim`` and the query.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from alto_workers.retrieve import tokenize

TRIGRAM_WEIGHT = 0.5


def features(text: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for word in tokenize(text):
        out.append((word, 1.0))
        padded = f"#{word}#"
        out.extend((padded[i:i + 3], TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
    return out


def embed(text: str, dim: int) -> np.ndarray:
    """The unit vector of ``text`` (all zeros when it has no words)."""
    v = np.zeros(dim, dtype=np.float64)
    for feature, weight in features(text):
        h = zlib.crc32(feature.encode())
        v[h % dim] += weight if (h >> 31) & 1 else -weight
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


class DenseIndex:
    """Every passage's embedding as one matrix; a query is one matrix-vector product."""

    def __init__(self, passages: Iterable[dict[str, Any]], dim: int = 512) -> None:
        if dim < 8:
            raise ValueError(f"dim must be at least 8, got {dim}")
        self.dim = dim
        self.passages = [{"id": str(p["id"]), "text": str(p["text"])} for p in passages]
        if not self.passages:
            raise ValueError("the corpus holds no passages")
        self.matrix = np.stack([embed(p["text"], dim) for p in self.passages])
        self._id_rank = np.argsort(np.argsort([p["id"] for p in self.passages], kind="stable"))

    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` passages most similar to ``query``, ``{"id", "text", "score"}``, best first."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"a query is non-empty text, got {query!r:.60}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scores = np.round(self.matrix @ embed(query, self.dim), 6)
        order = np.lexsort((self._id_rank, -scores))[:k]
        return [{**self.passages[i], "score": float(scores[i])} for i in order.tolist()]
