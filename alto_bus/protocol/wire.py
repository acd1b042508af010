"""Every message alto_bus puts on a socket, declared in one place.

Three planes, one encoding (msgpack arrays, never dicts on the hot path):

* Data plane (worker -> worker -> gateway PULL). One frame is a batch for one
  destination and one target stage::

      [VERSION, stage, msg, msg, ...]

  with the messages of DESIGN.md, kind first::

      DATA  [0, path, seq, payload, final, epoch]
      END   [1, path, n, epoch]
      DROP  [2, path, epoch]
      ERROR [3, path, stage, message, epoch]

  ``path`` is the item's ancestry (``[rid, i, j, ...]``), ``epoch`` the routing epoch
  the gateway stamped on the request. New fields are only ever appended: DATA carries
  ``trace, turns, left_ms`` after ``epoch``, END, DROP and ERROR ``left_ms`` (the
  request's time left, on its first message to each destination: its deadline travels). ``stage`` is
  always the stage the frame is for; frames to the gateway name ``GATEWAY_STAGE``, a
  name no stage can take, and a receiver drops a frame that is not for it. A frame to a
  stage with several inputs names ``[stage, input index]`` instead (the receiver merges
  its inputs' trees by that index: DESIGN.md, "Graphs").

* Client plane (client DEALER <-> gateway ROUTER): ``[VERSION, msg, msg, ...]``::

      client -> gateway   SUBMIT [0, cid, payload, stream, timeout]
                          CANCEL [1, cid]
                          BYE    [2]
                          PING   [3]            (while requests are pending)
      gateway -> client   RESULT  [0, cid, value]
                          FAILED  [1, cid, stage, message]
                          PARTIAL [2, cid, relpath, seq, payload, final]
                          PONG    [3, boot]      (boot: names this run of the gateway)

* Control plane (worker DEALER <-> broker ROUTER): ``[VERSION, op, body]`` with ``op``
  a short string and ``body`` a map; it carries a few messages a second, so it favours
  readable names over bytes.

Data-plane and client-plane messages are typed records (protocol/messages.py) whose
encoding is exactly these arrays; every field is checked when a message is decoded.
A frame or message that does not decode is reported as :class:`WireError`; callers
count it, log it and drop it, and never let it take the process down.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Literal

import msgpack
import msgspec

from alto_bus.protocol.messages import (KIND_OF, Bye, Cancel, ClientMessage, Data, Drop, End,
                                        Error, Message, Ping, Submit)

VERSION = 1
# The target "stage" of frames to the gateway (stage names are [A-Za-z0-9_.-]+).
GATEWAY_STAGE = "@gateway"

# Data plane kinds.
DATA, END, DROP, ERROR = 0, 1, 2, 3
KIND_NAMES = {DATA: "DATA", END: "END", DROP: "DROP", ERROR: "ERROR"}
# Client plane.
SUBMIT, CANCEL, BYE, PING = 0, 1, 2, 3
RESULT, FAILED, PARTIAL, PONG = 0, 1, 2, 3

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_encode = msgspec.msgpack.Encoder().encode   # Structs, and lists/dicts of plain values
_raw_array = msgspec.msgpack.Decoder(list[msgspec.Raw])  # a frame, its messages undecoded
_any = msgspec.msgpack.Decoder()  # a frame's version and stage
_message = msgspec.msgpack.Decoder(Message)
_lone = msgspec.msgpack.Decoder(tuple[Literal[1], str, Message])  # [VERSION, stage, msg]: one decode
_client_message = msgspec.msgpack.Decoder(ClientMessage)
_DECODE_ERRORS = (msgspec.DecodeError, OverflowError)


class WireError(ValueError):
    """A frame or message that cannot be taken; the text says what is wrong, ``reason``
    is a short fixed label for counting ("undecodable", "version", "DATA seq", ...)."""

    def __init__(self, text: str, reason: str = "malformed") -> None:
        super().__init__(text)
        self.reason = reason


def packb(obj: Any) -> bytes:
    return _packb(obj)


def unpackb(buf: bytes) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"frame of {len(buf)} bytes does not decode as msgpack: {exc}", "undecodable") from None


# -- data plane -------------------------------------------------------------------------


def data(path: list, seq: int, payload: Any, final: bool, epoch: int) -> Data:
    return Data(path, seq, payload, final, epoch)


def end(path: list, n: int, epoch: int) -> End:
    return End(path, n, epoch)


def drop(path: list, epoch: int) -> Drop:
    return Drop(path, epoch)


def error(path: list, stage: str, message: str, epoch: int) -> Error:
    return Error(path, stage, message, epoch)


def kind_name(msg: Message) -> str:
    return KIND_NAMES[KIND_OF[type(msg)]]


class FrameBuilder:
    """Accumulates messages for one (destination, stage) and emits one frame.

    Each message is packed as it is added, so the frame's size is known exactly and
    the frame is cut when it would pass ``max_bytes``; the caller also flushes on a
    timer of a few milliseconds and whenever its input runs dry.
    """

    __slots__ = ("stage", "_header", "_lone", "_parts", "nbytes", "_packer")

    def __init__(self, stage: str | tuple[str, int]) -> None:
        self.stage = stage
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        target = list(stage) if type(stage) is tuple else stage
        self._header = self._packer.pack(VERSION) + self._packer.pack(target)
        self._lone = self._packer.pack_array_header(3) + self._header  # a frame of one message
        self._parts: list[bytes] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._parts)

    def add(self, msg: Message) -> int:
        """Pack ``msg`` into the batch; returns the batch's size in bytes so far."""
        part = _encode(msg)
        self._parts.append(part)
        self.nbytes += len(part)
        return self.nbytes

    def take(self) -> bytes:
        """The frame for everything added so far; the builder is empty afterwards."""
        parts = self._parts
        if len(parts) == 1:  # a lone message (the low-load case): its frame in one concatenation
            frame = self._lone + parts[0]
        else:
            frame = b"".join((self._packer.pack_array_header(len(parts) + 2), self._header, *parts))
        self._parts = []
        self.nbytes = 0
        return frame


