"""Handlers of the example graphs: topology/examples/join.toml and agent.toml."""

from __future__ import annotations

from collections.abc import Iterator


def words(text: str) -> Iterator[str]:
    """Fan out: one item per word."""
    yield from text.split()


def upper(word: str) -> str:
    return word.upper()


def length(word: str) -> int:
    return len(word)


def start(question: str) -> dict:
    return {"question": question, "steps": []}


def think(state: dict) -> dict:
    """Stands in for an LM: it has its answer once the tool has run three times."""
    return {**state, "done": len(state["steps"]) >= 3 or state["question"].endswith("?")}


def decide(state: dict) -> str:
    """The route of `think`: round the loop to the tool, or out to the answer."""
    return "answer" if state["done"] else "tool"


def tool(state: dict) -> dict:
    return {**state, "steps": [*state["steps"], f"looked up {state['question']} #{len(state['steps'])}"]}


def answer(state: dict) -> str:
    return f"{state['question']}: {len(state['steps'])} steps"
