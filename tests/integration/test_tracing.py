"""OpenTelemetry traces across real processes: `alto launch` of a topology with a
``[tracing]`` table that points every process at an OTLP/HTTP receiver on loopback.

The pipeline: an LM stage (sim engine) that fans its answer out into sentences, a
function stage with two replicas that upper-cases each, an aggregate that collects the
request. One request's spans, from the broker and every worker process, must form one
trace: the gateway's request span under the caller's traceparent (an HTTP header, the
Python client's argument or its current OpenTelemetry span), one span per item per
stage under it, the LM's with its ``gen_ai.*`` attributes.
"""

from __future__ import annotations

import os
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

from alto_bus import Client, RequestError
from tests.integration.otlp_receiver import OtlpReceiver, Span
from tests.integration.test_http import Launched
from tests.support import write_topology

QUESTION = {"question": "Tell me about the history of the lighthouse at the end of the bay."}
STAGES = ("answer", "tag", "report")


def topology(endpoint: str) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.1},
        "http": {"listen": "127.0.0.1:0"},
        "tracing": {"endpoint": endpoint, "service_name": "alto-test"},
        "stage": [
            {"name": "answer", "kind": "lm", "engine": "sim", "prompt": "Answer briefly: {question}",
             "emit": "sentences", "max_tokens": 48, "ignore_eos": True, "engine_args": {"time_scale": 0.2}},
            {"name": "tag", "kind": "function", "handler": "tests.integration.handlers:upper", "input": "answer",
             "replicas": 2},
            {"name": "report", "kind": "aggregate", "input": "tag", "key": "request", "op": "collect"},
        ],
    }


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(the launched topology, the receiver its processes export to)."""
    mp = pytest.MonkeyPatch()
    for name in list(os.environ):  # the table decides, not the environment of whoever runs the tests
        if name.startswith("OTEL_"):
            mp.delenv(name)
    mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s, not 5 s
    run = None
    try:
        with OtlpReceiver() as receiver:
            run = Launched(write_topology(tmp_path_factory.mktemp("tracing"), topology(receiver.url)))
            yield run, receiver
    finally:
        if run is not None:
            run.stop()
        mp.undo()


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def spans_of(receiver: OtlpReceiver, trace_id: str, items: int | None, timeout: float = 30.0) -> list[Span]:
    """The trace's spans once the request span and every stage's spans arrived (each of
    ``items`` items through tag and report, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.trace(trace_id)
        names = [s.name for s in spans]
        if "alto.request" in names and "stage answer" in names and (
                items is None or (names.count("stage tag") >= items and names.count("stage report") >= items)):
            return spans
        assert time.monotonic() < deadline, f"the trace has only {sorted(names)} after {timeout:g} s"
        time.sleep(0.05)


def check_one_trace(spans: list[Span], parent: str, items: int) -> Span:
    """The request span (returned) under ``parent``; every stage's item spans under it."""
    roots = [s for s in spans if s.name == "alto.request"]
    assert len(roots) == 1
    root = roots[0]
    assert root.parent_id == parent and root.resource["alto.process"] == "broker"
    assert root.resource["service.name"] == "alto-test" and root.error is None
    rid = root.attributes["alto.request.id"]
    by_stage = {name: [s for s in spans if s.name == f"stage {name}"] for name in STAGES}
    assert {s.name for s in spans} == {"alto.request", *(f"stage {n}" for n in STAGES)}
    for s in spans:
        if s is not root:
            assert s.parent_id == root.span_id, s
            assert s.error is None and s.attributes["alto.request.id"] == rid
            assert s.pid != root.pid and s.resource["alto.process"] == "worker"
            assert s.attributes["alto.instance_id"] >= 0
    (answer,) = by_stage["answer"]
    assert answer.attributes["alto.item.path"] == [rid]
    assert answer.attributes["alto.stage.kind"] == "lm"
    assert answer.attributes["gen_ai.system"] == "sim"
    assert answer.attributes["gen_ai.operation.name"] == "text_completion"
    assert answer.attributes["gen_ai.usage.output_tokens"] == 48
    assert answer.attributes["gen_ai.request.max_tokens"] == 48
    children = sorted([rid, i] for i in range(items))
    assert sorted(s.attributes["alto.item.path"] for s in by_stage["tag"]) == children
    assert sorted(s.attributes["alto.item.path"] for s in by_stage["report"]) == children
    assert {s.attributes["alto.stage.kind"] for s in by_stage["report"]} == {"aggregate"}
    # The broker and a process per stage at least (tag's items may all go to one replica).
    assert len({s.pid for s in spans}) >= 1 + len(STAGES)
    assert len({s.pid for s in [answer, by_stage["tag"][0], by_stage["report"][0]]}) == 3
    return root


def test_an_http_requests_spans_from_every_process_form_one_trace(traced):
    door, receiver = traced
    header, trace_id, parent = new_traceparent()
    r = door.http.post("/v1/requests", json={"input": QUESTION, "timeout": 30}, headers={"traceparent": header})
    assert r.status_code == 200, r.text
    sentences = r.json()["result"]  # what the report collected
    assert sentences and all(s == s.upper() for s in sentences)
    spans = spans_of(receiver, trace_id, len(sentences))
    check_one_trace(spans, parent, len(sentences))


def test_the_python_client_carries_its_argument_or_its_current_span(traced):
    door, receiver = traced
    header, trace_id, parent = new_traceparent()
    caller = TracerProvider().get_tracer("test caller")
    with Client(door.printed["gateway"]) as client:
        by_argument = client.submit(QUESTION, timeout=30, traceparent=header)
        with caller.start_as_current_span("caller") as span:
            by_context = client.submit(QUESTION, timeout=30)
        n1, n2 = len(by_argument.result(40)), len(by_context.result(40))
        with pytest.raises(ValueError, match="traceparent: 'nope' is not a W3C traceparent"):
            client.submit(QUESTION, traceparent="nope")
    check_one_trace(spans_of(receiver, trace_id, n1), parent, n1)
    ctx = span.get_span_context()
    check_one_trace(spans_of(receiver, f"{ctx.trace_id:032x}", n2), f"{ctx.span_id:016x}", n2)


def test_a_request_without_a_context_starts_a_trace_and_a_failure_marks_its_spans(traced):
    door, receiver = traced
    r = door.http.post("/v1/requests", json={"input": {"wrong": "field"}})
    assert r.status_code == 422, r.text
    rid_spans: list[Span] = []
    deadline = time.monotonic() + 30
    while not rid_spans:
        with receiver._lock:
            failed = [s for s in receiver.spans if s.name == "alto.request" and s.error]
        for root in failed:
            spans = receiver.trace(root.trace_id)
            if any(s.name == "stage answer" for s in spans):
                rid_spans = spans
        assert time.monotonic() < deadline, "no failed request's trace arrived"
        time.sleep(0.05)
    root = next(s for s in rid_spans if s.name == "alto.request")
    answer = next(s for s in rid_spans if s.name == "stage answer")
    assert root.parent_id == "" and "stage 'answer'" in root.error and "the prompt needs field" in root.error
    assert root.attributes["alto.error.stage"] == "answer"
    assert answer.parent_id == root.span_id and "the prompt needs field" in answer.error
    with Client(door.printed["gateway"]) as client:
        with pytest.raises(RequestError):
            client.submit({"wrong": "field"}, timeout=30).result(40)
