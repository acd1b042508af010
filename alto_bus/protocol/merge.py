"""Several inputs into one exact tree: the re-rooting a merge (or join) stage does. Pure.

Each input of a stage with several inputs carries a whole tree over the same paths (a
fork sends every consumer a copy: DESIGN.md, "Graphs"). The merge puts input ``i``'s
tree under index ``i`` at the fork depth ``f``: path ``x`` becomes ``x[:f] + [i] + x[f:]``.
Nodes shorter than ``f`` come from upstream of the fork and are the same on every input,
so only input 0's markers for them pass. A node ``p`` of length ``f`` now has one child per
input: ``END(p, k)`` is announced when input 0's one event for ``p`` arrives (its first
chunk, its END, or its DROP). Stateless, so a merge stage may run any number of replicas.
"""

from __future__ import annotations

from alto_bus.protocol.messages import Data, Drop, End, Error, Message


class InputMerge:
    """Re-roots the messages of input ``index`` (an index into the merged inputs, or
    None for an input that is not merged: items coming round a loop)."""

    __slots__ = ("depth", "inputs", "stage")

    def __init__(self, depth: int, inputs: int, stage: str = "") -> None:
        self.depth = depth    # f: the path length of the fork's items
        self.inputs = inputs  # k: the merged inputs
        self.stage = stage    # named in the error for an item that has no place

    def remap(self, msg: Message, index: int | None) -> list[Message]:
        if index is None or type(msg) is Error:
            return [msg]
        f, path = self.depth, msg.path
        if len(path) < f:
            if type(msg) is Data:  # an item shorter than the fork's: no place in the merged tree
                return [Error(path[:1], self.stage, f"merge input {index} sent item {path} shorter than "
                                            f"the fork depth {f}", msg.epoch)]
            return [msg] if index == 0 else []
        moved = path[:f] + [index] + path[f:]
        kind = type(msg)
        if kind is Data:
            out: list[Message] = [Data(moved, msg.seq, msg.payload, msg.final, msg.epoch, msg.trace,
                                       msg.turns, msg.left_ms)]
            first = msg.seq == 0
        elif kind is End:
            out, first = [End(moved, msg.n, msg.epoch, msg.left_ms)], True
        else:
            out, first = [Drop(moved, msg.epoch, msg.left_ms)], True
        if index == 0 and first and len(path) == f:
            out.append(End(path, self.inputs, msg.epoch))
        return out
