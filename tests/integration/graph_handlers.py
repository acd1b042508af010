"""Handlers of the graph tests (branches, joins, routes, loops)."""

from __future__ import annotations

from collections.abc import Iterator


def words(text: str) -> Iterator[str]:
    yield from text.split()


def upper(word: str) -> str:
    return word.upper()


def length(word: str) -> int:
    return len(word)


def by_length(word: str) -> str:
    """Route (of the upper-cased words): short ones to 'short', long ones to 'long', X nowhere."""
    if word == "X":
        return []
    return "short" if len(word) <= 3 else "long"


def short(word: str) -> str:
    return f"s:{word}"


def long(word: str) -> str:
    return f"l:{word}"


def start(question: str) -> dict:
    return {"question": question, "steps": []}


def think(state: dict) -> dict:
    """The 'LM' of the agent: asks the tool until it has 3 steps, unless told to loop forever."""
    return {**state, "done": len(state["steps"]) >= 3 and state["question"] != "forever"}


def decide(state: dict) -> str:
    return "answer" if state["done"] else "tool"


def tool(state: dict) -> dict:
    return {**state, "steps": [*state["steps"], f"step{len(state['steps'])}"]}


def answer(state: dict) -> str:
    return f"{state['question']}: {' '.join(state['steps'])}"


def bad_route(word: str) -> str:
    return "nowhere"


def fan(request: dict) -> Iterator[dict]:
    """{"sleep": s, "n": k} -> k items {"sleep": s, "i": j}."""
    for j in range(request["n"]):
        yield {"sleep": request["sleep"], "i": j}


def index(item: dict) -> int:
    return item["i"]
