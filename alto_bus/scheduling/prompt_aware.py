"""Prompt-aware placement: each prompt on a few instances, sized by its demand.

A round, in the broker:

1. Demand of each prompt in token-work per second (prompt tokens computed, i.e. not
   served by the prefix cache, plus decoded tokens), summed over the instances.
2. Its fair share of the pool, ``k = n_instances * demand / total``, sets how many
   instances it gets (at least one). Hysteresis: the count changes only when ``k`` is
   ``resize_margin`` or more away from the current count, so noise moves nothing.
3. Instances are chosen starting from the previous placement (prefixes are warm there).
   A prompt that grows takes the least loaded instance, or a warm one (it reported
   prefix hits for the prompt, or held it last round) when that is nearly as light.
   A prompt that shrinks gives up its most loaded instance, but keeps an instance it
   alone uses unless another prompt takes it, so no instance sits idle. An instance
   that serves nothing (it joined, or the first round) goes to the prompt with the
   highest load per instance. Where senders spilled (see ``choose``), the instance is
   added to the prompt's placement.
4. Projected loads assume senders balance each prompt over its instances, which they
   do (least-loaded among the placed): a water-filling of each prompt's demand over
   its instances, iterated to a fixed point. While the most loaded instance is above
   ``(1 + imbalance)`` times the mean, the one move or one extra instance that lowers
   the peak most is applied, up to ``max_moves`` a round and only if it gains at least
   ``min_gain`` of the mean.

Per request, in senders: the least-loaded placed instance; when even that one is busier
than ``spill_floor + spill_ratio * (least-loaded other instance)``, the request spills
to that other instance and the spill is counted for the next round.

The same ideas as Preble's exploit/explore and SGLang's cache-aware router (prefer the
instance holding the prefix unless load is too uneven), moved from per request to a
per-prompt placement a broker publishes, because here the prompts are few, long and
known in advance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
)

Sets = dict[Prompt, list[InstanceId]]


class PromptAware(Policy):
    name = "prompt-aware"

    def __init__(self, *, smoothing: float = 0.5, resize_margin: float = 0.75,
                 cooldown: int = 5, imbalance: float = 0.25, min_gain: float = 0.05,
                 max_moves: int = 4, min_spills: int = 3, warm_slack: float = 0.15,
                 spill_floor: float = 8.0, spill_ratio: float = 1.5) -> None:
        super().__init__()
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 rounds, got {cooldown}")
        if not 0.5 <= resize_margin <= 4:
            raise ValueError(f"resize_margin must be in [0.5, 4], got {resize_margin}")
        if imbalance < 0 or min_gain <= 0 or warm_slack < 0:
            raise ValueError("imbalance and warm_slack must be >= 0 and min_gain > 0")
        if max_moves < 0 or min_spills < 1:
            raise ValueError("max_moves must be >= 0 and min_spills >= 1")
        if spill_floor < 0 or spill_ratio < 1:
            raise ValueError("spill_floor must be >= 0 and spill_ratio >= 1")
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
        # Broker-side memory across rounds: smoothed demand, and when each prompt last grew.
        self._demand: dict[Prompt, float] = {}
        self._grew: dict[Prompt, int] = {}

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "smoothing", "resize_margin", "cooldown", "imbalance", "min_gain", "max_moves",
            "min_spills",
            "warm_slack", "spill_floor", "spill_ratio")}

    # -- per request (senders) -------------------------------------------------------

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        if not ids:
            return self.spill_anywhere(prompt, placement, loads)
        best, best_load = ids[0], math.inf
        for inst in ids:
            load = loads.get(inst, 0.0)
            if load < best_load:
                best, best_load = inst, load
        if best_load <= self.spill_floor:
            return best  # the common case: a placed instance has room
        # Spill only to an instance that is clearly lighter, or locality is lost for
        # nothing; the threshold rewritten as a bound on the other instance's load.
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
        n = len(pool)
        prompts = inp.all_prompts()
        demand = self._smooth(inp.demand(), prompts)
        rnd = (inp.previous.round if inp.previous is not None else 0) + 1
        total = sum(demand.values())
        mean = total / n
        share = {p: (n * demand[p] / total if total > 0 else 0.0) for p in prompts}
        prev = dict(inp.previous.prompts) if inp.previous is not None else {}
        notes: dict[Prompt, list[str]] = {p: [] for p in prompts}
        warm = _warm_sets(inp, prompts, pool)
        rank = {i: k for k, i in enumerate(pool)}

        sets: Sets = {p: [i for i in prev.get(p, ()) if i in rank] for p in prompts}
        for p in prompts:
            gone = [i for i in prev.get(p, ()) if i not in rank]
            if gone:
                notes[p].append(f"{', '.join(gone)} left the pool")

        # Spills: senders found every placed instance busy, so the prompt needs more.
        for p in prompts:
            for inst, count in sorted(inp.spills.get(p, {}).items()):
                if count >= self.min_spills and inst in rank and inst not in sets[p]:
                    sets[p].append(inst)
                    notes[p].append(f"added {inst}: {count} requests spilled there "
                                    f"(all its instances were over the load threshold)")

        target = {}
        for p in prompts:
            have, k = len(sets[p]), share[p]
            want = min(n, max(1, _round(k)))
            if have and abs(k - have) < self.resize_margin:
                want = have
            elif want < have and rnd - self._grew.get(p, -self.cooldown) < self.cooldown:
                want = have  # it grew moments ago (spills, a burst): let that settle
            target[p] = want
            if want != have or not prev.get(p):
                was = f" (was {have})" if have else ""
                notes[p].insert(0, f"demand {demand[p]:,.0f} tok/s = "
                                   f"{demand[p] / total if total else 0:.0%} of pool "
                                   f"-> {want} instance{'s' * (want != 1)}{was}")

        by_demand = sorted(prompts, key=lambda p: (-demand[p], p))
        freed = self._shrink(sets, target, demand, pool, notes)
        self._grow(sets, target, demand, pool, warm, mean, by_demand, notes)
        for inst, p in freed.items():  # nobody took it: the prompt keeps it
            if not any(inst in s for s in sets.values()):
                sets[p].append(inst)
                notes[p] = [x for x in notes[p] if not x.startswith(f"removed {inst}")]
        self._fill(sets, demand, pool, warm, notes)
        self._rebalance(sets, demand, pool, warm, mean, notes)

        decisions = []
        for p in prompts:
            sets[p].sort(key=rank.__getitem__)
            before = set(prev.get(p, ()))
            added = tuple(i for i in sets[p] if i not in before)
            removed = tuple(sorted(before - set(sets[p])))
            if len(sets[p]) > len(before & set(pool)):
                self._grew[p] = rnd
            if added or removed:
                decisions.append(Decision(p, added, removed,
                                          f"prompt {p}: " + "; ".join(notes[p])))
        return self._placement(sets, decisions, inp)

    def _smooth(self, fresh: Mapping[Prompt, float], prompts: list[Prompt]) -> dict[Prompt, float]:
        """Exponentially weighted demand: one bursty second should not move anything."""
        a = self.smoothing
        out = {}
        for p in prompts:
            new = fresh.get(p, 0.0)
            old = self._demand.get(p)
            out[p] = new if old is None else a * new + (1 - a) * old
        self._demand = out
        return dict(out)

    def _shrink(self, sets: Sets, target: Mapping[Prompt, int], demand: Mapping[Prompt, float],
                pool: list[InstanceId], notes: dict[Prompt, list[str]]) -> dict[InstanceId, Prompt]:
        """Drop the most loaded instances of prompts over their count; an instance that
        would be left with nothing is only lent out (returned if nobody takes it)."""
        freed: dict[InstanceId, Prompt] = {}
        for p in sorted(sets):
            while len(sets[p]) > target[p]:
                loads, _ = project(sets, demand, pool)
                inst = max(sets[p], key=lambda i: (loads[i], pool.index(i)))
                sets[p].remove(inst)
                if not any(inst in s for s in sets.values()):
                    freed[inst] = p
                notes[p].append(f"removed {inst} (most loaded of its instances)")
        return freed

    def _grow(self, sets: Sets, target: Mapping[Prompt, int], demand: Mapping[Prompt, float],
              pool: list[InstanceId], warm: Mapping[Prompt, set[InstanceId]], mean: float,
              by_demand: list[Prompt], notes: dict[Prompt, list[str]]) -> None:
        for p in by_demand:
            while len(sets[p]) < target[p]:
                loads, _ = project(sets, demand, pool)
                inst, why = self._pick(p, sets, loads, pool, warm, mean)
                sets[p].append(inst)
                notes[p].append(f"added {inst} ({why})")

    def _fill(self, sets: Sets, demand: Mapping[Prompt, float], pool: list[InstanceId],
              warm: Mapping[Prompt, set[InstanceId]], notes: dict[Prompt, list[str]]) -> None:
        """Give every idle instance to the prompt with the most load per instance."""
        if not sets:
            return
        for inst in pool:
            if any(inst in s for s in sets.values()):
                continue
            p = max(sets, key=lambda q: (demand[q] / max(1, len(sets[q])), inst in warm[q],
                                         -len(sets[q]), q))
            sets[p].append(inst)
            notes[p].append(f"added {inst} (it served no prompt; {p} has the most "
                            f"load per instance)")

    def _rebalance(self, sets: Sets, demand: Mapping[Prompt, float], pool: list[InstanceId],
                   warm: Mapping[Prompt, set[InstanceId]], mean: float,
                   notes: dict[Prompt, list[str]]) -> None:
        if mean <= 0:
            return
        for _ in range(self.max_moves):
            loads, share = project(sets, demand, pool)
            peak = max(loads.values())
            if peak <= (1 + self.imbalance) * mean:
                return
            hot = max(pool, key=lambda i: (loads[i], -pool.index(i)))
            best = None
            for p in sorted(sets):
                if hot not in sets[p] or share.get(p, {}).get(hot, 0.0) <= 0:
                    continue
                alone = all(hot not in s for q, s in sets.items() if q != p)
                for dst in self._targets(p, sets, loads, pool, warm):
                    moves = [("grow", dst)] if alone else [("move", dst), ("grow", dst)]
                    for kind, dst_ in moves:
                        trial = {q: list(s) for q, s in sets.items()}
                        trial[p].append(dst_)
                        if kind == "move":
                            trial[p].remove(hot)
                        new, _ = project(trial, demand, pool)
                        score = (round(max(new.values()) / mean, 2), kind == "grow",
                                 dst_ not in warm[p], sum(v * v for v in new.values()))
                        if best is None or score < best[0]:
                            best = (score, p, kind, dst_, max(new.values()))
            if best is None or best[4] > peak - self.min_gain * mean:
                return
            _, p, kind, dst, new_peak = best
            sets[p].append(dst)
            if kind == "move":
                sets[p].remove(hot)
                notes[p].append(f"moved {hot} -> {dst} to even out load "
                                f"(peak {peak / mean:.2f}x -> {new_peak / mean:.2f}x mean)")
            else:
                notes[p].append(f"added {dst} to share {hot}'s load "
                                f"(peak {peak / mean:.2f}x -> {new_peak / mean:.2f}x mean)")

    def _targets(self, p: Prompt, sets: Sets, loads: Mapping[InstanceId, float],
                 pool: list[InstanceId], warm: Mapping[Prompt, set[InstanceId]]) -> list[InstanceId]:
        """Where ``p`` could go: the lightest instance it is not on, and the lightest warm one."""
        free = sorted((i for i in pool if i not in sets[p]), key=lambda i: (loads[i], pool.index(i)))
        out = free[:1]
        for i in free:
            if i in warm[p]:
                if i not in out:
                    out.append(i)
                break
        return out

    def _pick(self, p: Prompt, sets: Sets, loads: Mapping[InstanceId, float],
              pool: list[InstanceId], warm: Mapping[Prompt, set[InstanceId]],
              mean: float) -> tuple[InstanceId, str]:
        free = sorted((i for i in pool if i not in sets[p]), key=lambda i: (loads[i], pool.index(i)))
        lightest = free[0]
        for i in free:
            if i in warm[p] and loads[i] <= loads[lightest] + self.warm_slack * mean:
                return i, "warm prefix" + (", least loaded" if i == lightest else ", nearly least loaded")
        return lightest, "least loaded, no warm prefix"


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up, unlike round()'s half-to-even


def _warm_sets(inp: RoundInput, prompts: list[Prompt], pool: list[InstanceId]) -> dict[Prompt, set[InstanceId]]:
    """Instances likely to hold each prompt's prefix: placed there last round, or reporting
    prefix hits for it over the last interval."""
    live = set(pool)
    warm = {p: set() for p in prompts}
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


def project(sets: Mapping[Prompt, list[InstanceId]], demand: Mapping[Prompt, float],
            pool: list[InstanceId], iters: int = 60) -> tuple[dict[InstanceId, float],
                                                              dict[Prompt, dict[InstanceId, float]]]:
    """Load per instance if senders balance each prompt over its instances.

    Each prompt's demand is water-filled over its instances given everyone else's, in
    turn, until nothing moves (block coordinate descent on the sum of squared loads,
    which is what least-loaded choice converges to). Returns (loads, per-prompt shares).
    """
    share: dict[Prompt, dict[InstanceId, float]] = {}
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
            new = _water_fill(base, demand[p])
            for i, x in new.items():
                moved += abs(x - mine[i])
                mine[i] = x
                loads[i] = base[i] + x
        if moved <= eps:
            break
    return loads, share


def _water_fill(base: Mapping[InstanceId, float], amount: float) -> dict[InstanceId, float]:
    """Pour ``amount`` over instances at levels ``base``, filling the lowest first."""
    items = sorted(base.items(), key=lambda kv: kv[1])
    level, acc = 0.0, 0.0
    for k, (_, b) in enumerate(items):
        acc += b
        level = (amount + acc) / (k + 1)
        if k + 1 == len(items) or level <= items[k + 1][1]:
            break
    return {i: max(0.0, level - b) for i, b in base.items()}
