//! `MetricsLayer`: per-request instruments (SPEC §4), named so the Prometheus bridge
//! exposes exactly `snakepit_requests_total{pool_name,command,status}`,
//! `snakepit_request_duration_seconds{pool_name,command}`,
//! `snakepit_request_queue_time_seconds{pool_name}` and, for streams,
//! `snakepit_request_time_to_first_chunk_seconds{pool_name,command}`, with the seed's
//! buckets.
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
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::{KeyValue, StringValue};
use snakepit_core::{Error, Pool, Request, Served};
use tower::{Layer, Service};

use crate::labels::{Evidence, RequestLabels};
pub use crate::openmetrics::REQUEST_BUCKETS;
use crate::openmetrics::{Exemplar, ExemplarStore};
use crate::trace::Outcome;

pub use crate::labels::{LabelCap, MAX_LABEL_LEN, OVERFLOW_LABEL, UNKNOWN_LABEL};

/// The seed's worker start-up buckets, in seconds.
pub const STARTUP_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// The request instruments, shared by every clone of the layer.
pub struct RequestInstruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    queue_time: Histogram<f64>,
    first_chunk: Histogram<f64>,
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
}

impl RequestInstruments {
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

    /// The current (request) span, when exemplars are kept and it is sampled: the trace
    /// layer makes it the current OpenTelemetry context while the request runs.
    fn exemplar_context(&self) -> Option<SpanContext> {
        self.exemplars.as_ref()?;
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            (sc.is_valid() && sc.is_sampled()).then(|| sc.clone())
        })
    }

    /// Remember `context` as the exemplar of `elapsed`'s bucket if that bucket has no
    /// fresh exemplar.
    fn capture_exemplar(
        &self,
        pool: &StringValue,
        command: &StringValue,
        elapsed: f64,
        context: impl FnOnce() -> Option<SpanContext>,
    ) {
        let Some(store) = &self.exemplars else { return };
        if !store.wants(pool.as_str(), command.as_str(), elapsed) {
            return;
        }
        if let Some(sc) = context() {
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

    fn record(&self, done: Finished<'_>, context: impl FnOnce() -> Option<SpanContext>) {
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
        }
    }
}

/// See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct MetricsLayer {
    instruments: Option<Arc<RequestInstruments>>,
    default_pool: Arc<str>,
}

impl std::fmt::Debug for MetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("enabled", &self.instruments.is_some())
            .finish()
    }
}

impl MetricsLayer {
    pub fn new(instruments: Arc<RequestInstruments>, default_pool: impl Into<String>) -> Self {
        MetricsLayer {
            instruments: Some(instruments),
            default_pool: Arc::from(default_pool.into().as_str()),
        }
    }

    pub fn disabled() -> Self {
        MetricsLayer {
            instruments: None,
            default_pool: Arc::from("default"),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            instruments: self.instruments.clone(),
            default_pool: self.default_pool.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    instruments: Option<Arc<RequestInstruments>>,
    default_pool: Arc<str>,
}

/// A request on its way, recorded as `cancelled` if its future is dropped before the
/// answer (the layer takes it back out when the answer comes).
struct Pending {
    instruments: Arc<RequestInstruments>,
    pool: Arc<str>,
    command: String,
    started: Instant,
}

struct CancelGuard(Option<Pending>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(Pending {
            instruments,
            pool,
            command,
            started,
        }) = self.0.take()
        {
            let done = Finished {
                pool: &pool,
                command: &command,
                evidence: Evidence::Unclear,
                status: "cancelled",
                elapsed: started.elapsed().as_secs_f64(),
                served: None,
                first_chunk: None,
            };
            instruments.record(done, || None);
        }
    }
}

impl<S> Service<Request> for Metrics<S>
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

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(instruments) = self.instruments.clone() else {
            return Box::pin(self.inner.call(req));
        };
        let pool: Arc<str> = match &req.pool {
            Some(p) => Arc::from(p.as_str()),
            None => self.default_pool.clone(),
        };
        let command = req.command.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            // Dropped before an answer (the caller went away): counted as cancelled.
            let mut guard = CancelGuard(Some(Pending {
                instruments,
                pool,
                command,
                started,
            }));
            let mut result = fut.await;
            let Some(Pending {
                instruments,
                pool,
                command,
                started,
            }) = guard.0.take()
            else {
                return result;
            };
            let evidence = Evidence::of(&result);
            let stream = match &mut result {
                Ok(resp) => resp.as_stream(),
                Err(_) => None,
            };
            if let Some(stream) = stream {
                // Inside the request span now; the stream ends outside it.
                let context = instruments.exemplar_context();
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
                    };
                    instruments.record(done, || context);
                });
                return result;
            }
            let done = Finished {
                pool: &pool,
                command: &command,
                evidence,
                status: if result.is_ok() { "success" } else { "error" },
                elapsed: started.elapsed().as_secs_f64(),
                served: result.as_ref().ok().and_then(Outcome::served),
                first_chunk: None,
            };
            instruments.record(done, || instruments.exemplar_context());
            result
        })
    }
}
