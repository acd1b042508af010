"""The graph-shaped part of a stage instance's input and output (DESIGN.md, "Graphs").

For a stage that is not a plain link of a chain: it merges several inputs into one tree
(:mod:`alto_bus.protocol.merge`), sends what the stage emits to each consumer the fork
or the route says (:mod:`alto_bus.routing.branches`), and, in a loop, carries each
item's turns from what came in to what goes out and fails a request whose item has gone
round more than ``max_turns`` times. The worker calls it only for such stages, so a
chain's hot path stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from alto_bus.deploy.topology import StageConfig, import_object
from alto_bus.protocol.chunks import PENDING, Chunks
from alto_bus.protocol.merge import InputMerge
from alto_bus.protocol.messages import Data, Drop, End, Message
from alto_bus.routing.branches import Branches, RouteError

Send = Callable[[int, Message, bool], None]   # (consumer index, message, part of a stream)
Fail = Callable[[list, str, int], None]       # (path, reason, epoch): the request fails

# Items in hand whose turns a loop stage remembers, at most (a request that ends early
# leaves its entries; they go with the request's end, or, past this, oldest first).
TURNS_MEMORY = 100_000


def needs_graph_io(config: StageConfig) -> bool:
    return bool(len(config.consumers) > 1 or config.route or config.in_loop or config.merge_depth is not None)


class GraphIO:
    def __init__(self, config: StageConfig, send: Send, fail: Fail,
                 route: Callable[..., Any] | None = None) -> None:
        self.stage = config.name
        if route is None and config.route:
            route = import_object(config.route)
        self.branches = Branches(config.name, config.consumers or ("@gateway",), config.loop_consumer, route)
        self.send = send
        self.fail = fail
        outside = [i for i in config.inputs if i not in config.loop_inputs]
        # frame input index -> index among the merged inputs (None: comes round the loop)
        self.merge_index = {n: (outside.index(name) if name in outside else None)
                            for n, name in enumerate(config.inputs)}
        self.merge = (InputMerge(config.merge_depth, len(outside), config.name)
                      if config.merge_depth is not None else None)
        self.in_loop = config.in_loop
        self.max_turns = config.max_turns
        self.turns: dict[tuple, int] = {}
        self.chunks = Chunks() if route is not None else None

    # -- input --------------------------------------------------------------------------

    def incoming(self, msgs: Iterable[Message], index: int) -> Iterator[Message]:
        merge, where = self.merge, self.merge_index.get(index)
        for msg in msgs:
            for m in (merge.remap(msg, where) if merge is not None else (msg,)):
                if type(m) is Data and m.turns:
                    if where is not None:  # from outside this stage's loop: its turns were another loop's
                        m = Data(m.path, m.seq, m.payload, m.final, m.epoch, m.trace, 0, m.left_ms)
                    elif not self._arrived(m):
                        continue
                yield m

    def _arrived(self, msg: Data) -> bool:
        if self.max_turns is not None and msg.turns > self.max_turns:
            if msg.seq == 0:
                self.fail(msg.path[:1], f"item {msg.path} went round the loop more than max_turns "
                                        f"{self.max_turns} times", msg.epoch)
            return False
        if self.in_loop:
            if len(self.turns) >= TURNS_MEMORY:
                del self.turns[next(iter(self.turns))]
            self.turns[tuple(msg.path)] = msg.turns
        return True

    def forget(self, rids: Iterable[int]) -> None:
        gone = set(rids)
        if gone and self.turns:
            self.turns = {p: t for p, t in self.turns.items() if p[0] not in gone}
        if gone and self.chunks is not None:
            self.chunks.cancel(gone)

    # -- output -------------------------------------------------------------------------

    def data(self, path: list, seq: int, payload: Any, final: bool, epoch: int,
             trace: str | None = None) -> None:
        turns = self._turns_of(path, final) if self.turns else 0
        msg = Data(path, seq, payload, final, epoch, trace, turns)
        if self.chunks is None:
            stream = not (final and seq == 0)
            for i, m in self.branches.chunk(msg):
                self.send(i, m, stream)
            return
        value = self.chunks.feed(path, payload, final)  # a route sees whole items
        if value is PENDING:
            return
        try:
            sends = self.branches.item(msg, value)
        except RouteError as exc:
            self.fail(path[:1], str(exc), epoch)
            return
        for i, m in sends:
            self.send(i, m, False)

    def end(self, path: list, n: int, epoch: int) -> None:
        if self.turns:
            self.turns.pop(tuple(path), None)
        for i, m in self.branches.markers(End(path, n, epoch)):
            self.send(i, m, False)

    def drop(self, path: list, epoch: int) -> None:
        if self.turns:
            self.turns.pop(tuple(path), None)
        for i, m in self.branches.markers(Drop(path, epoch)):
            self.send(i, m, False)

    def _turns_of(self, path: list, final: bool) -> int:
        # An output keeps its input's path (1:1) or is its child; the entry of a 1:1 item
        # goes with its last chunk, a parent's with its END.
        key = tuple(path)
        turns = self.turns.get(key)
        if turns is not None:
            if final:
                del self.turns[key]
            return turns
        return self.turns.get(key[:-1], 0)
