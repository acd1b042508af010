"""Seeded agent workload: tasks, the town table, and the scripted model that solves them.

The model (the ``think`` LM's script) sees the question and the scratchpad of the steps so
far and writes a thought and one action: ``CALL calc: <expression>``, ``CALL lookup: <town>
population`` or ``ANSWER: <text>``. Its next call is computed from the observations in the
scratchpad, so a wrong tool result changes what it does next and what it answers.

Task kinds and their weights (defaults), with the tool calls each needs:

======== ====== ===== ==========================================================
kind     weight calls question
======== ====== ===== ==========================================================
greet    10%    0     "Say hello to Anna Borvik." (answers at once)
calc     20%    1     "What is 37 * 52?"
chain2   10%    2     "What is (37 + 52) * 6?"
chain3   15%    3     "What is (37 + 52) * 6 - 14?"
sum2     20%    3     "How many people live in A and B together?" (2 lookups, 1 calc)
sum3     15%    4     the same with three towns (3 lookups, 1 calc)
missing  10%    8     a town not in the table: the model retries the lookup, gives up
                      after 8 attempts
======== ====== ===== ==========================================================

Operands: 2-99 for ``+`` and the first ``*``, 2-9 for the chain's multiplier, 1-50 for the
subtraction. Kinds are drawn by weight, then a question drawn twice is drawn again (the
script looks tasks up by question). Town table: 40 made-up towns, populations 1,200-98,000 in hundreds. With the
topology's ``max_turns = 4`` every ``missing`` task ends in the loop's error (its 5th call
would go round a 5th time) and ``sum3`` goes round exactly 4 times, the limit.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_SEED = 1
DEFAULT_TASKS = 200
N_TOWNS = 40
MISSING_ATTEMPTS = 8
KIND_WEIGHTS = {"greet": 10, "calc": 20, "chain2": 10, "chain3": 15, "sum2": 20, "sum3": 15, "missing": 10}
_NAMES = ("Anna", "Boris", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas")
_SYLLABLES = ("bor", "vik", "tam", "lun", "dra", "sel", "mor", "kin", "fal", "ost", "ren", "ula")
OBSERVATION = "Observation: "


@dataclass(frozen=True)
class Task:
    id: str
    question: str
    kind: str
    args: tuple            # numbers, or town names, or the name to greet


@dataclass(frozen=True)
class Workload:
    towns: dict[str, int]
    tasks: list[Task]

    def by_question(self) -> dict[str, Task]:
        return {t.question: t for t in self.tasks}


def _question(kind: str, args: tuple) -> str:
    if kind == "greet":
        return f"Say hello to {args[0]}."
    if kind == "calc":
        return f"What is {args[0]} * {args[1]}?"
    if kind == "chain2":
        return f"What is ({args[0]} + {args[1]}) * {args[2]}?"
    if kind == "chain3":
        return f"What is ({args[0]} + {args[1]}) * {args[2]} - {args[3]}?"
    if kind == "missing":
        return f"How many people live in {args[0]}?"
    return f"How many people live in {' and '.join(args)} together?"


@functools.lru_cache(maxsize=8)
def generate(seed: int = DEFAULT_SEED, n_tasks: int = DEFAULT_TASKS) -> Workload:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < N_TOWNS + 200:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
        if name not in names:
            names.append(name)
    towns = {name: rng.randint(12, 980) * 100 for name in names[:N_TOWNS]}
    unknown = names[N_TOWNS:]
    kinds, weights = zip(*KIND_WEIGHTS.items())
    tasks: list[Task] = []
    seen: set[str] = set()
    while len(tasks) < n_tasks:
        kind = rng.choices(kinds, weights)[0]
        n = lambda lo, hi: rng.randint(lo, hi)  # noqa: E731
        args: tuple = {
            "greet": lambda: (f"{rng.choice(_NAMES)} {rng.choice(unknown)}",),
            "calc": lambda: (n(2, 99), n(2, 99)),
            "chain2": lambda: (n(2, 99), n(2, 99), n(2, 9)),
            "chain3": lambda: (n(2, 99), n(2, 99), n(2, 9), n(1, 50)),
            "sum2": lambda: tuple(rng.sample(sorted(towns), 2)),
            "sum3": lambda: tuple(rng.sample(sorted(towns), 3)),
            "missing": lambda: (rng.choice(unknown),),
        }[kind]()
        q = _question(kind, args)
        if q not in seen:          # one task per question: the script looks tasks up by it
            seen.add(q)
            tasks.append(Task(f"t{len(tasks):03d}", q, kind, args))
    return Workload(towns, tasks)


def observations(scratchpad: str) -> list[str]:
    return [line[len(OBSERVATION):] for line in scratchpad.splitlines() if line.startswith(OBSERVATION)]


def next_action(task: Task, seen: list[str]) -> str:
    """The model's output for ``task`` after the observations ``seen``."""
    k, a = len(seen), task.args
    if any(o.startswith("error") for o in seen):
        return f"Thought: the tool failed.\nANSWER: I could not work it out ({seen[-1]})."
    if task.kind == "greet":
        return f"Thought: no tool is needed.\nANSWER: Hello, {a[0]}!"
    if task.kind.startswith(("calc", "chain")):
        steps = [f"{a[0]} * {a[1]}"] if task.kind == "calc" else [f"{a[0]} + {a[1]}", "{} * " + str(a[2])]
        if task.kind == "chain3":
            steps.append("{} - " + str(a[3]))
        if k < len(steps):
            return f"Thought: step {k + 1} of {len(steps)}.\nCALL calc: {steps[k].format(*seen[-1:])}"
        return f"Thought: done.\nANSWER: {seen[-1]}"
    if task.kind == "missing":
        if k < MISSING_ATTEMPTS:
            return f"Thought: attempt {k + 1}, the table may have it now.\nCALL lookup: {a[0]} population"
        return f"Thought: it is not in the table.\nANSWER: I could not find {a[0]}."
    if k < len(a):
        return f"Thought: I need the population of {a[k]}.\nCALL lookup: {a[k]} population"
    if k == len(a):
        return f"Thought: add them up.\nCALL calc: {' + '.join(seen)}"
    return f"Thought: done.\nANSWER: {' and '.join(a)} have {seen[-1]} people together."


def script(seed: int = DEFAULT_SEED, n_tasks: int = DEFAULT_TASKS) -> Callable[[str, str | None], str | None]:
    """The sim engine's script for the ``think`` prompt: its input item (JSON) -> the action."""
    tasks = generate(seed, n_tasks).by_question()

    def lookup(prompt_name: str, key: str | None) -> str | None:
        if prompt_name != "think" or key is None:
            return None
        item = json.loads(key)
        task = tasks.get(item.get("question"))
        if task is None:
            return "Thought: this is not a task I know.\nANSWER: I cannot help with that."
        return next_action(task, observations(item.get("scratchpad", "")))

    return lookup
