"""A single-process reference interpreter of a topology's graph: the oracle of the runtime.

It evaluates one request through a parsed :class:`~alto_bus.deploy.topology.Topology` of
``function`` and ``aggregate`` stages by the rules of DESIGN.md ("Nested ancestry",
"Graphs"), on whole trees and without sockets, messages or arrival orders:

* A stage's output for a request is a tree: a leaf (an item), DROPPED (a DROP marker), a
  fanned node (an END with its children, in index order), or MISSING (an error stopped
  it: the runtime would never complete it).
* A fork gives every consumer the whole tree; a ``route`` gives a consumer the items it
  names and DROPPED for the others.
* A stage with several inputs re-roots input ``i``'s node at each path of length ``f``
  (the fork depth) as child ``i`` of that node; above ``f`` every input carries the same
  nodes (checked here: a difference is a bug of validation, :class:`ReferenceBug`).
* A loop is followed item by item from the stage it is entered at: an item keeps its
  path, a route back into the loop adds one turn, the ``max_turns`` stage fails an item
  that arrives with more turns than it allows, and the route stage's exits receive
  each item's continuation once it leaves.
* The result is the request's own item when it reached the end whole, else the list of
  its leaves in path order (a dropped leaf leaves no entry), as the gateway gives it.

Every error a request would meet is collected (the runtime reports the first to reach
the gateway, which depends on timing): :class:`GraphRunError` names the first and lists
them all, each with the parts of the message the runtime's must contain.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alto_bus.deploy.topology import StageConfig, Topology, import_object
from alto_bus.graph.reference_ops import GroupOp, OpFailure, describe, positional_arity

# The most handler calls one request may make before the reference gives up (a fan-out
# loop grows geometrically; the runtime would run it, the oracle refuses to).
MAX_CALLS = 200_000


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DROPPED: Any = _Marker("DROPPED")
MISSING: Any = _Marker("MISSING")


@dataclass(frozen=True)
class Leaf:
    value: Any


@dataclass(frozen=True)
class Fanned:
    children: tuple


Node = Any  # Leaf | Fanned | DROPPED | MISSING


@dataclass(frozen=True)
class Failure:
    """One error of a request: where, the reference's text, and what the runtime's says too."""

    stage: str
    message: str
    must_contain: tuple[str, ...] = ()

    def matches(self, stage: str, message: str) -> bool:
        return stage == self.stage and all(part in message for part in self.must_contain)


class GraphRunError(RuntimeError):
    """The request fails; ``stage`` and ``message`` are its first error, ``errors`` all."""

    def __init__(self, errors: Sequence[Failure]) -> None:
        self.errors = tuple(errors)
        self.stage = self.errors[0].stage
        self.message = self.errors[0].message
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"stage {self.stage!r}: {self.message}{more}")


class ReferenceBug(AssertionError):
    """The graph does what DESIGN.md says cannot happen (e.g. merge inputs that disagree
    above the fork depth): validation let through a graph the semantics do not cover."""


class Reference:
    """A topology's stages ready to evaluate requests (handlers imported once)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.stages = {s.name: s for s in topology.stages}
        self.calls: dict[str, Callable[[Any], Any]] = {}
        self.ops: dict[str, GroupOp] = {}
        self.routes: dict[str, Callable[..., Any]] = {}
        for s in topology.stages:
            if s.kind == "function":
                fn = import_object(s.fields["handler"])
                options = s.fields.get("options")
                self.calls[s.name] = fn(**options) if options is not None else fn
            elif s.kind == "aggregate":
                join = (s.merge_depth, _outside(s)) if s.merge_depth is not None else None
                self.ops[s.name] = GroupOp(s.fields["op"], s.fields.get("options"), join)
            else:
                raise ValueError(f"stage {s.name!r}: the reference interpreter runs function and "
                                 f"aggregate stages, not {s.kind!r}")
            if s.route:
                self.routes[s.name] = import_object(s.route)

    def run(self, payload: Any, rid: int = 0) -> Any:
        """The result of one request (its path is ``[rid]``); raises GraphRunError."""
        return _Request(self, rid).result(payload)


def run_reference(topology: Topology, payload: Any, rid: int = 0) -> Any:
    """The result the runtime must give for ``payload``, or GraphRunError with its error."""
    return Reference(topology).run(payload, rid)


def _outside(s: StageConfig) -> tuple[str, ...]:
    return tuple(i for i in s.inputs if i not in s.loop_inputs)