def encode_frame(stage: str | tuple[str, int], msgs: list[Message]) -> bytes:
    """One data-plane frame (convenience for tests and the gateway's first hop)."""
    return _encode([VERSION, list(stage) if type(stage) is tuple else stage, *msgs])


def split_frame(buf: bytes) -> tuple[str | tuple[str, int], list[msgspec.Raw]]:
    """``(stage, undecoded messages)`` of a data-plane frame; raises :class:`WireError`.
    ``stage`` is ``(stage, input index)`` in a frame to a stage with several inputs.

    Only the envelope is decoded here; each message is decoded and checked by
    :func:`decode_message` where it is dispatched, so one bad message costs only itself.
    """
    try:
        parts = _raw_array.decode(buf)
    except _DECODE_ERRORS:
        raise WireError(f"data frame of {len(buf)} bytes is not an array [version, stage, msg...]: "
                        f"{_clip(_peek(buf))}", "undecodable") from None
    if len(parts) < 2:
        raise WireError(f"data frame is not an array [version, stage, msg...]: {_clip(_peek(buf))}", "undecodable")
    try:  # msgspec reads the envelope several times faster than msgpack.unpackb
        version, stage = _any.decode(parts[0]), _any.decode(parts[1])
    except _DECODE_ERRORS:
        version, stage = _peek(parts[0]), _peek(parts[1])
    if version != VERSION or type(version) is not int:
        raise WireError(f"data frame has protocol version {_clip(version)}, this build speaks {VERSION}",
                        "version")
    if type(stage) is not str:
        if (type(stage) is list and len(stage) == 2 and type(stage[0]) is str and type(stage[1]) is int
                and 0 <= stage[1] < 256):
            return (stage[0], stage[1]), parts[2:]
        raise WireError(f"data frame names stage {_clip(stage)}, not a string or [stage, input]",
                        "stage name")
    return stage, parts[2:]


def lone_message(buf: bytes, stage: str) -> Message | None:
    """The message of a frame ``[VERSION, stage, msg]`` for ``stage`` that holds one
    well-formed message, checked as :func:`split_frame` and :func:`decode_message` check
    it but in one decode (the low-load case); None for any other frame, which they take."""
    if not buf or buf[0] != 0x93:  # not an array of three: nothing to try
        return None
    try:
        _, target, msg = _lone.decode(buf)
    except _DECODE_ERRORS:
        return None
    return msg if target == stage else None


def decode_message(raw: msgspec.Raw | bytes) -> Message:
    """One data-plane message, every field checked; :class:`WireError` names what is wrong."""
    try:
        return _message.decode(raw)
    except _DECODE_ERRORS as exc:
        raise _explain(raw, exc, KIND_NAMES, _FIELDS) from None


def decode_frame(buf: bytes) -> tuple[str | tuple[str, int], list[Message]]:
    """``(stage, messages)``: the whole frame, or :class:`WireError` at its first bad part."""
    stage, parts = split_frame(buf)
    return stage, [decode_message(p) for p in parts]


def messages(parts: list[msgspec.Raw], bad: Callable[[WireError], None]) -> Iterator[Message]:
    """The messages that decode; each one that does not goes to ``bad`` (never raises)."""
    for raw in parts:
        try:
            yield _message.decode(raw)
        except _DECODE_ERRORS as exc:
            bad(_explain(raw, exc, KIND_NAMES, _FIELDS))


