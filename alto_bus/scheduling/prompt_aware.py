"""Prompt-aware placement: each prompt on a few instances, sized by its demand.

A round, in the broker:

0. When the free KV cache of every instance holds every prompt's prefix ``ample_kv``
   times over (instances report their KV; until they do, or with ``ample_kv = 0``, this
   never holds), placement has nothing to gain: every instance keeps every prefix warm
   anyway. Every prompt then goes on every instance and senders balance by load alone;
   the rounds below resume when the room falls under half of ``ample_kv``.
1. Demand of each prompt in token-work per second (prompt tokens computed, i.e. not
   served by the prefix cache, plus decoded tokens), summed over the instances and
   smoothed over rounds (``smoothing`` is the weight of the newest round).
2. Its fair share of the pool, ``k = n_instances * demand / total``, sets how many
   instances it gets (at least one). Hysteresis: the count changes only when ``k`` is
   ``resize_margin`` or more away from the current count, a prompt that grew (or
   spilled) in the last ``cooldown`` rounds does not shrink, and a prompt shrinks only
   if its highest demand of the last ``cooldown`` rounds allows it too (scale down on
   the recent peak, as autoscalers' stabilization windows do: the demand figures of
   one round swing by tens of per cent, and shrinking on a dip is undone a few rounds
   later).
3. Instances are chosen starting from the previous placement, where prefixes are warm.
   Where at least ``min_spills`` requests of a prompt spilled to an instance in the
   round (see ``choose``), the instance joins the prompt's placement.
   A prompt that grows takes the least loaded instance, or a warm one (it reported
   prefix hits for the prompt, or held it last round) if that is nearly as light. A
   prompt that shrinks gives up its most loaded instance, one a round, unless that
   would overload the rest or leave its other instances over
   ``1 + shrink_slack * imbalance`` times the mean carrying the prompt's recent peak,
   and keeps an instance only it uses unless another prompt takes it. An instance
   serving nothing goes to the prompt with the most load per instance.
4. Projected loads assume senders balance each prompt over its instances, which they
   do (least-loaded among the placed): each prompt's demand is water-filled over its
   instances, iterated to a fixed point. While the most loaded instance is over
   ``(1 + imbalance)`` times the mean, the one move (or one extra instance for a
   prompt) that lowers the peak most is applied, at most ``max_moves`` a round and only
   if it gains at least ``min_gain`` of the mean.

Per request, in senders: the least-loaded placed instance; when even that one is
busier than ``spill_floor + spill_ratio * (least-loaded other instance)``, the request
spills to that other instance and the spill is counted for the next round.

Preble's exploit/explore and SGLang's cache-aware router make the same trade (stay
where the prefix is unless load is too uneven) per request; here the prompts are few,
long and known in advance, so the broker decides per prompt and publishes it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import (
    Decision,
    InstanceId,
    Loads,
    Placement,
    Policy,
    Prompt,
    RoundInput,
    check_pool,
    everywhere,
    kv_room,
    lightest,
)

Sets = dict[Prompt, list[InstanceId]]


@dataclass
class _Round:
    """What one ``place`` call works on: the pool, the demand and the sets it edits."""

    pool: list[InstanceId]
    rank: dict[InstanceId, int]
    demand: dict[Prompt, float]
    warm: dict[Prompt, set[InstanceId]]
    sets: Sets
    notes: dict[Prompt, list[str]]
    mean: float
    peak: dict[Prompt, float]          # highest smoothed demand over the last ``cooldown`` rounds

    def project(self, sets: Sets | None = None) -> tuple[dict[InstanceId, float], Shares]:
        return project(self.sets if sets is None else sets, self.demand, self.pool)

    def hosted(self, inst: InstanceId) -> int:
        return sum(inst in s for s in self.sets.values())

    def lightest_first(self, p: Prompt, loads: Mapping[InstanceId, float]) -> list[InstanceId]:
        """Instances ``p`` is not on, lightest first; ties go to the one with fewer prompts."""
        return sorted((i for i in self.pool if i not in self.sets[p]),
                      key=lambda i: (loads[i], self.hosted(i), self.rank[i]))


class PromptAware(Policy):
    name = "prompt-aware"

    def __init__(self, *, smoothing: float = 0.5, resize_margin: float = 0.75,
                 cooldown: int = 15, imbalance: float = 0.25, min_gain: float = 0.05,
                 max_moves: int = 4, min_spills: int = 10, warm_slack: float = 0.15,
                 spill_floor: float = 16.0, spill_ratio: float = 2.0,
                 shrink_slack: float = 0.5, ample_kv: float = 4.0) -> None:
        super().__init__()
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.5 <= resize_margin <= 4:
            raise ValueError(f"resize_margin must be in [0.5, 4], got {resize_margin}")
        if cooldown < 0 or max_moves < 0 or min_spills < 1:
            raise ValueError("cooldown and max_moves must be >= 0, min_spills >= 1")
        if imbalance < 0 or min_gain <= 0 or warm_slack < 0:
            raise ValueError("imbalance and warm_slack must be >= 0, min_gain > 0")
        if spill_floor < 0 or spill_ratio < 1:
            raise ValueError("spill_floor must be >= 0 and spill_ratio >= 1")
        if not 0 <= shrink_slack <= 1:
            raise ValueError(f"shrink_slack must be in [0, 1], got {shrink_slack}")
        self.smoothing = smoothing
        self.resize_margin = resize_margin
        self.cooldown = cooldown
        self.imbalance = imbalance
        self.min_gain = min_gain
        self.max_moves = max_moves
        self.min_spills = min_spills
        self.warm_slack = warm_slack
        self.spill_floor = spill_floor
        self.spill_ratio = spill_ratio
        if ample_kv < 0:
            raise ValueError(f"ample_kv must be >= 0 (0: never), got {ample_kv}")
        self.ample_kv = ample_kv
        self._ample = False   # the last round found the KV cache ample (see ``place``)
        self.shrink_slack = shrink_slack
        # Broker-side memory across rounds: smoothed demand, the round each prompt last grew.
        self._demand: dict[Prompt, float] = {}
        self._recent: dict[Prompt, deque[float]] = {}
        self._grew: dict[Prompt, int] = {}

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "smoothing", "resize_margin", "cooldown", "imbalance", "min_gain", "max_moves",
            "min_spills", "warm_slack", "spill_floor", "spill_ratio", "shrink_slack", "ample_kv")}

    # -- per request (senders) -------------------------------------------------------

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        if not ids:
            return self.spill_anywhere(prompt, placement, loads)
        best, best_load = lightest(ids, loads, self.next_turn())
        if best_load <= self.spill_floor:
            return best  # the common case: a placed instance has room
        # Spill only to a clearly lighter instance, or locality is lost for nothing.
        # The rule, solved for the other instance's load:
        bound = (best_load - self.spill_floor) / self.spill_ratio
        other = None
        for inst, load in loads.items():
            if load < bound and inst not in ids:
                other, bound = inst, load
        if other is None:
            return best
        self.note_spill(prompt, other)
        return other

    # -- per round (broker) ----------------------------------------------------------

    def place(self, inp: RoundInput) -> Placement:
        pool = check_pool(inp.instances)
        room = kv_room(inp)
        # Entered at ample_kv, left under half of it: no flapping on a KV figure's noise.
        self._ample = bool(self.ample_kv) and room >= self.ample_kv * (0.5 if self._ample else 1.0)
        if self._ample:
            self.held = {}
            self._smooth(inp.demand(), inp.all_prompts())   # keep the demand memory current
            return everywhere(inp, self, f"every prefix fits {room:.0f}x over in the free KV cache "
                                         "of every instance: on every instance, balanced by load")
        n = len(pool)
        rank = {i: k for k, i in enumerate(pool)}
        prompts = inp.all_prompts()
        demand = self._smooth(inp.demand(), prompts)
        total = sum(demand.values())
        rnd = (inp.previous.round if inp.previous is not None else 0) + 1
        prev = dict(inp.previous.prompts) if inp.previous is not None else {}
        r = _Round(pool=pool, rank=rank, demand=demand, warm=_warm_sets(inp, prompts, rank),
                   sets={p: [i for i in prev.get(p, ()) if i in rank] for p in prompts},
                   notes={p: [] for p in prompts}, mean=total / n,
                   peak={p: max(self._recent[p]) for p in prompts})
        for p in prompts:
            gone = [i for i in prev.get(p, ()) if i not in rank]
            if gone:
                r.notes[p].append(f"{', '.join(gone)} left the pool")

        # Spills: senders found every placed instance busy, so the prompt needs more;
        # while it keeps spilling it does not shrink either.
        for p in prompts:
            for inst, count in sorted(inp.spills.get(p, {}).items()):
                if count < self.min_spills or inst not in rank:
                    continue
                self._grew[p] = rnd
                if inst not in r.sets[p]:
                    r.sets[p].append(inst)
                    r.notes[p].append(f"added {inst}: {count} requests spilled there "
                                      f"(all its instances were over the load threshold)")

        target = {}
        held: dict[Prompt, str] = {}
        for p in prompts:
            have = len(r.sets[p])
            k = n * demand[p] / total if total > 0 else 0.0
            want = min(n, max(1, _round(k)))
            if have and abs(k - have) < self.resize_margin:
                want = have
            elif want < have and rnd - self._grew.get(p, -self.cooldown) < self.cooldown:
                held[p] = f"wants {want}, keeps {have}: grew or spilled in round {self._grew[p]}"
                want = have  # it grew moments ago (spills, a burst): let that settle
            elif want < have and total > 0 and n * r.peak[p] / total > have - self.resize_margin:
                held[p] = (f"wants {want}, keeps {have}: its recent peak "
                           f"({n * r.peak[p] / total:.2f} instances' worth) still needs them")
                want = have  # its demand was high enough for `have` within the last cooldown rounds
            target[p] = want
            if want != have or not prev.get(p):
                published = sum(i in rank for i in prev.get(p, ()))
                was = f" (was {published})" if published else ""
                r.notes[p].insert(0, f"demand {demand[p]:,.0f} tok/s = "
                                     f"{demand[p] / total if total else 0:.0%} of pool "
                                     f"-> {want} instance{'s' * (want != 1)}{was}")

        self.held = held
        freed = self._shrink(r, target)
        for p in sorted(prompts, key=lambda q: (-demand[q], q)):
            self._grow(r, p, target[p])
        for inst, p in freed.items():  # nobody took it: the prompt keeps it
            if not r.hosted(inst):
                r.sets[p].append(inst)
                r.notes[p] = [x for x in r.notes[p] if not x.startswith(f"removed {inst} ")]
                self.held[p] = f"wants {target[p]}, kept {inst}: no other prompt takes it"
        self._fill(r)
        self._rebalance(r)

        decisions = []
        for p in prompts:
            r.sets[p].sort(key=rank.__getitem__)
            before = set(prev.get(p, ()))
            added = tuple(i for i in r.sets[p] if i not in before)
            removed = tuple(sorted(before - set(r.sets[p])))
            if before and len(r.sets[p]) > len(before & set(pool)):
                self._grew[p] = rnd
            if added or removed:
                decisions.append(Decision(p, added, removed,
                                          f"prompt {p}: " + "; ".join(r.notes[p])))
        return self._placement(r.sets, decisions, inp)

    def _smooth(self, fresh: Mapping[Prompt, float], prompts: list[Prompt]) -> dict[Prompt, float]:
        """Exponentially weighted demand: one bursty second should not move anything."""
        a = self.smoothing
        out = {}
        for p in prompts:
            new = fresh.get(p, 0.0)
            old = self._demand.get(p)
            out[p] = new if old is None else a * new + (1 - a) * old
            self._recent.setdefault(p, deque(maxlen=max(1, self.cooldown))).append(out[p])
        self._demand = out
        return dict(out)

    def _shrink(self, r: _Round, target: Mapping[Prompt, int]) -> dict[InstanceId, Prompt]:
        """Drop the most loaded instance of each prompt over its count: one a round, so
        a prompt sheds load gradually and the projection is checked again each round. A
        removal is skipped when it would lift the peak over the rebalancing trigger (the
        rebalancer would add it back), or when it would leave the prompt's other
        instances more than ``shrink_slack`` of that margin over the mean (1.125x with the
        defaults): a removal to the edge of the trigger is undone by the next round's
        noise (measured on bench_policies: shrunk, then re-added 1-15 rounds later, five
        times a run). An instance left with nothing is only lent out."""
        freed: dict[InstanceId, Prompt] = {}
        limit = (1 + self.imbalance) * r.mean
        headroom = (1 + self.shrink_slack * self.imbalance) * r.mean
        for p in sorted(r.sets):
            if len(r.sets[p]) <= target[p]:
                continue
            loads, _ = r.project()
            inst = max(r.sets[p], key=lambda i: (loads[i], r.rank[i]))
            trial = dict(r.sets)
            trial[p] = [i for i in r.sets[p] if i != inst]
            after, _ = r.project(trial)
            if max(after.values()) > max(limit, max(loads.values())):
                r.notes[p].append(f"kept {inst}: without it the rest would be overloaded")
                self.held[p] = f"wants {target[p]}, {r.notes[p][-1]}"
                continue
            # The rest must carry the prompt's recent peak, not only today's smoothed demand.
            high, _ = project(trial, {**r.demand, p: max(r.demand[p], r.peak[p])}, r.pool)
            rest = max(high[i] for i in trial[p])
            if rest > headroom:
                r.notes[p].append(f"kept {inst}: without it its other instances would be at "
                                  f"{rest / r.mean:.2f}x the mean (over {headroom / r.mean:.3g}x)")
                self.held[p] = f"wants {target[p]}, {r.notes[p][-1]}"
                continue
            r.sets[p].remove(inst)
            if not r.hosted(inst):
                freed[inst] = p
            r.notes[p].append(f"removed {inst} (most loaded of its instances)")
        return freed

    def _grow(self, r: _Round, p: Prompt, want: int) -> None:
        while len(r.sets[p]) < want:
            loads, _ = r.project()
            free = r.lightest_first(p, loads)
            inst, why = free[0], "least loaded, no warm prefix"
            for i in free:
                if i in r.warm[p] and loads[i] <= loads[free[0]] + self.warm_slack * r.mean:
                    inst = i
                    why = "warm prefix, " + ("" if i == free[0] else "nearly ") + "least loaded"
                    break
            r.sets[p].append(inst)
            r.notes[p].append(f"added {inst} ({why})")

    def _fill(self, r: _Round) -> None:
        """Give every idle instance to the prompt with the most load per instance."""
        if not r.sets:
            return
        for inst in r.pool:
            if r.hosted(inst):
                continue
            p = max(r.sets, key=lambda q: (r.demand[q] / max(1, len(r.sets[q])),
                                           inst in r.warm[q], -len(r.sets[q]), q))
            r.sets[p].append(inst)
            r.notes[p].append(f"added {inst} (it served no prompt; {p} has the most "
                              f"load per instance)")

    def _rebalance(self, r: _Round) -> None:
        if r.mean <= 0:
            return
        for _ in range(self.max_moves):
            loads, share = r.project()
            peak = max(loads.values())
            if peak <= (1 + self.imbalance) * r.mean:
                return
            hot = max(r.pool, key=lambda i: (loads[i], -r.rank[i]))
            best = None
            for p in sorted(r.sets):
                if share.get(p, {}).get(hot, 0.0) <= 0:
                    continue
                alone = r.hosted(hot) == 1  # moving its only prompt just relabels it
                free = r.lightest_first(p, loads)
                dsts = free[:1] + [i for i in free[1:] if i in r.warm[p]][:1]
                for dst in dsts:
                    for kind in ("grow",) if alone else ("move", "grow"):
                        trial = {q: list(s) for q, s in r.sets.items()}
                        trial[p].append(dst)
                        if kind == "move":
                            trial[p].remove(hot)
                        new, _ = r.project(trial)
                        new_peak = max(new.values())
                        # Lowest peak first; then fewer instances, warm, evener loads.
                        score = (round(new_peak / r.mean, 2), kind == "grow",
                                 dst not in r.warm[p], sum(v * v for v in new.values()))
                        if best is None or score < best[0]:
                            best = (score, p, kind, dst, new_peak)
            if best is None or best[4] > peak - self.min_gain * r.mean:
                return
            _, p, kind, dst, new_peak = best
            r.sets[p].append(dst)
            gain = f"peak {peak / r.mean:.2f}x -> {new_peak / r.mean:.2f}x mean"
            if dst in r.warm[p]:
                gain += f"; {dst} has a warm prefix"
            if kind == "move":
                r.sets[p].remove(hot)
                r.notes[p].append(f"moved {hot} -> {dst} to even out load ({gain})")
            else:
                r.notes[p].append(f"added {dst} to share {hot}'s load ({gain})")


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, unlike round()'s half-to-even


def _warm_sets(inp: RoundInput, prompts: list[Prompt],
               live: Mapping[InstanceId, int]) -> dict[Prompt, set[InstanceId]]:
    """Instances likely to hold each prompt's prefix: placed there last round, or reporting
    prefix hits for it over the last interval."""
    warm: dict[Prompt, set[InstanceId]] = {p: set() for p in prompts}
    if inp.previous is not None:
        for p, ids in inp.previous.prompts.items():
            if p in warm:
                warm[p].update(i for i in ids if i in live)
    for inst, per in inp.figures.items():
        if inst in live:
            for p, f in per.items():
                if p in warm and f.hit_rate > 0 and f.prefill_tps > 0:
                    warm[p].add(inst)
    return warm


Shares = dict[Prompt, dict[InstanceId, float]]


def project(sets: Mapping[Prompt, list[InstanceId]], demand: Mapping[Prompt, float],
            pool: list[InstanceId], iters: int = 60) -> tuple[dict[InstanceId, float], Shares]:
    """Load per instance if senders balance each prompt over its instances.

    Each prompt's demand is water-filled over its instances given everyone else's, in
    turn, until nothing moves (block coordinate descent on the sum of squared loads,
    the balance least-loaded choice tends to). Returns (loads, per-prompt shares).
    """
    share: Shares = {}
    loads = dict.fromkeys(pool, 0.0)
    for p, ids in sets.items():
        if ids and demand.get(p, 0.0) > 0:
            each = demand[p] / len(ids)
            share[p] = dict.fromkeys(ids, each)
            for i in ids:
                loads[i] += each
    multi = sorted((p for p in share if len(share[p]) > 1), key=lambda p: (-demand[p], p))
    eps = 1e-6 * (sum(demand.values()) or 1.0)
    for _ in range(iters):
        moved = 0.0
        for p in multi:
            mine = share[p]
            base = {i: loads[i] - mine[i] for i in mine}
            for i, x in _water_fill(base, demand[p]).items():
                moved += abs(x - mine[i])
                mine[i] = x
                loads[i] = base[i] + x
        if moved <= eps:
            break
    return loads, share


def _water_fill(base: Mapping[InstanceId, float], amount: float) -> dict[InstanceId, float]:
    """Pour ``amount`` over instances standing at ``base``, lowest first."""
    levels = sorted(base.values())
    level, acc = 0.0, 0.0
    for k, b in enumerate(levels):
        acc += b
        level = (amount + acc) / (k + 1)
        if k + 1 == len(levels) or level <= levels[k + 1]:
            break
    return {i: max(0.0, level - b) for i, b in base.items()}
