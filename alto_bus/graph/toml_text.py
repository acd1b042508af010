"""Write a topology (the dict a topology file decodes to) back as TOML text.

Enough of TOML for every topology file: top-level tables (``[broker]``, ``[http]``, ...),
arrays of tables (``[[stage]]``, ``[[pool]]``, ``[[host]]``), and values that are strings,
numbers, booleans, dates, arrays and inline tables. ``tomllib.loads(dumps(raw)) == raw``
for every such dict (tests/unit/test_graph_api.py).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(raw: dict[str, Any]) -> str:
    """TOML text for ``raw``: plain values first, then tables, then arrays of tables."""
    plain = {k: v for k, v in raw.items() if not _is_table(v) and not _is_table_array(v)}
    lines = [f"{key(k)} = {value(v)}" for k, v in plain.items()]
    for k, v in raw.items():
        if _is_table(v):
            lines += ["", f"[{key(k)}]", *(f"{key(f)} = {value(x)}" for f, x in v.items())]
    for k, v in raw.items():
        if _is_table_array(v):
            for table in v:
                lines += ["", f"[[{key(k)}]]", *(f"{key(f)} = {value(x)}" for f, x in table.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(t, dict) for t in v)


def key(k: str) -> str:
    if not isinstance(k, str):
        raise TypeError(f"a TOML key must be a string, got {k!r}")
    return k if _BARE_KEY.fullmatch(k) else string(k)


def string(s: str) -> str:
    # JSON's escapes are TOML's, except that TOML also refuses a raw DEL.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"{v!r} ({type(v).__name__}) has no TOML form")
