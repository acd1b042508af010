"""Seeded map-reduce workload: requests of long documents, and the two summary LMs' script.

Distributions (defaults; per request unless stated):

* documents per request: 1-3, weights 1:50%, 2:30%, 3:20%.
* paragraphs per document: 3-24, weights 3-6: 40%, 7-12: 35%, 13-24: 25% (uniform within
  each band); sentences per paragraph 3-6 (uniform). For seed 1, documents of 160-2,140
  words (mean 754); the split stage cuts them into chunks of whole paragraphs of at most
  150 words (a longer paragraph is a chunk alone): 2-21 chunks per document (mean 7.5),
  12.9 per request.
* the first sentence of a paragraph names its topic ("The harbour of Borvik ..."); the
  others are remarks about it.

The scripted LMs are pure functions of their input (any text, not only the workload's):

* ``summarise`` (per chunk): the first sentence of each of the chunk's paragraphs;
* ``final`` (per document): "<title> in <n> parts." then the first sentence of the notes of
  the first, the middle and the last chunk (fewer when there are fewer chunks).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from typing import Any

DEFAULT_SEED = 1
DEFAULT_REQUESTS = 200
DOC_WEIGHTS = {1: 50, 2: 30, 3: 20}
PARAGRAPH_BANDS = (((3, 6), 40), ((7, 12), 35), ((13, 24), 25))

_SYLLABLES = ("bor", "vik", "tam", "lun", "dra", "sel", "mor", "kin", "fal", "ost", "ren", "ula")
_TOPICS = ("harbour", "market", "old bridge", "library", "railway", "mill", "school", "council",
           "river path", "theatre", "castle", "factory", "orchard", "museum", "quarry", "festival")
_VERBS = ("was rebuilt", "was extended", "was closed", "was opened", "was restored", "was moved")
_REMARKS = (
    "Local records describe the work in some detail",
    "Residents still talk about the change with some pride",
    "The cost was shared between the town and the region",
    "Several families moved to the area in the following years",
    "A small plaque near the entrance marks the occasion",
    "Visitors often ask about it during the summer months",
    "The original plans are kept in the town archive",
    "Some of the older buildings nearby were left as they were",
)


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _paragraph(rng: random.Random, town: str) -> str:
    topic = rng.choice(_TOPICS)
    first = f"The {topic} of {town} {rng.choice(_VERBS)} in {rng.randint(1750, 2020)}."
    rest = [f"{rng.choice(_REMARKS)} and {rng.choice(_REMARKS).lower()}." for _ in range(rng.randint(2, 5))]
    return " ".join([first, *rest])


def document(rng: random.Random) -> dict[str, str]:
    town = _name(rng)
    (lo, hi), = rng.choices([b for b, _ in PARAGRAPH_BANDS], [w for _, w in PARAGRAPH_BANDS])
    paragraphs = [_paragraph(rng, town) for _ in range(rng.randint(lo, hi))]
    return {"title": f"A history of {town}", "text": "\n\n".join(paragraphs)}


@functools.lru_cache(maxsize=8)
def generate(seed: int = DEFAULT_SEED, n_requests: int = DEFAULT_REQUESTS) -> list[dict[str, Any]]:
    """``n_requests`` requests, each ``{"documents": [{"title", "text"}, ...]}``."""
    rng = random.Random(seed)
    sizes, weights = zip(*DOC_WEIGHTS.items())
    return [{"documents": [document(rng) for _ in range(rng.choices(sizes, weights)[0])]}
            for _ in range(n_requests)]


def first_sentence(text: str) -> str:
    head = text.strip().split(". ", 1)[0].rstrip(".")
    return head + "."


def summarise(chunk: str) -> str:
    """The chunk LM's output: the first sentence of each paragraph."""
    return " ".join(first_sentence(p) for p in chunk.split("\n\n") if p.strip())


def final_summary(title: str, notes: list[str]) -> str:
    """The document LM's output from the chunk summaries in order."""
    picks = sorted({0, len(notes) // 2, len(notes) - 1}) if notes else []
    return " ".join([f"{title} in {len(notes)} parts.", *(first_sentence(notes[i]) for i in picks)])


def script() -> Callable[[str, str | None], str | None]:
    """The sim engine's script: ``summarise`` is keyed by the chunk, ``final`` by its whole input."""

    def lookup(prompt_name: str, key: str | None) -> str | None:
        if key is None:
            return None
        if prompt_name == "summarise":
            return summarise(key)
        if prompt_name == "final":
            item = json.loads(key)
            return final_summary(item["title"], item["notes"].split("\n"))
        return None

    return lookup
