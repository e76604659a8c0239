"""Optional OpenTelemetry in the worker: one span per request, continuing the caller's
trace from the W3C `traceparent` the pool sends, so the Rust request span and the Python
spans (the bridge's and any the adapter creates) form one trace.

Active when `opentelemetry-sdk` and an OTLP exporter are importable and the pool asked
for it (`SNAKEPIT_OTEL=1`, set by `Telemetry::worker_env`) or `OTEL_EXPORTER_OTLP_ENDPOINT`
is set. Without the SDK, or with `SNAKEPIT_OTEL=0`, every hook here is a no-op.
Exports run on the SDK's batch thread, never on the request.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator, Optional

log = logging.getLogger("snakepit_bridge.telemetry")

_tracer = None
_provider = None
_propagator = None


def active() -> bool:
    """True when request spans are recorded (callers skip span set-up otherwise)."""
    return _tracer is not None


def _wanted() -> bool:
    flag = os.environ.get("SNAKEPIT_OTEL", "")
    if flag.lower() in ("0", "false", "off"):
        return False
    return flag == "1" or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


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
    """A server span for one request, child of the caller's span when `traceparent` came."""
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