class _Request:
    def __init__(self, ref: Reference, rid: int) -> None:
        self.ref = ref
        self.rid = rid
        self.errors: list[Failure] = []
        self.views: dict[tuple[str, str], Node] = {}  # (producer, consumer) -> what it gets
        self.n_calls = 0

    def fail(self, stage: str, message: str, *must_contain: str) -> Node:
        self.errors.append(Failure(stage, message, must_contain))
        return MISSING

    # -- the graph --

    def result(self, payload: Any) -> Any:
        stages = self.ref.topology.stages
        root, done, sink = [self.rid], set(), MISSING
        for s in stages:
            if s.name in done:
                continue
            if s.in_loop:
                done.update(self._loop(s, root))
                continue
            if not s.inputs:
                tree = Leaf(payload)
            elif s.merge_depth is not None:
                tree = self._merge(s, [self.views[(i, s.name)] for i in _outside(s)], root)
            else:
                tree = self.views[(s.inputs[0], s.name)]
            out = self._apply(s, tree, root)
            if s.route:
                per = self._routed(s, out, root)
                self.views.update(((s.name, c), per[c]) for c in s.consumers)
            else:
                self.views.update(((s.name, c), out) for c in s.consumers)
            if not s.consumers:
                sink = out
        if self.errors:
            raise GraphRunError(self.errors)
        if _leaves_missing(sink):
            raise ReferenceBug(f"the sink's tree is incomplete with no error: {sink!r:.200}")
        return sink.value if isinstance(sink, Leaf) else _leaf_values(sink)

    # -- one stage on a whole tree --

    def _apply(self, s: StageConfig, tree: Node, path: list) -> Node:
        op = self.ref.ops.get(s.name)
        if op is None or op.per_item:
            return self._each_item(s, tree, path)
        return self._groups(s, op, tree, path)

    def _each_item(self, s: StageConfig, node: Node, path: list) -> Node:
        if isinstance(node, Leaf):
            return self._item(s, node.value, path)
        if isinstance(node, Fanned):
            return Fanned(tuple(self._each_item(s, c, [*path, i]) for i, c in enumerate(node.children)))
        return node

    def _item(self, s: StageConfig, value: Any, path: list) -> Node:
        """A function stage's (or a filter's) answer to one item."""
        self.n_calls += 1
        if self.n_calls > MAX_CALLS:
            raise ReferenceBug(f"more than {MAX_CALLS} handler calls for one request")
        op = self.ref.ops.get(s.name)
        if op is not None:  # filter
            try:
                return Leaf(value) if op.keep(value, path) else DROPPED
            except OpFailure as exc:
                return self.fail(s.name, str(exc), "failed on")
        fn = self.ref.calls[s.name]
        try:
            result = fn(value)
            if inspect.isawaitable(result):
                result = _run_async(result)
            if isinstance(result, types.AsyncGeneratorType):
                return Fanned(tuple(Leaf(x) for x in _run_async(_drain(result))))
            if isinstance(result, types.GeneratorType):
                return Fanned(tuple(Leaf(x) for x in result))
        except Exception as exc:
            return self.fail(s.name, f"handler raised {describe(exc)}", type(exc).__name__, str(exc))
        return DROPPED if result is None else Leaf(result)

    def _groups(self, s: StageConfig, op: GroupOp, node: Node, path: list) -> Node:
        depth = s.key_depth or 1
        if len(path) < depth:
            if isinstance(node, Fanned):
                return Fanned(tuple(self._groups(s, op, c, [*path, i]) for i, c in enumerate(node.children)))
            if isinstance(node, Leaf):
                return self.fail(s.name, f"item {path} is shallower than the key depth {depth}", "shallower")
            return node
        if node is DROPPED or node is MISSING:
            return node  # a group dropped upstream is dropped; one with a lost item never completes
        items = _leaves(node, path)
        if any(v is MISSING for _, v in items):
            return MISSING
        if op.barrier:
            return node
        kept = [(p, v) for p, v in items if v is not DROPPED]
        try:
            return Leaf(op.reduce(kept, tuple(path)))
        except OpFailure as exc:
            return self.fail(s.name, str(exc), "failed on group")

    # -- forks, routes, merges --

    def _routed(self, s: StageConfig, node: Node, path: list) -> dict[str, Node]:
        """What each consumer of a route stage outside a loop gets."""
        if isinstance(node, Fanned):
            kids = [self._routed(s, c, [*path, i]) for i, c in enumerate(node.children)]
            return {c: Fanned(tuple(k[c] for k in kids)) for c in s.consumers}
        if not isinstance(node, Leaf):
            return {c: node for c in s.consumers}
        chosen = self._choose(s, node.value, path)
        if chosen is None:
            return {c: MISSING for c in s.consumers}
        return {c: (node if c in chosen else DROPPED) for c in s.consumers}

    def _choose(self, s: StageConfig, value: Any, path: list) -> set[str] | None:
        """The consumers ``s``'s route names for one item (None: the request fails)."""
        fn, consumers = self.ref.routes[s.name], list(s.consumers)
        try:
            names = fn(value, list(path)) if positional_arity(fn) >= 2 else fn(value)
        except Exception as exc:
            self.fail(s.name, f"route raised {describe(exc)}", "route", type(exc).__name__)
            return None
        if names is None:
            return set()
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple, set, frozenset)):
            self.fail(s.name, f"route returned {names!r:.60}, not a name or a list of names",
                      "route", "returned")
            return None
        for name in names:
            if name not in consumers:
                self.fail(s.name, f"route named {name!r:.60}, which is not one of the consumers {consumers}",
                          "route", repr(name)[:60])
                return None
        return set(names)

    def _merge(self, s: StageConfig, nodes: list[Node], path: list) -> Node:
        f = s.merge_depth
        if len(path) == f:
            return Fanned(tuple(nodes))
        short = [i for i, n in enumerate(nodes) if isinstance(n, Leaf)]
        for i in short:
            self.fail(s.name, f"merge input {i} sent item {path} shorter than the fork depth {f}",
                      "shorter than the fork depth")
        if short or any(n is MISSING for n in nodes):
            return MISSING
        first = nodes[0]
        if first is DROPPED and all(n is DROPPED for n in nodes):
            return DROPPED
        if isinstance(first, Fanned) and all(isinstance(n, Fanned) and len(n.children) == len(first.children)
                                             for n in nodes):
            return Fanned(tuple(self._merge(s, [n.children[j] for n in nodes], [*path, j])
                                for j in range(len(first.children))))
        raise ReferenceBug(f"stage {s.name!r}: its inputs {list(_outside(s))} disagree at {path}, above "
                           f"the fork depth {f}: {nodes!r:.200}")

    # -- loops --

    def _loop(self, entry: StageConfig, path: list) -> list[str]:
        """Run the loop entered at ``entry``; its route stage's exits get their trees.
        Returns the loop's stages."""
        stages = self.ref.stages
        cycle = [entry]
        while True:
            s = cycle[-1]
            nxt = s.loop_consumer if s.route else s.consumers[0]
            if nxt == entry.name:
                break
            cycle.append(stages[nxt])
        (router,) = [s for s in cycle if s.route]
        exits = [c for c in router.consumers if c != router.loop_consumer]
        (source,) = _outside(entry)
        walk = _LoopWalk(self, cycle, router, exits)
        out = walk.at(0, self.views[(source, entry.name)], path, 0)
        self.views.update(((router.name, e), out[e]) for e in exits)
        return [s.name for s in cycle]


