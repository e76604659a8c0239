"""Tracing in the worker, split so that no request pays for span export in Python.

Unary requests: when the pool's `traceparent` is sampled, the worker picks a span id,
times the call and returns both in `ExecuteResponse.span`; the pool emits the worker's
server span from that with the Rust SDK (about 1 µs there against about 130 µs of
Python CPU for an SDK span plus its export). While the command runs, that span is the
current one, so spans user code opens with the OpenTelemetry API are its children.

The OpenTelemetry SDK is set up here only for those user spans and for streaming
calls (which still get an SDK span): when `opentelemetry-sdk` and an OTLP exporter are
importable and the pool asked for it (`SNAKEPIT_OTEL=1`, set by
`Telemetry::worker_env`) or `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without the SDK, or
with `SNAKEPIT_OTEL=0`, those hooks are no-ops; the worker span still reaches the pool.
With `SNAKEPIT_WORKER_SPANS=0` (the pool emits no worker spans) nothing is timed and
user spans are children of the caller's span.
Exports run on the SDK's batch thread, never on the request.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import Dict, Iterator, Mapping, Optional, Tuple

log = logging.getLogger("snakepit_bridge.telemetry")

_tracer = None
_provider = None
_propagator = None


def active() -> bool:
    """True when the SDK records spans here (callers skip span set-up otherwise)."""
    return _tracer is not None


def worker_spans_wanted() -> bool:
    """Whether the pool emits worker spans (it says so with SNAKEPIT_WORKER_SPANS)."""
    return os.environ.get("SNAKEPIT_WORKER_SPANS", "1").lower() not in ("0", "false", "off")


def parse_traceparent(metadata: Mapping[str, str]) -> Optional[Tuple[str, bool]]:
    """The caller's W3C `traceparent` if it is well formed, and whether it is sampled."""
    tp = metadata.get("traceparent")
    # version-traceid-parentid-flags: "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex
    if tp is None or len(tp) != 55 or tp[2] != "-" or tp[35] != "-" or tp[52] != "-":
        return None
    try:
        flags = int(tp[53:], 16)
        int(tp[3:35], 16)
    except ValueError:
        return None
    return tp, bool(flags & 1)


def sampled_traceparent(metadata: Mapping[str, str]) -> Optional[str]:
    """The caller's W3C `traceparent` if it is well formed and sampled, else None."""
    parsed = parse_traceparent(metadata)
    return parsed[0] if parsed is not None and parsed[1] else None


def new_span_id() -> bytes:
    """A random, non-zero 8-byte span id."""
    return (random.getrandbits(64) or 1).to_bytes(8, "big")


class WorkerTimer:
    """Times one unary call for the worker span the pool emits."""

    __slots__ = ("span_id", "start_unix_nanos", "_t0")

    def __init__(self) -> None:
        self.span_id = new_span_id()
        self.start_unix_nanos = time.time_ns()
        self._t0 = time.perf_counter_ns()

    def fill(self, span) -> None:
        """Write the span id and timing into an `ExecuteResponse.span` message."""
        span.duration_nanos = time.perf_counter_ns() - self._t0
        span.span_id = self.span_id
        span.start_unix_nanos = self.start_unix_nanos


_api = None


def _otel_api():
    """The OpenTelemetry API pieces `user_span_parent` needs, imported once."""
    global _api
    if _api is None:
        from opentelemetry import context, trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

        flags = (TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.SAMPLED))
        _api = (context, trace, NonRecordingSpan, SpanContext, flags, TraceState)
    return _api


@contextlib.contextmanager
def user_span_parent(
    traceparent: str, span_id: bytes, metadata: Mapping[str, str], sampled: bool = True
):
    """Make the pool-emitted worker span current, so user spans become its children; an
    unsampled parent makes the SDK's (parent-based) sampler drop them, as the pool did."""
    context, trace, NonRecordingSpan, SpanContext, flags, TraceState = _otel_api()
    state = metadata.get("tracestate")
    parent = SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int.from_bytes(span_id, "big"),
        # The worker span lives in the pool's process.
        is_remote=True,
        trace_flags=flags[sampled],
        trace_state=TraceState.from_header([state]) if state else None,
    )
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        yield
    finally:
        context.detach(token)


def _wanted() -> bool:
    flag = os.environ.get("SNAKEPIT_OTEL", "")
    if flag.lower() in ("0", "false", "off"):
        return False
    return flag == "1" or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def preload() -> None:
    """Import (only import: no provider, no thread) what `setup` will use, when it will
    be wanted: a fork server's template calls this so each forked worker does not pay
    for the SDK's import (≈ 0.2-0.3 s) after its fork."""
    if not _wanted():
        return
    try:
        import opentelemetry.sdk.resources  # noqa: F401
        import opentelemetry.sdk.trace.export  # noqa: F401
        import opentelemetry.trace.propagation.tracecontext  # noqa: F401

        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "http/protobuf":
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        else:
            # grpc imports its channel module only when the exporter makes its channel.
            import grpc._channel  # noqa: F401
            import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except ImportError:
        pass  # setup says so, in each worker


def setup(worker_id: str, pool: str, adapter: str) -> bool:
    """Install a tracer provider exporting over OTLP; False when not wanted or unavailable."""
    global _tracer, _provider, _propagator
    if not _wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        log.info("opentelemetry-sdk not installed: worker spans are off")
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    try:
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("no OTLP exporter for protocol %r installed: worker spans are off", protocol)
        return False
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", "snakepit-worker"),
            "snakepit.worker_id": worker_id,
            "snakepit.pool": pool,
            "snakepit.adapter": adapter,
        }
    )
    provider = TracerProvider(resource=resource)
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT/HEADERS/TIMEOUT itself.
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(), max_queue_size=2048, schedule_delay_millis=500)
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = trace.get_tracer("snakepit_bridge")
    _propagator = TraceContextTextMapPropagator()
    return True


def shutdown() -> None:
    """Flush buffered spans (bounded by the SDK's own timeouts)."""
    if _provider is not None:
        try:
            _provider.shutdown()
        except Exception:  # noqa: BLE001 - telemetry must never break shutdown
            pass


@contextlib.contextmanager
def request_span(
    command: str, metadata: Dict[str, str], request_id: str, correlation_id: str
) -> Iterator[Optional[object]]:
    """An SDK server span for one streaming request, child of the caller's span."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    parent = _propagator.extract(carrier=metadata)
    attributes = {
        "rpc.system": "snakepit",
        "rpc.method": command,
        "snakepit.request_id": request_id,
    }
    if correlation_id:
        attributes["snakepit.correlation_id"] = correlation_id
    with _tracer.start_as_current_span(
        f"snakepit.worker/{command}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def record_failure(span, exc: BaseException, error_type: str) -> None:
    """Mark the request span failed; the exception becomes an `exception` event."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(exc)
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, str(exc)))
