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


# -- random graphs (tests/graph_strategies.py) --------------------------------------------
# Any payload (ints, lists, maps of a join) is digested to a small int, the same in every
# process, so that any handler can follow any stage and every choice is deterministic.


def digest(x) -> int:
    if isinstance(x, bool) or isinstance(x, int):
        return int(x) % 997
    if isinstance(x, float):
        return int(x) % 997
    if isinstance(x, str):
        return sum(ord(c) for c in x) % 997
    if isinstance(x, (list, tuple)):
        return sum((i + 1) * digest(e) for i, e in enumerate(x)) % 997
    if isinstance(x, dict):
        return sum(digest(k) * 7 + digest(v) for k, v in sorted(x.items())) % 997
    return 0


def g_inc(x) -> int:
    return digest(x) + 1


def g_triple(x) -> int:
    return digest(x) * 3 % 101


def g_drop(x) -> int | None:
    """A filter as a function: drops one item in four."""
    v = digest(x)
    return None if v % 4 == 0 else v


def g_boom(x) -> int:
    v = digest(x)
    if v % 13 == 5:
        raise ValueError(f"boom on {v}")
    return v + 2


def g_fan(x) -> Iterator[int]:
    """0, 1 or 2 children."""
    v = digest(x)
    for i in range(v % 3):
        yield v + i


def g_fan_pair(x) -> Iterator[int]:
    """1 or 2 children."""
    v = digest(x)
    for i in range(1 + v % 2):
        yield v * 2 + i


def g_keep(x) -> bool:
    """The predicate of a filter stage."""
    return digest(x) % 3 != 0


def g_summary(items, group) -> list:
    """An aggregate callable: what it got, digested (a join gives a map by input)."""
    return [len(items), digest(items), len(group)]


def route_ra(x):
    return {0: "ra0", 1: "ra1", 2: ["ra0", "ra1"], 3: None, 4: "ra1"}[digest(x) % 5]


def route_rb(x, path):
    """Three consumers; depends on the item's place too (never on the request id)."""
    k = (digest(x) + sum(path[1:])) % 5
    return {0: "rb0", 1: "rb1", 2: "rb2", 3: ["rb0", "rb2"], 4: []}[k]


def route_bad(x):
    """Names a stage that does not take its items, now and then."""
    v = digest(x)
    return "nowhere" if v % 11 == 7 else ["rc0", "rc1"][v % 2]


def _loop_route(prefix: str, exits: int):
    # Round the loop until the digest is a multiple of 3 (the loop's body adds to it);
    # with two exits, multiples of 6 leave by the first, others by the second, 4 mod 6 nowhere.
    def route(x):
        v = digest(x)
        if exits == 2 and v % 6 == 4:
            return None
        if v % 3:
            return f"{prefix}_body"
        return f"{prefix}_x0" if exits == 1 or v % 6 == 0 else f"{prefix}_x1"

    route.__name__ = f"loop_{prefix}_{exits}"
    return route


loop_l1_1 = _loop_route("l1", 1)
loop_l1_2 = _loop_route("l1", 2)
loop_l2_1 = _loop_route("l2", 1)
loop_l2_2 = _loop_route("l2", 2)
