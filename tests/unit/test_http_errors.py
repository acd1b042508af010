"""How the front door answers each way a request can fail, and which bodies it refuses."""

from __future__ import annotations

import pytest

from alto_bus.service.errors import classify
from alto_bus.service.http_app import BadBody, parse_body


@pytest.mark.parametrize("stage, message, status, reason", [
    ("gateway", "overloaded: 20000 requests in flight (max_inflight 20000)", 503, "overloaded"),
    ("gateway", "unavailable: stage(s) ['split'] have no live instance", 503, "unavailable"),
    ("gateway", "deadline exceeded: no complete result after 0.5 s", 504, "timeout"),
    ("gateway", "bad request: timeout must be a positive number of seconds", 400, "bad_request"),
    ("gateway", "inconsistent ancestry: ...", 500, "internal"),
    ("client", "no answer from the gateway at tcp://127.0.0.1:1", 503, "unavailable"),
    ("split", "handler raised ValueError: cannot take 'boom'", 500, "handler_error"),
    ("answer", "cannot take item []: field 'question' is empty", 422, "refused"),
    ("upper", "instance 3 of stage 'upper' (pid 12 on vm) died (no heartbeat for 2.0 s)", 503, "instance_lost"),
])
def test_each_failure_has_its_status(stage, message, status, reason):
    err = classify(stage, message)
    assert (err.status, err.reason) == (status, reason)
    assert ("Retry-After" in err.headers()) == (status == 503)


@pytest.mark.parametrize("raw, status, names", [
    (b"not json", 400, "not JSON"),
    (b'{"input": NaN}', 400, "NaN"),
    (b"\xff\xfe\x00", 400, "not JSON"),
    (b"[" * 100_000, 400, "not JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b"{}", 422, "'input'"),
    (b'{"input": 1, "streem": true}', 422, "'streem'"),
    (b'{"input": 1, "stream": "yes"}', 422, "'stream'"),
    (b'{"input": 1, "timeout": -1}', 422, "'timeout'"),
    (b'{"input": 1, "timeout": true}', 422, "'timeout'"),
    (b'{"input": 1, "timeout": "30"}', 422, "'timeout'"),
    (b'{"input": 1, "timeout": 1e400}', 422, "'timeout'"),
])
def test_a_bad_body_is_refused_naming_what_is_wrong(raw, status, names):
    with pytest.raises(BadBody) as info:
        parse_body(raw, "", 30.0)
    assert info.value.status == status
    assert names in info.value.message


def test_a_good_body_and_the_accept_header():
    assert parse_body(b'{"input": {"q": [1, "x"]}}', "", 30.0) == ({"q": [1, "x"]}, False, 30.0)
    assert parse_body(b'{"input": "x", "timeout": 2}', "text/event-stream", 30.0) == ("x", True, 2.0)
    assert parse_body(b'{"input": null, "stream": true}', "*/*", 30.0) == (None, True, 30.0)
