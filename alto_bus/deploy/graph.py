"""A topology's stages as a graph: inputs, consumers, loops, path lengths. Pure.

Takes the stages as parsed (each with its raw ``input``: None, a name or a list of names)
and returns them in order (entry first, the sink last) with what the runtime needs
derived and checked (DESIGN.md, "Graphs"): each stage's consumers, the in-loop consumer
of a loop's route stage, the fork depth of a stage with several inputs, the length of
the paths each stage emits, the key depth of a keyed stage. Every refusal names the
file, the stage and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alto_bus.runtime.kinds import stage_kind


class GraphError(ValueError):
    """A graph the runtime cannot run exactly (topology.py turns it into a TopologyError)."""


def build(stages: list, source: str, replace: Callable[..., Any]) -> list:
    """The stages of a valid graph, ordered and with their derived fields (``replace``
    makes a changed StageConfig)."""
    g = _Graph(stages, source)
    return [replace(s, **g.derived[s.name]) for s in g.order]


class _Graph:
    def __init__(self, stages: list, source: str) -> None:
        self.source = source
        self.by_name: dict[str, Any] = {}
        for s in stages:
            if s.name in self.by_name:
                self._fail(s.name, "name", f"two stages are named {s.name!r}")
            self.by_name[s.name] = s
        self.inputs = {s.name: self._inputs(s) for s in stages}
        self.consumers = {s.name: [c.name for c in stages if s.name in self.inputs[c.name]] for s in stages}
        self.entry = self._one_end(stages)
        self._reachable()
        self.loop_of = self._loops()
        self.dom = self._dominators()
        self.order = self._order()
        self.derived: dict[str, dict[str, Any]] = {}
        self._derive()

    def _fail(self, stage: str | None, fld: str | None, message: str) -> None:
        where = f"stage {stage!r}: field {fld!r}: " if fld else (f"stage {stage!r}: " if stage else "")
        raise GraphError(f"{self.source}: {where}{message}")

    # -- edges ------------------------------------------------------------------------

    def _inputs(self, s: Any) -> tuple[str, ...]:
        raw = s.input
        if raw is None:
            return ()
        names = [raw] if isinstance(raw, str) else raw
        if not names or not all(isinstance(n, str) for n in names):
            self._fail(s.name, "input", f"must be a stage name or a non-empty list of names, got {raw!r}")
        for n in names:
            if n not in self.by_name:
                self._fail(s.name, "input", f"no stage named {n!r}")
        if len(set(names)) != len(names):
            self._fail(s.name, "input", f"names a stage twice: {names}")
        return tuple(names)

    def _one_end(self, stages: list) -> str:
        entries = [s.name for s in stages if not self.inputs[s.name]]
        if not entries:
            names = " -> ".join(s.name for s in stages)
            raise GraphError(f"{self.source}: every stage has an 'input', so the stages form a cycle "
                             f"({names}); the entry stage has no 'input'")
        if len(entries) > 1:
            raise GraphError(f"{self.source}: stages {entries} have no 'input'; exactly one stage takes "
                             "client requests")
        sinks = [s.name for s in stages if not self.consumers[s.name]]
        if len(sinks) > 1:
            raise GraphError(f"{self.source}: stages {sinks} feed no stage; exactly one stage (the sink) "
                             "gives the result: join the others into it (an aggregate with several inputs)")
        for s in stages:
            if s.route is not None and not self.consumers[s.name]:
                self._fail(s.name, "route", "the sink feeds no stage; there is nothing to route to")
        return entries[0]

    def _reachable(self) -> None:
        seen, todo = {self.entry}, [self.entry]
        while todo:
            for c in self.consumers[todo.pop()]:
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        stray = [n for n in self.by_name if n not in seen]
        if stray:
            self._fail(stray[0], "input", f"it is not reachable from the entry stage {self.entry!r} "
                                          f"(unreachable: {stray})")

    # -- loops ------------------------------------------------------------------------

    def _loops(self) -> dict[str, frozenset[str]]:
        """Each stage in a cycle -> its strongly connected set; checks each loop's shape."""
        loops: dict[str, frozenset[str]] = {}
        for comp in _strongly_connected(list(self.by_name), self.consumers):
            if len(comp) == 1:
                (n,) = comp
                if n not in self.consumers[n]:
                    continue
            self._check_loop(comp)
            for n in comp:
                loops[n] = comp
        return loops

    def _check_loop(self, comp: frozenset[str]) -> None:
        names = sorted(comp)
        routers = [n for n in names if self.by_name[n].route is not None]
        if not routers:
            self._fail(names[0], "route", f"the stages {names} form a loop; one of them needs 'route' "
                                          "(which item goes round again, which leaves)")
        if len(routers) > 1:
            self._fail(routers[1], "route", f"the loop {names} has route stages {routers}; a loop has one")
        if not any(self.by_name[n].max_turns is not None for n in names):
            self._fail(names[0], "max_turns", f"the stages {names} form a loop; one of them needs "
                                              "'max_turns' (how many times an item may go round)")
        router = routers[0]
        inside = [c for c in self.consumers[router] if c in comp]
        if len(inside) != 1:
            self._fail(router, "route", f"a loop's route stage feeds exactly one stage of the loop, "
                                        f"this one feeds {inside}")
        if len(self.consumers[router]) == 1:
            self._fail(router, "route", f"the loop {names} has no way out: its route stage feeds only {inside}")
        for n in names:
            s = self.by_name[n]
            if stage_kind(s.kind).keyed and not s.fields.get("per_item"):
                self._fail(n, "kind", f"a keyed stage cannot be in the loop {names}: its groups could "
                                      "never know that no item will come round again")
            if n != router and len(self.consumers[n]) != 1:
                self._fail(n, "input", f"in the loop {names} only the route stage {router!r} may feed "
                                       f"several stages; {n!r} feeds {self.consumers[n]}")
        entries = [(n, i) for n in names for i in self.inputs[n] if i not in comp]
        if len(entries) != 1:
            self._fail(names[0], "input", f"a loop is entered by one input; the loop {names} is entered "
                                          f"by {[f'{i} -> {n}' for n, i in entries]} (merge first)")

    # -- dominators and order ---------------------------------------------------------

    def _dominators(self) -> dict[str, set[str]]:
        """Stage -> the stages every path from the entry to it passes (itself included)."""
        names = list(self.by_name)
        dom = {n: set(names) for n in names}
        dom[self.entry] = {self.entry}
        changed = True
        while changed:
            changed = False
            for n in names:
                if n == self.entry:
                    continue
                preds = [dom[i] for i in self.inputs[n]]
                new = set.intersection(*preds) | {n}
                if new != dom[n]:
                    dom[n], changed = new, True
        return dom

    def _order(self) -> list:
        """Entry first, each stage after its inputs outside its loop, a loop in cycle order
        from the stage it is entered at, the sink last."""
        placed: list[str] = []
        seen: set[str] = set()

        def ready(n: str) -> bool:
            loop = self.loop_of.get(n)
            if loop is None:
                return all(i in seen for i in self.inputs[n])
            # A loop is placed whole, from the stage it is entered at, once its input is.
            outside = [i for i in self.inputs[n] if i not in loop]
            return bool(outside) and all(i in seen for i in outside)

        pending = [s.name for s in self.by_name.values()]
        while pending:
            for n in pending:
                if ready(n):
                    break
            else:  # unreachable: a cycle would be a loop, and _reachable checked the rest
                raise GraphError(f"{self.source}: cannot order stages {pending}")
            chain = self._cycle_from(n) if n in self.loop_of else [n]
            for m in chain:
                placed.append(m)
                seen.add(m)
                pending.remove(m)
        return [self.by_name[n] for n in placed]

    def _cycle_from(self, n: str) -> list[str]:
        loop = self.loop_of[n]
        out, m = [n], n
        while True:
            m = next(c for c in self.consumers[m] if c in loop)
            if m == n:
                return out
            out.append(m)

    # -- derived fields ---------------------------------------------------------------

    def _derive(self) -> None:
        depth: dict[str, int] = {}   # shortest length of the paths a stage emits
        varies: dict[str, bool] = {}
        for s in self.order:
            n = s.name
            loop = self.loop_of.get(n, frozenset())
            outside = [i for i in self.inputs[n] if i not in loop]
            merge_depth = self._merge_depth(s, outside, depth) if len(outside) > 1 else None
            placed = [i for i in self.inputs[n] if i in depth]  # a loop stage after its entry
            if not outside and placed:
                d_in, var = depth[placed[0]], varies[placed[0]]
            elif not outside:
                d_in, var = 1, False
            elif merge_depth is not None:
                d_in = min(depth[i] for i in outside) + 1
                var = len({depth[i] for i in outside}) > 1 or any(varies[i] for i in outside)
            else:
                d_in, var = depth[outside[0]], varies[outside[0]]
            if loop and any(self.by_name[m].fans_out for m in loop):
                var = True  # each turn round a fanning-out loop makes paths longer
            key_depth = self._key_depth(s, outside, d_in, depth, varies)
            if key_depth is not None and not s.fields.get("keeps_paths"):
                d_out, var = key_depth, False
            else:
                d_out = d_in + 1 if s.fans_out else d_in
            depth[n], varies[n] = d_out, var
            router_loop = loop if s.route is not None else frozenset()
            inside = [c for c in self.consumers[n] if c in router_loop]
            consumers = tuple(self.consumers[n])
            self.derived[n] = {
                "inputs": self.inputs[n],
                "consumers": consumers,
                "next": consumers[0] if len(consumers) == 1 else None,
                "loop_consumer": inside[0] if inside else None,
                "loop_inputs": tuple(i for i in self.inputs[n] if i in loop),
                "in_loop": bool(loop),
                "merge_depth": merge_depth,
                "out_depth": d_out,
                "depth_varies": var,
                "key_depth": key_depth,
            }

    def _merge_depth(self, s: Any, inputs: list[str], depth: dict[str, int]) -> int:
        """The fork depth of a stage with several inputs: the path length of the nearest
        stage every path to every input passes."""
        common = set.intersection(*(self.dom[i] for i in inputs))
        fork = max(common, key=lambda n: len(self.dom[n]))  # dominators form a chain
        f = depth[fork]
        # Every input must carry each node of length f of the fork's tree.
        for n in self.by_name:
            if n == fork or fork not in self.dom[n] or n == s.name:
                continue
            if not any(i == n or self._reaches(n, i) for i in inputs):
                continue
            kd = self.derived[n]["key_depth"]
            if kd is not None and kd < f:
                self._fail(s.name, "input", f"stage {n!r} (on a branch from {fork!r}) groups by paths of "
                                            f"length {kd}, shorter than the {f} of the fork's items: the "
                                            f"branches no longer carry the same items to merge")
        return f

    def _reaches(self, a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            for c in self.consumers[todo.pop()]:
                if c == b:
                    return True
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return False

    def _key_depth(self, s: Any, inputs: list[str], d_in: int, depth: dict[str, int],
                   varies: dict[str, bool]) -> int | None:
        if not stage_kind(s.kind).keyed or s.fields.get("per_item"):
            return None
        key = s.fields["key"]
        if key == "request":
            return 1
        if key not in self.by_name or key == s.name or not all(
                key == i or self._reaches(key, i) for i in inputs):
            upstream = sorted(n for n in self.by_name if n != s.name and all(
                n == i or self._reaches(n, i) for i in inputs) and n not in self.loop_of)
            what = "every input of" if len(inputs) > 1 else "upstream of"
            self._fail(s.name, "key", f"{key!r} is not 'request' or a stage {what} {s.name!r} "
                                      f"(choose from: {', '.join(['request', *upstream])})")
        if key in self.loop_of or varies.get(key):
            self._fail(s.name, "key", f"stage {key!r} emits paths of varying length (it is in or after a "
                                      "loop that fans out); group by a stage before the loop")
        kd = depth[key]
        if kd > d_in:
            self._fail(s.name, "key", f"stage {key!r} emits paths of length {kd}, deeper than the {d_in} "
                                      "of this stage's input; a group must hold whole items")
        return kd


def _strongly_connected(names: list[str], succ: dict[str, list[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative (topologies are small, but recursion limits are not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in names:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    out.append(frozenset(comp))
    return out
