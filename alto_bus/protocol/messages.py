"""The data-plane and client-plane messages as typed records (msgspec Structs).

Each message is an ``array_like`` Struct tagged with its kind, so it encodes to exactly
the msgpack array wire.py documents (``DATA [0, path, seq, payload, final, epoch]``):
the bytes are those of the positional lists the bus sent before. Decoding checks every
field's type and range in C while it builds the record (a ``seq`` that is a string, a
negative count, a path of floats are refused, naming the field), so no handler ever
reads an unchecked field; it is also faster than msgpack plus per-field checks in
Python (BENCHMARKS.md, "Typed wire messages").

Appending a field with a default keeps old peers working: a shorter array takes the
default, a longer one's extra fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import msgspec

# Ids, indices and counts: non-negative and within 64 bits (msgpack's integers).
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# An item's ancestry [rid, i, j, ...]: the request id, then its index at each fan-out.
Path = Annotated[list[Count], msgspec.Meta(min_length=1, max_length=256)]
# Seconds; None takes the gateway's default.
Timeout = Union[Annotated[float, msgspec.Meta(gt=0, le=10**9)], None]
# A W3C traceparent ("00-<trace id>-<span id>-<flags>", 55 characters) or None: tracing is
# off, or the message is not the first of its item (alto_bus/telemetry/carry.py).
Trace = Union[Annotated[str, msgspec.Meta(max_length=128)], None]
# The request's time left in milliseconds when the message was sent, or None: not the
# first message of its request to this destination lately (runtime/request_deadlines.py).
LeftMs = Union[Annotated[int, msgspec.Meta(ge=0, le=10**12)], None]

_STRUCT = {"array_like": True, "gc": False}


class Data(msgspec.Struct, tag=0, **_STRUCT):
    """One item, or one chunk of a streamed item (``final`` on its last chunk)."""

    path: Path
    seq: Count
    payload: Any
    final: bool
    epoch: Count
    trace: Trace = None  # appended: the request span's context, on an item's first chunk
    turns: Count = 0     # appended: times the item went round a loop (DESIGN.md, "Graphs")
    left_ms: LeftMs = None  # appended: the request's time left (its deadline travels)


class End(msgspec.Struct, tag=1, **_STRUCT):
    """Item ``path`` fanned out into ``n`` children, all sent."""

    path: Path
    n: Count
    epoch: Count
    left_ms: LeftMs = None  # appended, as on DATA


class Drop(msgspec.Struct, tag=2, **_STRUCT):
    """Item ``path`` was filtered out: its group is complete without it."""

    path: Path
    epoch: Count
    left_ms: LeftMs = None  # appended, as on DATA


class Error(msgspec.Struct, tag=3, **_STRUCT):
    """The request of ``path`` failed at ``stage``; it goes to the gateway."""

    path: Path
    stage: str
    message: str
    epoch: Count = 0
    left_ms: LeftMs = None  # appended so every kind has it; the gateway does not read it


Message = Union[Data, End, Drop, Error]
KIND_OF = {Data: 0, End: 1, Drop: 2, Error: 3}


# -- client plane: client -> gateway ----------------------------------------------------


class Submit(msgspec.Struct, tag=0, **_STRUCT):
    cid: Count          # the client's id for the request (unique among its open ones)
    payload: Any
    stream: bool        # send partials as they reach the end of the pipeline
    timeout: Timeout = None
    traceparent: Trace = None  # appended: the caller's W3C trace context, if it has one


class Cancel(msgspec.Struct, tag=1, **_STRUCT):
    cid: Count


class Bye(msgspec.Struct, tag=2, **_STRUCT):
    pass


class Ping(msgspec.Struct, tag=3, **_STRUCT):
    """Are you there? (answered with PONG [3]: a client's check for a silent gateway)."""


ClientMessage = Union[Submit, Cancel, Bye, Ping]
