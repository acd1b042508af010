"""Least-loaded: every prompt on every instance; each request goes to the instance with
the lowest load (queue depth + running sequences; near-ties in turn, see
:func:`~alto_bus.scheduling.base.lightest`). Balances load, ignores locality.
"""

from __future__ import annotations

from .base import InstanceId, Loads, Placement, Policy, Prompt, RoundInput, everywhere, lightest


class LeastLoaded(Policy):
    name = "least-loaded"

    def place(self, inp: RoundInput) -> Placement:
        return everywhere(inp, self)

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        if not ids:
            return self.spill_anywhere(prompt, placement, loads)
        return lightest(ids, loads, self.next_turn())[0]
