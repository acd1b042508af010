"""Streaming splitters: turn an LM's text stream into items as soon as they exist.

A splitter is fed the text in whatever chunks the engine produces (``feed``) and is
told when the stream ends (``finish``). Each call returns the items completed by it.
For ``sentences``, ``lines`` and ``json-items`` the items never depend on how the text
was cut into chunks: a boundary is only decided once enough of the text after it has
arrived, and ``finish`` decides the rest. ``tokens`` is the exception by design: its
items are the chunks themselves (their concatenation is the text).

Every splitter keeps a scan position and only looks at new text on each ``feed``; its
buffer holds the unfinished item plus the few characters of look-ahead a decision needs.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "EMITS",
    "JsonItemSplitter",
    "LineSplitter",
    "SentenceSplitter",
    "Splitter",
    "SplitterError",
    "TokenSplitter",
    "make_splitter",
]


class SplitterError(ValueError):
    """The stream cannot be split (a malformed JSON item, no array...).

    ``items`` holds what the failing call completed before the error, so a caller
    that wants to can still forward them.
    """

    def __init__(self, message: str, items: list[Any] | None = None) -> None:
        super().__init__(message)
        self.items: list[Any] = items if items is not None else []


class Splitter:
    """Base class: ``feed`` chunks, then ``finish`` once."""

    def feed(self, text: str) -> list[Any]:
        raise NotImplementedError

    def finish(self) -> list[Any]:
        raise NotImplementedError


def _excerpt(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------- tokens


class TokenSplitter(Splitter):
    """Items are the chunks as they come (the token-batch splitter)."""

    def feed(self, text: str) -> list[str]:
        return [text] if text else []

    def finish(self) -> list[str]:
        return []


# ------------------------------------------------------------------------- sentences

# Words after which a single period does not end a sentence (compared lower-cased,
# without the period). "etc." is left out on purpose: it ends sentences as often as not.
ABBREVIATIONS = frozenset(
    """mr mrs ms mx dr prof sr jr st mt ft vs cf al approx fig figs eq eqs ref refs
    vol pp ch sec no nos dept univ gen col lt sgt capt cmdr gov sen rep rev hon
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")   # e.g, i.e, U.S, U.S.A, a.m
_CANDIDATE = re.compile(r"[.?!…]|\n[ \t]*\n")       # sentence ends, and paragraph breaks
_TERMINATORS = ".?!…"
_CLOSERS = "\"')]}”’»"
_OPENERS = "\"'([{“‘«¿¡"
_TRAILING_WS = re.compile(r"\s*\Z")


