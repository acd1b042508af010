"""Hypothesis strategies for random valid graphs (DESIGN.md, "Graphs").

A graph is built as a chain of segments from the entry: plain stages, fan-outs, filters,
aggregates keyed at ``request`` or at an upstream stage, forks whose branches end in a
join or a merge, routes whose consumers end in one, and loops (a route stage with
``max_turns`` somewhere in the loop, one or two exits). Segments nest inside branches.
Every handler is a module function of tests/integration/graph_handlers.py; a route's
consumers have the fixed names its route function returns, so each route and loop
appears at most once per graph.

What the builder tracks to stay valid: each tail's shortest path length and whether it
varies (after a loop that fans out), the stages a key may name (upstream of everything
after them, not in a loop, of fixed length), and the shortest key allowed inside a fork
(its fork depth: a branch may not group above it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

G = "tests.integration.graph_handlers"
ONE_TO_ONE = ["g_inc", "g_triple", "g_drop", "g_boom"]
FANS = ["g_fan", "g_fan_pair"]


@dataclass(frozen=True)
class Tail:
    """The stage the next segment reads from, and what the builder knows of it."""

    name: str
    depth: int
    varies: bool = False
    ints: bool = True                              # its payloads are ints (sum, top_k apply)
    keys: tuple[tuple[str, int], ...] = ()          # stages a key may name, with their depth
    floor: int = 1                                  # no key shorter than this (inside a fork)


def function_stage(name: str, handler: str, input=None, module: str = G, **more) -> dict:
    """A ``function`` stage table whose handler is ``module:handler``."""
    stage = {"name": name, "kind": "function", "handler": f"{module}:{handler}", **more}
    if input is not None:
        stage["input"] = input
    return stage


class _Hypothesis:
    """The builder's choices drawn by hypothesis (shrinkable)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def pick(self, options: list):
        return self.draw(st.sampled_from(options))

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))


