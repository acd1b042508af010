"""Which consumers get what a stage emits: forks, routes and loops. Pure: no sockets.

A stage with several consumers sends each of them the whole tree of its output (DESIGN.md,
"Graphs"). With ``route``, a whole item goes to the consumers the route names and every
other consumer gets ``DROP(path)``, so each branch's tree stays exact. A loop's route
stage sends an item that goes round again to its in-loop consumer only, with one more
turn; the exits get nothing for it yet (its continuation comes round), and markers never
go into the loop, so they leave it exactly once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from alto_bus.protocol.messages import Data, Drop, Message

Sends = list[tuple[int, Message]]  # (consumer index, message)


class RouteError(ValueError):
    """The route of one item failed; its request fails with this text."""


class Branches:
    """The consumers of one stage, in the order the topology gives them."""

    def __init__(self, stage: str, consumers: Sequence[str], loop_consumer: str | None = None,
                 route: Callable[..., Any] | None = None) -> None:
        self.stage = stage
        self.consumers = tuple(consumers)
        self.index = {c: i for i, c in enumerate(self.consumers)}
        self.loop = self.index[loop_consumer] if loop_consumer is not None else None
        # Markers go everywhere but into the loop.
        self.marker_to = tuple(i for i in range(len(self.consumers)) if i != self.loop)
        self.route = route
        self._with_path = route is not None and _takes_path(route)

    def markers(self, msg: Message) -> Sends:
        return [(i, msg) for i in self.marker_to]

    def chunk(self, msg: Data) -> Sends:
        """A chunk of a streamed item, on a stage without route: every consumer."""
        return [(i, msg) for i in self.marker_to]

    def item(self, msg: Data, value: Any) -> Sends:
        """A whole item (``value`` is its payload, its chunks joined); raises RouteError."""
        if self.route is None:
            return [(i, msg) for i in self.marker_to]
        chosen = self.chosen(value, msg.path)
        if self.loop is not None and self.loop in chosen:
            if len(chosen) > 1:
                names = [self.consumers[i] for i in sorted(chosen)]
                raise RouteError(f"route of stage {self.stage!r} sent item {msg.path} both round the "
                                 f"loop and out of it ({names}); an item takes one way")
            return [(self.loop, Data(msg.path, 0, value, True, msg.epoch, msg.trace, msg.turns + 1))]
        whole = msg if msg.seq == 0 and msg.final else Data(msg.path, 0, value, True, msg.epoch,
                                                            msg.trace, msg.turns)
        drop = Drop(msg.path, msg.epoch)
        return [(i, whole if i in chosen else drop) for i in self.marker_to]

    def chosen(self, value: Any, path: list) -> set[int]:
        try:
            names = self.route(value, path) if self._with_path else self.route(value)
        except Exception as exc:
            raise RouteError(f"route of stage {self.stage!r} raised {type(exc).__name__}: {exc}") from None
        if names is None:
            return set()
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple, set, frozenset)):
            raise RouteError(f"route of stage {self.stage!r} returned {names!r:.60}; expected a stage "
                             f"name, a list of names, or None (consumers: {list(self.consumers)})")
        out = set()
        for name in names:
            i = self.index.get(name) if isinstance(name, str) else None
            if i is None:
                raise RouteError(f"route of stage {self.stage!r} named {name!r:.60}, which does not take "
                                 f"its items (consumers: {list(self.consumers)})")
            out.add(i)
        return out


def _takes_path(fn: Callable[..., Any]) -> bool:
    """``f(item, path)`` rather than ``f(item)``."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2
