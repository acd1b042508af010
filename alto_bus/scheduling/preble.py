"""Preble-style placement (Srivatsa et al., "Preble: Efficient distributed prompt
scheduling for LLM serving", ICLR 2025), in our own words and structure.

Preble's global scheduler keeps a tree of prompt prefixes, which GPUs hold each one, and
each prefix's load over a window (3 minutes). Per request, its E2 rule:

* **exploit** when the cached part of the prompt is longer than the part still missing:
  send it to a GPU that holds the prefix (the least loaded of them);
* **explore** otherwise: the GPU with the lowest cost (its load, plus what the request
  would evict, plus its prefill), which then holds that prefix too.

After assignment it adjusts: when the heaviest GPU carries more than ``Thbal`` times the
lightest's load it shifts prefixes (cheapest first) from the one to the other, or, when
the heavy GPU serves a single prefix whose requests' queueing time doubled over the
window, replicates that prefix onto the light GPU (autoscaling a hot prefix).

Mapped onto our split (``place`` per round in the broker, ``choose`` per request in
senders), a prompt is Preble's prefix node (its fixed part is the large node; the
variable part of each request is the small leaf):

* ``place``: each prompt's allocation (the members that hold it) is the placement. Its
  load is its token-work per second (computed prompt tokens + decoded tokens) averaged
  over ``window`` rounds and split evenly over its members; a member's load cost is the
  sum. A prompt without members is explored onto the member of least cost. Senders'
  redirects (below) join a member to a prompt's allocation once ``min_spills`` arrive in a
  round (Preble records where it routed). Then rebalancing: while the heaviest member's
  cost exceeds ``rebalance_ratio`` x the lightest's, move the cheapest prompts across, or,
  when the heavy one has a single prompt, replicate it if it is overloaded. Overload is
  Preble's detector with the queue depth per member (what our workers report) for the
  queueing time: the mean over the newer half of the window at ``overload_factor`` (2) x
  the older half's, and at least ``min_queue``. Any overloaded prompt is also scaled out
  by one member a round. A prompt with no demand over a whole window shrinks back to one
  member (Preble forgets the allocation of a prefix that left its window).
* ``choose``: exploit when the prompt's published prefix is longer than ``tail_tokens``
  (the missing part a sender assumes, as it cannot see the request's text): the least
  loaded of its members; the post-assignment adjustment per request redirects to the
  lightest other member when the chosen one is over ``rebalance_ratio`` x its load plus
  ``redirect_floor`` requests. Explore otherwise: the least loaded member.

Our additions, not Preble's: the ``redirect_floor`` (without it loads of 3 against 1
would redirect), ``max_moves`` per round, and near-tie rotation among equal loads
(:func:`.base.lightest`, for senders' stale loads). Parameters named after Preble's are
ours to choose where the paper leaves them open: ``rebalance_ratio`` 2.
"""

from __future__ import annotations

from collections import deque
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
    lightest,
)
from .prefix_params import check_prefixes, pool_of, prefix_of

Sets = dict[Prompt, list[InstanceId]]


