"""LM stages on the sim engine through real processes: streaming against the baseline,
and cancellation of generations when a request ends early."""

from __future__ import annotations

import time

import pytest

from alto_bus import Client, RequestError
from tests.support import running, status

QUESTION = {"question": "Tell me about the history of the lighthouse at the end of the bay."}


def two_stage(stream: bool, max_tokens: int = 160, time_scale: float = 1.0) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.1},
        "stage": [
            {"name": "answer", "kind": "lm", "engine": "sim", "prompt": "Answer briefly: {question}",
             "emit": "sentences", "stream": stream, "max_tokens": max_tokens, "ignore_eos": True,
             "engine_args": {"time_scale": time_scale}},
            {"name": "tag", "kind": "function", "handler": "tests.integration.handlers:upper", "input": "answer"},
        ],
    }


def first_and_result(topology: dict) -> tuple[float, float, list]:
    with running(topology) as sup, Client(sup.addresses["gateway"]) as client:
        client.submit(QUESTION).result(timeout=60)  # warm: the second run's prefix is cached either way
        t0 = time.monotonic()
        stream = client.stream(QUESTION)
        first = None
        for _ in stream:
            if first is None:
                first = time.monotonic() - t0
        total = time.monotonic() - t0
        return first, total, stream.result()


def test_streaming_delivers_the_first_item_long_before_the_baseline_with_the_same_result():
    s_first, s_total, s_result = first_and_result(two_stage(stream=True))
    b_first, b_total, b_result = first_and_result(two_stage(stream=False))
    assert s_result == b_result and len(s_result) >= 3
    assert all(isinstance(x, str) and x == x.upper() for x in s_result)
    # Streaming hands the first sentence on after a few dozen tokens; the baseline only
    # after all 160 (about 2 s of emulated GPU time).
    assert s_first < b_first / 2, (s_first, b_first)


def test_a_request_that_ends_early_aborts_its_generation():
    topo = two_stage(stream=True, max_tokens=4000)
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        with pytest.raises(RequestError, match="deadline exceeded"):
            client.submit(QUESTION, timeout=0.5).result(timeout=30)
        # Without the abort, the generation would run for 4,000 tokens (~50 s); with it,
        # the instance reports nothing running within a few heartbeats.
        deadline = time.monotonic() + 5
        while status(sup)["stages"]["answer"]["instances"][0]["depth"] != 0:
            assert time.monotonic() < deadline, "the generation was not aborted"
            time.sleep(0.05)
