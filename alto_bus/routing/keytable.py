"""Which instance of a keyed stage owns an aggregation key, per routing epoch. Pure.

The broker builds one :class:`KeyTable` per keyed stage and epoch and publishes it
(:meth:`KeyTable.to_dict`); every sender evaluates ``table.owner(key)``, a pure
function of the key and the table, so all senders of a request agree without asking.

Design (consistent hashing with bounded loads, in two layers):

* **Keys to slots.** A key hashes (keyed blake2b, :data:`HASH_SEED`) into one of a
  fixed number of slots, Flink's key groups. ``slots`` is fixed for the life of a
  stage: changing it moves nearly every key.
* **Slots to instances**, computed once per table build from the broker's load
  snapshot. Instances whose load exceeds ``(1 + eps) x mean`` are skipped: they own no
  slot of this epoch (their older-epoch keys still reach them through older tables).
  Each slot ranks the remaining instances by a rendezvous score (a 64-bit mix of the
  slot and a hash of the instance id) and goes to the best one that has room; an
  instance holds at most ``ceil((1 + balance) x slots / N)`` slots and keeps the ones
  that score highest for it (slot-proposing Gale-Shapley with capacities, so the
  result does not depend on any processing order).

Why: the capacity makes the load bound hold by construction (slot max/mean is at most
``1 + balance`` plus one slot), while rendezvous ranks make membership changes move
almost nothing else. With the default 16384 slots and up to ~32 instances the
capacity does not bind: growing from N to N+1 moves about K/(N+1) of K keys, all to
the newcomer, and removing or skipping an instance moves only its own keys. Where it
binds (many instances per slot), a few extra slots move: 0.06% of keys when one of 64
leaves. Measured figures: ``scripts/bench_hashing.py``.

Two alternatives were measured and set aside: a virtual-node ring walk with a slot
capacity (the per-instance share varies by about 1/sqrt(vnodes), so a capacity tight
enough for a 1.25 key max/mean made growth move ~1.2 x K/(N+1) at 160 vnodes), and the
Maglev fill over 16381 slots (perfect balance, but growth moved 1.3x the ideal at
N=32 and 1.7x at N=64).
"""

from __future__ import annotations

import math
import numbers
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any

import numpy as np

# Never change these two: every process that routes a keyed hop must hash identically.
HASH_SEED = b"alto_bus.hashring.v1"
HASH_NAME = "blake2b-64-le/alto_bus.hashring.v1"

TABLE_FORMAT = 1
DEFAULT_EPS = 0.25
# Slots an instance may hold beyond an even share: the in-table load bound.
DEFAULT_BALANCE = 0.1
# About 100 x the instances a stage will run, so that the rendezvous spread stays
# within the capacity; the table travels as 2 bytes per slot.
DEFAULT_SLOTS = 16384
MAX_SLOTS = 1 << 20
MAX_INSTANCES = 0xFFFF  # slot owners travel as uint16
_FIELDS = ("format", "hash", "epoch", "slots", "eps", "balance", "instances", "loads", "assign")

Key = bytes | bytearray | memoryview | Sequence[int]
InstanceId = int | str  # the broker's instance ids (ints today); msgpack keeps the type

_HASHER = blake2b(digest_size=8, key=HASH_SEED)
_from_bytes = int.from_bytes
_STRUCTS: dict[int, struct.Struct] = {}


def _h64(data: bytes) -> int:
    h = _HASHER.copy()
    h.update(data)
    return _from_bytes(h.digest(), "little")


