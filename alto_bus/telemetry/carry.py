"""Trace context across processes, pure (no OpenTelemetry, no sockets).

* W3C ``traceparent`` strings: parsed, checked and formatted (what travels on the wire:
  SUBMIT's ``traceparent`` and DATA's ``trace``, protocol/messages.py).
* :class:`RequestContexts`: the context of each request a worker has seen, so that what
  it emits for the request carries it on (bounded: a worker never learns of every end).
* :class:`ItemSpans`: the open span of each item a stage took, and which outputs end
  it. A 1:1 stage's output (same path) or a filter's DROP ends the item's span; a
  fan-out ends it with its END; an aggregate's output for a group (a shorter path)
  ends the spans of every item of the group; an ERROR or a cancel ends all spans of
  the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")

S = TypeVar("S")


@dataclass(frozen=True)
class TraceParent:
    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def __str__(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)


def parse_traceparent(text: Any) -> TraceParent | None:
    """The context of a W3C ``traceparent`` value, or None when it is not a valid one
    (W3C: a receiver ignores an invalid header and starts a new trace)."""
    if not isinstance(text, str):
        return None
    m = _TRACEPARENT.fullmatch(text.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    # Version ff is forbidden; version 00 has exactly four fields; later ones may add more.
    if version == "ff" or (version == "00" and rest):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if not tid or not sid:
        return None
    return TraceParent(tid, sid, int(flags, 16))


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def check_traceparent(text: str | None, where: str) -> str | None:
    """``text`` if it is None or a valid traceparent; ValueError naming ``where`` if not."""
    if text is not None and parse_traceparent(text) is None:
        raise ValueError(f"{where}: {text!r:.80} is not a W3C traceparent "
                         "(00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)")
    return text


def header_traceparent(value: bytes | None) -> str | None:
    """The ``traceparent`` HTTP header's value if it is a valid one (else ignored, as W3C
    says), normalised to version 00 (what travels on the wire)."""
    if value is None:
        return None
    parent = parse_traceparent(value.decode("latin-1"))
    return None if parent is None else str(parent)


class RequestContexts:
    """Request id -> the traceparent its items carry, the most recently seen ``limit``."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._by_rid: dict[int, str] = {}

    def remember(self, rid: int, trace: str) -> None:
        by_rid = self._by_rid
        if by_rid.pop(rid, None) is None and len(by_rid) >= self.limit:
            del by_rid[next(iter(by_rid))]  # the least recently seen request
        by_rid[rid] = trace

    def get(self, rid: int) -> str | None:
        return self._by_rid.get(rid)

    def forget(self, rids: Iterable[int]) -> None:
        for rid in rids:
            self._by_rid.pop(rid, None)

    def __len__(self) -> int:
        return len(self._by_rid)


class ItemSpans(Generic[S]):
    """The open spans of one stage's items by path; every method returns the spans that
    end (the caller ends them, with the status it knows). At most ``limit`` stay open:
    past that the oldest request's are returned by :meth:`open` as abandoned."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._open: dict[int, dict[tuple[int, ...], S]] = {}   # rid -> path -> span
        self._deepest: dict[int, int] = {}                      # rid -> longest open path (a bound)
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, path: Iterable[int]) -> bool:
        key = tuple(path)
        return key in self._open.get(key[0], ())

    def get(self, path: list[int]) -> S | None:
        key = tuple(path)
        return self._open.get(key[0], {}).get(key)

    def open(self, path: list[int], span: S) -> list[S]:
        """Start tracking the span of item ``path``; returns spans evicted to stay bounded
        (and ``span`` itself when the item already has one: a duplicate is not tracked)."""
        key = tuple(path)
        rid = key[0]
        spans = self._open.get(rid)
        if spans is None:
            spans = self._open[rid] = {}
        elif key in spans:
            return [span]
        spans[key] = span
        self.count += 1
        if len(key) > self._deepest.get(rid, 0):
            self._deepest[rid] = len(key)
        evicted: list[S] = []
        while self.count > self.limit:
            oldest = next(iter(self._open))
            if oldest == rid and len(self._open) == 1:
                break  # one request holds them all: keep its newest ones
            evicted += self.end_request(oldest)
        return evicted

    def output(self, path: list[int]) -> list[S]:
        """The stage emitted the whole output (or a DROP) for ``path``: the spans of that
        item and of every item below it (an aggregate's group) end."""
        rid = path[0]
        spans = self._open.get(rid)
        if spans is None:
            return []
        key = tuple(path)
        ended = []
        span = spans.pop(key, None)
        if span is not None:
            ended.append(span)
        if self._deepest.get(rid, 0) > len(key):  # items below this path may be open
            n = len(key)
            below = [p for p in spans if p[:n] == key]
            ended += [spans.pop(p) for p in below]
        self._ended(rid, spans, len(ended))
        return ended

    def fanned_out(self, path: list[int]) -> list[S]:
        """The stage sent END for ``path``: that item's span ends (its children are sent)."""
        rid = path[0]
        spans = self._open.get(rid)
        if spans is None:
            return []
        span = spans.pop(tuple(path), None)
        if span is None:
            return []
        self._ended(rid, spans, 1)
        return [span]

    def end_request(self, rid: int) -> list[S]:
        """Every open span of request ``rid`` (it failed, was cancelled, or is evicted)."""
        spans = self._open.pop(rid, None)
        self._deepest.pop(rid, None)
        if not spans:
            return []
        self.count -= len(spans)
        return list(spans.values())

    def _ended(self, rid: int, spans: dict, n: int) -> None:
        self.count -= n
        if not spans:
            del self._open[rid]
            self._deepest.pop(rid, None)
