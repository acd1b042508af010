"""The front door's POST /v1/requests on ASGI, without a server or a bus: a caller that
leaves cancels its request whenever it leaves, and one that stays gets its answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from alto_bus.client import RequestError
from alto_bus.service import http_app
from alto_bus.service.http_app import FrontDoor, create_app

BODY = {"type": "http.request", "body": b'{"input": "the fox"}', "more_body": False}
SCOPE = {"type": "http", "path": "/v1/requests", "method": "POST",
         "headers": [(b"content-type", b"application/json")]}


class SlowGateway:
    """Stands in for the AsyncClient: answers after ``delay`` seconds, or records its cancel."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cancelled = 0

    async def submit(self, payload, *, timeout=None, traceparent=None):
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise RequestError("client", "cancelled by the client") from None
        return payload.upper()


def caller(leave_after: float | None):
    """(receive, send, sent): the body, then a disconnect after ``leave_after`` s (None: never)."""
    sent: list[dict] = []
    state = {"read": False}

    async def receive():
        if not state["read"]:
            state["read"] = True
            return BODY
        if leave_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    return receive, send, sent


def serve(gateway: SlowGateway, leave_after: float | None):
    async def run():
        door = FrontDoor("tcp://127.0.0.1:1")
        app = create_app(door)
        door.client, door.loop = gateway, asyncio.get_running_loop()
        receive, send, sent = caller(leave_after)
        await asyncio.wait_for(app(SCOPE, receive, send), 10)
        return door, sent

    return asyncio.run(run())


def sample(door: FrontDoor, name: str, **labels: str) -> float | None:
    """A figure as GET /metrics shows it."""
    return door.metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("leave_after", [0.0, http_app.WATCH_AFTER * 5])
def test_a_caller_that_leaves_cancels_its_request_early_or_late(leave_after):
    gateway = SlowGateway(delay=30)
    door, sent = serve(gateway, leave_after)
    assert gateway.cancelled == 1
    assert sample(door, "alto_requests_failed_total", reason="cancelled") == 1
    assert sample(door, "alto_requests_in_flight") == 0


def test_a_caller_that_stays_gets_the_result_and_is_not_cancelled():
    gateway = SlowGateway(delay=http_app.WATCH_AFTER * 3)  # long enough that the watcher starts
    door, sent = serve(gateway, None)
    assert gateway.cancelled == 0
    assert sent[0]["status"] == 200
    assert json.loads(sent[-1]["body"]) == {"result": "THE FOX"}
    assert sample(door, "alto_requests_completed_total") == 1
    assert sample(door, "alto_requests_failed_total", reason="cancelled") is None
