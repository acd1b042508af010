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
  the gateway stamped on the request. New fields are only ever appended.

* Client plane (client DEALER <-> gateway ROUTER): ``[VERSION, msg, msg, ...]``::

      client -> gateway   SUBMIT [0, cid, payload, stream, timeout]
                          CANCEL [1, cid]
                          BYE    [2]
      gateway -> client   RESULT  [0, cid, value]
                          FAILED  [1, cid, stage, message]
                          PARTIAL [2, cid, relpath, seq, payload, final]

* Control plane (worker DEALER <-> broker ROUTER): ``[VERSION, op, body]`` with ``op``
  a short string and ``body`` a map; it carries a few messages a second, so it favours
  readable names over bytes.

A frame that does not decode is reported as :class:`WireError`; callers count it,
log it and drop it, and never let it take the process down.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1

# Data plane kinds.
DATA, END, DROP, ERROR = 0, 1, 2, 3
KIND_NAMES = {DATA: "DATA", END: "END", DROP: "DROP", ERROR: "ERROR"}
# Fields per kind (kind included); a message shorter than this is malformed.
KIND_LENGTHS = {DATA: 6, END: 4, DROP: 3, ERROR: 5}
# Where each kind carries its routing epoch: a fixed index, so that fields appended to a
# kind later (with defaults) do not move it. ERROR carries none.
EPOCH_INDEX = {DATA: 5, END: 3, DROP: 2}


def epoch_of(msg: list) -> int:
    """The routing epoch of a DATA/END/DROP message (checked for its length beforehand)."""
    return msg[EPOCH_INDEX[msg[0]]]

# Client plane.
SUBMIT, CANCEL, BYE = 0, 1, 2
RESULT, FAILED, PARTIAL = 0, 1, 2

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class WireError(ValueError):
    """A frame or message that cannot be taken; the text says what is wrong."""


def packb(obj: Any) -> bytes:
    return _packb(obj)


def unpackb(buf: bytes) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"frame of {len(buf)} bytes does not decode as msgpack: {exc}") from None


# -- data plane -------------------------------------------------------------------------


def data(path: list, seq: int, payload: Any, final: bool, epoch: int) -> list:
    return [DATA, path, seq, payload, final, epoch]


def end(path: list, n: int, epoch: int) -> list:
    return [END, path, n, epoch]


def drop(path: list, epoch: int) -> list:
    return [DROP, path, epoch]


def error(path: list, stage: str, message: str, epoch: int) -> list:
    return [ERROR, path, stage, message, epoch]


class FrameBuilder:
    """Accumulates messages for one (destination, stage) and emits one frame.

    Each message is packed as it is added, so the frame's size is known exactly and
    the frame is cut when it would pass ``max_bytes``; the caller also flushes on a
    timer of a few milliseconds and whenever its input runs dry.
    """

    __slots__ = ("stage", "_header", "_parts", "nbytes", "_packer")

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._header = self._packer.pack(VERSION) + self._packer.pack(stage)
        self._parts: list[bytes] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._parts)

    def add(self, msg: list) -> int:
        """Pack ``msg`` into the batch; returns the batch's size in bytes so far."""
        part = self._packer.pack(msg)
        self._parts.append(part)
        self.nbytes += len(part)
        return self.nbytes

    def take(self) -> bytes:
        """The frame for everything added so far; the builder is empty afterwards."""
        parts = self._parts
        head = self._packer.pack_array_header(len(parts) + 2)
        frame = b"".join((head, self._header, *parts))
        self._parts = []
        self.nbytes = 0
        return frame


def encode_frame(stage: str, msgs: list[list]) -> bytes:
    """One data-plane frame (convenience for tests and the gateway's first hop)."""
    return _packb([VERSION, stage, *msgs])


def decode_frame(buf: bytes) -> tuple[str, list]:
    """``(stage, messages)`` of a data-plane frame; raises :class:`WireError`.

    Only the frame envelope is checked here; each message is checked by
    :func:`check_message` where it is dispatched, so one bad message costs only itself.
    """
    obj = unpackb(buf)
    if type(obj) is not list or len(obj) < 2:
        raise WireError(f"data frame is not an array [version, stage, msg...]: {_clip(obj)}")
    if obj[0] != VERSION:
        raise WireError(f"data frame has protocol version {_clip(obj[0])}, this build speaks {VERSION}")
    stage = obj[1]
    if type(stage) is not str:
        raise WireError(f"data frame names stage {_clip(stage)}, not a string")
    return stage, obj[2:]


def check_message(msg: Any) -> int:
    """The kind of a data-plane message, or :class:`WireError` naming what is wrong."""
    if type(msg) is not list or not msg:
        raise WireError(f"message is not a non-empty array: {_clip(msg)}")
    kind = msg[0]
    want = KIND_LENGTHS.get(kind) if type(kind) is int else None
    if want is None:
        raise WireError(f"unknown message kind {_clip(kind)}")
    if len(msg) < want:
        raise WireError(f"{KIND_NAMES[kind]} message has {len(msg)} fields, needs {want}")
    path = msg[1]
    if type(path) is not list or not path or not all(type(i) is int for i in path):
        raise WireError(f"{KIND_NAMES[kind]} message has a bad path {_clip(path)}")
    return kind


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


def encode_client_frame(msgs: list[list]) -> bytes:
    return _packb([VERSION, *msgs])


def decode_client_frame(buf: bytes) -> list:
    obj = unpackb(buf)
    if type(obj) is not list or not obj:
        raise WireError(f"client frame is not an array [version, msg...]: {_clip(obj)}")
    if obj[0] != VERSION:
        raise WireError(f"client frame has protocol version {_clip(obj[0])}, this build speaks {VERSION}")
    return obj[1:]


# -- control plane ----------------------------------------------------------------------


def encode_control(op: str, body: dict | None = None) -> bytes:
    return _packb([VERSION, op, body or {}])


def decode_control(buf: bytes) -> tuple[str, dict]:
    obj = unpackb(buf)
    if type(obj) is not list or len(obj) != 3:
        raise WireError(f"control frame is not [version, op, body]: {_clip(obj)}")
    version, op, body = obj
    if version != VERSION:
        raise WireError(f"control frame has protocol version {_clip(version)}, this build speaks {VERSION}")
    if type(op) is not str or type(body) is not dict:
        raise WireError(f"control frame has op {_clip(op)} and body {_clip(body)}")
    return op, body


def _clip(obj: Any, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
