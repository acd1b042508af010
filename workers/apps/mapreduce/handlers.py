"""Stages of map-reduce summarisation (``topology/mapreduce.toml``), named there as ``module:function``.

    stage      kind                  path          item
    ---------  --------------------  ------------  -------------------------------------------
    documents  function (entry)      [rid, d]      {"title", "text"}: one per document (fan-out)
    split      function              [rid, d, c]   {"title", "chunk"}: whole paragraphs (fan-out)
    summarise  LM, whole text        [rid, d, c]   the same + "summary"
    reduce     aggregate per doc     [rid, d]      {"title", "notes", "chunks"}: the chunk summaries
               (key = "documents")                 in order, one per line
    final      LM, whole text        [rid, d]      the same + "summary": the document's summary

A request's result is the list of its documents' ``final`` items, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CHUNK_WORDS = 150
MAX_DOCUMENTS = 16
MAX_DOCUMENT_CHARS = 100_000


def documents(payload: Any) -> Iterator[dict[str, str]]:
    """A request ``{"documents": [{"title", "text"}, ...]}`` (or one document) -> its documents."""
    docs = payload.get("documents", [payload]) if isinstance(payload, dict) else None
    if not isinstance(docs, list) or not docs:
        raise ValueError(f"a request is {{'documents': [{{'title', 'text'}}, ...]}} or one document; got {payload!r:.80}")
    if len(docs) > MAX_DOCUMENTS:
        raise ValueError(f"a request holds at most {MAX_DOCUMENTS} documents, got {len(docs)}")
    for i, doc in enumerate(docs):
        title, text = (doc.get("title"), doc.get("text")) if isinstance(doc, dict) else (None, None)
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"document {i} has no 'title' (text)")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {i} ({title!r}) has no 'text'")
        if len(text) > MAX_DOCUMENT_CHARS:
            raise ValueError(f"document {i} ({title!r}) has {len(text)} characters, more than {MAX_DOCUMENT_CHARS}")
    for doc in docs:
        yield {"title": doc["title"].strip(), "text": doc["text"]}


def chunks(text: str, limit: int = CHUNK_WORDS) -> list[str]:
    """Whole paragraphs (blank-line separated) packed into chunks of at most ``limit`` words."""
    out: list[list[str]] = []
    words = 0
    for p in (p.strip() for p in text.split("\n\n")):
        if not p:
            continue
        n = len(p.split())
        if out and words + n <= limit:
            out[-1].append(p)
            words += n
        else:
            out.append([p])
            words = n
    return ["\n\n".join(c) for c in out]


def split(doc: dict[str, str]) -> Iterator[dict[str, str]]:
    for chunk in chunks(doc["text"]):
        yield {"title": doc["title"], "chunk": chunk}


def reduce(items: list[dict[str, str]]) -> dict[str, Any]:
    """The chunk summaries of one document, in path order -> the final LM's input."""
    if not items:
        raise ValueError("a document with no chunks reached reduce")
    return {"title": items[0]["title"], "notes": "\n".join(i["summary"] for i in items), "chunks": len(items)}
