"""The broker's side of an LM pool: figures from reports, a placement per round. Pure.

A pool member is one engine (one process); it serves every LM stage (prompt) that names
the pool, as one stage instance per prompt. Workers report, per stage instance, the
monotonic counters of their prompt; the scheduler turns them into rates over the last
round, hands them to the pool's policy, and keeps the placement and its decisions for
the routing table, the log and ``alto status``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from alto_bus.scheduling import Placement, PromptFigures, RoundInput, make_policy

log = logging.getLogger("alto.pools")


@dataclass
class _Counters:
    at: float
    prefill: float = 0.0
    cached: float = 0.0
    decode: float = 0.0


@dataclass
class PoolScheduler:
    name: str
    policy_name: str
    policy_args: dict[str, Any]
    prompts: tuple[str, ...]
    prefix_tokens: dict[str, int] = field(default_factory=dict)
    placement: Placement | None = None
    figures: dict[str, dict[str, PromptFigures]] = field(default_factory=dict)   # member -> prompt -> figures
    member_loads: dict[str, int] = field(default_factory=dict)
    hit_rates: dict[str, float] = field(default_factory=dict)                    # member -> hit rate
    kv: dict[str, tuple[int, int]] = field(default_factory=dict)                 # member -> (capacity, used)
    decisions: deque = field(default_factory=lambda: deque(maxlen=50))
    servers: tuple[str, ...] = ()         # engine "openai": the pool's remote members' base URLs
    remote: dict[str, dict[str, Any]] = field(default_factory=dict)             # member -> its server
    _last: dict[tuple[str, str], _Counters] = field(default_factory=dict)
    _spills: dict[str, dict[str, int]] = field(default_factory=dict)
    _loads: dict[str, dict[str, int]] = field(default_factory=dict)                # member -> prompt -> depth
    _running: dict[str, dict[str, int]] = field(default_factory=dict)              # member -> prompt -> in flight

    def __post_init__(self) -> None:
        self.policy = make_policy(self.policy_name, **self.policy_args)

    def observe(self, member: str, prompt: str, counters: dict[str, Any], depth: int, now: float) -> None:
        """One stage instance's heartbeat: its prompt's monotonic counters and its depth."""
        key = (member, prompt)
        cur = _Counters(now, float(counters.get("prefill_tokens", 0)), float(counters.get("cached_tokens", 0)),
                        float(counters.get("decode_tokens", 0)))
        prev = self._last.get(key)
        self._last[key] = cur
        self._loads.setdefault(member, {})[prompt] = depth
        self._running.setdefault(member, {})[prompt] = int(counters.get("running", 0))
        self._note_server(member, counters)
        if member in self.member_loads:  # published every tick: a round-old load herds the senders
            self.member_loads[member] = sum(self._loads[member].values())
        if prev is None or cur.at <= prev.at:
            return
        dt = cur.at - prev.at
        prefill = max(0.0, cur.prefill - prev.prefill)
        cached = max(0.0, cur.cached - prev.cached)
        looked_up = prefill + cached
        self.figures.setdefault(member, {})[prompt] = PromptFigures(
            prefill_tps=looked_up / dt,
            decode_tps=max(0.0, cur.decode - prev.decode) / dt,
            queued=int(counters.get("waiting", 0)),
            running=int(counters.get("running", 0)),
            hit_rate=cached / looked_up if looked_up else 0.0,
        )
        if counters.get("kv_capacity"):
            self.kv[member] = (int(counters["kv_capacity"]), int(counters.get("kv_used", 0)))
        if counters.get("cache_queries"):
            self.hit_rates[member] = float(counters.get("cache_hits", 0)) / float(counters["cache_queries"])

    def _note_server(self, member: str, counters: dict[str, Any]) -> None:
        """A remote member's server: its URL, and its own running/waiting when it is vLLM."""
        index = counters.get("member_index")
        if index is None or not 0 <= int(index) < len(self.servers):
            return
        server: dict[str, Any] = {"url": self.servers[int(index)], "vllm": bool(counters.get("server_metrics"))}
        if server["vllm"]:   # every client's requests, not only this pool's
            server.update(running=int(counters.get("requests_running", 0)),
                          waiting=int(counters.get("requests_waiting", 0)))
        self.remote[member] = server

    def note_spills(self, spills: dict[str, dict[str, int]]) -> None:
        for prompt, by_member in spills.items():
            mine = self._spills.setdefault(prompt, {})
            for member, n in by_member.items():
                mine[str(member)] = mine.get(str(member), 0) + int(n)

    def forget(self, member: str) -> None:
        self.figures.pop(member, None)
        self._loads.pop(member, None)
        self._running.pop(member, None)
        self.remote.pop(member, None)
        self.hit_rates.pop(member, None)
        self.kv.pop(member, None)
        for key in [k for k in self._last if k[0] == member]:
            del self._last[key]

    def round(self, members: list[str]) -> Placement | None:
        """A new placement over the live members (None when the pool has none yet)."""
        self.member_loads = {m: sum(self._loads.get(m, {}).values()) for m in members}
        if not members:
            return None
        inp = RoundInput(instances=sorted(members), figures={m: self.figures.get(m, {}) for m in members},
                         kv={m: self.kv[m] for m in members if m in self.kv},
                         prefix_tokens=self.prefix_tokens, previous=self._previous(members),
                         spills=self._spills, prompts=self.prompts)
        self._spills = {}
        placement = self.policy.place(inp)
        for d in placement.decisions:
            entry = {"round": placement.round, "prompt": d.prompt, "added": list(d.added),
                     "removed": list(d.removed), "reason": d.reason}
            self.decisions.append(entry)
            log.info("pool %s: %s", self.name, d.reason)
        self.placement = placement
        return placement

    def _previous(self, members: list[str]) -> Placement | None:
        """The last placement without members that are gone."""
        if self.placement is None:
            return None
        live = set(members)
        prompts = {p: tuple(m for m in ms if m in live) for p, ms in self.placement.prompts.items()}
        return Placement(prompts=prompts, policy=self.placement.policy, params=self.placement.params,
                         round=self.placement.round)

    def status(self) -> dict[str, Any]:
        demand = {}
        for by_prompt in self.figures.values():
            for prompt, f in by_prompt.items():
                demand[prompt] = demand.get(prompt, 0.0) + f.work_tps
        return {
            "policy": self.policy_name,
            "placement": {p: list(ms) for p, ms in (self.placement.prompts.items() if self.placement else [])},
            "demand_tokens_per_s": {p: round(v, 1) for p, v in demand.items()},
            "member_loads": dict(self.member_loads),
            "hit_rates": {m: round(v, 3) for m, v in self.hit_rates.items()},
            "kv": {m: {"capacity": c, "used": u} for m, (c, u) in self.kv.items()},
            "in_flight": {m: sum(by_prompt.values()) for m, by_prompt in self._running.items()},
            "servers": {m: dict(s) for m, s in self.remote.items()},
            # sequences in the engine's batch / its queue, over the member's prompts
            "running": {m: sum(f.running for f in by.values()) for m, by in self.figures.items()},
            "waiting": {m: sum(f.queued for f in by.values()) for m, by in self.figures.items()},
            "decisions": list(self.decisions)[-10:],
            "held": dict(self.policy.held),
        }
