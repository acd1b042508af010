"""How a failed request is answered over HTTP: status code, reason label, Retry-After.

The client only sees ``RequestError(stage, message)``; the kinds are told apart by the
stage and the message's leading words, which the gateway and the workers write in a
fixed form (``overloaded: ...``, ``unavailable: ...``, ``deadline exceeded: ...``,
``bad request: ...``; a stage's ``handler raised ...`` or ``cannot take item ...``;
``instance N of stage ... died`` when an instance was lost). Anything unknown is a 500.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a client is told to wait before retrying a 503 (seconds): instances re-register
# within a few heartbeats, and a full gateway drains at the pipeline's pace.
RETRY_AFTER = 1


@dataclass(frozen=True)
class HttpError:
    status: int
    reason: str          # the ``reason`` label of alto_requests_failed_total
    retry_after: int | None = None

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def classify(stage: str, message: str) -> HttpError:
    """The HTTP answer for a request that ended in ``RequestError(stage, message)``."""
    if stage == "gateway":
        if message.startswith("overloaded"):
            return HttpError(503, "overloaded", RETRY_AFTER)
        if message.startswith("unavailable"):
            return HttpError(503, "unavailable", RETRY_AFTER)
        if message.startswith("deadline exceeded"):
            return HttpError(504, "timeout")
        if message.startswith("bad request"):
            return HttpError(400, "bad_request")
        return HttpError(500, "internal")
    if stage == "client":
        if message.startswith("cancelled"):
            # Only a caller that went away cancels; nobody reads this answer (nginx's 499).
            return HttpError(499, "cancelled")
        # "no answer from the gateway at ...", "the client was closed ...": the bus is down.
        return HttpError(503, "unavailable", RETRY_AFTER)
    if message.startswith("cannot take item"):
        return HttpError(422, "refused")
    if message.startswith("instance ") and (" died" in message or " left" in message):
        return HttpError(503, "instance_lost", RETRY_AFTER)
    return HttpError(500, "handler_error")