class Preble(Policy):
    name = "preble"

    def __init__(self, *, window: int = 180, rebalance_ratio: float = 2.0,
                 overload_factor: float = 2.0, min_queue: float = 2.0, min_spills: int = 10,
                 max_moves: int = 4, redirect_floor: float = 16.0, tail_tokens: int = 256,
                 prefix_tokens: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if window < 4:
            raise ValueError(f"window must be >= 4 rounds (two halves to compare), got {window}")
        if rebalance_ratio < 1 or overload_factor <= 1:
            raise ValueError("rebalance_ratio must be >= 1 and overload_factor > 1")
        if min_queue < 0 or redirect_floor < 0 or tail_tokens < 0:
            raise ValueError("min_queue, redirect_floor and tail_tokens must be >= 0")
        if min_spills < 1 or max_moves < 0:
            raise ValueError("min_spills must be >= 1 and max_moves >= 0")
        self.window = int(window)
        self.rebalance_ratio = rebalance_ratio
        self.overload_factor = overload_factor
        self.min_queue = min_queue
        self.min_spills = int(min_spills)
        self.max_moves = int(max_moves)
        self.redirect_floor = redirect_floor
        self.tail_tokens = int(tail_tokens)
        self.prefix_tokens = check_prefixes(prefix_tokens)
        # Broker-side history: per prompt, its demand and its queue per member, per round.
        self._demand: dict[Prompt, deque[float]] = {}
        self._queue: dict[Prompt, deque[float]] = {}

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "rebalance_ratio": self.rebalance_ratio,
                "overload_factor": self.overload_factor, "min_queue": self.min_queue,
                "min_spills": self.min_spills, "max_moves": self.max_moves,
                "redirect_floor": self.redirect_floor, "tail_tokens": self.tail_tokens,
                "prefix_tokens": dict(self.prefix_tokens)}

    # -- per request (senders) -------------------------------------------------------

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        pool = pool_of(placement, loads)
        if not pool:
            raise ValueError(f"no instance to send prompt {prompt!r} to: the placement is empty")
        cached = prefix_of(prompt, placement, self.prefix_tokens)
        if ids and cached > self.tail_tokens:
            best, load = lightest(ids, loads, self.next_turn())        # exploit
            others = [i for i in pool if i not in ids]
            if others:
                light, low = lightest(others, loads, self.next_turn())
                if load > self.rebalance_ratio * low + self.redirect_floor:
                    self.note_spill(prompt, light)                      # redirect
                    return light
            return best
        target = lightest(pool, loads, self.next_turn())[0]             # explore
        if not ids or target not in ids:
            self.note_spill(prompt, target)
        return target

    # -- per round (broker) ----------------------------------------------------------

    def place(self, inp: RoundInput) -> Placement:
        pool = check_pool(inp.instances)
        rank = {i: k for k, i in enumerate(pool)}
        self.prefix_tokens.update(check_prefixes(inp.prefix_tokens))
        prompts = inp.all_prompts()
        prev = dict(inp.previous.prompts) if inp.previous is not None else {}
        sets: Sets = {p: [i for i in prev.get(p, ()) if i in rank] for p in prompts}
        notes: dict[Prompt, list[str]] = {p: [] for p in prompts}
        cost = self._observe(inp, prompts, sets)

        def loads() -> dict[InstanceId, float]:
            out = dict.fromkeys(pool, 0.0)
            for p, ids in sets.items():
                for i in ids:
                    out[i] += cost[p] / len(ids)
            return out

        def cheapest(exclude: list[InstanceId]) -> InstanceId | None:
            now = loads()
            free = [i for i in pool if i not in exclude]
            if not free:
                return None
            return min(free, key=lambda i: (now[i], sum(i in s for s in sets.values()), rank[i]))

        for p in prompts:   # where senders redirected or explored, the prefix now lives too
            for inst, count in sorted(inp.spills.get(p, {}).items()):
                if count >= self.min_spills and inst in rank and inst not in sets[p]:
                    sets[p].append(inst)
                    notes[p].append(f"added {inst}: {count} requests were redirected there")
        for p in prompts:
            if not sets[p]:
                inst = cheapest([])
                sets[p].append(inst)
                notes[p].append(f"explored onto {inst} (lowest load cost)")
        for p in sorted(prompts, key=lambda q: (-cost[q], q)):
            if self._overloaded(p) and len(sets[p]) < len(pool):
                inst = cheapest(sets[p])
                sets[p].append(inst)
                self._queue[p].clear()   # judge the new allocation on fresh figures
                notes[p].append(f"added {inst}: its queue doubled over the window (autoscale)")
            elif len(sets[p]) > 1 and len(self._demand[p]) >= self.window \
                    and max(self._demand[p]) <= 0:
                keep = min(sets[p], key=lambda i: (loads()[i], rank[i]))
                notes[p].append(f"shrunk to {keep}: no demand over the window")
                sets[p] = [keep]
        self._rebalance(sets, cost, loads, rank, notes)

        decisions = []
        for p in prompts:
            sets[p].sort(key=rank.__getitem__)
            before = set(prev.get(p, ()))
            added = tuple(i for i in sets[p] if i not in before)
            removed = tuple(sorted(before - set(sets[p])))
            if added or removed:
                reason = "; ".join(notes[p]) or "pool membership changed"
                decisions.append(Decision(p, added, removed, f"prompt {p}: {reason}"))
        return self._placement(sets, decisions, inp)

    def _observe(self, inp: RoundInput, prompts: list[Prompt], sets: Sets) -> dict[Prompt, float]:
        """Record this round's figures; return each prompt's load over the window."""
        demand = inp.demand()
        for p in prompts:
            self._demand.setdefault(p, deque(maxlen=self.window)).append(demand.get(p, 0.0))
            queued = [inp.figures.get(i, {}).get(p) for i in sets[p]]
            depth = [f.queued for f in queued if f is not None]
            self._queue.setdefault(p, deque(maxlen=self.window)).append(
                sum(depth) / len(sets[p]) if sets[p] else 0.0)
        return {p: sum(self._demand[p]) / len(self._demand[p]) for p in prompts}

    def _overloaded(self, p: Prompt) -> bool:
        """Preble's detector: the newer half of the window queues ``overload_factor`` x
        the older half (and at least ``min_queue`` per member)."""
        q = self._queue.get(p)
        if q is None or len(q) < 4:
            return False
        half = len(q) // 2
        old = sum(list(q)[:half]) / half
        new = sum(list(q)[half:]) / (len(q) - half)
        return new >= self.min_queue and new >= self.overload_factor * old

    def _rebalance(self, sets: Sets, cost: Mapping[Prompt, float], loads: Any,
                   rank: Mapping[InstanceId, int], notes: dict[Prompt, list[str]]) -> None:
        for _ in range(self.max_moves):
            now = loads()
            heavy = max(now, key=lambda i: (now[i], -rank[i]))
            light = min(now, key=lambda i: (now[i], rank[i]))
            if heavy == light or now[heavy] <= self.rebalance_ratio * now[light]:
                return
            mine = sorted((p for p in sets if heavy in sets[p] and light not in sets[p]),
                          key=lambda p: (cost[p] / len(sets[p]), p))
            if not mine:
                return
            if len([p for p in sets if heavy in sets[p]]) == 1:
                p = mine[0]
                if not self._overloaded(p):
                    return
                sets[p].append(light)   # a single hot prefix: replicate it
                self._queue[p].clear()
                notes[p].append(f"added {light}: {heavy} serves only {p} and it is overloaded "
                                f"({now[heavy]:,.0f} vs {now[light]:,.0f} tok/s)")
                continue
            moved = False
            for p in mine:   # cheapest first, while the pair does not swap places
                share = cost[p] / len(sets[p])
                if share <= 0:
                    continue   # an idle prompt: moving it sheds nothing
                if now[heavy] - share < now[light] + share:
                    break
                sets[p][sets[p].index(heavy)] = light
                now[heavy] -= share
                now[light] += share
                moved = True
                notes[p].append(f"moved {heavy} -> {light} to rebalance load cost")
            if not moved:
                return
