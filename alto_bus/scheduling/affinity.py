"""Affinity: each prompt pinned to one instance, prompts spread evenly by count.

Pure locality: every request of a prompt goes to its instance however loaded it is,
and pins never follow demand. They move only when their instance leaves the pool or
when counts differ by more than one (an instance joined), one prompt at a time.
"""

from __future__ import annotations

from .base import Decision, InstanceId, Loads, Placement, Policy, Prompt, RoundInput, check_pool


class Affinity(Policy):
    name = "affinity"

    def place(self, inp: RoundInput) -> Placement:
        pool = check_pool(inp.instances)
        prev = inp.previous.prompts if inp.previous is not None else {}
        pin: dict[Prompt, InstanceId] = {}
        count = dict.fromkeys(pool, 0)
        why: dict[Prompt, str] = {}
        for p in inp.all_prompts():
            old = [i for i in prev.get(p, ()) if i in count]
            if old:
                pin[p] = old[0]
                count[old[0]] += 1
        for p in inp.all_prompts():
            if p not in pin:
                inst = min(pool, key=count.__getitem__)
                why[p] = (f"{'its instance left the pool' if prev.get(p) else 'new prompt'}; "
                          f"pinned to {inst} (fewest prompts: {count[inst]})")
                pin[p] = inst
                count[inst] += 1
        # An instance that joined takes prompts from the most crowded one.
        while max(count.values()) - min(count.values()) > 1:
            src = max(pool, key=count.__getitem__)
            dst = min(pool, key=count.__getitem__)
            p = max(q for q, i in pin.items() if i == src)
            pin[p] = dst
            count[src] -= 1
            count[dst] += 1
            why[p] = f"moved {src} -> {dst} to even out prompts per instance"
        decisions = []
        for p, inst in sorted(pin.items()):
            before = tuple(prev.get(p, ()))
            if before != (inst,):
                removed = tuple(i for i in before if i != inst)
                decisions.append(Decision(p, (inst,) if inst not in before else (), removed,
                                          f"prompt {p}: {why.get(p, 'pinned')}"))
        return self._placement({p: (i,) for p, i in pin.items()}, decisions, inp)

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        if not ids:
            return self.spill_anywhere(prompt, placement, loads)
        return ids[0]
