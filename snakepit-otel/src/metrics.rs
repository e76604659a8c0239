//! `MetricsLayer`: per-request instruments (SPEC §4), named so the Prometheus bridge
//! exposes exactly `snakepit_requests_total{pool_name,command,status}`,
//! `snakepit_request_duration_seconds{pool_name,command}`,
//! `snakepit_request_queue_time_seconds{pool_name}` and, for streams,
//! `snakepit_request_time_to_first_chunk_seconds{pool_name,command}`, with the seed's
//! buckets; and where a served request's time went beyond the queue:
//! `snakepit_request_transport_duration_seconds{pool_name,command}` (pipes or gRPC
//! both ways, serialization included; finer buckets, it is usually well under a
//! millisecond) and `snakepit_request_python_duration_seconds{pool_name,command}` (the
//! command's own run, by the worker's clock; a call that raised counts here too).
//!
//! A stream is recorded when it ends, not when its first chunk arrives: duration to
//! the end, `status` `success`, `error` (the generator raised part way) or `cancelled`
//! (the caller dropped it). Label values come from [`RequestLabels`], so callers
//! cannot create series for commands or pools that do not exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::trace::SpanContext;
use opentelemetry::{KeyValue, StringValue};
use snakepit_core::{Pool, Request, Served};
use tower::{Layer, Service};

use crate::classify::{evidence_of, ClassifyError};
pub use crate::exemplars::REQUEST_BUCKETS;
use crate::exemplars::{Exemplar, ExemplarStore};
use crate::labels::{DefaultPool, Evidence, RequestLabels};
use crate::outcome::Outcome;

pub use crate::labels::{LabelCap, MAX_LABEL_LEN, OVERFLOW_LABEL, UNKNOWN_LABEL};

/// Buckets of the transport histogram, in seconds: a pipe round trip is tens of
/// microseconds, a large payload over gRPC milliseconds.
pub const TRANSPORT_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// The seed's worker start-up buckets, in seconds.
pub const STARTUP_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// The request instruments, shared by every clone of the layer.
pub struct RequestInstruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    queue_time: Histogram<f64>,
    first_chunk: Histogram<f64>,
    transport_time: Histogram<f64>,
    python_time: Histogram<f64>,
    labels: RequestLabels,
    /// Trace ids of recent requests per duration bucket, for OpenMetrics exemplars.
    pub(crate) exemplars: Option<ExemplarStore>,
}

/// One finished request, as the instruments record it.
struct Finished<'a> {
    pool: &'a str,
    command: &'a str,
    evidence: Evidence,
    status: &'static str,
    elapsed: f64,
    served: Option<&'a Served>,
    first_chunk: Option<f64>,
    /// Python's own time, seconds, of a call that raised (a served one has it in
    /// `served`).
    raised_after: Option<f64>,
}

/// How long the Python code ran before it raised, when it did and the worker said.
fn raised_after(python: Option<&snakepit_core::PythonError>) -> Option<f64> {
    python.and_then(|p| p.python_time).map(|d| d.as_secs_f64())
}

impl RequestInstruments {
    /// The request instruments on `meter`, with at most `max_command_labels` commands per pool.
    pub fn new(meter: &Meter, max_command_labels: usize) -> Self {
        RequestInstruments {
            requests: meter
                .u64_counter("snakepit.requests")
                .with_description("Requests handled, by outcome")
                .build(),
            duration: meter
                .f64_histogram("snakepit.request.duration")
                .with_unit("s")
                .with_description(
                    "Request duration as the caller saw it, queue wait included; streams to their end",
                )
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            queue_time: meter
                .f64_histogram("snakepit.request.queue_time")
                .with_unit("s")
                .with_description("Time requests waited for a free worker")
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            first_chunk: meter
                .f64_histogram("snakepit.request.time_to_first_chunk")
                .with_unit("s")
                .with_description("Streaming requests: time until the first chunk reached the caller")
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            transport_time: meter
                .f64_histogram("snakepit.request.transport_duration")
                .with_unit("s")
                .with_description(
                    "Served requests: the worker call minus Python's part (transport both ways, serialization included)",
                )
                .with_boundaries(TRANSPORT_BUCKETS.to_vec())
                .build(),
            python_time: meter
                .f64_histogram("snakepit.request.python_duration")
                .with_unit("s")
                .with_description("Served requests: the command's own run in Python, by the worker's clock")
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            labels: RequestLabels::new(max_command_labels),
            exemplars: None,
        }
    }

    /// Keep exemplars (trace ids of sampled requests) for the duration histogram.
    pub fn with_exemplars(mut self) -> Self {
        self.exemplars = Some(ExemplarStore::default());
        self
    }

    /// Only these pools, and the commands their adapters declare, get series.
    pub fn register_pools(&self, pools: &[Pool]) {
        self.labels.register(pools);
    }

    /// Remember `context` as the exemplar of `elapsed`'s bucket if that bucket has no
    /// fresh exemplar.
    fn capture_exemplar(
        &self,
        pool: &StringValue,
        command: &StringValue,
        elapsed: f64,
        context: Option<SpanContext>,
    ) {
        let Some(store) = &self.exemplars else { return };
        let Some(sc) = context else { return };
        if store.wants(pool.as_str(), command.as_str(), elapsed) {
            store.record(
                pool.as_str(),
                command.as_str(),
                Exemplar {
                    trace_id: sc.trace_id().to_string(),
                    span_id: sc.span_id().to_string(),
                    value: elapsed,
                    at: std::time::SystemTime::now(),
                },
            );
        }
    }