class SentenceSplitter(Splitter):
    """Items are stripped sentences.

    A sentence ends at ``.``, ``?``, ``!`` or an ellipsis (plus any closing quotes or
    brackets) followed by whitespace and then an uppercase letter, a digit or an
    opening quote/bracket; or at a blank line; or at the end of the stream. A single
    period after a known abbreviation ("Dr.", "e.g.", "U.S."), an initial ("J.") or a
    list number at the start of a line ("1.") does not end a sentence; "3.14" never
    looks like a boundary because no whitespace follows the period.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0      # where the next scan starts; everything before it is decided

    def feed(self, text: str) -> list[str]:
        if not text:
            return []
        self._buf += text
        return self._scan()

    def finish(self) -> list[str]:
        rest = self._buf.strip()
        self._buf, self._pos = "", 0
        return [rest] if rest else []

    def _scan(self) -> list[str]:
        buf, pos, out = self._buf, self._pos, []
        n = len(buf)
        start = 0    # the current sentence starts at buf[0] (the buffer is trimmed on emit)
        while True:
            m = _CANDIDATE.search(buf, pos)
            if m is None:
                # A paragraph break may be cut in half: rescan the trailing whitespace.
                pos = _TRAILING_WS.search(buf, pos).start()
                break
            i = m.start()
            if buf[i] == "\n":                       # blank line: a boundary, no look-ahead
                sentence = buf[start:i].strip()
                if sentence:
                    out.append(sentence)
                start = pos = m.end()
                continue
            j = i + 1
            while j < n and buf[j] in _TERMINATORS:
                j += 1
            k = j
            while k < n and buf[k] in _CLOSERS:
                k += 1
            w = k
            while w < n and buf[w].isspace():
                w += 1
            if w == n:                               # cannot decide yet: wait for more text
                pos = i
                break
            if w > k and self._starts_sentence(buf[w]) and not self._protected(buf, start, i, j):
                out.append(buf[start:k].strip())
                start = pos = w
            else:
                pos = j
        if start:
            buf = buf[start:]
            pos -= start
        self._buf, self._pos = buf, pos
        return out

    @staticmethod
    def _starts_sentence(c: str) -> bool:
        return c.isupper() or c.isdigit() or c in _OPENERS

    @staticmethod
    def _protected(buf: str, start: int, i: int, j: int) -> bool:
        """True when the single period at ``buf[i]`` belongs to a word, not to the sentence."""
        if j - i != 1 or buf[i] != ".":
            return False                             # ?, !, ellipses always may end a sentence
        lo = max(start, i - 40)
        seg = buf[lo:i]
        if not seg or seg[-1].isspace():
            return False
        raw = seg.split()[-1]
        word = raw.lstrip(_OPENERS)
        if not word:
            return False
        if word.lower() in ABBREVIATIONS or _DOTTED.fullmatch(word):
            return True
        if len(word) == 1 and word.isupper():        # an initial, as in "J. Smith"
            return True
        if word.isdigit() and len(word) <= 3:        # "1." opening a numbered line
            before = buf[start : i - len(raw)]
            return not before.strip() or before.endswith("\n")
        return False


# ----------------------------------------------------------------------------- lines

_LIST_MARKER = re.compile(r"(?:[-*•+–]|\d{1,3}[.)]|\(\d{1,3}\))(?:\s+|\Z)")


def _clean_line(line: str) -> str:
    line = line.strip()
    m = _LIST_MARKER.match(line)
    return line[m.end() :].strip() if m else line


class LineSplitter(Splitter):
    """One item per non-empty line, without list markers ("1.", "2)", "-", "*", "•")."""

    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        if not text:
            return []
        # Only the new text can hold a newline: the buffer never keeps one.
        buf, pos = self._buf + text, len(self._buf)
        out, start = [], 0
        i = buf.find("\n", pos)
        while i >= 0:
            item = _clean_line(buf[start:i])
            if item:
                out.append(item)
            start = i + 1
            i = buf.find("\n", start)
        self._buf = buf[start:] if start else buf
        return out

    def finish(self) -> list[str]:
        item = _clean_line(self._buf)
        self._buf = ""
        return [item] if item else []


# ------------------------------------------------------------------------ json-items

_PRE, _IN, _DONE = 0, 1, 2
_NONWS = re.compile(r"\S")
_VALUE_START = frozenset('"{[]-0123456789tfn')    # what may follow the array's "["
_STRUCT = re.compile(r'[\[\]{}",]')
_IN_STRING = re.compile(r'["\\]')


class JsonItemSplitter(Splitter):
    """The items of the first top-level JSON array, each parsed as soon as it closes.

    Text before the array is skipped: the array starts at the first "[" followed by
    something that can start a JSON value. Text after the closing "]" is ignored.
    Objects, arrays and strings are emitted at their closing character; numbers and
    literals at the "," or "]" after them. With ``strict`` (the default), ``finish``
    raises when no array was found or it was never closed; otherwise it emits a
    complete trailing scalar and drops an unfinished item.
    """

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self._buf = ""
        self._pos = 0
        self._state = _PRE
        self._depth = 0        # nesting inside the current item; 0 between top-level items
        self._in_str = False
        self._item = -1        # start of the current container/string item, or -1
        self._closed = -1      # just past the last emitted container/string item, or -1
        self._seg = 0          # just past the last "," (or the opening "[")

    def feed(self, text: str) -> list[Any]:
        if not text or self._state == _DONE:
            return []
        self._buf += text
        out: list[Any] = []
        try:
            self._scan(out)
        except SplitterError as err:
            err.items = out
            self._state = _DONE
            raise
        self._trim()
        return out

    def finish(self) -> list[Any]:
        out: list[Any] = []
        state, self._state = self._state, _DONE
        if state == _PRE and self.strict:
            raise SplitterError("json-items: no JSON array in the output")
        if state == _IN:
            pending = self._buf[self._seg :].strip()
            if self.strict:
                raise SplitterError(
                    f"json-items: the JSON array was never closed; pending text {_excerpt(pending)}"
                )
            if self._depth == 0 and not self._in_str and self._closed < 0 and pending:
                try:
                    out.append(json.loads(pending))
                except ValueError:
                    pass                              # an unfinished item: dropped
        self._buf = ""
        return out

    def _scan(self, out: list[Any]) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        if self._state == _PRE:
            pos = self._find_array(buf, pos)
            if self._state == _PRE:
                self._pos = pos
                return
        depth, in_str = self._depth, self._in_str
        while pos < n:
            if in_str:
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = n
                    break
                i = m.start()
                if buf[i] == "\\":
                    if i + 1 == n:                    # the escaped character is still to come
                        pos = i
                        break
                    pos = i + 2
                    continue
                in_str = False
                pos = i + 1
                if depth == 0:
                    out.append(self._parse(buf[self._item : pos]))
                    self._item, self._closed = -1, pos
                continue
            m = _STRUCT.search(buf, pos)
            if m is None:
                pos = n
                break
            i = m.start()
            c = buf[i]
            pos = i + 1
            if depth:                                 # inside an item: only track nesting
                if c == '"':
                    in_str = True
                elif c in "[{":
                    depth += 1
                elif c in "]}":
                    depth -= 1
                    if depth == 0:
                        out.append(self._parse(buf[self._item : pos]))
                        self._item, self._closed = -1, pos
                continue
            if c in '"[{':
                self._expect_value(buf, i)
                self._item = i
                if c == '"':
                    in_str = True
                else:
                    depth = 1
            elif c in ",]":
                if self._closed >= 0:
                    self._expect_separator(buf, i)
                else:
                    scalar = buf[self._seg : i].strip()
                    if scalar:
                        out.append(self._parse(scalar))
                    elif c == ",":
                        where = _excerpt(buf[:pos])
                        raise SplitterError(f"json-items: empty item before ',' in {where}")
                self._item, self._closed, self._seg = -1, -1, pos
                if c == "]":
                    self._state = _DONE
                    break
            else:
                where = _excerpt(buf[self._seg : pos])
                raise SplitterError(f"json-items: unexpected '}}' in {where}")
        self._pos, self._depth, self._in_str = pos, depth, in_str

    def _find_array(self, buf: str, pos: int) -> int:
        while True:
            i = buf.find("[", pos)
            if i < 0:
                return len(buf)
            m = _NONWS.search(buf, i + 1)
            if m is None:
                return i                              # what follows "[" is unknown yet
            if m.group() in _VALUE_START:
                self._state = _IN
                self._seg = i + 1
                return i + 1
            pos = i + 1

    def _expect_value(self, buf: str, i: int) -> None:
        lead = buf[self._closed if self._closed >= 0 else self._seg : i]
        if self._closed >= 0 or lead.strip():
            where = _excerpt(buf[self._seg : i + 1])
            raise SplitterError(f"json-items: missing ',' before {where}")

    def _expect_separator(self, buf: str, i: int) -> None:
        junk = buf[self._closed : i]
        if junk.strip():
            where = _excerpt(junk.strip())
            raise SplitterError(f"json-items: unexpected text {where} after an item")

    @staticmethod
    def _parse(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError as err:
            raise SplitterError(f"json-items: malformed item {_excerpt(text)}: {err}") from None

    def _trim(self) -> None:
        if self._state == _DONE:
            self._buf, self._pos = "", 0
            return
        if self._state == _PRE:
            keep = self._pos
        elif self._item >= 0:
            keep = self._item
        elif self._closed >= 0:
            keep = self._closed
        else:
            keep = self._seg
        # Cut only when it frees at least half the buffer: amortised O(1) per character.
        if keep and keep * 2 >= len(self._buf):
            self._buf = self._buf[keep:]
            self._pos -= keep
            self._seg -= keep
            if self._item >= 0:
                self._item -= keep
            if self._closed >= 0:
                self._closed -= keep


# --------------------------------------------------------------------------- factory

EMITS = ("tokens", "sentences", "lines", "json-items")

_CLASSES: dict[str, type[Splitter]] = {
    "tokens": TokenSplitter,
    "sentences": SentenceSplitter,
    "lines": LineSplitter,
    "json-items": JsonItemSplitter,
}


def make_splitter(emit: str, **options: Any) -> Splitter:
    """A fresh splitter for one stream; ``options`` go to its constructor (``strict``)."""
    try:
        cls = _CLASSES[emit]
    except KeyError:
        raise ValueError(f"unknown splitter {emit!r}; expected one of {', '.join(EMITS)}") from None
    return cls(**options)