class _Seeded:
    """The builder's choices from a seeded generator (the same graphs on every run)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: list):
        return self.rng.choice(list(options))

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


@dataclass
class _Builder:
    choose: _Hypothesis | _Seeded
    max_stages: int
    stages: list[dict] = field(default_factory=list)
    used: set[str] = field(default_factory=set)     # route and loop prefixes taken

    def pick(self, options: list):
        return self.choose.pick(options)

    def int(self, lo: int, hi: int) -> int:
        return self.choose.int(lo, hi)

    def flip(self) -> bool:
        return self.choose.int(0, 1) == 1

    def room(self) -> int:
        return self.max_stages - len(self.stages)

    def name(self) -> str:
        return f"s{len(self.stages)}"

    def add(self, name: str, kind: str, input, **more) -> str:
        stage = {"name": name, "kind": kind, **more}
        if input is not None:
            stage["input"] = input
        self.stages.append(stage)
        return name

    def fn(self, name: str, handler: str, input, **more) -> str:
        self.stages.append(function_stage(name, handler, input, **more))
        return name

    # -- segments --

    def chain(self, tail: Tail, segments: int) -> Tail:
        for _ in range(segments):
            if self.room() < 1:
                break
            tail = self.segment(tail)
        return tail

    def segment(self, tail: Tail) -> Tail:
        options = ["one", "fan", "filter", "agg"]
        if self.room() >= 4:
            options += ["fork", "fork"]
            if {"ra", "rb", "rc"} - self.used:
                options.append("route")
            if {"l1", "l2"} - self.used:
                options += ["loop", "loop"]
        kind = self.pick(options)
        return getattr(self, f"_{kind}")(tail)

    def _one(self, tail: Tail) -> Tail:
        name = self.fn(self.name(), self.pick(ONE_TO_ONE), tail.name)
        return self._after(tail, name, tail.depth)

    def _fan(self, tail: Tail) -> Tail:
        name = self.fn(self.name(), self.pick(FANS), tail.name)
        return self._after(tail, name, tail.depth + 1)

    def _filter(self, tail: Tail) -> Tail:
        name = self.add(self.name(), "aggregate", tail.name, op="filter", options={"where": f"{G}:g_keep"})
        return replace(tail, name=name)

    def _after(self, tail: Tail, name: str, depth: int, ints: bool = True) -> Tail:
        keys = tail.keys if tail.varies else (*tail.keys, (name, depth))
        return replace(tail, name=name, depth=depth, ints=ints, keys=keys)

    def _key(self, tail: Tail, most: int) -> tuple[str, int] | None:
        """A key for a group of ``tail``'s items no longer than ``most``, or None."""
        keys = [("request", 1)] if tail.floor <= 1 else []
        keys += [k for k in tail.keys if tail.floor <= k[1] <= most]
        return self.pick(keys) if keys else None

    def _agg(self, tail: Tail) -> Tail:
        key = self._key(tail, tail.depth)
        if key is None:
            return self._one(tail)
        ops = ["collect", "count", "all", "any", "barrier", f"{G}:g_summary"]
        if tail.ints:
            ops += ["sum", "top_k"]
        op = self.pick(ops)
        more = {"options": {"k": self.int(1, 3)}} if op == "top_k" else {}
        name = self.add(self.name(), "aggregate", tail.name, key=key[0], op=op, **more)
        if op == "barrier":
            return replace(tail, name=name)
        return self._after(replace(tail, varies=False), name, key[1], ints=op in ("count", "sum", "all", "any"))

    def _join(self, fork: Tail, tails: list[Tail]) -> Tail:
        """A stage taking every branch: a join (an aggregate) or a plain merge."""
        inputs = [t.name for t in tails]
        key = self._key(fork, fork.depth)
        if key is not None and self.flip():
            ops = ["collect", "count", f"{G}:g_summary"] + (["sum"] if all(t.ints for t in tails) else [])
            op = self.pick(ops)
            name = self.add(self.name(), "aggregate", inputs, key=key[0], op=op)
            return self._after(replace(fork, varies=False), name, key[1], ints=op not in ("collect", f"{G}:g_summary"))
        name = self.fn(self.name(), self.pick(ONE_TO_ONE), inputs)
        varies = fork.varies or len({t.depth for t in tails}) > 1 or any(t.varies for t in tails)
        return self._after(replace(fork, varies=varies), name, min(t.depth for t in tails) + 1)

    def _branch(self, fork: Tail, handler: str, name: str | None = None) -> Tail:
        """A branch from ``fork``: its first stage, then maybe more (no key above the fork)."""
        inner = replace(fork, floor=max(fork.floor, fork.depth))
        head = self.fn(name or self.name(), handler, fork.name)
        t = self._after(inner, head, fork.depth + (1 if handler in FANS else 0))
        return self.chain(t, self.int(0, 1))

    def _fork(self, tail: Tail) -> Tail:
        k = self.int(2, 3)
        tails = [tail] if self.flip() else []  # one branch may be the fork itself
        while len(tails) < k:
            tails.append(self._branch(tail, self.pick(ONE_TO_ONE + FANS)))
        return self._join(tail, tails)

    def _route(self, tail: Tail) -> Tail:
        prefix = self.pick(sorted({"ra", "rb", "rc"} - self.used))
        self.used.add(prefix)
        spec = {"ra": "route_ra", "rb": "route_rb", "rc": "route_bad"}[prefix]
        n = 3 if prefix == "rb" else 2
        router = self.fn(prefix, self.pick(["g_inc", "g_triple"]), tail.name,
                         route=f"{G}:{spec}")
        fork = self._after(tail, router, tail.depth)
        tails = [self._branch(fork, self.pick(ONE_TO_ONE), f"{prefix}{i}") for i in range(n)]
        return self._join(fork, tails)

    def _loop(self, tail: Tail) -> Tail:
        prefix = self.pick(sorted({"l1", "l2"} - self.used))
        self.used.add(prefix)
        exits = self.int(1, 2)
        at_router = self.flip()          # entered at the route stage, or at the body
        router_fans = self.int(0, 4) == 0
        body = [self.pick(["g_inc", "g_inc", "g_fan_pair"])]
        if self.flip():
            body.append(self.pick(["g_inc", "filter"]))
        names = [prefix] + [f"{prefix}_body"] + [f"{prefix}_b{i}" for i in range(1, len(body))]
        turns_at = self.pick(names)
        max_turns = self.int(1, 3)
        route = f"{G}:loop_{prefix}_{exits}"

        def extra(name: str) -> dict:
            return {"max_turns": max_turns} if name == turns_at else {}

        last = names[-1]
        router_in = [tail.name, last] if at_router else [last]
        self.fn(prefix, "g_fan_pair" if router_fans else "g_triple", router_in, route=route, **extra(prefix))
        for i, (name, handler) in enumerate(zip(names[1:], body, strict=True)):
            src = prefix if i == 0 else names[i]
            inp = [tail.name, src] if (i == 0 and not at_router) else src
            if handler == "filter":
                self.add(name, "aggregate", inp, op="filter", options={"where": f"{G}:g_keep"}, **extra(name))
            else:
                self.fn(name, handler, inp, **extra(name))
        varies = tail.varies or router_fans or "g_fan_pair" in body
        # The route stage's shortest paths: those from outside (entered there), or those
        # after the body's fan-outs (entered at the body); its own fan-out adds one.
        depth = tail.depth + (0 if at_router else body.count("g_fan_pair")) + (1 if router_fans else 0)
        loop = replace(tail, name=prefix, depth=depth, varies=varies)
        # The loop's stages are no keys (their paths may come round again).
        if exits == 1:
            return replace(loop, name=self.fn(f"{prefix}_x0", self.pick(ONE_TO_ONE), prefix))
        inner = replace(loop, floor=max(loop.floor, depth))
        heads = [self.fn(f"{prefix}_x{i}", self.pick(ONE_TO_ONE), prefix) for i in range(exits)]
        return self._join(loop, [replace(inner, name=h) for h in heads])


