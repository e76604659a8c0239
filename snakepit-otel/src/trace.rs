//! `TraceLayer`: one span per request, following the OpenTelemetry RPC conventions.
//!
//! The span (`{pool}/{command}`, kind client, `rpc.system = "snakepit"`) carries the
//! request and correlation ids; its W3C context is injected into the request metadata
//! so the Python worker's spans join the trace. On success it records the worker and the
//! queue wait (a wait of 1 ms or more also becomes a `snakepit.queue` child span with its
//! real start and end times: real queueing is visible on the timeline, while the
//! microsecond hand-off of an idle pool does not double the span volume);
//! on failure it sets status Error and `error.type`, and a Python exception becomes an
//! `exception` event with type, message and stacktrace, plus one log line with the
//! traceback.
//!
//! A streaming call's span stays open until the stream ends: it covers every chunk,
//! and a generator that raises part way sets status Error with the exception event; a
//! stream the caller drops early ends with `snakepit.outcome = "cancelled"` (so does any
//! request whose caller goes away before the answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use snakepit_core::{
    Error, Request, Response, ResponseStream, Sanitizer, Served, StreamEnd, StreamOutcome,
};
use tower::{Layer, Service};
use tracing::field::Empty;

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::worker_spans::{SpanParent, WorkerSpans};

/// Queue waits at least this long get their own child span.
pub const QUEUE_SPAN_MIN: std::time::Duration = std::time::Duration::from_millis(1);

/// What a layer can learn from a successful response.
pub trait Outcome {
    /// Where and how long a unary call ran.
    fn served(&self) -> Option<&Served>;
    /// A streaming response, whose outcome is known only when it ends.
    fn as_stream(&mut self) -> Option<&mut ResponseStream> {
        None
    }
}

impl Outcome for Response {
    fn served(&self) -> Option<&Served> {
        Some(&self.served)
    }
}

impl Outcome for ResponseStream {
    fn served(&self) -> Option<&Served> {
        None
    }
    fn as_stream(&mut self) -> Option<&mut ResponseStream> {
        Some(self)
    }
}

#[derive(Clone)]
struct TraceShared {
    default_pool: String,
    log_requests: bool,
    sanitizer: Sanitizer,
    /// For the queue-wait child span, which needs explicit timestamps.
    tracer: Option<SdkTracer>,
    /// Emits the worker's span from the timing it reported (OTLP traces only).
    worker_spans: Option<WorkerSpans>,
}

/// See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct TraceLayer {
    shared: Option<Arc<TraceShared>>,
}

impl std::fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl TraceLayer {
    /// A layer for pools whose requests name no pool get `default_pool`.
    pub fn new(
        default_pool: impl Into<String>,
        sanitizer: Sanitizer,
        tracer: Option<SdkTracer>,
        log_requests: bool,
    ) -> Self {
        TraceLayer {
            shared: Some(Arc::new(TraceShared {
                default_pool: default_pool.into(),
                log_requests,
                sanitizer,
                tracer,
                worker_spans: None,
            })),
        }
    }

    /// Also emit each sampled request's worker span (see [`WorkerSpans`]).
    pub fn with_worker_spans(self, worker_spans: Option<WorkerSpans>) -> Self {
        let shared = self.shared.map(|s| {
            Arc::new(TraceShared {
                worker_spans,
                ..(*s).clone()
            })
        });
        TraceLayer { shared }
    }

    /// A pass-through layer (observability off).
    pub fn disabled() -> Self {
        TraceLayer { shared: None }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    shared: Option<Arc<TraceShared>>,
}

struct MetadataInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value));
    }
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request, Error = Error>,
    S::Response: Outcome + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(shared) = self.shared.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let request_id = req
            .request_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let pool = req
            .pool
            .clone()
            .unwrap_or_else(|| shared.default_pool.clone());
        // Only what log lines inherit (the ids) and what failures record are span
        // fields; the rest is set as OTel attributes, and only on sampled spans.
        let span = tracing::info_span!(
            target: "snakepit::request",
            "snakepit.request",
            otel.name = %format_args!("{pool}/{}", req.command),
            otel.kind = "client",
            request_id = %request_id,
            correlation_id = req.correlation_id.as_deref().unwrap_or(""),
            otel.status_code = Empty,
            error.type = Empty,
        );
        let cx = span.context();
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            TraceContextPropagator::new()
                .inject_context(&cx, &mut MetadataInjector(&mut req.metadata));
        }
        let sampled = span_context.is_sampled();
        // What the worker span needs once the request is gone into the pool.
        let worker_parent = (sampled && shared.worker_spans.is_some()).then(|| {
            (
                span_context,
                req.command.clone(),
                req.correlation_id.clone(),
            )
        });
        if sampled {
            span.set_attribute("rpc.system", "snakepit");
            span.set_attribute("rpc.service", pool);
            span.set_attribute("rpc.method", req.command.clone());
            if let Some(session) = &req.session_id {
                span.set_attribute("snakepit.session_id", session.clone());
            }
        }
        if shared.log_requests {
            let mut args = req
                .args
                .encoded()
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .unwrap_or(serde_json::Value::Null);
            shared.sanitizer.value(&mut args);
            tracing::info!(target: "snakepit::request", parent: &span, command = %req.command, args = %args, "request");
        }
        let started = SystemTime::now();
        let fut = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            // Dropped before an answer (the caller went away): the span says so.
            let cancelled = CancelGuard(Some(span.clone()));
            let mut result = fut.await;
            cancelled.disarm();
            if let Some(stream) = result.as_mut().ok().and_then(Outcome::as_stream) {
                // The span lives on in the observer and closes when the stream ends.
                stream.on_end(move |end| on_stream_end(&shared, span, sampled, started, end));
                return result;
            }
            match &result {
                Ok(resp) => on_success(&shared, &span, sampled, started, resp.served()),
                Err(err) => on_error(&shared, &span, err),
            }
            if let (Some(spans), Some((context, command, correlation_id))) =
                (&shared.worker_spans, worker_parent)
            {
                let (worker, failure) = match &result {
                    Ok(resp) => (resp.served().and_then(|s| s.worker_span.as_ref()), None),
                    Err(err) => (
                        err.python().and_then(|p| p.worker_span.as_ref()),
                        err.python(),
                    ),
                };
                if let Some(worker) = worker {
                    let parent = SpanParent {
                        context: &context,
                        command: &command,
                        correlation_id: correlation_id.as_deref(),
                    };
                    spans.emit(&parent, worker, failure, &shared.sanitizer);
                }
            }
            result
        })
    }
}

