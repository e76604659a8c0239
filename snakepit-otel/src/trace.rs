//! `TraceLayer`: one span per request, following the OpenTelemetry RPC conventions.
//!
//! The span (`{pool}/{command}`, kind client, `rpc.system = "snakepit"`) carries the
//! request and correlation ids. It is made by [`crate::request_spans`] (ids always,
//! data only when sampled and exported); a `tracing` span with the same ids wraps the
//! call, so log lines inside the request carry them. When spans are exported, the W3C
//! context goes into the request metadata, so the Python worker's span and the
//! adapter's own spans join the trace; a queue wait of 1 ms or more becomes a
//! `snakepit.queue` child span with its real start and end (real queueing is visible on
//! the timeline, while the microsecond hand-off of an idle pool does not double the span
//! volume). On failure the span gets status Error and `error.type`, and a Python
//! exception becomes an `exception` event with type, message and stacktrace, plus one log
//! line with the traceback.
//!
//! A streaming call's span stays open until the stream ends: it covers every chunk,
//! and a generator that raises part way sets status Error with the exception event; a
//! stream the caller drops early ends with `snakepit.outcome = "cancelled"` (so does any
//! request whose caller goes away before the answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::trace::{FutureExt as _, Status};
use opentelemetry::KeyValue;
use snakepit_core::{
    Error, Request, Response, ResponseStream, Sanitizer, Served, StreamEnd, StreamOutcome,
};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::request_spans::{RequestSpan, SpanExport};
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
    /// Where sampled spans go; None when spans are not exported.
    export: Option<SpanExport>,
    /// Emits the worker's span from the timing it reported.
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
    /// A layer for pools whose requests name no pool get `default_pool`; sampled spans
    /// go to `export` (None: ids only, for log lines).
    pub(crate) fn new(
        default_pool: impl Into<String>,
        sanitizer: Sanitizer,
        export: Option<SpanExport>,
        log_requests: bool,
    ) -> Self {
        TraceLayer {
            shared: Some(Arc::new(TraceShared {
                default_pool: default_pool.into(),
                log_requests,
                sanitizer,
                export,
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

/// The request's span and what its end needs, held until the answer (or the stream's
/// end, or the caller going away).
struct Open {
    shared: Arc<TraceShared>,
    otel: RequestSpan,
    span: tracing::Span,
    /// Command and correlation id, for the worker span (when there is one to emit).
    worker_parent: Option<(String, Option<String>)>,
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
        let pool = req.pool.as_deref().unwrap_or(&shared.default_pool);
        let otel = RequestSpan::start(
            shared.export.as_ref(),
            &req.metadata,
            || format!("{pool}/{}", req.command),
            || {
                let mut attributes = vec![
                    KeyValue::new("rpc.system", "snakepit"),
                    KeyValue::new("rpc.service", pool.to_string()),
                    KeyValue::new("rpc.method", req.command.clone()),
                    KeyValue::new("request_id", request_id.clone()),
                ];
                if let Some(c) = &req.correlation_id {
                    attributes.push(KeyValue::new("correlation_id", c.clone()));
                }
                if let Some(session) = &req.session_id {
                    attributes.push(KeyValue::new("snakepit.session_id", session.clone()));
                }
                attributes
            },
        );
        // Log lines inside the request inherit these fields.
        let span = tracing::info_span!(
            target: "snakepit::request",
            "snakepit.request",
            request_id = request_id.as_str(),
            correlation_id = req.correlation_id.as_deref().unwrap_or(""),
            trace_id = %otel.context.trace_id(),
            span_id = %otel.context.span_id(),
            trace_flags = u64::from(otel.context.trace_flags().to_u8()),
        );
        // When spans are exported the worker continues the trace, sampled or not (so
        // spans made inside follow the decision); else there is no trace to continue.
        let context = otel.exported.then(|| {
            let (traceparent, tracestate) = otel.traceparent();
            set_metadata(&mut req.metadata, "traceparent", traceparent);
            if let Some(state) = tracestate {
                set_metadata(&mut req.metadata, "tracestate", state);
            }
            otel.otel_context()
        });
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
        // Only worker spans need these after the call.
        let worker_parent = (shared.worker_spans.is_some() && otel.is_recording())
            .then(|| (req.command.clone(), req.correlation_id.clone()));
        // Made before the future is first polled: dropped unpolled, it still ends the span.
        let guard = CancelGuard(Some(Open {
            shared,
            otel,
            span: span.clone(),
            worker_parent,
        }));
        let inner = self.inner.call(req).instrument(span);
        Box::pin(async move {
            // Dropped before an answer (the caller went away): the span says so.
            let mut guard = guard;
            let mut result = match context {
                Some(cx) => inner.with_context(cx).await,
                None => inner.await,
            };
            let Some(open) = guard.0.take() else {
                return result;
            };
            if let Some(stream) = result.as_mut().ok().and_then(Outcome::as_stream) {
                // The span lives on in the observer and ends with the stream.
                stream.on_end(move |end| open.end_stream(end));
                return result;
            }
            open.end(&result);
            result
        })
    }
}

fn set_metadata(metadata: &mut Vec<(String, String)>, key: &str, value: String) {
    metadata.retain(|(k, _)| k != key);
    metadata.push((key.to_string(), value));
}

/// Ends the request span as `cancelled` if the request future is dropped first.
struct CancelGuard(Option<Open>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(mut open) = self.0.take() {
            open.otel
                .set_attribute(KeyValue::new("snakepit.outcome", "cancelled"));
            open.otel.end();
        }
    }
}

impl Open {
    /// A unary answer (or a failure before any stream).
    fn end<T: Outcome>(mut self, result: &Result<T, Error>) {
        match result {
            Ok(resp) => self.on_success(resp.served()),
            Err(err) => self.on_error(err),
        }
        if let (Some(spans), Some((command, correlation_id))) =
            (&self.shared.worker_spans, &self.worker_parent)
        {
            let (worker, failure) = match result {
                Ok(resp) => (resp.served().and_then(|s| s.worker_span.as_ref()), None),
                Err(err) => (
                    err.python().and_then(|p| p.worker_span.as_ref()),
                    err.python(),
                ),
            };
            if let Some(worker) = worker {
                let parent = SpanParent {
                    context: &self.otel.context,
                    command,
                    correlation_id: correlation_id.as_deref(),
                };
                spans.emit(&parent, worker, failure, &self.shared.sanitizer);
            }
        }
        self.otel.end();
    }

    fn end_stream(mut self, end: &StreamEnd<'_>) {
        self.otel
            .set_attribute(KeyValue::new("snakepit.stream.chunks", end.chunks as i64));
        self.otel
            .set_attribute(KeyValue::new("snakepit.outcome", end.outcome.status()));
        match end.outcome {
            StreamOutcome::Completed => self.on_success(end.served),
            StreamOutcome::Failed(err) => {
                self.record_placement(end.served);
                self.on_error(err);
            }
            StreamOutcome::Cancelled => {
                self.record_placement(end.served);
                tracing::debug!(target: "snakepit::request", parent: &self.span,
                    chunks = end.chunks, "stream cancelled by the caller");
            }
        }
        self.otel.end();
    }

    /// The worker and queue wait, on a sampled span.
    fn record_placement(&mut self, served: Option<&Served>) {
        if let (true, Some(served)) = (self.otel.is_recording(), served) {
            self.otel.set_attribute(KeyValue::new(
                "snakepit.worker_id",
                served.worker_id.clone(),
            ));
            self.otel.set_attribute(KeyValue::new(
                "snakepit.queue_time_ms",
                served.queue_time.as_secs_f64() * 1000.0,
            ));
        }
    }

    fn on_success(&mut self, served: Option<&Served>) {
        let Some(served) = served else { return };
        self.record_placement(Some(served));
        if self.otel.is_recording() && served.queue_time >= QUEUE_SPAN_MIN {
            let start = self.otel.start;
            self.otel
                .child("snakepit.queue", start, start + served.queue_time);
        }
        if self.shared.log_requests {
            tracing::info!(target: "snakepit::request", parent: &self.span,
                worker_id = %served.worker_id,
                duration_ms = served.duration.as_secs_f64() * 1000.0,
                queue_ms = served.queue_time.as_secs_f64() * 1000.0,
                "response");
        }
    }

    fn on_error(&mut self, err: &Error) {
        let sanitizer = &self.shared.sanitizer;
        let mut message = err.to_string();
        sanitizer.truncate(&mut message);
        self.otel
            .set_attribute(KeyValue::new("error.type", err.error_type()));
        self.otel.set_status(Status::error(message.clone()));
        let span = &self.span;
        match err.python() {
            Some(py) => {
                let mut traceback = py.traceback.clone();
                sanitizer.truncate_keep_end(&mut traceback);
                self.otel.add_event(
                    "exception",
                    vec![
                        KeyValue::new("exception.type", py.python_type.clone()),
                        KeyValue::new("exception.message", sanitizer.field("message", &py.message)),
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
}

/// Failures of the pool or the worker, as opposed to requests the caller got wrong or
/// that load shedding refused.
fn is_server_side(err: &Error) -> bool {
    matches!(
        err,
        Error::Timeout { .. } | Error::WorkerCrashed { .. } | Error::Transport { .. }
    )
}
