"""A sender's routes to each of its consumers (or to the gateway, for the sink). Pure.

One :class:`~alto_bus.routing.route_table.RouteTable` per consumer, all fed the same
tables and loads from the broker (one load view: an instance's load is the same whoever
asks); what goes to which consumer is :mod:`alto_bus.routing.branches`' answer. Instance
ids are unique across stages, so one outbox per destination serves every consumer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from alto_bus.net.sockets import DEFAULT_HWM
from alto_bus.protocol import wire
from alto_bus.routing.choice import LoadView
from alto_bus.routing.pool_route import PoolRoute
from alto_bus.routing.route_table import GATEWAY, RouteTable, gateway_dest


class ConsumerRoutes:
    """``tables[i]`` routes to consumer ``i``; ``targets[i]`` is what its frames name (the
    stage, or ``(stage, input index)`` when that stage has several inputs)."""

    def __init__(self, stage: str, tables: list[RouteTable], targets: list[str | tuple[str, int]],
                 loads: LoadView) -> None:
        self.stage = stage
        self.tables = tables
        self.targets = targets
        self.loads = loads
        self.sink = len(tables) == 1 and tables[0].next is None
        self.queues: dict[str, int] = {}  # consumer stage -> frames queued for one of its instances
        self._choices: list[list[int]] | None = None  # changes only with a table (see choices)

    @classmethod
    def from_welcome(cls, stage: str, welcome: dict[str, Any],
                     rng: random.Random | None = None) -> ConsumerRoutes:
        """From the broker's "welcome": each consumer's config and, when it runs on an LM
        pool, the pool's policy; the results address."""
        from alto_bus.scheduling import make_policy

        rng = rng or random.Random(0)
        loads = LoadView()
        tables, targets = [], []
        for consumer in welcome.get("consumers") or []:
            cfg, pool_cfg = consumer["config"], consumer.get("pool")
            pool = None
            if pool_cfg:
                policy = make_policy(pool_cfg["policy"], **(pool_cfg.get("policy_args") or {}))
                policy.start_turn(rng.randrange(1 << 16))  # out of step with the other senders
                pool = PoolRoute(cfg["name"], policy, own=stage)
            tables.append(RouteTable(stage, cfg["name"], cfg.get("key_depth"), pool=pool,
                                     pool_name=pool_cfg["name"] if pool_cfg else None, rng=rng,
                                     loads=loads, results=welcome["results"]))
            inputs = list(cfg.get("inputs") or [])
            targets.append((cfg["name"], inputs.index(stage)) if len(inputs) > 1 else cfg["name"])
        if not tables:  # the sink: its items go to the gateway
            tables.append(RouteTable(stage, rng=rng, loads=loads, results=welcome["results"]))
            targets.append(wire.GATEWAY_STAGE)
        routes = cls(stage, tables, targets, loads)
        routes.queues = {c["config"]["name"]: int(c["config"].get("queue") or DEFAULT_HWM)
                         for c in welcome.get("consumers") or []}
        return routes

    @classmethod
    def unbound(cls, stage: str, rng: random.Random | None = None) -> ConsumerRoutes:
        """Before the broker's welcome: nowhere to go yet."""
        loads = LoadView()
        return cls(stage, [RouteTable(stage, rng=rng, loads=loads)], [wire.GATEWAY_STAGE], loads)

    # -- what the broker publishes: every table learns it -------------------------------

    def apply(self, table: dict[str, Any]) -> None:
        self._choices = None
        for t in self.tables:
            t.apply(table)

    def apply_loads(self, body: dict[str, Any]) -> None:
        for t in self.tables:
            t.apply_loads(body)

    def forget_requests(self, ended: Iterable[int]) -> None:
        ended = list(ended)
        for t in self.tables:
            t.forget_requests(ended)

    @property
    def epoch(self) -> int:
        return self.tables[0].epoch

    @property
    def ready(self) -> bool:
        return all(t.ready for t in self.tables)

    @property
    def pool(self) -> PoolRoute | None:
        """The first consumer's pool route (its policy's spill figures go in heartbeats)."""
        return next((t.pool for t in self.tables if t.pool is not None), None)

    def address(self, dest: int) -> str:
        for t in self.tables:
            if dest <= GATEWAY or dest in t.addresses:
                return t.address(dest)
        raise KeyError(dest)

    def choices(self) -> list[list[int]]:
        """The instances each route picks among (the sink's: each gateway, on its own).
        Asked for every frame read while an outbox is blocked, so kept until the next table."""
        if self._choices is not None:
            return self._choices
        out = []
        for t in self.tables:
            if t.next is not None:
                out.append(t.next_ids)
            else:
                out.extend([-g] for g in range(len(t.results)))
        self._choices = out
        return out

    def gateway_of(self, rid: int) -> int:
        """The destination of the gateway that admitted ``rid`` (its errors go there)."""
        return gateway_dest(rid, len(self.tables[0].results))

    def queue_of(self, dest: int) -> int:
        """Frames a sender queues for instance ``dest`` before it counts as not taking input."""
        return self.queues.get(self.consumer_of(dest), DEFAULT_HWM)

    def consumer_of(self, dest: int) -> str:
        """The consumer stage an instance belongs to (for error messages)."""
        for t in self.tables:
            if dest in t.addresses:
                return t.next or "the gateway"
        return "/".join(t.next or "the gateway" for t in self.tables)

    def gone(self, links: Mapping[int, str]) -> list[tuple[int, str]]:
        """Links no consumer's kept epochs route to (see RouteTable.gone)."""
        if len(self.tables) == 1:
            return self.tables[0].gone(links)
        out = []
        for d, address in links.items():
            if d <= GATEWAY:
                continue
            known = [t for t in self.tables if d in t.addresses]
            if not known:
                dead = any(d in t.dead for t in self.tables)
                out.append((d, "died" if dead else "left the routing table"))
            elif all(t.addresses[d] != address for t in known):
                out.append((d, "moved"))
        return out
