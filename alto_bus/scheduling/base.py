"""The policy interface for shared LM pools, and the values it exchanges.

Two halves, run in different places:

* ``Policy.place(round_input) -> Placement`` runs in the broker once a round (about a
  second), from the figures the pool's workers reported over the last interval. The
  placement (``{prompt: [instance ids]}`` plus the decisions that led to it) is
  published with the routing table, so it must survive msgpack: ``to_dict`` /
  ``from_dict`` use only str, int, float, list and dict.
* ``Policy.choose(prompt, placement, loads) -> instance id`` runs in every sender for
  every LM request, so it is a few dict look-ups and a loop over a handful of
  instances. When it has to send a request outside the prompt's placement (a spill) it
  counts it; the sender reports ``drain_spills()`` with its load report and the next
  round takes it into account.

Pure: no sockets, no clocks, no randomness, so tests drive a policy round by round.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

PLACEMENT_VERSION = 1

InstanceId = str
Prompt = str
# Latest load per instance as a sender sees it: queue depth + running sequences.
Loads = Mapping[InstanceId, float]
# Requests a sender sent outside a prompt's placement: {prompt: {instance: count}}.
Spills = dict[Prompt, dict[InstanceId, int]]


@dataclass(frozen=True)
class PromptFigures:
    """What one instance reports for one prompt over the last interval (rates per second).

    ``prefill_tps`` counts every prompt token submitted (hits and misses); ``hit_rate``
    is the fraction of them served from the prefix cache. From the engine's monotonic
    counters: ``prefill_tps = d(prefill_tokens + cached_tokens) / dt`` and
    ``hit_rate = d(cached_tokens) / d(prefill_tokens + cached_tokens)``.
    """

    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    queued: int = 0
    running: int = 0
    hit_rate: float = 0.0

    @property
    def work_tps(self) -> float:
        """Token-work per second: prompt tokens actually computed plus decoded tokens."""
        return self.prefill_tps * (1.0 - self.hit_rate) + self.decode_tps

    def to_dict(self) -> dict[str, Any]:
        return {"prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps,
                "queued": self.queued, "running": self.running, "hit_rate": self.hit_rate}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptFigures:
        try:
            f = cls(prefill_tps=float(d.get("prefill_tps", 0.0)),
                    decode_tps=float(d.get("decode_tps", 0.0)),
                    queued=int(d.get("queued", 0)), running=int(d.get("running", 0)),
                    hit_rate=float(d.get("hit_rate", 0.0)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"prompt figures {d!r} are malformed: {exc}") from None
        if not (0.0 <= f.hit_rate <= 1.0) or min(f.prefill_tps, f.decode_tps) < 0:
            raise ValueError(f"prompt figures {d!r} are out of range")
        return f


@dataclass(frozen=True)
class Decision:
    """One prompt's change in one round, with the reason a person can read in a log."""

    prompt: Prompt
    added: tuple[InstanceId, ...] = ()
    removed: tuple[InstanceId, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "added": list(self.added),
                "removed": list(self.removed), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        try:
            return cls(prompt=str(d["prompt"]), added=tuple(map(str, d.get("added", ()))),
                       removed=tuple(map(str, d.get("removed", ()))),
                       reason=str(d.get("reason", "")))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"decision {d!r} is malformed: {exc}") from None


