"""Key assignment of keyed stages (alto_bus.routing.keytable): movement, balance, cost.

    python scripts/bench_hashing.py [--keys 100000] [--seed 1] [--max-n 16]

Prints markdown tables:
  * keys moved when a stage grows from N to N+1 instances (N = 2..max-n), against the
    bound 1.2 x K/(N+1), and how many moved anywhere but to the newcomer;
  * keys moved besides the removed instance's own when one of N leaves;
  * max/mean keys per instance over 16 instances;
  * lookup cost (ns per owner() call, bytes keys and path tuples), table build time,
    published size.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import timeit
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alto_bus.routing.keytable import (  # noqa: E402
    DEFAULT_BALANCE,
    DEFAULT_EPS,
    DEFAULT_SLOTS,
    KeyTable,
    slot_of,
)


def owners(table: KeyTable, slots_of_keys: np.ndarray) -> np.ndarray:
    """The owner id of every key (vectorised through the slot table)."""
    by_slot = np.array([table.owner_of_slot(s) for s in range(table.slots)])
    return by_slot[slots_of_keys]


def ids(n: int) -> list[int]:
    return list(range(1, n + 1))


def ns_per_lookup(table: KeyTable, keys: list) -> float:
    owner = table.owner
    best = min(timeit.repeat(lambda: [owner(x) for x in keys], number=20, repeat=5))
    return best / (20 * len(keys)) * 1e9


def build_ms(n: int) -> float:
    return best_of(lambda: KeyTable.build(1, ids(n))) * 1e3


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-n", type=int, default=16)
    args = ap.parse_args()
    k = args.keys
    rng = random.Random(args.seed)
    keys = [rng.randbytes(16) for _ in range(k)]
    slots_of_keys = np.array([slot_of(key, DEFAULT_SLOTS) for key in keys])
    print(f"{k:,} random 16-byte keys, {DEFAULT_SLOTS} slots, "
          f"eps {DEFAULT_EPS}, balance {DEFAULT_BALANCE}\n")

    print("| N -> N+1 | keys moved | bound 1.2 K/(N+1) | moved / (K/(N+1)) "
          "| moved elsewhere than the newcomer |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for n in range(2, args.max_n + 1):
        a = owners(KeyTable.build(1, ids(n)), slots_of_keys)
        b = owners(KeyTable.build(2, ids(n + 1)), slots_of_keys)
        changed = a != b
        moved = int(changed.sum())
        stray = int((changed & (b != n + 1)).sum())
        ratio = moved / (k / (n + 1))
        worst = max(worst, ratio)
        print(f"| {n} -> {n + 1} | {moved:,} | {1.2 * k / (n + 1):,.0f} | {ratio:.3f} | {stray} |")
    print(f"\nworst moved / (K/(N+1)): {worst:.3f}\n")

    print("| N, one leaves | keys moved besides the leaver's (worst over which one leaves) |")
    print("|---|---|")
    for n in (2, 4, 8, 16, 32, 64):
        base = owners(KeyTable.build(1, ids(n)), slots_of_keys)
        extra = 0
        for gone in ids(n):
            after = owners(KeyTable.build(2, [i for i in ids(n) if i != gone]), slots_of_keys)
            extra = max(extra, int(((base != after) & (base != gone)).sum()))
        print(f"| {n} | {extra} |")
    print()

    table16 = KeyTable.build(1, ids(16))
    counts = np.unique(owners(table16, slots_of_keys), return_counts=True)[1]
    slot_counts = np.array(list(table16.slot_counts().values()))
    tuples = [(1_700_000_000_000 + i, i % 7) for i in range(2000)]
    wire = msgpack.packb(table16.to_dict(), use_bin_type=True)
    loads = {i: (40.0 if i % 5 == 0 else 10.0) for i in ids(16)}
    rows = [
        (f"max/mean keys, 16 instances x {k:,} keys", f"{counts.max() / counts.mean():.3f}"),
        ("min/mean keys, 16 instances", f"{counts.min() / counts.mean():.3f}"),
        (f"max/mean slots, 16 instances (bound {1 + DEFAULT_BALANCE:.2f})",
         f"{slot_counts.max() / slot_counts.mean():.3f}"),
        ("lookup, 16-byte key", f"{ns_per_lookup(table16, keys[:2000]):.0f} ns/op"),
        ("lookup, path tuple (rid, i)", f"{ns_per_lookup(table16, tuples):.0f} ns/op"),
        ("table build, 16 instances", f"{build_ms(16):.1f} ms"),
        ("table build, 64 instances", f"{build_ms(64):.1f} ms"),
        ("table build, 16 instances, 3 over the load bound",
         f"{best_of(lambda: KeyTable.build(1, ids(16), loads)) * 1e3:.1f} ms"),
        ("published table (msgpack)", f"{len(wire):,} bytes"),
        ("from_dict (worker side)",
         f"{best_of(lambda: KeyTable.from_dict(msgpack.unpackb(wire))) * 1e3:.2f} ms"),
    ]
    print("| figure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
