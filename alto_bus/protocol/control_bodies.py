"""The bodies of the control messages a broker takes, as typed records.

The control plane is ``[VERSION, op, body]`` with ``body`` a map (wire.py); the broker
converts each body to its op's record before a handler reads it, so every field is
checked for type and range first (a heartbeat whose ``prompt`` is not a map, a ``held``
that is not a list of request ids), and a bad one is refused naming the op and field.
Unknown fields are ignored (a newer worker may send more); missing ones take defaults.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from alto_bus.protocol import wire
from alto_bus.protocol.messages import Count

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Number = Union[int, float]
# Per-prompt counters (prefill/cached/decode tokens, running, waiting, KV figures).
Counters = dict[Annotated[str, msgspec.Meta(max_length=64)], Number]
MAX_IDS = 1_000_000  # request ids in one body: far above what a worker reports


class Body(msgspec.Struct, kw_only=True):
    pass


class Hello(Body):
    stage: Name
    pid: Count = 0
    host: str = "?"


class Ready(Body):
    stage: Name
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    pid: Count = 0
    host: str = "?"
    pool: Union[Name, None] = None
    member: Union[Name, None] = None


class Heartbeat(Body):
    depth: Count = 0
    held: Annotated[list[Count], msgspec.Meta(max_length=MAX_IDS)] = []
    stats: Counters = {}
    prompt: Union[Counters, None] = None
    spills: dict[Name, dict[Name, Count]] = {}
    stalled: Annotated[float, msgspec.Meta(ge=0)] = 0.0   # seconds the worker's loop has not run
    bad: dict[Annotated[str, msgspec.Meta(max_length=64)], Count] = {}  # inbox: dropped, by reason


class Lost(Body):
    iid: Count
    rids: Annotated[list[Count], msgspec.Meta(max_length=MAX_IDS)]
    older: Annotated[list[Count], msgspec.Meta(max_length=MAX_IDS)] = []


class Bye(Body):
    drained: bool = False  # it drained cleanly: what it was sent is done (no retry needed)


class PoolInfo(Body):
    pool: Name


class Empty(Body):
    pass


BODIES: dict[str, type[Body]] = {
    "hello": Hello, "ready": Ready, "heartbeat": Heartbeat, "lost": Lost, "pool_info": PoolInfo,
    "resent": Lost,  # a sender sent its kept items again (a stage with retries): ids, as "lost"
    "leave": Empty, "bye": Bye, "status": Empty, "shutdown": Empty,
    "resync": Empty,   # a worker that missed a routing-table delta asks for the whole view
}


class BodyError(ValueError):
    """``reason``: a label from a fixed set (for counters); ``op``: the op the frame named,
    when it could be read (the sender may then be told what was wrong)."""

    def __init__(self, text: str, reason: str, op: str | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.op = op


def decode_checked(frame: bytes, bodies: dict[str, type[Body]]) -> tuple[str, dict, Body]:
    """A control frame as ``(op, its body as sent, its body's record)`` for a side that
    takes the ops of ``bodies``; BodyError names what is wrong (frame, op, field)."""
    try:
        op, raw = wire.decode_control(frame)
    except wire.WireError as exc:
        raise BodyError(str(exc), exc.reason) from None
    if op not in bodies:
        raise BodyError(f"unknown op {op!r:.40}", "unknown op", op)
    try:
        return op, raw, convert_to(bodies, op, raw)
    except BodyError as exc:
        exc.op = op
        raise


def convert(op: str, body: dict) -> Body:
    """``body`` as ``op``'s record; :class:`BodyError` names the op and the field."""
    return convert_to(BODIES, op, body)


def convert_to(bodies: dict[str, type[Body]], op: str, body: dict) -> Body:
    """``body`` as the record ``bodies`` has for ``op``; BodyError names the op and the field."""
    kind = bodies[op]
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        at = text.rfind("- at `$.")
        field = text[at + 8:].split("`", 1)[0].split(".", 1)[0].split("[", 1)[0] if at >= 0 else ""
        if "missing required field" in text:
            field = text.split("`")[-2] if text.count("`") >= 2 else field
        if field not in kind.__struct_fields__:  # labels stay a fixed set, whatever was sent
            field = "body"
        raise BodyError(f"{op} body: {text}", f"{op} {field}") from None