def message_list(parts: list[msgspec.Raw], bad: Callable[[WireError], None]) -> list[Message]:
    """:func:`messages` as a list: all at once while every one decodes (no generator
    step per message on the hot path), else one by one so each bad one costs only itself."""
    decode = _message.decode
    try:
        return [decode(raw) for raw in parts]
    except _DECODE_ERRORS:
        return list(messages(parts, bad))


def join_chunks(chunks: list[Any]) -> Any:
    """The value of an item streamed in several chunks: text joined, lists concatenated."""
    if len(chunks) == 1:
        return chunks[0]
    if all(isinstance(c, str) for c in chunks):
        return "".join(chunks)
    if all(isinstance(c, list) for c in chunks):
        return [x for c in chunks for x in c]
    return chunks


# -- client plane -----------------------------------------------------------------------


def encode_client_frame(msgs: list) -> bytes:
    return _encode([VERSION, *msgs])


def decode_client_frame(buf: bytes) -> list:
    """The messages of a frame to a client, as arrays (the client reads them by index)."""
    obj = unpackb(buf)
    if type(obj) is not list or not obj:
        raise WireError(f"client frame is not an array [version, msg...]: {_clip(obj)}", "undecodable")
    if obj[0] != VERSION:
        raise WireError(f"client frame has protocol version {_clip(obj[0])}, this build speaks {VERSION}",
                        "version")
    return obj[1:]


def client_messages(buf: bytes, bad: Callable[[WireError], None]) -> Iterator[Submit | Cancel | Bye | Ping]:
    """What a client sent the gateway, every field checked; what does not decode goes to
    ``bad`` (a bad frame as a whole, or each bad message alone)."""
    try:
        parts = _raw_array.decode(buf)
    except _DECODE_ERRORS:
        bad(WireError(f"client frame of {len(buf)} bytes is not an array [version, msg...]: "
                      f"{_clip(_peek(buf))}", "undecodable"))
        return
    version = _peek(parts[0]) if parts else None
    if version != VERSION or type(version) is not int:
        bad(WireError(f"client frame has protocol version {_clip(version)}, this build speaks {VERSION}",
                      "version"))
        return
    for raw in parts[1:]:
        try:
            yield _client_message.decode(raw)
        except _DECODE_ERRORS as exc:
            bad(_explain(raw, exc, CLIENT_NAMES, _CLIENT_FIELDS))


# -- control plane ----------------------------------------------------------------------


def encode_control(op: str, body: dict | None = None) -> bytes:
    return _packb([VERSION, op, body or {}])


def decode_control(buf: bytes) -> tuple[str, dict]:
    obj = unpackb(buf)
    if type(obj) is not list or len(obj) != 3:
        raise WireError(f"control frame is not [version, op, body]: {_clip(obj)}", "undecodable")
    version, op, body = obj
    if version != VERSION:
        raise WireError(f"control frame has protocol version {_clip(version)}, this build speaks {VERSION}",
                        "version")
    if type(op) is not str or type(body) is not dict:
        raise WireError(f"control frame has op {_clip(op)} and body {_clip(body)}", "undecodable")
    return op, body


# Field names by kind, for errors: "SUBMIT message: field timeout: Expected `float` > 0.0".
_FIELDS = {KIND_OF[t]: ("kind", *t.__struct_fields__) for t in (Data, End, Drop, Error)}
CLIENT_NAMES = {SUBMIT: "SUBMIT", CANCEL: "CANCEL", BYE: "BYE", PING: "PING"}
_CLIENT_FIELDS = {k: ("op", *t.__struct_fields__)
                  for k, t in ((SUBMIT, Submit), (CANCEL, Cancel), (BYE, Bye), (PING, Ping))}


def _peek(raw: Any) -> Any:
    """What a frame or part holds, for an error message (never raises)."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types
        return f"<{len(raw)} bytes that do not decode>"


def _explain(raw: Any, exc: Exception, names: dict[int, str], fields: dict[int, tuple[str, ...]]) -> WireError:
    """A decode error in words (the kind, the field by name, msgspec's reason) and its label."""
    obj = _peek(raw)
    kind = obj[0] if type(obj) is list and obj and type(obj[0]) is int else None
    if kind not in names:
        return WireError(f"message {_clip(obj)} is not an array of a known kind ({exc})", "unknown kind")
    text, label = str(exc), f"{names[kind]} length"
    at = text.rfind("- at `$[")
    if at >= 0:
        index = text[at + 8:].split("]", 1)[0]
        if index.isdigit() and int(index) < len(fields[kind]):
            label = f"{names[kind]} {fields[kind][int(index)]}"
            text = f"field {fields[kind][int(index)]}: {text[:at].strip()} ({text[at + 2:]})"
    return WireError(f"{names[kind]} message {_clip(obj)}: {text}", label)


def _clip(obj: Any, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
