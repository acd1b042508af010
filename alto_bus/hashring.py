"""Which instance of a keyed stage owns an aggregation key, per routing epoch. Pure.

The broker builds one :class:`KeyTable` per keyed stage and epoch and publishes it
(:meth:`KeyTable.to_dict`); every sender evaluates ``table.owner(key)``, a pure
function of the key and the table, so all senders of a request agree without asking.

Design (consistent hashing with bounded loads, in two layers):

* **Keys to slots.** A key hashes (keyed blake2b, :data:`HASH_SEED`) into one of a
  fixed number of slots, Flink's key groups. ``slots`` is a prime fixed for the life of
  a stage: changing it moves nearly every key.
* **Slots to instances**, once per table build. Instances whose load in the broker's
  snapshot exceeds ``(1 + eps) x mean`` are skipped: they own no slot of this epoch
  (their older-epoch keys still reach them through older tables). Each remaining
  instance walks its own pseudo-random permutation of the slots, an offset and a
  stride hashed from its id; the instances take turns claiming the next unclaimed
  slot of their walk until every slot is owned (the Maglev fill, Eisenbud et al.,
  NSDI 2016). Turns make the capacity bound exact: every instance owns ``floor`` or
  ``ceil`` of ``slots / N``. A walk depends only on the instance's id, so a
  membership change disturbs few claims besides the slots that must move; measured
  with 16381 slots, growing from N to N+1 moves about 1.0-1.1 x K/(N+1) of K keys, and
  removing one instance moves under 1% of keys besides the removed one's
  (``scripts/bench_hashing.py``).

A virtual-node ring walk with a slot capacity of ``(1 + c) x mean`` was the other
candidate: its per-instance share varies by about 1/sqrt(vnodes), so the capacity
must absorb that variance, and a capacity tight enough for a 1.25 key max/mean
(c ~ 0.15) made growth move about 1.2 x K/(N+1) at 160 vnodes, on the bound.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, Union

# Never change these two: every process that routes a keyed hop must hash identically.
HASH_SEED = b"alto_bus.hashring.v1"
HASH_NAME = "blake2b-64-le/alto_bus.hashring.v1"

TABLE_FORMAT = 1
DEFAULT_EPS = 0.25
# A prime, so any stride walks every slot; about 100 x the instances a stage will run
# keeps the rounding of slots/N under 1% of a share.
DEFAULT_SLOTS = 16381
MAX_INSTANCES = 0xFFFF  # slot owners travel as uint16

Key = Union[bytes, bytearray, memoryview, Sequence[int]]

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


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    return all(n % f for f in range(3, math.isqrt(n) + 1, 2))


def _walk(instance: str, slots: int) -> tuple[int, int]:
    """Offset and stride of an instance's permutation of the slots."""
    raw = instance.encode()
    return _h64(b"offset\0" + raw) % slots, _h64(b"stride\0" + raw) % (slots - 1) + 1


def _fill(walkers: Sequence[tuple[int, int]], slots: int) -> list[int]:
    """Turn by turn, each walker claims the next unclaimed slot of its walk."""
    owner = [-1] * slots
    pos = [offset for offset, _ in walkers]
    strides = [stride for _, stride in walkers]
    left = slots
    while True:
        for j, stride in enumerate(strides):
            p = pos[j]
            while owner[p] >= 0:
                p += stride
                if p >= slots:
                    p -= slots
            owner[p] = j
            p += stride
            pos[j] = p - slots if p >= slots else p
            left -= 1
            if not left:
                return owner


def _check_instances(instances: Iterable[str]) -> tuple[str, ...]:
    ids = list(instances)
    if not ids:
        raise ValueError("a key table needs at least one instance, got none")
    for i in ids:
        if not isinstance(i, str) or not i:
            raise ValueError(f"instance ids are non-empty strings, got {i!r}")
    if len(set(ids)) != len(ids):
        dups = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate instance ids: {dups}")
    if len(ids) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances per stage, got {len(ids)}")
    return tuple(sorted(ids))


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0 (load bound (1+eps) x mean), got {eps!r}")
    return float(eps)


def _check_slots(slots: Any, n: int) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int) or not _is_prime(slots):
        raise ValueError(f"slots must be a prime number, got {slots!r}")
    if slots < n:
        raise ValueError(f"slots ({slots}) must be at least the number of instances ({n})")
    return slots


def _check_loads(ids: Sequence[str], loads: Mapping[str, float] | Sequence[float] | None) -> tuple[float, ...]:
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
    for i, v in zip(ids, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"load of instance {i!r} must be a finite number >= 0, got {v!r}")
    return tuple(float(v) for v in values)


def eligible(ids: Sequence[str], loads: Sequence[float], eps: float) -> list[str]:
    """The instances within ``(1 + eps) x mean`` load; never empty."""
    mean = sum(loads) / len(loads)
    bound = (1.0 + eps) * mean
    ok = [i for i, v in zip(ids, loads) if v <= bound]
    if not ok:  # only float rounding can get here; keep the least loaded
        least = min(loads)
        ok = [i for i, v in zip(ids, loads) if v == least]
    return ok


