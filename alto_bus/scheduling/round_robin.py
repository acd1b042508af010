"""Round-robin: every prompt on every instance; requests of a prompt rotate over them.

The baseline that ignores both load and prefix locality.
"""

from __future__ import annotations

from .base import InstanceId, Loads, Placement, Policy, Prompt, RoundInput, everywhere


class RoundRobin(Policy):
    name = "round-robin"

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[Prompt, int] = {}

    def place(self, inp: RoundInput) -> Placement:
        return everywhere(inp, self)

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = placement.prompts.get(prompt)
        if not ids:
            return self.spill_anywhere(prompt, placement, loads)
        k = self._next.get(prompt, 0)
        self._next[prompt] = k + 1
        return ids[k % len(ids)]
