"""The topology as the dashboard draws it: nodes in columns, edges from each stage's inputs (pure).

The broker's status gives each stage's ``input``: None (it takes the clients'
requests), one stage name, or a list of names (a stage that joins several). A stage
goes one column right of its furthest input, so every edge points right whatever the
shape (a chain, a fan-in, a diamond); stages no other stage reads from feed the
results. Two pseudo-nodes frame it: ``@clients`` on the left, ``@results`` on the right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLIENTS = "@clients"
RESULTS = "@results"


def inputs_of(stage: Mapping[str, Any]) -> list[str]:
    """A stage's inputs as a list, whatever the status spells (None, a name, a list of names)."""
    raw = stage.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    return [x for x in raw if isinstance(x, str)]


def layout(stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Columns, rows and edges of the graph of ``stages`` (the status's ``stages`` map).

    Returns ``{"nodes": [{"name", "col", "row"}], "edges": [[from, to]], "cols": n}``;
    an input naming no known stage is drawn as coming from the clients, and a cycle (no
    topology has one today) is cut where it closes rather than looping.
    """
    inputs = {name: [i for i in inputs_of(st) if i in stages and i != name] for name, st in stages.items()}
    col: dict[str, int] = {}

    def column(name: str, seen: frozenset[str]) -> int:
        if name in col:
            return col[name]
        ups = [u for u in inputs[name] if u not in seen]
        c = 1 + max((column(u, seen | {name}) for u in ups), default=0)
        col[name] = c
        return c

    for name in stages:
        column(name, frozenset())
    read = {u for ins in inputs.values() for u in ins}
    last = max(col.values(), default=0) + 1
    edges: list[list[str]] = []
    for name in stages:
        edges += [[u, name] for u in inputs[name]] or [[CLIENTS, name]]
        if name not in read:
            edges.append([name, RESULTS])
    col[CLIENTS], col[RESULTS] = 0, last
    rows: dict[int, int] = {}
    nodes = []
    for name in [CLIENTS, *stages, RESULTS]:  # the status's order (entry first) within a column
        c = col[name]
        nodes.append({"name": name, "col": c, "row": rows.get(c, 0)})
        rows[c] = rows.get(c, 0) + 1
    return {"nodes": nodes, "edges": edges, "cols": last + 1, "rows": max(rows.values())}
