"""Prompt prefix lengths, carried from the broker to senders in a placement's params.

Per-request policies modelled on public routers (SGLang's cache-aware, Preble's E2) weigh
the cached part of a request against the rest. ``choose`` gets only the prompt's name, so
the broker (which knows each prompt's fixed prefix from the topology, ``RoundInput.
prefix_tokens``) publishes the lengths with the placement, and a sender reads them back.
They travel as a constructor parameter (``prefix_tokens``), so ``make_policy(p.policy,
**p.params)`` rebuilds the same policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Placement, Prompt


def check_prefixes(prefix_tokens: Mapping[str, Any] | None) -> dict[Prompt, int]:
    """A clean copy: prompt -> non-negative int tokens."""
    out: dict[Prompt, int] = {}
    for p, n in (prefix_tokens or {}).items():
        try:
            value = int(n)
        except (TypeError, ValueError):
            raise ValueError(f"prefix_tokens[{p!r}] must be a number, got {n!r}") from None
        if value < 0:
            raise ValueError(f"prefix_tokens[{p!r}] must be >= 0, got {value}")
        out[str(p)] = value
    return out


def prefix_of(prompt: Prompt, placement: Placement, known: Mapping[Prompt, int]) -> int:
    """The prompt's prefix length as published with ``placement``, else as known locally."""
    published = placement.params.get("prefix_tokens")
    if isinstance(published, Mapping) and prompt in published:
        try:
            return max(0, int(published[prompt]))
        except (TypeError, ValueError):
            pass
    return known.get(prompt, 0)


def pool_of(placement: Placement, loads: Mapping[str, float]) -> list[str]:
    """Every instance the placement names (in its order), then any other the sender has a
    load for: a member that hosts no prompt yet is still in the pool."""
    pool = dict.fromkeys(i for ids in placement.prompts.values() for i in ids)
    pool.update(dict.fromkeys(sorted(loads)))
    return list(pool)