def key_bytes(key: Key) -> bytes:
    """The canonical bytes of a key: bytes as is, a tuple of ints as little-endian int64s."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, (tuple, list)):
        n = len(key)
        packer = _STRUCTS.get(n)
        if packer is None:
            packer = _STRUCTS.setdefault(n, struct.Struct(f"<{n}q"))
        try:
            return packer.pack(*key)
        except struct.error:
            pass
        if all(isinstance(i, int) for i in key):
            # Ints beyond int64 (rare): a decimal form, still a function of the key alone.
            return b"\xff" + ",".join(map(str, key)).encode()
    raise TypeError(f"a routing key is bytes or a tuple of ints, not {key!r:.80}")


def slot_of(key: Key, slots: int) -> int:
    """The slot of ``key`` among ``slots``."""
    return _h64(key_bytes(key)) % slots


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_BLOCK = 1 << 20  # scores computed at once, bounding build memory to ~8 MB


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection on uint64, so scores of one slot never tie
    # unless two instance hashes are equal (checked).
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _id_bytes(i: InstanceId) -> bytes:
    return (b"int\0%d" % i) if isinstance(i, int) else b"str\0" + i.encode()


def _instance_hashes(ids: Sequence[InstanceId]) -> np.ndarray:
    hashes = [_h64(_id_bytes(i)) for i in ids]
    if len(set(hashes)) != len(hashes):
        raise ValueError("two instance ids hash alike; rename one")
    return np.array(hashes, dtype=np.uint64)


def _propose(
    rows: np.ndarray, below: np.ndarray | None, inst: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each slot in ``rows``, the best-scoring instance scoring under ``below``."""
    choice = np.empty(rows.size, dtype=np.int64)
    best = np.empty(rows.size, dtype=np.uint64)
    step = max(1, _BLOCK // inst.size)
    for lo in range(0, rows.size, step):
        part = rows[lo : lo + step]
        with np.errstate(over="ignore"):
            scores = _mix(_mix(part.astype(np.uint64))[:, None] ^ inst[None, :])
        if below is not None:
            limit = below[lo : lo + step, None]
            masked = np.where(scores < limit, scores, np.uint64(0))
        else:
            masked = scores
        pick = masked.argmax(axis=1)
        picked = scores[np.arange(part.size), pick]
        if below is not None:
            # A masked 0 can win only if every remaining score is 0 too (odds 2**-64):
            # redo those rows exactly.
            for r in np.nonzero(picked >= below[lo : lo + step])[0]:
                ok = np.nonzero(scores[r] < below[lo + r])[0]
                pick[r] = ok[scores[r, ok].argmax()]
                picked[r] = scores[r, pick[r]]
        choice[lo : lo + step] = pick
        best[lo : lo + step] = picked
    return choice, best


def _assign(ids: Sequence[InstanceId], slots: int, balance: float) -> np.ndarray:
    """Owner index (into ``ids``) of every slot: rendezvous ranks under a capacity."""
    n = len(ids)
    inst = _instance_hashes(ids)
    cap = math.ceil((1.0 + balance) * slots / n)
    owner = np.empty(slots, dtype=np.int64)
    score = np.empty(slots, dtype=np.uint64)
    free = np.arange(slots, dtype=np.int64)
    below = None
    while free.size:
        owner[free], score[free] = _propose(free, below, inst)
        if np.bincount(owner, minlength=n).max() <= cap:
            break
        # Every instance keeps its `cap` best-scoring slots; the rest propose to their
        # next choice. Each slot only moves down its ranking, and n x cap >= slots, so
        # this ends with every slot owned.
        by_owner = np.lexsort((~score, owner))
        ranked = owner[by_owner]
        first = np.searchsorted(ranked, np.arange(n))
        rank = np.arange(slots) - first[ranked]
        free = np.sort(by_owner[rank >= cap])
        below = score[free]
    return owner


def _id_order(i: InstanceId) -> tuple[bool, InstanceId]:
    return isinstance(i, str), i


def _check_instances(instances: Iterable[InstanceId]) -> list[InstanceId]:
    ids = list(instances)
    if not ids:
        raise ValueError("a key table needs at least one instance, got none")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, str)) or i == "":
            raise ValueError(f"instance ids are ints or non-empty strings, got {i!r}")
    if len(set(ids)) != len(ids):
        dups = sorted((i for i, c in Counter(ids).items() if c > 1), key=_id_order)
        raise ValueError(f"duplicate instance ids: {dups}")
    if len(ids) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances per stage, got {len(ids)}")
    return ids


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_eps(eps: Any) -> float:
    if not _real(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0 (bound (1+eps) x mean), got {eps!r}")
    return float(eps)


def _check_balance(balance: Any) -> float:
    if not _real(balance) or balance < 0:
        raise ValueError(
            f"balance must be a finite number >= 0 (capacity (1+balance) x even share), "
            f"got {balance!r}"
        )
    return float(balance)


def _check_slots(slots: Any, n: int) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be an int in 1..{MAX_SLOTS}, got {slots!r}")
    if slots < n:
        raise ValueError(f"slots ({slots}) must be at least the number of instances ({n})")
    return slots


def _check_loads(
    ids: Sequence[InstanceId], loads: Mapping[InstanceId, float] | Sequence[float] | None
) -> tuple[float, ...]:
    if loads is None:
        values = [0.0] * len(ids)
    elif isinstance(loads, Mapping):
        # Instances without a report (just joined) count as idle; reports of ids that
        # are not members (just left) are ignored.
        values = [loads.get(i, 0.0) for i in ids]
    else:
        values = list(loads)
        if len(values) != len(ids):
            raise ValueError(f"loads has {len(values)} entries for {len(ids)} instances")
    for i, v in zip(ids, values, strict=True):
        if not _real(v) or v < 0:
            raise ValueError(f"load of instance {i!r} must be a finite number >= 0, got {v!r}")
    return tuple(float(v) for v in values)


def eligible(ids: Sequence[InstanceId], loads: Sequence[float], eps: float) -> list[InstanceId]:
    """The instances within ``(1 + eps) x mean`` load; never empty."""
    mean = sum(loads) / len(loads)
    bound = (1.0 + eps) * mean
    ok = [i for i, v in zip(ids, loads, strict=True) if v <= bound]
    if not ok:  # only float rounding can get here; keep the least loaded
        least = min(loads)
        ok = [i for i, v in zip(ids, loads, strict=True) if v == least]
    return ok


class KeyTable:
    """The key-to-instance assignment of one keyed stage in one routing epoch. Immutable."""

    __slots__ = ("epoch", "instances", "loads", "eps", "balance", "slots", "_assign", "_by_slot")

    def __init__(
        self,
        epoch: int,
        instances: tuple[InstanceId, ...],
        loads: tuple[float, ...],
        eps: float,
        balance: float,
        slots: int,
        assign: array,
    ) -> None:
        # Use build() or from_dict(); this only stores what they validated.
        self.epoch = epoch
        self.instances = instances
        self.loads = loads
        self.eps = eps
        self.balance = balance
        self.slots = slots
        self._assign = assign
        self._by_slot = [instances[j] for j in assign]

    @classmethod
    def build(
        cls,
        epoch: int,
        instances: Iterable[InstanceId],
        loads: Mapping[InstanceId, float] | Sequence[float] | None = None,
        *,
        eps: float = DEFAULT_EPS,
        balance: float = DEFAULT_BALANCE,
        slots: int = DEFAULT_SLOTS,
    ) -> KeyTable:
        """The table of ``epoch`` over ``instances`` given the broker's load snapshot.

        ``loads`` maps instance id to its load when the table is made (a sequence is
        taken in the order of ``instances``); ``None`` means all idle. Instances over
        ``(1 + eps) x`` the mean load own no slot; the others own at most
        ``ceil((1 + balance) x slots / eligible)`` slots each.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        given = _check_instances(instances)
        if loads is not None and not isinstance(loads, Mapping):
            loads = dict(zip(given, _check_loads(given, loads), strict=True))
        ids = tuple(sorted(given, key=_id_order))  # canonical: the table is a function of the set
        load_values = _check_loads(ids, loads)
        eps = _check_eps(eps)
        balance = _check_balance(balance)
        slots = _check_slots(slots, len(ids))
        takers = eligible(ids, load_values, eps)
        position = {i: j for j, i in enumerate(ids)}
        index = np.array([position[i] for i in takers], dtype=np.int64)
        assign = array("H", index[_assign(takers, slots, balance)].tolist())
        return cls(epoch, ids, load_values, eps, balance, slots, assign)

    # -- lookups (the hot path) --

    def owner(self, key: Key) -> InstanceId:
        """The instance that owns ``key``: bytes, or a tuple of ints (a path prefix)."""
        if type(key) is not bytes:
            # Inlined key_bytes() for the common short tuple: about 0.3 us of a 1 us lookup.
            packer = _STRUCTS.get(len(key)) if type(key) is tuple else None
            try:
                key = packer.pack(*key)  # type: ignore[union-attr]
            except (AttributeError, struct.error):
                key = key_bytes(key)
        h = _HASHER.copy()
        h.update(key)
        return self._by_slot[_from_bytes(h.digest(), "little") % self.slots]

    def slot(self, key: Key) -> int:
        """The slot of ``key``."""
        return slot_of(key, self.slots)

    def owner_of_slot(self, slot: int) -> InstanceId:
        return self._by_slot[slot]

    # -- inspection --

    @property
    def skipped(self) -> tuple[InstanceId, ...]:
        """Instances over the load bound of the snapshot: they own no slot in this table."""
        owning = set(self._by_slot)
        return tuple(i for i in self.instances if i not in owning)

    def slot_counts(self) -> dict[InstanceId, int]:
        """Slots owned per instance (0 for skipped ones)."""
        counts = dict.fromkeys(self.instances, 0)
        for i in self._by_slot:
            counts[i] += 1
        return counts

    def changed_slots(self, other: KeyTable) -> int:
        """How many slots have a different owner in ``other`` (keys that move between epochs)."""
        if other.slots != self.slots:
            return self.slots
        return sum(a != b for a, b in zip(self._by_slot, other._by_slot, strict=True))

    def __repr__(self) -> str:
        return (
            f"KeyTable(epoch={self.epoch}, instances={len(self.instances)}, "
            f"skipped={len(self.skipped)}, slots={self.slots}, eps={self.eps}, "
            f"balance={self.balance})"
        )

    # -- publication --

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly dict; see :meth:`from_dict` for the fields."""
        assign = self._assign
        if sys.byteorder != "little":
            assign = array("H", assign)
            assign.byteswap()
        return {
            "format": TABLE_FORMAT,
            "hash": HASH_NAME,
            "epoch": self.epoch,
            "slots": self.slots,
            "eps": self.eps,
            "balance": self.balance,
            "instances": list(self.instances),
            "loads": list(self.loads),
            "assign": assign.tobytes(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyTable:
        """The table published by the broker.

        ``format`` (1), ``hash`` (the key hash, must equal :data:`HASH_NAME`), ``epoch``,
        ``slots``, ``eps``, ``balance``, ``instances`` (ids), ``loads`` (the
        snapshot, aligned with ``instances``) and ``assign``: ``slots`` little-endian
        uint16 indexes into ``instances``, the owner of each slot. The receiver does not
        recompute the assignment, so senders agree even if their code differs in
        anything but the key hash.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a key table is a map, got {type(d).__name__}")
        missing = [f for f in _FIELDS if f not in d]
        if missing:
            raise ValueError(f"key table lacks {', '.join(missing)}")
        if d["format"] != TABLE_FORMAT:
            raise ValueError(f"key table format {d['format']!r}, this process reads {TABLE_FORMAT}")
        if d["hash"] != HASH_NAME:
            raise ValueError(
                f"key table hashed with {d['hash']!r}, this process hashes with {HASH_NAME!r}"
            )
        epoch = d["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"key table epoch must be an int >= 0, got {epoch!r}")
        ids = tuple(_check_instances(d["instances"]))
        loads = _check_loads(ids, d["loads"])
        eps = _check_eps(d["eps"])
        balance = _check_balance(d["balance"])
        slots = _check_slots(d["slots"], len(ids))
        raw = d["assign"]
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 2 * slots:
            raise ValueError(f"key table assign must be {2 * slots} bytes ({slots} uint16)")
        assign = array("H")
        assign.frombytes(raw)
        if sys.byteorder != "little":
            assign.byteswap()
        if max(assign) >= len(ids):
            raise ValueError(f"key table assigns a slot to instance #{max(assign)} of {len(ids)}")
        return cls(epoch, ids, loads, eps, balance, slots, assign)