    fn record(&self, done: Finished<'_>, context: Option<SpanContext>) {
        let (pool, command) = self.labels.get(done.pool, done.command, done.evidence);
        self.capture_exemplar(&pool, &command, done.elapsed, context);
        let pool_kv = KeyValue::new("pool_name", pool);
        let command_kv = KeyValue::new("command", command);
        self.requests.add(
            1,
            &[
                pool_kv.clone(),
                command_kv.clone(),
                KeyValue::new("status", done.status),
            ],
        );
        let both = [pool_kv.clone(), command_kv];
        self.duration.record(done.elapsed, &both);
        if let Some(first) = done.first_chunk {
            self.first_chunk.record(first, &both);
        }
        if let Some(served) = done.served {
            self.queue_time
                .record(served.queue_time.as_secs_f64(), &[pool_kv]);
            if let Some(b) = served.breakdown() {
                self.transport_time.record(b.transport.as_secs_f64(), &both);
                self.python_time.record(b.python.as_secs_f64(), &both);
            }
        } else if let Some(python) = done.raised_after {
            self.python_time.record(python, &both);
        }
    }
}

/// See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct MetricsLayer {
    instruments: Option<Arc<RequestInstruments>>,
    default_pool: DefaultPool,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("enabled", &self.instruments.is_some())
            .finish()
    }
}

impl MetricsLayer {
    /// Record into `instruments`; requests that name no pool count for `default_pool`.
    pub fn new(instruments: Arc<RequestInstruments>, default_pool: DefaultPool) -> Self {
        MetricsLayer {
            instruments: Some(instruments),
            default_pool,
        }
    }

    /// A pass-through layer (metrics off).
    pub fn disabled() -> Self {
        MetricsLayer {
            instruments: None,
            default_pool: DefaultPool::default(),
        }
    }

    pub(crate) fn instruments(&self) -> Option<&Arc<RequestInstruments>> {
        self.instruments.as_ref()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    layer: MetricsLayer,
}

/// A request on its way, recorded as `cancelled` if dropped before
/// [`Measured::finish`] (the answer, or for a stream, its end).
pub(crate) struct Measured(Option<Pending>);

struct Pending {
    instruments: Arc<RequestInstruments>,
    pool: Arc<str>,
    command: String,
    started: Instant,
    /// The sampled span this request belongs to, for an exemplar.
    exemplar: Option<SpanContext>,
}

impl RequestInstruments {
    /// Start measuring `req`, counted for `pool`; `exemplar` names the sampled span to
    /// point at (asked only when exemplars are kept).
    pub(crate) fn begin(
        self: &Arc<Self>,
        pool: Arc<str>,
        req: &Request,
        exemplar: impl FnOnce() -> Option<SpanContext>,
    ) -> Measured {
        let exemplar = self.exemplars.as_ref().and_then(|_| exemplar());
        Measured(Some(Pending {
            instruments: self.clone(),
            pool,
            command: req.command.clone(),
            started: Instant::now(),
            exemplar,
        }))
    }
}

/// The sampled span in `metadata`'s `traceparent`, the request span when the trace
/// layer runs outside this one (else the caller's; the trace is the same).
pub(crate) fn sampled_parent(metadata: &[(String, String)]) -> Option<SpanContext> {
    let (_, value) = metadata.iter().find(|(k, _)| k == "traceparent")?;
    crate::request_spans::parse_traceparent(value).filter(|sc| sc.is_valid() && sc.is_sampled())
}

impl Measured {
    /// Record `result` (a stream's outcome when it ends).
    pub(crate) fn finish<T: Outcome, E: ClassifyError>(mut self, result: &mut Result<T, E>) {
        let Some(Pending {
            instruments,
            pool,
            command,
            started,
            exemplar,
        }) = self.0.take()
        else {
            return;
        };
        let evidence = evidence_of(result);
        if let Some(stream) = result.as_mut().ok().and_then(Outcome::as_stream) {
            stream.on_end(move |end| {
                let done = Finished {
                    pool: &pool,
                    command: &command,
                    evidence,
                    status: end.outcome.status(),
                    elapsed: started.elapsed().as_secs_f64(),
                    served: end.served,
                    first_chunk: end
                        .first_chunk_at
                        .map(|at| at.saturating_duration_since(started).as_secs_f64()),
                    raised_after: match end.outcome {
                        snakepit_core::StreamOutcome::Failed(err) => raised_after(err.python()),
                        _ => None,
                    },
                };
                instruments.record(done, exemplar);
            });
            return;
        }
        let done = Finished {
            pool: &pool,
            command: &command,
            evidence,
            status: if result.is_ok() { "success" } else { "error" },
            elapsed: started.elapsed().as_secs_f64(),
            served: result.as_ref().ok().and_then(Outcome::served),
            first_chunk: None,
            raised_after: result
                .as_ref()
                .err()
                .and_then(|e| raised_after(e.classify().python)),
        };
        instruments.record(done, exemplar);
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let done = Finished {
                pool: &p.pool,
                command: &p.command,
                evidence: Evidence::Unclear,
                status: "cancelled",
                elapsed: p.started.elapsed().as_secs_f64(),
                served: None,
                first_chunk: None,
                raised_after: None,
            };
            p.instruments.record(done, None);
        }
    }
}

impl<S> Service<Request> for Metrics<S>
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

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(instruments) = &self.layer.instruments else {
            return Box::pin(self.inner.call(req));
        };
        let measured = instruments.begin(self.layer.default_pool.of(&req), &req, || {
            sampled_parent(&req.metadata)
        });
        Box::pin(measure(Some(measured), self.inner.call(req)))
    }
}

/// Await `fut`, then record it. Dropped before an answer (the caller went away), the
/// guard records a cancellation.
pub(crate) async fn measure<F, T, E>(measured: Option<Measured>, fut: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    T: Outcome,
    E: ClassifyError,
{
    let mut result = fut.await;
    if let Some(m) = measured {
        m.finish(&mut result);
    }
    result
}
