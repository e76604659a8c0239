//! How a request span ends: with a unary answer, with its stream's end, or as
//! `cancelled` when the caller goes away first.

use std::sync::Arc;

use opentelemetry::trace::Status;
use opentelemetry::KeyValue;
use snakepit_core::{Sanitizer, Served, StreamEnd, StreamOutcome};

use crate::classify::ClassifyError;
use crate::labels::DefaultPool;
use crate::outcome::Outcome;
use crate::request_spans::RequestSpan;
use crate::request_spans::SpanExport;
use crate::worker_spans::SpanParent;
use crate::worker_spans::WorkerSpans;

/// Queue waits at least this long get their own child span.
pub const QUEUE_SPAN_MIN: std::time::Duration = std::time::Duration::from_millis(1);

/// What every request span of one layer shares.
#[derive(Clone)]
pub(crate) struct TraceShared {
    pub(crate) default_pool: DefaultPool,
    pub(crate) log_requests: bool,
    pub(crate) sanitizer: Sanitizer,
    /// Where sampled spans go; None when spans are not exported.
    pub(crate) export: Option<SpanExport>,
    /// Emits the worker's span from the timing it reported.
    pub(crate) worker_spans: Option<WorkerSpans>,
}

/// The request's span and what its end needs, held until the answer (or the stream's
/// end, or the caller going away).
pub(crate) struct Open {
    pub(crate) shared: Arc<TraceShared>,
    pub(crate) otel: RequestSpan,
    pub(crate) span: tracing::Span,
    /// Command and correlation id, for the worker span (when there is one to emit).
    pub(crate) worker_parent: Option<(String, Option<String>)>,
}

/// Ends the request span as `cancelled` if the request future is dropped first.
pub(crate) struct CancelGuard(pub(crate) Option<Open>);

impl CancelGuard {
    /// End the span with `result`; a stream's span lives on in an observer and ends
    /// with the stream.
    pub(crate) fn finish<T: Outcome, E: ClassifyError>(mut self, result: &mut Result<T, E>) {
        let Some(open) = self.0.take() else { return };
        if let Some(stream) = result.as_mut().ok().and_then(Outcome::as_stream) {
            stream.on_end(move |end| open.end_stream(end));
            return;
        }
        open.end(result);
    }
}

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
    fn end<T: Outcome, E: ClassifyError>(mut self, result: &Result<T, E>) {
        match result {
            Ok(resp) => self.on_success(resp.served()),
            Err(err) => self.on_error(err),
        }
        if let (Some(spans), Some((command, correlation_id))) =
            (&self.shared.worker_spans, &self.worker_parent)
        {
            let (worker, failure) = match result {
                Ok(resp) => (resp.served().and_then(|s| s.worker_span.as_ref()), None),
                Err(err) => {
                    let python = err.classify().python;
                    (python.and_then(|p| p.worker_span.as_ref()), python)
                }
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

    /// The worker and where the time went (queue, transport, Python), on a sampled span.
    fn record_placement(&mut self, served: Option<&Served>) {
        if let (true, Some(served)) = (self.otel.is_recording(), served) {
            if let Some(b) = served.breakdown() {
                self.otel.set_attribute(KeyValue::new(
                    "snakepit.transport_time_ms",
                    b.transport.as_secs_f64() * 1000.0,
                ));
                self.otel.set_attribute(KeyValue::new(
                    "snakepit.python_time_ms",
                    b.python.as_secs_f64() * 1000.0,
                ));
            }
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

    fn on_error(&mut self, err: &impl ClassifyError) {
        let sanitizer = &self.shared.sanitizer;
        let failure = err.classify();
        let mut message = err.to_string();
        sanitizer.truncate(&mut message);
        self.otel
            .set_attribute(KeyValue::new("error.type", failure.error_type));
        self.otel.set_status(Status::error(message.clone()));
        let span = &self.span;
        match failure.python {
            Some(py) => {
                if let Some(python) = py.python_time {
                    self.otel.set_attribute(KeyValue::new(
                        "snakepit.python_time_ms",
                        python.as_secs_f64() * 1000.0,
                    ));
                }
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
                    error_type = failure.error_type,
                    python_type = %py.python_type,
                    python_traceback = %traceback,
                    "request failed: {message}");
            }
            None if failure.python_stack.is_some() => {
                let mut stack = failure.python_stack.unwrap_or_default().to_string();
                sanitizer.truncate(&mut stack);
                self.otel.add_event(
                    "python.stack",
                    vec![KeyValue::new("python.stack", stack.clone())],
                );
                tracing::error!(target: "snakepit::request", parent: span,
                    error_type = failure.error_type,
                    python_stack = %stack,
                    "request failed: {message}");
            }
            None if failure.server_side => {
                tracing::error!(target: "snakepit::request", parent: span, error_type = failure.error_type, "request failed: {message}")
            }
            None => {
                tracing::warn!(target: "snakepit::request", parent: span, error_type = failure.error_type, "request refused: {message}")
            }
        }
    }
}
