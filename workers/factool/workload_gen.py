"""The generator of the seeded FacTool-style workload (see :mod:`alto_workers.factool.workload`
for what it holds and its distributions): made-up entities, their facts, the answers, claims,
queries and verdicts every LM stage would output, and the retrieval corpus."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from alto_workers.factool.workload import PROMPT_NAMES, Workload
from alto_workers.factool.workload_words import (
    _CLOSERS,
    _FIELDS,
    _INDUSTRY,
    _MONTHS,
    _OPENERS,
    _PASSAGE_REMARKS,
    _POPULATION,
    _QUESTIONS,
    _REFUTE,
    _REMARKS,
    _ROLES,
    _SUPPORT,
    _Namer,
)


@dataclass(frozen=True)
class Params:
    """The distributions of the module docstring; dicts map a count to its weight."""

    sentences: dict[int, float] = field(
        default_factory=lambda: {2: .10, 3: .20, 4: .22, 5: .18, 6: .13, 7: .10, 8: .07})
    claims_per_sentence: dict[int, float] = field(
        default_factory=lambda: {0: .15, 1: .40, 2: .30, 3: .15})
    queries_per_claim: dict[int, float] = field(default_factory=lambda: {1: .25, 2: .50, 3: .25})
    p_false: float = 0.15
    extra_facts: tuple[int, int] = (1, 3)        # corpus-only facts per asked entity
    facts_per_passage: tuple[int, int] = (2, 5)
    distractors_per_question: float = 0.5
    distractor_facts: tuple[int, int] = (2, 6)
    p_mention: float = 0.25                      # asked entity named in a distractor passage


# ---------------------------------------------------------------------------------------
# Entities and facts


@dataclass
class _Entity:
    kind: str           # person, town, river, company, mountain
    name: str           # the subject as written mid-sentence ("the Kesmar", "Alda Verrenhof")
    noun: str           # "composer", "town", "river", ...
    pronoun: str        # "He", "She", "It"
    era: tuple[int, int]   # years in which its events happen
    values: dict[str, Any] = field(default_factory=dict)  # fixed per entity (birth year, ...)
    used_rels: set[str] = field(default_factory=set)
    preds: set[str] = field(default_factory=set)

    @property
    def subject(self) -> str:   # at the start of a sentence
        return self.name[0].upper() + self.name[1:]


@dataclass
class _Fact:
    rel: str
    true_pred: str
    false_pred: str
    true_values: dict[str, str]
    false_values: dict[str, str]
    queries: tuple[str, ...]


# Relations: (predicate, query templates, slots a false claim may change). ``{s}`` is the
# subject; other fields are slots. "once" relations appear at most once per entity,
# "many" relations may repeat with fresh values.
_Rel = tuple[str, tuple[str, ...], tuple[str, ...]]

_RELATIONS: dict[str, dict[str, list[_Rel]]] = {
    "person": {
        "once": [
            ("was {a_noun} from the {region} region",
             ("Who was {s}?", "{s} {noun} {region} region", "{s} origin"), ("region",)),
            ("was born in {town} in {byear}",
             ("Where was {s} born?", "{s} birth {byear}", "{s} born in {town}"),
             ("byear", "town")),
            ("died in {town} in {dyear}",
             ("When did {s} die?", "{s} death {dyear}", "{s} died in {town}"),
             ("dyear", "town")),
            ("studied {field} at the {inst}",
             ("Where did {s} study?", "{s} studied {field}", "{s} {inst} student"), ("inst",)),
            ("was married to {person}",
             ("Who was {s} married to?", "{s} spouse", "{s} marriage {person}"), ("person",)),
            ("taught at the {inst} for {n_small} years",
             ("{s} taught at {inst}", "How long did {s} teach?", "{s} teaching years"),
             ("n_small", "inst")),
        ],
        "many": [
            ("{work} in {year}",
             ("{s} {work}", "What did {s} create in {year}?", "{s} works {year}"), ("year",)),
            ("moved to {town} in {year}",
             ("Where did {s} move in {year}?", "{s} moved to {town}", "{s} residence {town}"),
             ("year", "town")),
            ("received the {award} in {year}",
             ("{s} {award}", "Which awards did {s} receive?", "{s} award {year}"),
             ("year",)),
            ("joined the {org} in {year}",
             ("When did {s} join the {org}?", "{s} member {org}", "{s} {org} {year}"),
             ("year",)),
        ],
    },
    "town": {
        "once": [
            ("is {a_noun} in the {region} province",
             ("Where is {s}?", "{s} {noun} {region} province", "{s} location"), ("region",)),
            ("was founded in {fyear}",
             ("When was {s} founded?", "{s} founding year", "{s} founded {fyear}"), ("fyear",)),
            ("has a population of about {n_pop}",
             ("What is the population of {s}?", "{s} population", "{s} inhabitants"),
             ("n_pop",)),
            ("lies on the {river} river",
             ("Which river does {s} lie on?", "{s} {river} river", "{s} river"), ("river",)),
            ("stands at an elevation of {n_elev} metres",
             ("How high is {s}?", "{s} elevation metres", "{s} altitude {n_elev}"),
             ("n_elev",)),
            ("is known for its {industry} industry",
             ("What is {s} known for?", "{s} {industry} industry", "{s} economy"),
             ("industry",)),
            ("is twinned with {town}",
             ("Which town is {s} twinned with?", "{s} twin town", "{s} {town} twinning"),
             ("town",)),
        ],
        "many": [
            ("built the {proper} {building} in {year}",
             ("When was the {proper} {building} built?", "{s} {proper} {building}",
              "{s} {building} {year}"), ("year",)),
            ("holds the {proper} Festival every {month}",
             ("{s} {proper} Festival", "When is the festival in {s}?", "{s} festival {month}"),
             ("month",)),
            ("suffered a great fire in {year}",
             ("{s} great fire", "When did {s} burn?", "{s} fire {year}"), ("year",)),
        ],
    },
    "river": {
        "once": [
            ("is {a_noun} in the {region} province",
             ("Where is {s}?", "{s} {noun} {region} province", "{s} {noun} location"),
             ("region",)),
            ("is {n_len} kilometres long",
             ("How long is {s}?", "{s} length kilometres", "{s} {n_len} km"), ("n_len",)),
            ("rises in the {proper} Hills",
             ("Where does {s} rise?", "{s} source {proper} Hills", "{s} source"), ("proper",)),
            ("flows into the {proper2} Sea",
             ("Where does {s} flow?", "{s} mouth {proper2} Sea", "{s} mouth"), ("proper2",)),
            ("has a drainage basin of about {n_area} square kilometres",
             ("{s} drainage basin", "How large is the basin of {s}?", "{s} basin area"),
             ("n_area",)),
            ("was first mapped in {year} by {person}",
             ("Who mapped {s}?", "{s} first mapped {year}", "{s} {person} survey"),
             ("year", "person")),
        ],
        "many": [
            ("passes through the town of {town}",
             ("Which towns does {s} pass through?", "{s} {town}", "{s} course {town}"),
             ("town",)),
            ("is crossed by the {proper} Bridge built in {year}",
             ("{s} {proper} Bridge", "When was the {proper} Bridge built?",
              "{s} bridge {year}"), ("year",)),
        ],
    },
    "company": {
        "once": [
            ("is a {industry} company based in {town}",
             ("What does {s} make?", "{s} {industry} company", "{s} headquarters {town}"),
             ("industry", "town")),
            ("was founded in {fyear} by {person}",
             ("Who founded {s}?", "{s} founder {person}", "{s} founded {fyear}"),
             ("fyear", "person")),
            ("employs about {n_staff} people",
             ("How many people work at {s}?", "{s} employees", "{s} staff {n_staff}"),
             ("n_staff",)),
            ("is led by {person}",
             ("Who leads {s}?", "{s} chief executive", "{s} director {person}"), ("person",)),
        ],
        "many": [
            ("opened a factory in {town} in {year}",
             ("{s} factory {town}", "Where are the factories of {s}?", "{s} factory {year}"),
             ("year", "town")),
            ("introduced the {proper} {product} in {year}",
             ("{s} {proper} {product}", "When did {s} launch the {proper} {product}?",
              "{s} products {year}"), ("year",)),
            ("acquired the {proper} {firm} in {year}",
             ("{s} acquisition {proper} {firm}", "What did {s} acquire?",
              "{s} acquired {year}"), ("year",)),
        ],
    },
    "mountain": {
        "once": [
            ("is {a_noun} in the {proper} Range",
             ("Where is {s}?", "{s} {proper} Range", "{s} mountain range"), ("proper",)),
            ("rises to {n_height} metres",
             ("How high is {s}?", "{s} height metres", "{s} summit {n_height}"),
             ("n_height",)),
            ("was first climbed in {year} by {person}",
             ("Who first climbed {s}?", "{s} first ascent {year}", "{s} {person} ascent"),
             ("year", "person")),
            ("lies in the {region} province",
             ("Which province is {s} in?", "{s} {region} province", "{s} province"),
             ("region",)),
        ],
        "many": [
            ("can be reached from the village of {town}",
             ("How to reach {s}?", "{s} {town} village", "{s} route from {town}"), ("town",)),
            ("has a hut named after {person} built in {year}",
             ("{s} mountain hut", "{s} hut {person}", "{s} hut built {year}"), ("year",)),
            ("was surveyed by {person} in {year}",
             ("Who surveyed {s}?", "{s} survey {year}", "{s} surveyed by {person}"),
             ("year", "person")),
        ],
    },
}



def _weighted(rng: random.Random, dist: dict[int, float]) -> int:
    return rng.choices(list(dist), weights=list(dist.values()))[0]


def _thousands(n: int) -> str:
    return f"{n:,}"


class _FactMaker:
    """Draws entities and their facts (true and false versions) from the relations."""

    def __init__(self, rng: random.Random, namer: _Namer) -> None:
        self.rng, self.namer = rng, namer

    def entity(self) -> _Entity:
        rng, nm = self.rng, self.namer
        kind = rng.choices(("person", "town", "river", "company", "mountain"),
                           weights=(40, 20, 13, 14, 13))[0]
        if kind == "person":
            y0 = rng.randint(1620, 1930)
            ent = _Entity(kind, nm.person(), rng.choice(list(_ROLES)), rng.choice(("He", "She")),
                          (y0 + 18, y0 + 50))
            ent.values.update(byear=str(y0), dyear=str(y0 + rng.randint(55, 92)))
        elif kind == "town":
            y0 = rng.randint(1100, 1850)
            ent = _Entity(kind, nm.place(), rng.choice(("town", "city", "village")), "It",
                          (y0 + 20, 1990))
            ent.values["fyear"] = str(y0)
        elif kind == "river":
            ent = _Entity(kind, "the " + nm.proper(), "river", "It", (1500, 1990))
        elif kind == "company":
            y0 = rng.randint(1790, 1990)
            ent = _Entity(kind, nm.proper() + rng.choice((" Works", " Industries", " and Sons")),
                          "company", "It", (y0 + 1, 2020))
            ent.values["fyear"] = str(y0)
        else:
            ent = _Entity(kind, "Mount " + nm.proper(), "mountain", "It", (1780, 1990))
        ent.values["noun"] = ent.noun
        ent.values["a_noun"] = ("an " if ent.noun[0] in "aeiou" else "a ") + ent.noun
        return ent

    def slot(self, ent: _Entity, name: str) -> str:
        rng, nm = self.rng, self.namer
        if name in ent.values:          # fixed per entity (noun, birth year, ...)
            return ent.values[name]
        gen: dict[str, Callable[[], str]] = {
            "year": lambda: str(rng.randint(*ent.era)),
            "town": nm.place, "region": nm.proper, "river": nm.proper, "person": nm.person,
            "proper": nm.proper, "proper2": nm.proper,
            "inst": lambda: f"{nm.place()} " + rng.choice(
                ("Conservatory", "Academy", "University", "Polytechnic", "Institute")),
            "org": lambda: f"{nm.proper()} " + rng.choice(("Society", "Guild", "Circle", "Union")),
            "award": lambda: f"{nm.proper()} " + rng.choice(("Prize", "Medal", "Award")),
            "field": lambda: rng.choice(_FIELDS),
            "industry": lambda: rng.choice(_INDUSTRY),
            "month": lambda: rng.choice(_MONTHS),
            "building": lambda: rng.choice(("Bridge", "Market Hall", "Library", "Theatre",
                                            "Cathedral", "Town Hall")),
            "product": lambda: rng.choice(("lamp", "engine", "loom", "camera", "bicycle",
                                           "stove")),
            "firm": lambda: rng.choice(("Mill", "Foundry", "Press", "Yard")),
            "n_small": lambda: str(rng.randint(3, 40)),
            "n_pop": lambda: _thousands(rng.randint(*_POPULATION[ent.noun]) * 10),
            "n_elev": lambda: str(rng.randint(5, 1900)),
            "n_len": lambda: str(rng.randint(40, 2900)),
            "n_area": lambda: _thousands(rng.randint(30, 90000) * 10),
            "n_staff": lambda: _thousands(rng.randint(4, 4000) * 10),
            "n_height": lambda: _thousands(rng.randint(900, 8400)),
            "work": lambda: rng.choice(_ROLES[ent.noun]).format(
                title=nm.title(), genus=nm.proper(), place=nm.place()),
        }
        return gen[name]()

    def fact(self, ent: _Entity, rel_index: int | None = None) -> _Fact:
        """A new fact about ``ent``: relation ``rel_index`` of its "once" list, or any."""
        rels = _RELATIONS[ent.kind]
        while True:
            if rel_index is not None:
                key = f"once{rel_index}"
                pred, queries, mutable = rels["once"][rel_index]
            else:
                free = [i for i in range(len(rels["once"])) if f"once{i}" not in ent.used_rels]
                if free and self.rng.random() < 0.6:
                    i = self.rng.choice(free)
                    key, (pred, queries, mutable) = f"once{i}", rels["once"][i]
                else:
                    i = self.rng.randrange(len(rels["many"]))
                    key, (pred, queries, mutable) = f"many{i}", rels["many"][i]
            true_values = {n: self.slot(ent, n) for n in _fields(pred)}
            true_pred = pred.format(**true_values)
            if true_pred in ent.preds:
                continue        # a repeat of an existing fact: draw again
            false_values = dict(true_values)
            changed = self.rng.choice(mutable)
            while false_values[changed] == true_values[changed]:
                false_values[changed] = self._wrong(ent, changed, true_values[changed])
            false_pred = pred.format(**false_values)
            if false_pred in ent.preds:
                continue
            ent.preds.update((true_pred, false_pred))
            if key.startswith("once"):
                ent.used_rels.add(key)
            return _Fact(key, true_pred, false_pred, true_values, false_values, queries)

    def _wrong(self, ent: _Entity, slot: str, value: str) -> str:
        rng = self.rng
        if slot.endswith("year"):
            return str(int(value) + rng.choice((-1, 1)) * rng.randint(2, 25))
        if slot.startswith("n_"):
            n = int(value.replace(",", ""))
            wrong = max(2, int(n * rng.choice((0.4, 0.6, 0.75, 1.3, 1.6, 2.2))))
            return _thousands(wrong) if "," in value or wrong >= 1000 else str(wrong)
        return self.slot(ent, slot)     # another name, field, industry or month


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f and f != "s"]



def generate(n_questions: int, seed: int, params: Params | None = None) -> Workload:
    """A workload of ``n_questions`` questions; the same ``seed`` gives the same workload."""
    if n_questions < 1:
        raise ValueError(f"n_questions must be at least 1, got {n_questions}")
    p = params or Params()
    rng = random.Random(seed)
    namer = _Namer(rng)
    maker = _FactMaker(rng, namer)
    script: dict[str, dict[str, str]] = {name: {} for name in PROMPT_NAMES}
    questions: list[dict[str, str]] = []
    labels: dict[str, dict[str, Any]] = {}
    # Passages before ids are assigned: (text, claims whose evidence it holds).
    passages: list[tuple[str, list[str]]] = []
    asked: list[_Entity] = []

    def add_key(prompt: str, key: str, output: str) -> None:
        if key in script[prompt]:
            raise AssertionError(f"duplicate {prompt} key {key!r}")  # a generator bug
        script[prompt][key] = output

    for qi in range(n_questions):
        ent = maker.entity()
        asked.append(ent)
        question = _cap(rng.choice(_QUESTIONS[ent.kind]).format(s=ent.name, noun=ent.noun))
        questions.append({"id": f"q{qi:04d}", "question": question})

        n_sent = _weighted(rng, p.sentences)
        claim_counts = [_weighted(rng, p.claims_per_sentence) for _ in range(n_sent)]
        remarks = list(_REMARKS)
        rng.shuffle(remarks)
        sentences: list[str] = []
        stated: list[tuple[_Fact, bool]] = []      # (fact, claim is true) in answer order
        for si, n_claims in enumerate(claim_counts):
            if n_claims == 0:
                pool = (_OPENERS if si == 0 else
                        _CLOSERS if si == n_sent - 1 and si > 0 else remarks)
                tmpl = rng.choice(pool) if pool is not remarks else remarks.pop()
                sentence = tmpl.format(s=ent.name, S=ent.subject)
                add_key("claims", sentence, "")
                sentences.append(sentence)
                continue
            facts = []
            for _ in range(n_claims):
                # The first fact of an answer says what the entity is, as answers do.
                first = not stated and not facts and "once0" not in ent.used_rels
                facts.append(maker.fact(ent, 0 if first else None))
            truth = [rng.random() >= p.p_false for _ in facts]
            preds = [f.true_pred if t else f.false_pred for f, t in zip(facts, truth)]
            # Name the entity in the opening sentence and where the answer says what it is.
            named = si == 0 or facts[0].rel == "once0"
            sentence = _sentence(rng, ent, preds, named=named, used=script["claims"])
            claims = [f"{ent.subject} {pr}." for pr in preds]
            add_key("claims", sentence, "\n".join(f"{i}. {c}" for i, c in enumerate(claims, 1)))
            sentences.append(sentence)
            for fact, ok, claim in zip(facts, truth, claims):
                values = fact.true_values if ok else fact.false_values
                n_q = _weighted(rng, p.queries_per_claim)
                queries = [_cap(q.format(s=ent.name, **{**ent.values, **values}))
                           for q in rng.sample(fact.queries, n_q)]
                add_key("queries", claim, "\n".join(f"- {q}" for q in queries))
                if ok:
                    reason = rng.choice(_SUPPORT).format(s=ent.name, pred=fact.true_pred)
                else:
                    reason = rng.choice(_REFUTE).format(s=ent.name, true=fact.true_pred,
                                                        false=fact.false_pred)
                add_key("verify", claim, json.dumps({"reasoning": _cap(reason), "factuality": ok}))
                labels[claim] = {"factual": ok}
                stated.append((fact, ok))
        add_key("answer", question, " ".join(sentences))

        # The entity's passages: the stated facts (true versions) and a few more.
        facts = [f for f, _ in stated]
        facts += [maker.fact(ent) for _ in range(rng.randint(*p.extra_facts))]
        for group in _chunks(rng, facts, p.facts_per_passage):
            claims_here = [f"{ent.subject} {pr}." for f in group
                           for pr in (f.true_pred, f.false_pred)]
            passages.append((_passage(rng, ent, [f.true_pred for f in group]),
                             [c for c in claims_here if c in labels]))

    # Distractors: unasked entities, some naming an asked one in passing.
    for _ in range(round(p.distractors_per_question * n_questions)):
        ent = maker.entity()
        facts = [maker.fact(ent, 0)]
        facts += [maker.fact(ent) for _ in range(rng.randint(*p.distractor_facts) - 1)]
        for group in _chunks(rng, facts, p.facts_per_passage):
            passages.append((_passage(rng, ent, [f.true_pred for f in group]), []))
    for ent in asked:
        if rng.random() < p.p_mention:
            other = maker.entity()
            text = _passage(rng, other, [maker.fact(other, 0).true_pred,
                                         maker.fact(other).true_pred])
            passages.append((f"{text} A later account mentions {other.name} together with "
                             f"{ent.name}.", []))

    rng.shuffle(passages)   # ids must not reveal which passages are relevant
    corpus = []
    for i, (text, claims) in enumerate(passages):
        pid = f"doc{i:05d}"
        corpus.append({"id": pid, "text": text})
        for c in claims:
            labels[c]["passage"] = pid
    meta = {"seed": seed, "n_questions": n_questions, "params": _jsonable(asdict(p))}
    return Workload(questions, script, corpus, labels, meta)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentence(rng: random.Random, ent: _Entity, preds: list[str], named: bool,
              used: dict[str, str]) -> str:
    """One answer sentence stating ``preds`` about ``ent``."""
    if len(preds) == 1:
        body = preds[0]
    else:
        body = ", ".join(preds[:-1]) + " and " + preds[-1]
    subjects = [ent.subject] if named else [ent.subject, ent.pronoun, f"The {ent.noun}"]
    subject = rng.choice(subjects)
    sentence = f"{subject} {body}."
    if sentence in used:        # a pronoun sentence seen elsewhere: name the entity instead
        sentence = f"{ent.subject} {body}."
    return sentence


def _passage(rng: random.Random, ent: _Entity, preds: list[str]) -> str:
    """An encyclopedic paragraph: the first sentence names the entity."""
    out = []
    for i, pred in enumerate(preds):
        subject = ent.subject if i == 0 else rng.choice(
            (ent.subject, ent.pronoun, f"The {ent.noun}"))
        out.append(f"{subject} {pred}.")
    if rng.random() < 0.35:
        out.insert(rng.randint(1, len(out)), rng.choice(_PASSAGE_REMARKS))
    return " ".join(out)


def _chunks(rng: random.Random, items: list, size: tuple[int, int]) -> list[list]:
    """Consecutive groups of ``size`` items; a short remainder joins the last group."""
    out, i = [], 0
    while i < len(items):
        n = rng.randint(*size)
        if len(items) - (i + n) < size[0]:
            n = len(items) - i
        out.append(items[i:i + n])
        i += n
    return out


def _jsonable(obj: Any) -> Any:
    # Params has int-keyed dicts and tuples; JSON wants string keys and lists.
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
