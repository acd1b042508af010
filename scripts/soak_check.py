"""The pure parts of scripts/soak.py: how each request ended, and whether a process's RSS stayed flat.

No processes, no sockets: the soak feeds these and prints what they say
(tests/unit/test_soak_check.py checks them).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# How a request can end. Only the first two are fine: a result equal to the reference, or
# an error that names its stage and says what happened.
RESULT, ERROR = "result", "error"
MISMATCH = "mismatch"              # a result, but not the exact one
CLIENT_TIMEOUT = "client timeout"  # the client gave up at its own deadline: nobody told it anything
UNCLEAR = "unclear error"          # an error with no stage or no message
HUNG = "hung"                      # no end at all by the soak's own bound
BAD = (MISMATCH, CLIENT_TIMEOUT, UNCLEAR, HUNG)


def classify_error(stage: str, message: str) -> str:
    """ERROR for a clear error; CLIENT_TIMEOUT when the client gave up by itself
    (alto_bus.client: ``RequestError("client", "no answer from the gateway ...")``)."""
    if not stage or not message or not message.strip():
        return UNCLEAR
    if stage == "client" and message.startswith("no answer from the gateway"):
        return CLIENT_TIMEOUT
    return ERROR


def error_reason(stage: str, message: str, words: int = 4) -> str:
    """A short label to count errors by: the stage and the message's first words."""
    return f"{stage}: {' '.join(message.split()[:words])}"


@dataclass
class Outcomes:
    """Every request of one load, once: submitted, then ended one way."""

    submitted: int = 0
    ended: Counter = field(default_factory=Counter)        # kind -> count
    reasons: Counter = field(default_factory=Counter)      # error label -> count
    examples: dict[str, str] = field(default_factory=dict)  # kind -> one example, for the report

    def submit(self) -> None:
        self.submitted += 1

    def result(self, value: Any, expected: Any) -> str:
        kind = RESULT if value == expected else MISMATCH
        if kind == MISMATCH:
            self.examples.setdefault(MISMATCH, f"got {value!r:.200} expected {expected!r:.200}")
        self.ended[kind] += 1
        return kind

    def error(self, stage: str, message: str) -> str:
        kind = classify_error(stage, message)
        self.ended[kind] += 1
        self.reasons[error_reason(stage, message)] += 1
        self.examples.setdefault(kind, f"stage {stage!r}: {message:.300}")
        return kind

    def hung(self, n: int) -> None:
        self.ended[HUNG] += n

    @property
    def in_flight(self) -> int:
        return self.submitted - sum(self.ended.values())

    @property
    def ok(self) -> bool:
        """Every request ended, each in a result equal to the reference or a clear error."""
        return self.in_flight == 0 and not any(self.ended[k] for k in BAD)

    def summary(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "ended": dict(self.ended), "in_flight": self.in_flight,
                "errors": dict(self.reasons.most_common(8)), "examples": self.examples, "ok": self.ok}


@dataclass
class Flatness:
    label: str
    baseline: int | None   # median RSS (bytes) of the first samples after warm-up
    final: int | None      # median RSS of the last samples
    peak: int | None
    growth: float | None   # final / baseline - 1
    flat: bool | None      # None: not enough samples after warm-up to say

    def line(self) -> str:
        if self.flat is None:
            return f"{self.label}: too short-lived after warm-up to judge"
        mib = 1 << 20
        return (f"{self.label}: {self.baseline / mib:.1f} -> {self.final / mib:.1f} MiB "
                f"({self.growth:+.1%}; peak {self.peak / mib:.1f}) {'flat' if self.flat else 'GROWING'}")


def rss_flatness(label: str, samples: list[tuple[float, int]], warm_until: float, min_span: float,
                 tolerance: float = 0.10, window: int = 5) -> Flatness:
    """Whether RSS stayed within ``tolerance`` after warm-up: the median of the last
    ``window`` samples against the median of the first ``window`` after ``warm_until``.
    Samples are (time, bytes); fewer than 2 x ``window`` after warm-up, or spanning less
    than ``min_span`` seconds, cannot say (flat is None)."""
    after = [(t, rss) for t, rss in samples if t >= warm_until]
    if len(after) < 2 * window or after[-1][0] - after[0][0] < min_span:
        return Flatness(label, None, None, None, None, None)
    baseline = int(statistics.median(r for _, r in after[:window]))
    final = int(statistics.median(r for _, r in after[-window:]))
    growth = final / baseline - 1
    return Flatness(label, baseline, final, max(r for _, r in after), growth, abs(growth) <= tolerance)
