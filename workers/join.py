"""A join: an aggregate stage with several inputs (DESIGN.md, "Graphs").

The runtime merges the inputs' trees by putting input ``i``'s items under index ``i`` at
the fork depth ``f`` (alto_bus/protocol/merge.py), so an item's input is ``path[f]``.
``collect`` gives ``{input name: [payloads in path order]}``, a user callable gets that
map (and the group's path if it takes two arguments), every other operator the union.
"""

from __future__ import annotations

from typing import Any

from alto_workers.aggregate import Call, Collect, Item, Operator, Path


class ByInput(Operator):
    """``op`` over a join's group, with the items split by the input they came from."""

    def __init__(self, op: Operator, depth: int, inputs: tuple[str, ...]) -> None:
        self.op = op
        self.depth = depth
        self.inputs = inputs
        self.name = op.name
        self.per_item = op.per_item
        self.keeps_paths = op.keeps_paths

    def by_input(self, items: list[Item]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in self.inputs}
        f = self.depth
        for path, payload in items:
            out[self.inputs[path[f]]].append(payload)
        return out

    def group(self, items: list[Item], group: Path) -> Any:
        if isinstance(self.op, Collect):
            return self.by_input(items)
        if isinstance(self.op, Call):
            grouped = self.by_input(items)
            return self.op.fn(grouped, group) if self.op.with_path else self.op.fn(grouped)
        return self.op.group(items, group)

    def item(self, path: Path, payload: Any) -> Any:
        return self.op.item(path, payload)
