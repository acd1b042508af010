"""OpenTelemetry traces of requests and of the stages their items pass (off by default).

carry.py: trace context on the wire and the open spans of a stage, pure. tracing.py: the
process's tracer from the OTEL_* environment. request_spans.py: the gateway's span per
request. stage_spans.py: a worker's span per item per stage.
"""
