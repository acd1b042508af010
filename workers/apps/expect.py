"""What a reference says one request must end in: a value, or an error from a named stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Expected:
    """A request's exact outcome: ``value``, or (with ``error_stage``) a RequestError from that
    stage whose message contains ``error_words``."""

    value: Any = None
    error_stage: str | None = None
    error_words: str = ""

    @property
    def is_error(self) -> bool:
        return self.error_stage is not None

    def mismatch(self, value: Any = None, error: Exception | None = None) -> str | None:
        """None when the outcome (``value`` or ``error``) is this one; else what differs."""
        if self.is_error:
            if error is None:
                return f"expected an error from stage {self.error_stage!r}, got the value {value!r:.200}"
            stage = getattr(error, "stage", None)
            if stage != self.error_stage or self.error_words not in str(error):
                return (f"expected an error from stage {self.error_stage!r} saying {self.error_words!r}, "
                        f"got {error}")
            return None
        if error is not None:
            return f"expected {self.value!r:.200}, got the error {error}"
        if value != self.value:
            return f"expected {self.value!r:.300}, got {value!r:.300}"
        return None
