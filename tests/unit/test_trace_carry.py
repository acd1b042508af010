"""Trace context carrying, pure: traceparents, the wire fields, which outputs end which
item spans, the per-request memory, the [tracing] table and the OTEL_* switch."""

from __future__ import annotations

import msgspec
import pytest

from alto_bus.deploy.topology import TopologyError, parse
from alto_bus.protocol import wire
from alto_bus.protocol.messages import Data, Submit
from alto_bus.telemetry.carry import (
    ItemSpans,
    RequestContexts,
    check_traceparent,
    format_traceparent,
    header_traceparent,
    parse_traceparent,
)
from alto_bus.telemetry.tracing import TracingError, enabled_by_env, exporter_names

TID, SID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_traceparent_round_trips_and_bad_ones_are_refused():
    p = parse_traceparent(TP)
    assert (p.trace_id, p.span_id, p.sampled) == (TID, SID, True)
    assert str(p) == TP == format_traceparent(TID, SID)
    assert not parse_traceparent(TP[:-2] + "00").sampled
    for bad in ("", "garbage", TP.upper(), "ff" + TP[2:], TP + "-extra",
                "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                None, 17):
        assert parse_traceparent(bad) is None, bad
    # A later version may add fields; what alto_bus carries is the version-00 part.
    assert str(parse_traceparent("01" + TP[2:] + "-more")) == TP
    assert header_traceparent(TP.encode()) == TP
    assert header_traceparent(b"not one") is None and header_traceparent(None) is None
    assert check_traceparent(None, "x") is None
    with pytest.raises(ValueError, match="traceparent: 'nope' is not a W3C traceparent"):
        check_traceparent("nope", "traceparent")


def test_the_wire_fields_are_appended_and_optional():
    """An old peer's DATA and SUBMIT (shorter arrays) decode with no context; a traced
    DATA carries its context through encode and decode."""
    old_data = msgspec.msgpack.encode([0, [7], 0, "x", True, 3])
    msg = wire.decode_message(old_data)
    assert type(msg) is Data and msg.trace is None and msg.epoch == 3
    traced = wire.decode_message(msgspec.msgpack.encode(Data([7, 1], 0, "x", True, 3, TP)))
    assert traced.trace == TP and traced.path == [7, 1]
    frame = wire.encode_client_frame([[wire.SUBMIT, 1, "q", False, 5.0], [wire.SUBMIT, 2, "q", False, 5.0, TP]])
    subs = list(wire.client_messages(frame, pytest.fail))
    assert [type(s) for s in subs] == [Submit, Submit]
    assert [s.traceparent for s in subs] == [None, TP]
    bad = []
    list(wire.client_messages(wire.encode_client_frame([[wire.SUBMIT, 3, "q", False, 5.0, 12]]), bad.append))
    assert len(bad) == 1 and "traceparent" in str(bad[0])


def test_request_contexts_keep_the_most_recent():
    ctx = RequestContexts(limit=2)
    ctx.remember(1, "a")
    ctx.remember(2, "b")
    ctx.remember(1, "a")          # seen again: now the most recent
    ctx.remember(3, "c")          # evicts 2, the least recently seen
    assert (ctx.get(1), ctx.get(2), ctx.get(3)) == ("a", None, "c")
    ctx.forget([1])
    assert ctx.get(1) is None and len(ctx) == 1


def test_a_one_to_one_output_ends_its_items_span_only():
    spans: ItemSpans[str] = ItemSpans()
    assert spans.open([5, 0], "s0") == [] and spans.open([5, 1], "s1") == []
    assert spans.open([5, 1], "dup") == ["dup"]         # a duplicate is not tracked
    assert spans.output([5, 0]) == ["s0"]
    assert spans.output([5, 0]) == []
    assert [5, 1] in spans and len(spans) == 1


def test_a_fan_out_ends_with_its_end_not_with_its_children():
    spans: ItemSpans[str] = ItemSpans()
    spans.open([9], "parent")
    assert spans.output([9, 0]) == [] and spans.output([9, 1]) == []   # children sent
    assert spans.fanned_out([9, 1]) == []
    assert spans.fanned_out([9]) == ["parent"]
    assert len(spans) == 0


def test_an_aggregates_group_output_ends_every_item_of_the_group():
    spans: ItemSpans[str] = ItemSpans()
    for i in range(3):
        spans.open([4, i, 0], f"a{i}")
    spans.open([4, 7], "other")                            # another group of the request
    assert spans.output([4, 1]) == ["a1"]                  # the group [4, 1] is complete
    assert spans.output([4, 0]) == ["a0"]                  # (a DROP of a group ends it the same way)
    assert sorted(spans.output([4])) == ["a2", "other"]    # a per-request group: all the rest
    assert len(spans) == 0


def test_a_failed_request_ends_all_its_spans_and_the_book_stays_bounded():
    spans: ItemSpans[str] = ItemSpans(limit=3)
    spans.open([1, 0], "1a")
    spans.open([1, 1], "1b")
    spans.open([2, 0], "2a")
    assert spans.end_request(2) == ["2a"] and spans.end_request(2) == []
    spans.open([3, 0], "3a")
    assert sorted(spans.open([3, 1], "3b")) == ["1a", "1b"]   # the oldest request goes
    assert len(spans) == 2 and [3, 1] in spans


def test_the_tracing_table_becomes_otel_variables_and_bad_fields_name_themselves():
    stages = [{"name": "a", "kind": "function", "handler": "json:dumps"}]
    topo = parse({"stage": stages, "tracing": {"endpoint": "http://127.0.0.1:4318", "sample_ratio": 0.25}})
    assert topo.tracing.env() == {
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "alto_bus", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert parse({"stage": stages}).tracing is None
    for table, text in (({"exporter": "zipkin"}, "field 'exporter' must be one of otlp, console, none"),
                        ({"endpoint": "127.0.0.1:4318"}, "field 'endpoint' must be a URL"),
                        ({"exporter": "console", "endpoint": "http://x"}, "'endpoint' is for exporter 'otlp'"),
                        ({"sample_ratio": 2}, "field 'sample_ratio' must be within"),
                        ({"colour": "red"}, "unknown field 'colour'")):
        with pytest.raises(TopologyError, match=r"<topology>: \[tracing\].*" + text.replace("(", r"\(")):
            parse({"stage": stages, "tracing": table})


def test_tracing_is_off_unless_the_environment_asks():
    assert not enabled_by_env({})
    assert not enabled_by_env({"OTEL_TRACES_EXPORTER": "none"})
    assert enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console, otlp"}) == ["console", "otlp"]
    assert not enabled_by_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    with pytest.raises(TracingError, match="OTEL_TRACES_EXPORTER='jaeger': unknown exporter 'jaeger'"):
        exporter_names({"OTEL_TRACES_EXPORTER": "jaeger"})
