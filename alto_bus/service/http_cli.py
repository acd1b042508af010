"""``alto submit --http URL`` and ``alto status --http URL``: the same commands over the front door."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx


def _error_text(response: httpx.Response) -> str:
    try:
        err = response.json()["error"]
        return f"stage {err['stage']!r}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def submit(url: str, payload: Any, *, stream: bool, timeout: float, compact: bool) -> int:
    """Send one request to the front door at ``url``; print partials (``stream``) and the result."""
    body = {"input": payload, "stream": stream, "timeout": timeout}
    # The front door answers at the request's deadline; wait a little longer for that answer.
    limits = httpx.Timeout(timeout + 10.0, connect=10.0)
    try:
        with httpx.Client(base_url=url, timeout=limits) as http:
            if not stream:
                r = http.post("/v1/requests", json=body)
                if r.status_code != 200:
                    print(f"error: {_error_text(r)}", file=sys.stderr)
                    return 1
                result = r.json()["result"]
            else:
                result = _stream(http, body)
                if result is _FAILED:
                    return 1
    except httpx.HTTPError as exc:
        print(f"error: no answer from {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=None if compact else 2))
    return 0


_FAILED = object()


def _stream(http: httpx.Client, body: dict) -> Any:
    with http.stream("POST", "/v1/requests", json=body, headers={"accept": "text/event-stream"}) as r:
        if r.status_code != 200:
            r.read()
            print(f"error: {_error_text(r)}", file=sys.stderr)
            return _FAILED
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if "result" in event:
                return event["result"]
            if "error" in event:
                print(f"error: stage {event['error']['stage']!r}: {event['error']['message']}", file=sys.stderr)
                return _FAILED
            print(json.dumps(event), flush=True)
    print("error: the stream ended without a result", file=sys.stderr)
    return _FAILED


def status(url: str, timeout: float) -> dict[str, Any] | None:
    """The broker's status through the front door; None (with a message) when there is none."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/status", timeout=timeout + 5.0)
    except httpx.HTTPError as exc:
        print(f"error: no answer from {url}: {exc}", file=sys.stderr)
        return None
    if r.status_code != 200:
        print(f"error: {_error_text(r)}", file=sys.stderr)
        return None
    return r.json()
