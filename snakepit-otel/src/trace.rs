//! `TraceLayer`: one span per request, following the OpenTelemetry RPC conventions.
//!
//! The span (`{pool}/{command}`, kind client, `rpc.system = "snakepit"`) carries the
//! request and correlation ids. It is made by `request_spans.rs` (ids always,
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

use opentelemetry::trace::FutureExt as _;
use opentelemetry::KeyValue;
use snakepit_core::{Request, Sanitizer};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::classify::ClassifyError;
use crate::labels::DefaultPool;
use crate::request_spans::{RequestSpan, SpanExport};
use crate::trace_end::{CancelGuard, Open};
use crate::worker_spans::WorkerSpans;

pub use crate::outcome::Outcome;
pub(crate) use crate::trace_end::TraceShared;
pub use crate::trace_end::QUEUE_SPAN_MIN;

/// See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct TraceLayer {
    pub(crate) shared: Option<Arc<TraceShared>>,
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
        default_pool: DefaultPool,
        sanitizer: Sanitizer,
        export: Option<SpanExport>,
        log_requests: bool,
    ) -> Self {
        TraceLayer {
            shared: Some(Arc::new(TraceShared {
                default_pool,
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

/// The service [`TraceLayer`] makes.
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    shared: Option<Arc<TraceShared>>,
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request>,
    S::Error: ClassifyError + Send + 'static,
    S::Response: Outcome + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(shared) = &self.shared else {
            return Box::pin(self.inner.call(req));
        };
        let pool = shared.default_pool.of(&req);
        let traced = shared.begin(&pool, &mut req);
        Box::pin(traced.run(self.inner.call(req)))
    }
}

/// One request being traced: its span (ended as `cancelled` if this is dropped before
/// [`Traced::finish`]), the `tracing` span log lines inside it inherit, and the
/// OpenTelemetry context to poll the inner future in (so spans made inside are its
/// children).
pub(crate) struct Traced {
    guard: CancelGuard,
    span: tracing::Span,
    context: Option<opentelemetry::Context>,
}

impl TraceShared {
    /// Open `req`'s span (labelled with `pool`) and put its ids into the request.
    pub(crate) fn begin(self: &Arc<Self>, pool: &str, req: &mut Request) -> Traced {
        let request_id = req
            .request_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let otel = RequestSpan::start(
            self.export.as_ref(),
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
        if self.log_requests {
            let mut args = req
                .args
                .encoded()
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .unwrap_or(serde_json::Value::Null);
            self.sanitizer.value(&mut args);
            tracing::info!(target: "snakepit::request", parent: &span, command = %req.command, args = %args, "request");
        }
        // Only worker spans need these after the call.
        let worker_parent = (self.worker_spans.is_some() && otel.is_recording())
            .then(|| (req.command.clone(), req.correlation_id.clone()));
        // Made before the future is first polled: dropped unpolled, it still ends the span.
        let guard = CancelGuard(Some(Open {
            shared: self.clone(),
            otel,
            span: span.clone(),
            worker_parent,
        }));
        Traced {
            guard,
            span,
            context,
        }
    }
}

impl Traced {
    /// The request span, when it is exported and sampled: what a metric exemplar points
    /// at (the same span its `traceparent` names).
    pub(crate) fn exemplar(&self) -> Option<opentelemetry::trace::SpanContext> {
        self.context.as_ref()?;
        let open = self.guard.0.as_ref()?;
        open.otel
            .context
            .is_sampled()
            .then(|| open.otel.context.clone())
    }

    /// Await `inner` inside the request's spans, then end them with its answer (a
    /// stream's span when the stream ends).
    pub(crate) fn run<F, T, E>(self, inner: F) -> impl Future<Output = Result<T, E>> + Send
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Outcome + Send + 'static,
        E: ClassifyError + Send + 'static,
    {
        let Traced {
            guard,
            span,
            context,
        } = self;
        let inner = inner.instrument(span);
        async move {
            // Dropped before an answer (the caller went away): the guard says so.
            let guard = guard;
            let mut result = match context {
                Some(cx) => inner.with_context(cx).await,
                None => inner.await,
            };
            guard.finish(&mut result);
            result
        }
    }
}

fn set_metadata(metadata: &mut Vec<(String, String)>, key: &str, value: String) {
    metadata.retain(|(k, _)| k != key);
    metadata.push((key.to_string(), value));
}