class _LoopWalk:
    """Items going round one loop: ``at(j, node, path, turns)`` is what the exits get of
    ``node`` arriving at the loop's ``j``-th stage, all its items with ``turns`` turns."""

    def __init__(self, req: _Request, cycle: list[StageConfig], router: StageConfig, exits: list[str]) -> None:
        self.req = req
        self.cycle = cycle
        self.router = router
        self.exits = exits

    def _same(self, node: Node) -> dict[str, Node]:
        return {e: node for e in self.exits}

    def at(self, j: int, node: Node, path: list, turns: int) -> dict[str, Node]:
        if isinstance(node, Fanned):
            # The END passes round to the exits; each child continues from this stage.
            kids = [self.at(j, c, [*path, i], turns) for i, c in enumerate(node.children)]
            return {e: Fanned(tuple(k[e] for k in kids)) for e in self.exits}
        if not isinstance(node, Leaf):
            return self._same(node)
        s = self.cycle[j]
        if s.max_turns is not None and turns > s.max_turns:
            return self._same(self.req.fail(s.name, f"item {path} went round the loop more than "
                                                    f"max_turns {s.max_turns} times", f"max_turns {s.max_turns}"))
        out = self.req._item(s, node.value, path)
        if s is self.router:
            return self._route(j, out, path, turns)
        return self.at((j + 1) % len(self.cycle), out, path, turns)

    def _route(self, j: int, node: Node, path: list, turns: int) -> dict[str, Node]:
        if isinstance(node, Fanned):
            kids = [self._route(j, c, [*path, i], turns) for i, c in enumerate(node.children)]
            return {e: Fanned(tuple(k[e] for k in kids)) for e in self.exits}
        if not isinstance(node, Leaf):
            return self._same(node)
        chosen = self.req._choose(self.router, node.value, path)
        if chosen is None:
            return self._same(MISSING)
        if self.router.loop_consumer in chosen:
            if len(chosen) > 1:
                return self._same(self.req.fail(
                    self.router.name, f"route sent item {path} both round the loop and out of it "
                                      f"({sorted(chosen)})", "both round the loop and out of it"))
            return self.at((j + 1) % len(self.cycle), node, path, turns + 1)
        return {e: (node if e in chosen else DROPPED) for e in self.exits}


# -- trees --

def _leaves(node: Node, path: list) -> list[tuple[tuple, Any]]:
    """``(path, value)`` of every leaf, dropped and lost ones as DROPPED and MISSING, in path order."""
    if isinstance(node, Fanned):
        out = []
        for i, c in enumerate(node.children):
            out += _leaves(c, [*path, i])
        return out
    return [(tuple(path), node.value if isinstance(node, Leaf) else node)]


def _leaves_missing(node: Node) -> bool:
    return any(v is MISSING for _, v in _leaves(node, []))


def _leaf_values(node: Node) -> list:
    return [v for _, v in _leaves(node, []) if v is not DROPPED]


async def _drain(agen: Any) -> list:
    return [x async for x in agen]


def _run_async(awaitable: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(awaitable)
    finally:
        loop.close()
