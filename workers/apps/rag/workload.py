"""Seeded RAG workload: a corpus of made-up facts, questions about them, the answer LM's script.

Everything is generated from ``seed`` in a few milliseconds, in every process that needs it
(the retrievers, the LM, the reference), so nothing is downloaded or bundled.

Distributions (defaults):

* entities: 90 made-up names, half towns (population, year founded, river, mayor), half
  companies (year founded, headquarters, employees, founder); each has 3-4 of its kind's
  4 facts (uniform).
* passages: each entity's facts, shuffled, in passages of 1-2 facts (uniform), 30% of them
  with a neutral remark added; plus one distractor passage per two entities that names two
  entities and no fact: 286 passages of 4-20 words (mean 9) for seed 1.
* questions: ``n`` distinct (entity, fact, phrasing) triples drawn uniformly without
  replacement; 1-2 phrasings per fact, some sharing few words with the fact's sentence
  ("How many people live in X?" against "X has a population of N."), so the two
  retrievers disagree and sometimes neither finds the fact.
* answer sentences per question: 1-5, weights 1:15%, 2:30%, 3:30%, 4:15%, 5:10%.

The answer LM's scripted output is a pure function of what it is given (``answer_text``):
the fact sentence with its citation when one of the reranked passages holds it, else a
sentence saying the sources do not tell, then the other sentences of the passages, cited,
up to the question's sentence count. So a request's result depends on both retrievers and
the reranking, and the reference predicts it exactly.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_SEED = 1
DEFAULT_QUESTIONS = 200
N_ENTITIES = 90
SENTENCE_WEIGHTS = {1: 15, 2: 30, 3: 30, 4: 15, 5: 10}
REMARK_P = 0.3

_SYLLABLES = ("bor", "vik", "tam", "lun", "dra", "sel", "mor", "kin", "fal", "ost", "ren", "ula",
              "quin", "hal", "zor", "pet", "ivo", "nar", "gul", "tes", "ber", "cam", "dor", "ely")
_FIRST = ("Anna", "Boris", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
          "Karin", "Lukas", "Marta", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tilda", "Viktor")

# kind -> fact name -> (sentence template, question phrasings)
FACTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "town": {
        "population": ("{e} has a population of {n}.",
                       ("What is the population of {e}?", "How many people live in {e}?")),
        "founded": ("{e} was founded in {y}.", ("When was the town of {e} founded?",)),
        "river": ("{e} lies on the river {r}.",
                  ("Which river does {e} lie on?", "What river flows through {e}?")),
        "mayor": ("The mayor of {e} is {p}.", ("Who is the mayor of {e}?",)),
    },
    "company": {
        "founded": ("{e} was founded in {y}.", ("In which year was the company {e} founded?",)),
        "headquarters": ("{e} has its headquarters in {t}.",
                         ("Where does {e} have its headquarters?", "In which city is {e} based?")),
        "employees": ("{e} employs {n} people.",
                      ("How many people does {e} employ?", "How large is the staff of {e}?")),
        "founder": ("{e} was started by {p}.", ("Who started {e}?", "Who is the founder of {e}?")),
    },
}
_REMARKS = ("{e} is often mentioned in regional guides.", "Little else is recorded about {e}.",
            "Visitors to {e} rarely stay for long.", "Records about {e} are kept in the archive.")
_DISTRACTORS = ("{a} and {b} are sometimes confused by visitors.",
                "A road links {a} with {b} and the coast.", "{a} and {b} share a football club.")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    entity: str
    fact: str          # the sentence of the corpus that answers it
    sentences: int     # sentences the scripted answer has at most


@dataclass(frozen=True)
class Workload:
    corpus: list[dict[str, str]]     # {"id", "text"}
    questions: list[Question]

    def by_text(self) -> dict[str, Question]:
        return {q.question: q for q in self.questions}


def _names(rng: random.Random, n: int, syllables: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


@functools.lru_cache(maxsize=8)
def generate(seed: int = DEFAULT_SEED, n_questions: int = DEFAULT_QUESTIONS) -> Workload:
    """The workload of ``seed``: the corpus depends on the seed only, the questions on both."""
    rng = random.Random(seed)
    names = _names(rng, N_ENTITIES + 30, 2)
    entities, places = names[:N_ENTITIES], names[N_ENTITIES:]
    facts: list[tuple[str, str, str, tuple[str, ...]]] = []   # (entity, fact name, sentence, phrasings)
    corpus: list[dict[str, str]] = []
    for i, e in enumerate(entities):
        kind = "town" if i % 2 == 0 else "company"
        chosen = rng.sample(sorted(FACTS[kind]), rng.randint(3, 4))
        mine = []
        for name in chosen:
            template, phrasings = FACTS[kind][name]
            sentence = template.format(
                e=e, n=rng.randint(12, 980) * 100, y=rng.randint(1700, 2015), r=rng.choice(places),
                t=rng.choice(places), p=f"{rng.choice(_FIRST)} {rng.choice(places)}")
            facts.append((e, name, sentence, phrasings))
            mine.append(sentence)
        rng.shuffle(mine)
        while mine:
            size = rng.randint(1, 2)
            take, mine = mine[:size], mine[size:]
            text = " ".join(take)
            if rng.random() < REMARK_P:
                text += " " + rng.choice(_REMARKS).format(e=e)
            corpus.append({"id": "", "text": text})
    for _ in range(len(entities) // 2):
        a, b = rng.sample(entities, 2)
        corpus.append({"id": "", "text": rng.choice(_DISTRACTORS).format(a=a, b=b)})
    rng.shuffle(corpus)
    for k, p in enumerate(corpus):
        p["id"] = f"p{k:03d}"
    triples = [(e, sentence, q.format(e=e)) for e, _, sentence, phrasings in facts for q in phrasings]
    if n_questions > len(triples):
        raise ValueError(f"seed {seed} gives {len(triples)} distinct questions; asked for {n_questions}")
    picked = rng.sample(triples, n_questions)
    sizes, weights = zip(*SENTENCE_WEIGHTS.items())
    questions = [Question(f"q{i:03d}", q, e, sentence, rng.choices(sizes, weights)[0])
                 for i, (e, sentence, q) in enumerate(picked)]
    return Workload(corpus, questions)


NOT_FOUND = "The sources do not say; the question was: {question}"


def answer_text(question: str, passages: list[dict[str, Any]], plan: Question | None) -> str:
    """The answer LM's output for ``question`` given the reranked ``passages``.

    A question outside the workload gets a one-sentence answer from the first passage.
    """
    n = plan.sentences if plan is not None else 1
    sentences: list[str] = []
    used: tuple[str, str] | None = None
    if plan is not None:
        for p in passages:
            if plan.fact in p["text"]:
                sentences.append(f"{plan.fact[:-1]} [{p['id']}].")
                used = (p["id"], plan.fact)
                break
        if used is None:
            sentences.append(NOT_FOUND.format(question=question))
    for p in passages:
        for s in split_sentences(p["text"]):
            if len(sentences) >= n:
                break
            if (p["id"], s) != used:
                sentences.append(f"Source [{p['id']}] says: {s}")
    return " ".join(sentences)


def split_sentences(text: str) -> list[str]:
    """The corpus's sentences: each ends with ". " (no abbreviations or decimals in it)."""
    return [s if s.endswith(".") else s + "." for s in (x.strip() for x in text.split(". ")) if s]


def script(seed: int = DEFAULT_SEED, n_questions: int = DEFAULT_QUESTIONS) -> Callable[[str, str | None], str | None]:
    """The sim engine's script: the ``answer`` prompt's output from its input item (JSON)."""
    plans = generate(seed, n_questions).by_text()

    def lookup(prompt_name: str, key: str | None) -> str | None:
        if prompt_name != "answer" or key is None:
            return None
        item = json.loads(key)
        return answer_text(item["question"], item["passages"], plans.get(item["question"]))

    return lookup