class KeyTable:
    """The key-to-instance assignment of one keyed stage in one routing epoch. Immutable."""

    __slots__ = ("epoch", "instances", "loads", "eps", "slots", "_assign", "_by_slot")

    def __init__(
        self,
        epoch: int,
        instances: tuple[str, ...],
        loads: tuple[float, ...],
        eps: float,
        slots: int,
        assign: array,
    ) -> None:
        # Use build() or from_dict(); this only stores what they validated.
        self.epoch = epoch
        self.instances = instances
        self.loads = loads
        self.eps = eps
        self.slots = slots
        self._assign = assign
        self._by_slot = [instances[j] for j in assign]

    @classmethod
    def build(
        cls,
        epoch: int,
        instances: Iterable[str],
        loads: Mapping[str, float] | Sequence[float] | None = None,
        *,
        eps: float = DEFAULT_EPS,
        slots: int = DEFAULT_SLOTS,
    ) -> KeyTable:
        """The table of ``epoch`` over ``instances`` given the broker's load snapshot.

        ``loads`` maps instance id to its load when the table is made (a sequence is
        taken in the order of ``instances``); ``None`` means all idle.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        given = list(instances)
        ids = _check_instances(given)
        if loads is not None and not isinstance(loads, Mapping):
            by_id = dict(zip(given, _check_loads(given, loads)))
            loads = by_id
        load_values = _check_loads(ids, loads)
        eps = _check_eps(eps)
        slots = _check_slots(slots, len(ids))
        takers = eligible(ids, load_values, eps)
        # Turn order by hashed id: a function of the set, not of how the caller listed it.
        takers.sort(key=lambda i: (_h64(b"turn\0" + i.encode()), i))
        claims = _fill([_walk(i, slots) for i in takers], slots)
        index = {i: j for j, i in enumerate(ids)}
        assign = array("H", [index[takers[j]] for j in claims])
        return cls(epoch, ids, load_values, eps, slots, assign)

    # -- lookups (the hot path) --

    def owner(self, key: Key) -> str:
        """The instance that owns ``key`` in this table: bytes, or a tuple of ints (a path prefix)."""
        h = _HASHER.copy()
        h.update(key if type(key) is bytes else key_bytes(key))
        return self._by_slot[_from_bytes(h.digest(), "little") % self.slots]

    def slot(self, key: Key) -> int:
        """The slot of ``key``."""
        return slot_of(key, self.slots)

    def owner_of_slot(self, slot: int) -> str:
        return self._by_slot[slot]

    # -- inspection --

    @property
    def skipped(self) -> tuple[str, ...]:
        """Instances over the load bound of the snapshot: they own no slot in this table."""
        owning = set(self._by_slot)
        return tuple(i for i in self.instances if i not in owning)

    def slot_counts(self) -> dict[str, int]:
        """Slots owned per instance (0 for skipped ones)."""
        counts = dict.fromkeys(self.instances, 0)
        for i in self._by_slot:
            counts[i] += 1
        return counts

    def changed_slots(self, other: KeyTable) -> int:
        """How many slots have a different owner in ``other`` (keys that move between epochs)."""
        if other.slots != self.slots:
            return self.slots
        return sum(a != b for a, b in zip(self._by_slot, other._by_slot))

    def __repr__(self) -> str:
        return (
            f"KeyTable(epoch={self.epoch}, instances={len(self.instances)}, "
            f"skipped={len(self.skipped)}, slots={self.slots}, eps={self.eps})"
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
            "instances": list(self.instances),
            "loads": list(self.loads),
            "assign": assign.tobytes(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyTable:
        """The table published by the broker.

        ``format`` (1), ``hash`` (the key hash, must equal :data:`HASH_NAME`), ``epoch``,
        ``slots``, ``eps``, ``instances`` (sorted ids), ``loads`` (the snapshot, aligned
        with ``instances``) and ``assign``: ``slots`` little-endian uint16 indexes into
        ``instances``, the owner of each slot. The receiver does not recompute the
        assignment, so senders agree even if their code differs in anything but the
        key hash.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a key table is a map, got {type(d).__name__}")
        missing = [f for f in ("format", "hash", "epoch", "slots", "eps", "instances", "loads", "assign") if f not in d]
        if missing:
            raise ValueError(f"key table lacks {', '.join(missing)}")
        if d["format"] != TABLE_FORMAT:
            raise ValueError(f"key table format {d['format']!r}, this process reads {TABLE_FORMAT}")
        if d["hash"] != HASH_NAME:
            raise ValueError(f"key table hashed with {d['hash']!r}, this process hashes with {HASH_NAME!r}")
        epoch = d["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"key table epoch must be an int >= 0, got {epoch!r}")
        given = list(d["instances"])
        ids = _check_instances(given)
        if list(ids) != given:
            raise ValueError("key table instances must be sorted")
        loads = _check_loads(ids, d["loads"])
        eps = _check_eps(d["eps"])
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
        return cls(epoch, ids, loads, eps, slots, assign)
