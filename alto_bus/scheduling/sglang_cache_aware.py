"""SGLang-router-style cache-aware routing, in our own words and structure.

SGLang's router (``--policy cache_aware``) decides per request, in the router process:

1. Load check over all workers: when ``max - min > balance_abs_threshold`` **and**
   ``max > balance_rel_threshold * min`` the load is imbalanced and the request goes to
   the shortest queue (the tree still records it there).
2. Otherwise prefix match: the router keeps an approximate radix tree of the request
   texts it sent to each worker. The worker whose tree holds the longest prefix of this
   request wins if ``matched / length > cache_threshold``; else the worker with the
   smallest tree (the one presumed to have the most free cache) gets it.
3. Trees are trimmed by size (``max_tree_size``, least recently used leaves first).

Defaults are the current router's (sgl-model-gateway CLI): cache_threshold 0.3,
balance_abs_threshold 64, balance_rel_threshold 1.5, max_tree_size 2**26 characters,
which we count as 2**26 / 4 tokens (~4 characters a token).

What differs here, and why:

* ``choose`` gets the prompt's name, not its text. A request's key is therefore the
  prompt's shared prefix as ``prefix_tokens / block_tokens`` units (lengths published by
  the broker, see :mod:`.prefix_params`) followed by ``tail_tokens`` units unique to the
  request (its variable part, whose length a sender does not know; 256 by default). With
  1-4K-token prefixes the match rate is far above the threshold either way.
* Every sender is a router with its own trees and its own view of the loads (queue +
  running per member, a broker report plus its own sends), as SGLang routers replicated
  without sync would be. The shortest queue is taken with the repo's near-tie rotation
  (:func:`.base.lightest`): with loads up to a heartbeat old, a strict minimum herds
  every sender onto one member (SGLang's single router counts its in-flight requests
  exactly and does not have that problem).
* Among members matching equally well SGLang takes the first tenant its tree node's hash
  map yields: arbitrary, fixed while the node is unchanged, and different from one node
  (prefix) to another, as each map hashes with its own seed. ``match_tie = "first"``
  models that with a fixed pseudo-random order of the members per prompt (CRC-32 of
  prompt and member: no salted hashing, so runs repeat); ``"least-loaded"`` is a kinder
  variant that SGLang does not have.
* Trees are trimmed at insert time to 90% of the bound once they pass it (SGLang trims on
  a timer, every 120 s); recency is a request counter, not a clock.

``place`` puts every prompt on every member (the router needs no placement) and publishes
the prompts' prefix lengths.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from .base import InstanceId, Loads, Placement, Policy, Prompt, RoundInput, everywhere, lightest
from .prefix_params import check_prefixes, pool_of, prefix_of
from .radix import RadixTree

TIES = ("first", "least-loaded")


class SGLangCacheAware(Policy):
    name = "sglang-cache-aware"

    def __init__(self, *, cache_threshold: float = 0.3, balance_abs_threshold: float = 64,
                 balance_rel_threshold: float = 1.5, max_tree_tokens: int = 2**26 // 4,
                 block_tokens: int = 16, tail_tokens: int = 256, match_tie: str = "first",
                 prefix_tokens: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not 0 <= cache_threshold <= 1:
            raise ValueError(f"cache_threshold must be in [0, 1], got {cache_threshold}")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1:
            raise ValueError("balance_abs_threshold must be >= 0, balance_rel_threshold >= 1")
        if block_tokens < 1 or tail_tokens < 0 or max_tree_tokens < block_tokens:
            raise ValueError("block_tokens >= 1, tail_tokens >= 0, max_tree_tokens >= block_tokens")
        if match_tie not in TIES:
            raise ValueError(f"match_tie must be one of {TIES}, got {match_tie!r}")
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.max_tree_tokens = int(max_tree_tokens)
        self.block_tokens = int(block_tokens)
        self.tail_tokens = int(tail_tokens)
        self.match_tie = match_tie
        self.prefix_tokens = check_prefixes(prefix_tokens)
        self.trees: dict[InstanceId, RadixTree] = {}
        self._serial = 0                  # makes each request's tail unique
        self.routed = {"imbalanced": 0, "matched": 0, "smallest_tree": 0}   # why, for reports

    def params(self) -> dict[str, Any]:
        return {"cache_threshold": self.cache_threshold,
                "balance_abs_threshold": self.balance_abs_threshold,
                "balance_rel_threshold": self.balance_rel_threshold,
                "max_tree_tokens": self.max_tree_tokens, "block_tokens": self.block_tokens,
                "tail_tokens": self.tail_tokens, "match_tie": self.match_tie,
                "prefix_tokens": dict(self.prefix_tokens)}

    # -- per round (broker): nothing to place, only the prefix lengths to publish

    def place(self, inp: RoundInput) -> Placement:
        self.prefix_tokens.update(check_prefixes(inp.prefix_tokens))
        return everywhere(inp, self)

    # -- per request (senders)

    def request_key(self, prompt: Prompt, placement: Placement) -> tuple:
        """The units a router would see for one request of ``prompt``: its shared prefix,
        then a tail no other request has."""
        self._serial += 1
        shared = prefix_of(prompt, placement, self.prefix_tokens) // self.block_tokens
        tail = max(1, self.tail_tokens // self.block_tokens)
        return tuple((prompt, k) for k in range(shared)) + tuple(
            (prompt, "#", self._serial, k) for k in range(tail))

    def choose(self, prompt: Prompt, placement: Placement, loads: Loads) -> InstanceId:
        ids = list(placement.prompts.get(prompt) or pool_of(placement, loads))
        if not ids:
            raise ValueError(f"no instance to send prompt {prompt!r} to: the placement is empty")
        if prompt not in placement.prompts:
            self.note_spill(prompt, ids[0])   # tells the broker about a prompt it does not know
        for gone in [m for m in self.trees if m not in ids and m not in loads]:
            del self.trees[gone]              # a member that left: forget what it held
        key = self.request_key(prompt, placement)
        target = self._route(prompt, key, ids, loads)
        tree = self.trees.setdefault(target, RadixTree())
        tree.insert(key)
        bound = self.max_tree_tokens // self.block_tokens
        if tree.size > bound:
            tree.evict_to(bound * 9 // 10)    # one pass per 10% of growth, not per request
        return target

    def _route(self, prompt: Prompt, key: tuple, ids: list[InstanceId], loads: Loads) -> InstanceId:
        load = [loads.get(i, 0.0) for i in ids]
        hi, lo = max(load), min(load)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            self.routed["imbalanced"] += 1
            return lightest(ids, loads, self.next_turn())[0]
        matched = {i: self.trees[i].match(key) if i in self.trees else 0 for i in ids}
        best = max(matched.values())
        if best / len(key) > self.cache_threshold:
            self.routed["matched"] += 1
            top = [i for i in ids if matched[i] == best]
            if len(top) == 1:
                return top[0]
            if self.match_tie == "first":
                return min(top, key=lambda i: (_tie_rank(prompt, i), i))
            return lightest(top, loads, self.next_turn())[0]
        self.routed["smallest_tree"] += 1
        return min(ids, key=lambda i: len(self.trees[i]) if i in self.trees else 0)


def _tie_rank(prompt: Prompt, inst: InstanceId) -> int:
    """A fixed, arbitrary order of the members, different for each prompt."""
    return zlib.crc32(f"{prompt}\0{inst}".encode())