/// Marks the request span `cancelled` if the request future is dropped before its
/// answer.
struct CancelGuard(Option<tracing::Span>);

impl CancelGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            span.in_scope(|| span.set_attribute("snakepit.outcome", "cancelled"));
        }
    }
}

fn on_stream_end(
    shared: &TraceShared,
    span: tracing::Span,
    sampled: bool,
    started: SystemTime,
    end: &StreamEnd<'_>,
) {
    // tracing-opentelemetry ends a span at its last exit: entering it here, at the end
    // of the stream, makes that the span's end.
    span.in_scope(|| {
        if sampled {
            span.set_attribute("snakepit.stream.chunks", end.chunks as i64);
            span.set_attribute("snakepit.outcome", end.outcome.status());
        }
        match end.outcome {
            StreamOutcome::Completed => on_success(shared, &span, sampled, started, end.served),
            StreamOutcome::Failed(err) => {
                record_placement(&span, sampled, end.served);
                on_error(shared, &span, err);
            }
            StreamOutcome::Cancelled => {
                record_placement(&span, sampled, end.served);
                tracing::debug!(target: "snakepit::request", parent: &span, chunks = end.chunks,
                    "stream cancelled by the caller");
            }
        }
    });
    // Dropping the last handle closes the span and exports it.
    drop(span);
}

/// The worker and queue wait, on a sampled span.
fn record_placement(span: &tracing::Span, sampled: bool, served: Option<&Served>) {
    if let (true, Some(served)) = (sampled, served) {
        span.set_attribute("snakepit.worker_id", served.worker_id.clone());
        span.set_attribute(
            "snakepit.queue_time_ms",
            served.queue_time.as_secs_f64() * 1000.0,
        );
    }
}

fn on_success(
    shared: &TraceShared,
    span: &tracing::Span,
    sampled: bool,
    started: SystemTime,
    served: Option<&Served>,
) {
    let Some(served) = served else { return };
    record_placement(span, sampled, Some(served));
    if sampled {
        if let Some(tracer) = shared
            .tracer
            .as_ref()
            .filter(|_| served.queue_time >= QUEUE_SPAN_MIN)
        {
            let parent = span.context();
            let end = started + served.queue_time;
            let mut queue = tracer
                .span_builder("snakepit.queue")
                .with_kind(SpanKind::Internal)
                .with_start_time(started)
                .start_with_context(tracer, &parent);
            queue.end_with_timestamp(end);
        }
    }
    if shared.log_requests {
        tracing::info!(target: "snakepit::request", parent: span,
            worker_id = %served.worker_id,
            duration_ms = served.duration.as_secs_f64() * 1000.0,
            queue_ms = served.queue_time.as_secs_f64() * 1000.0,
            "response");
    }
}

fn on_error(shared: &TraceShared, span: &tracing::Span, err: &Error) {
    let mut message = err.to_string();
    shared.sanitizer.truncate(&mut message);
    span.record("otel.status_code", "ERROR");
    span.record("error.type", err.error_type());
    span.set_status(Status::error(message.clone()));
    match err.python() {
        Some(py) => {
            let mut traceback = py.traceback.clone();
            shared.sanitizer.truncate_keep_end(&mut traceback);
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", py.python_type.clone()),
                    KeyValue::new(
                        "exception.message",
                        shared.sanitizer.field("message", &py.message),
                    ),
                    KeyValue::new("exception.stacktrace", traceback.clone()),
                ],
            );
            tracing::error!(target: "snakepit::request", parent: span,
                error_type = err.error_type(),
                python_type = %py.python_type,
                python_traceback = %traceback,
                "request failed: {message}");
        }
        None if is_server_side(err) => {
            tracing::error!(target: "snakepit::request", parent: span, error_type = err.error_type(), "request failed: {message}")
        }
        None => {
            tracing::warn!(target: "snakepit::request", parent: span, error_type = err.error_type(), "request refused: {message}")
        }
    }
}

/// Failures of the pool or the worker, as opposed to requests the caller got wrong or
/// that load shedding refused.
fn is_server_side(err: &Error) -> bool {
    matches!(
        err,
        Error::Timeout { .. } | Error::WorkerCrashed { .. } | Error::Transport { .. }
    )
}
