"""Tracing in the worker: a unary call reports its span id and timing for the pool to
emit (no SDK needed); user spans nest under it; streaming calls keep an SDK span with
the exception recorded; without a sampled traceparent, nothing is reported."""
import json
import time

import pytest

from snakepit_bridge import _proto as pb
from snakepit_bridge import telemetry
from snakepit_bridge.adapter import Adapter, command
from snakepit_bridge.dispatch import Dispatcher
from snakepit_bridge.example import ExampleAdapter

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def call(command_name, args, meta, adapter=None):
    return Dispatcher(adapter or ExampleAdapter()).execute(
        pb.ExecuteRequest(command=command_name, args_json=json.dumps(args).encode()), meta, None
    )


def test_a_sampled_unary_call_reports_its_worker_span():
    before = time.time_ns()
    resp = call("sleep", {"ms": 5}, {"traceparent": TRACEPARENT})
    assert resp.HasField("span")
    assert len(resp.span.span_id) == 8 and resp.span.span_id != bytes(8)
    assert before <= resp.span.start_unix_nanos <= time.time_ns()
    assert 5_000_000 <= resp.span.duration_nanos < 5_000_000_000
    # A failure reports its span too: the pool marks it failed.
    failed = call("fail", {"type": "KeyError"}, {"traceparent": TRACEPARENT})
    assert failed.error.type == "KeyError" and failed.HasField("span")
    unknown = call("nope", {}, {"traceparent": TRACEPARENT})
    assert unknown.error.kind == pb.WorkerError.UNKNOWN_COMMAND and unknown.HasField("span")


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},  # not sampled
        {"traceparent": "00-zz-not-a-traceparent"},
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-0x"},
    ],
)
def test_no_span_without_a_sampled_well_formed_traceparent(meta):
    resp = call("ping", {}, meta)
    assert json.loads(resp.result_json) == "pong"
    assert not resp.HasField("span")


def test_span_ids_differ_per_call():
    ids = {call("ping", {}, {"traceparent": TRACEPARENT}).span.span_id for _ in range(200)}
    assert len(ids) == 200


def traced_adapter(provider):
    """An adapter whose command opens one span, as user code would."""
    tracer = provider.get_tracer("user")

    class Traced(Adapter):
        @command
        def work(self):
            with tracer.start_as_current_span("user.step"):
                return "done"

    return Traced


@pytest.fixture
def spans(monkeypatch):
    pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(telemetry, "_propagator", TraceContextTextMapPropagator())
    yield provider, exporter
    provider.shutdown()


def test_unary_calls_create_no_sdk_span_but_user_spans_nest_under_the_worker_span(spans):
    provider, exporter = spans
    Traced = traced_adapter(provider)
    resp = call("work", {}, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}, Traced())
    assert json.loads(resp.result_json) == "done"
    (user,) = exporter.get_finished_spans()  # the bridge itself made none
    assert user.name == "user.step"
    assert format(user.context.trace_id, "032x") == TRACE_ID
    assert user.parent.span_id == int.from_bytes(resp.span.span_id, "big")
    assert user.parent.is_remote
    assert user.context.trace_state.get("vendor") == "1"
    # Nothing is left attached after the call.
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid


def test_user_spans_follow_the_pools_decision_not_to_sample(spans):
    provider, exporter = spans
    Traced = traced_adapter(provider)
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    resp = call("work", {}, {"traceparent": unsampled}, Traced())
    assert json.loads(resp.result_json) == "done"
    assert not resp.HasField("span")
    # The provider's default sampler is parent-based: an unsampled parent drops it.
    assert exporter.get_finished_spans() == ()
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid


def test_a_stream_keeps_an_sdk_span_with_the_exception_recorded(spans):
    _, exporter = spans
    chunks = list(
        Dispatcher(ExampleAdapter()).execute_stream(
            pb.ExecuteRequest(command="fail", args_json=b'{"type": "KeyError"}'),
            {"traceparent": TRACEPARENT, "x-snakepit-request-id": "r1", "x-correlation-id": "c1"},
            None,
        )
    )
    assert chunks[-1].final and chunks[-1].error.type == "KeyError"
    (span,) = exporter.get_finished_spans()
    assert span.name == "snakepit.worker/fail"
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["snakepit.correlation_id"] == "c1"
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
    assert resp.HasField("span")  # the pool still gets its worker span


def test_without_worker_spans_nothing_is_timed_and_user_spans_join_the_caller(spans, monkeypatch):
    provider, exporter = spans
    monkeypatch.setenv("SNAKEPIT_WORKER_SPANS", "0")
    Traced = traced_adapter(provider)
    resp = call("work", {}, {"traceparent": TRACEPARENT}, Traced())
    assert json.loads(resp.result_json) == "done"
    assert not resp.HasField("span")
    (user,) = exporter.get_finished_spans()
    assert format(user.parent.span_id, "016x") == PARENT_ID
