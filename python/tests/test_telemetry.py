"""Worker spans continue the caller's trace; exceptions are recorded; without the SDK
wanted, nothing happens."""
import json

import pytest

from snakepit_bridge import _proto as pb
from snakepit_bridge import telemetry
from snakepit_bridge.dispatch import Dispatcher
from snakepit_bridge.example import ExampleAdapter

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(telemetry, "_propagator", TraceContextTextMapPropagator())
    yield exporter
    provider.shutdown()


def call(command, args, meta):
    return Dispatcher(ExampleAdapter()).execute(
        pb.ExecuteRequest(command=command, args_json=json.dumps(args).encode()), meta, None
    )


def test_span_is_a_child_of_the_callers_span(spans):
    call("ping", {}, {"traceparent": TRACEPARENT, "x-snakepit-request-id": "r1", "x-correlation-id": "c1"})
    (span,) = spans.get_finished_spans()
    assert span.name == "snakepit.worker/ping"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["snakepit.correlation_id"] == "c1"
    assert span.attributes["snakepit.request_id"] == "r1"


def test_exceptions_are_recorded_with_status_error(spans):
    resp = call("fail", {"type": "KeyError", "message": "gone"}, {"traceparent": TRACEPARENT})
    assert resp.error.type == "KeyError"
    (span,) = spans.get_finished_spans()
    assert not span.status.is_ok
    assert span.attributes["error.type"] == "KeyError"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "KeyError"
    assert "raise exc_type(message)" in event.attributes["exception.stacktrace"]


def test_off_without_the_flag(monkeypatch):
    monkeypatch.setenv("SNAKEPIT_OTEL", "0")
    assert telemetry.setup("w", "p", "a") is False
    resp = call("ping", {}, {"traceparent": TRACEPARENT})
    assert json.loads(resp.result_json) == "pong"