def _graph(b: _Builder, max_replicas: int, max_instances: int) -> dict:
    entry = b.fn("s0", b.pick(["g_inc", "g_fan", "g_fan_pair"]), None)
    depth = 2 if b.stages[0]["handler"].endswith(("g_fan", "g_fan_pair")) else 1
    tail = Tail(entry, depth, keys=(("s0", depth),))
    b.chain(tail, b.int(1, 4))
    total = 0
    for n, s in enumerate(b.stages):
        left = len(b.stages) - n - 1  # one instance each at least
        r = b.int(1, max(1, min(max_replicas, max_instances - total - left)))
        if r > 1:
            s["replicas"] = r
        total += r
    return {"stage": b.stages}


@st.composite
def graphs(draw: st.DrawFn, max_stages: int = 12, max_replicas: int = 3, max_instances: int = 40) -> dict:
    """A topology dict (what a TOML file decodes to) of a random valid graph."""
    return _graph(_Builder(_Hypothesis(draw), max_stages), max_replicas, max_instances)


def seeded_graph(seed: int, max_stages: int = 12, max_replicas: int = 3, max_instances: int = 40) -> dict:
    """The same random valid graph for the same seed, without hypothesis (for tests that
    launch processes: a few fixed, varied graphs rather than hypothesis's mutations of one)."""
    return _graph(_Builder(_Seeded(seed), max_stages), max_replicas, max_instances)


def seeded_payloads(seed: int, n: int) -> list:
    rng = random.Random(seed)
    kinds = [lambda: rng.randint(0, 60), lambda: [rng.randint(0, 9) for _ in range(rng.randint(0, 3))],
             lambda: "".join(rng.choice("abc") for _ in range(rng.randint(0, 3)))]
    return [rng.choice(kinds)() for _ in range(n)]


payloads = st.one_of(st.integers(0, 60), st.lists(st.integers(0, 9), max_size=3), st.text("abc", max_size=3))