@dataclass(frozen=True)
class Placement:
    """Which instances serve each prompt, as published with a routing table.

    ``policy`` and ``params`` let a sender build the same policy the broker ran
    (``make_policy(p.policy, **p.params)``); ``round`` counts the broker's rounds.
    """

    prompts: Mapping[Prompt, tuple[InstanceId, ...]]
    decisions: tuple[Decision, ...] = ()
    policy: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    round: int = 0

    def instances_for(self, prompt: Prompt) -> tuple[InstanceId, ...]:
        return self.prompts.get(prompt, ())

    def is_spill(self, prompt: Prompt, instance: InstanceId) -> bool:
        return instance not in self.prompts.get(prompt, ())

    def to_dict(self) -> dict[str, Any]:
        return {"v": PLACEMENT_VERSION, "policy": self.policy, "round": self.round,
                "params": dict(self.params),
                "prompts": {p: list(ids) for p, ids in self.prompts.items()},
                "decisions": [d.to_dict() for d in self.decisions]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Placement:
        if not isinstance(d, Mapping):
            raise ValueError(f"a placement is a map, got {type(d).__name__}")
        if d.get("v", PLACEMENT_VERSION) > PLACEMENT_VERSION:
            raise ValueError(f"placement version {d.get('v')} is newer than "
                             f"{PLACEMENT_VERSION}, which this process understands")
        prompts = d.get("prompts", {})
        if not isinstance(prompts, Mapping) or not all(
                isinstance(v, (list, tuple)) for v in prompts.values()):
            raise ValueError("placement 'prompts' must map each prompt to a list of ids")
        return cls(prompts={str(p): tuple(map(str, ids)) for p, ids in prompts.items()},
                   decisions=tuple(Decision.from_dict(x) for x in d.get("decisions", ())),
                   policy=str(d.get("policy", "")), params=dict(d.get("params", {})),
                   round=int(d.get("round", 0)))


@dataclass(frozen=True)
class RoundInput:
    """Everything one round of ``place`` sees.

    ``figures[instance][prompt]`` are the workers' reports; ``prompts`` are the prompts
    the pool serves (from the topology), so that a prompt is placed before its first
    request. Prompts seen only in figures, in ``prefix_tokens`` or in the previous
    placement, or spilled by senders (``spills[prompt][instance]`` requests sent outside
    the placement since the last round) are placed too.
    """

    instances: Sequence[InstanceId]
    figures: Mapping[InstanceId, Mapping[Prompt, PromptFigures]] = field(default_factory=dict)
    prefix_tokens: Mapping[Prompt, int] = field(default_factory=dict)
    previous: Placement | None = None
    spills: Mapping[Prompt, Mapping[InstanceId, int]] = field(default_factory=dict)
    prompts: Sequence[Prompt] = ()
    # KV cache per instance: (capacity, held by sequences now), tokens; absent = unknown.
    kv: Mapping[InstanceId, tuple[int, int]] = field(default_factory=dict)

    def all_prompts(self) -> list[Prompt]:
        seen: dict[Prompt, None] = dict.fromkeys(self.prompts)
        seen.update(dict.fromkeys(self.prefix_tokens))
        for per_prompt in self.figures.values():
            seen.update(dict.fromkeys(per_prompt))
        if self.previous is not None:
            seen.update(dict.fromkeys(self.previous.prompts))
        seen.update(dict.fromkeys(self.spills))
        return sorted(seen)

    def demand(self) -> dict[Prompt, float]:
        """Token-work per second of each prompt, summed over the instances that report it."""
        out = dict.fromkeys(self.all_prompts(), 0.0)
        for per_prompt in self.figures.values():
            for p, f in per_prompt.items():
                out[p] += f.work_tps
        return out


def kv_room(inp: RoundInput) -> float:
    """How many times over the free KV of the tightest instance holds every prompt's
    prefix (0 when an instance does not report its KV, or no prefix is known)."""
    need = sum(inp.prefix_tokens.get(p, 0) for p in inp.all_prompts())
    if need <= 0 or not inp.instances:
        return 0.0
    room = math.inf
    for inst in inp.instances:
        capacity, used = inp.kv.get(inst, (0, 0))
        if capacity <= 0:
            return 0.0
        room = min(room, (capacity - used) / need)
    return max(0.0, room)


def check_pool(instances: Sequence[InstanceId]) -> list[InstanceId]:
    """The pool as a list, in the given order; an empty or repeated pool is an error."""
    pool = list(instances)
    if not pool:
        raise ValueError("the LM pool has no instances: nothing to place prompts on")
    if len(set(pool)) != len(pool):
        raise ValueError(f"the LM pool lists an instance twice: {pool}")
    return pool


def least_loaded(candidates: Iterable[InstanceId], loads: Loads) -> InstanceId | None:
    """The first candidate with the lowest load (unknown load counts as idle)."""
    best, best_load = None, math.inf
    for inst in candidates:
        load = loads.get(inst, 0.0)
        if load < best_load:
            best, best_load = inst, load
    return best


# Loads within this margin of the lowest are treated as equal (see ``lightest``).
TIE_FLOOR = 2.0
TIE_FRACTION = 0.2


def lightest(candidates: Sequence[InstanceId], loads: Loads, turn: int) -> tuple[InstanceId, float]:
    """A least-loaded candidate and the lowest load, rotating (by ``turn``) among near-ties.

    A sender's loads are a broker report up to a heartbeat interval old plus its own
    sends since. LM calls last about as long as that interval, so a difference of a
    few sequences in the report says little about now; if every sender then sends
    everything to the one instance that looked lightest, they herd onto it for a whole
    interval and onto the other the next (measured: member loads swinging 12 <-> 185
    every half second, requests 1.4x slower than round-robin). So loads within
    ``TIE_FLOOR + TIE_FRACTION x lowest`` of the lowest count as equal and the sender
    takes them in turn; a clearly lighter instance still gets every request.
    """
    low = min(loads.get(i, 0.0) for i in candidates)
    margin = TIE_FLOOR + TIE_FRACTION * low
    near = [i for i in candidates if loads.get(i, 0.0) <= low + margin]
    return near[turn % len(near)], low


class Policy(ABC):
    """A scheduling policy for one LM pool: ``place`` per round, ``choose`` per request.

    Subclasses set ``name`` (the registry sets it too) and take their tuning as keyword
    arguments; ``params()`` returns them so a placement can carry them to senders.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._spills: Spills = {}
        self._turn = 0   # rotation among near-tied instances (see ``lightest``)
        # Prompts this round kept on more instances than their demand asks for, and why
        # (a decision is logged only when a placement changes; this says why it did not).
        self.held: dict[Prompt, str] = {}

    def next_turn(self) -> int:
        self._turn += 1
        return self._turn

    def start_turn(self, offset: int) -> None:
        """Start this sender's rotation among near-ties at ``offset``. Senders whose
        rotations start in step send their consecutive requests to the same instance
        (measured: p99 1.18x worse on the multi-tenant trace, BENCHMARKS.md), so each
        sender starts at its own (ConsumerRoutes gives each a random one)."""
        self._turn = offset

    @abstractmethod
    def place(self, inp: RoundInput) -> Placement:
        """The placement for the next round."""

    @abstractmethod
    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        """The instance for one request of ``prompt``."""

    def params(self) -> dict[str, Any]:
        return {}

    def spill_anywhere(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        """A prompt the placement does not know yet: least-loaded instance, counted as a spill
        so that the next round places it."""
        pool = dict.fromkeys(i for ids in placement.prompts.values() for i in ids)
        inst = least_loaded(pool or loads, loads)
        if inst is None:
            raise ValueError(f"no instance to send prompt {prompt!r} to: the placement is empty")
        self.note_spill(prompt, inst)
        return inst

    def note_spill(self, prompt: Prompt, instance: InstanceId) -> None:
        per = self._spills.setdefault(prompt, {})
        per[instance] = per.get(instance, 0) + 1

    def drain_spills(self) -> Spills:
        """Spills counted since the last call, for the sender's next load report."""
        out, self._spills = self._spills, {}
        return out

    def _placement(self, prompts: Mapping[Prompt, Sequence[InstanceId]],
                   decisions: Sequence[Decision], inp: RoundInput) -> Placement:
        prev_round = inp.previous.round if inp.previous is not None else 0
        return Placement(prompts={p: tuple(ids) for p, ids in sorted(prompts.items())},
                         decisions=tuple(decisions), policy=self.name,
                         params=self.params(), round=prev_round + 1)


def everywhere(inp: RoundInput, policy: Policy, why: str | None = None) -> Placement:
    """Every prompt on every instance (round-robin, least-loaded); decisions on changes,
    with ``why`` as their reason when given."""
    pool = check_pool(inp.instances)
    prev = inp.previous.prompts if inp.previous is not None else {}
    decisions = []
    for p in inp.all_prompts():
        before = set(prev.get(p, ()))
        added = tuple(i for i in pool if i not in before)
        removed = tuple(sorted(before - set(pool)))
        if added or removed:
            reason = why or ("placed on every instance" if not before else "pool membership changed")
            decisions.append(Decision(p, added, removed, f"prompt {p}: {reason}"))
    return policy._placement({p: pool for p in inp.all_prompts()}, decisions, inp)
