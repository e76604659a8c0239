//! `MetricsLayer`: per-request instruments (SPEC §4), named so the Prometheus bridge
//! exposes exactly `snakepit_requests_total{pool_name,command,status}`,
//! `snakepit_request_duration_seconds{pool_name,command}` and
//! `snakepit_request_queue_time_seconds{pool_name}`, with the seed's buckets.
//!
//! `command` comes from callers, so its values are capped per layer: the first
//! `max_command_labels` distinct commands keep their name, later ones are recorded as
//! `__other__`, so a client sending random command names cannot explode the series count.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue};
use snakepit_core::{Error, Request};
use tower::{Layer, Service};

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::openmetrics::{Exemplar, ExemplarStore};
use crate::trace::Outcome;

/// The seed's request-duration buckets, in seconds.
pub const REQUEST_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// The seed's worker start-up buckets, in seconds.
pub const STARTUP_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
/// Longest label value kept (callers choose command names).
pub const MAX_LABEL_LEN: usize = 100;
/// The label value that stands for every command beyond the cap.
pub const OVERFLOW_LABEL: &str = "__other__";

/// Caps the distinct values of a caller-supplied label.
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    seen: RwLock<HashSet<Arc<str>>>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The value to record for `value`: itself while under the cap, else the overflow.
    /// Values are cut to [`MAX_LABEL_LEN`] characters.
    pub fn get(&self, value: &str) -> StringValue {
        let value = match value.char_indices().nth(MAX_LABEL_LEN) {
            Some((cut, _)) => &value[..cut],
            None => value,
        };
        {
            let seen = match self.seen.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            if let Some(v) = seen.get(value) {
                return StringValue::from(v.clone());
            }
            if seen.len() >= self.max {
                return StringValue::from(OVERFLOW_LABEL);
            }
        }
        let mut seen = match self.seen.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if seen.len() >= self.max {
            return StringValue::from(OVERFLOW_LABEL);
        }
        let v: Arc<str> = Arc::from(value);
        seen.insert(v.clone());
        StringValue::from(v)
    }
}

/// The request instruments, shared by every clone of the layer.
pub struct RequestInstruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    queue_time: Histogram<f64>,
    commands: LabelCap,
    /// Trace ids of recent requests per duration bucket, for OpenMetrics exemplars.
    pub(crate) exemplars: Option<ExemplarStore>,
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
                .with_description("Request duration as the caller saw it, queue wait included")
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            queue_time: meter
                .f64_histogram("snakepit.request.queue_time")
                .with_unit("s")
                .with_description("Time requests waited for a free worker")
                .with_boundaries(REQUEST_BUCKETS.to_vec())
                .build(),
            commands: LabelCap::new(max_command_labels),
            exemplars: None,
        }
    }

    /// Keep exemplars (trace ids of sampled requests) for the duration histogram.
    pub fn with_exemplars(mut self) -> Self {
        self.exemplars = Some(ExemplarStore::default());
        self
    }

    /// Remember the current (request) span as the exemplar of `elapsed`'s bucket, if it
    /// is sampled and that bucket has no fresh exemplar.
    fn capture_exemplar(&self, pool: &StringValue, command: &StringValue, elapsed: f64) {
        let Some(store) = &self.exemplars else { return };
        if !store.wants(pool.as_str(), command.as_str(), elapsed) {
            return;
        }
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() && sc.is_sampled() {
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
        let pool = match &req.pool {
            Some(p) => StringValue::from(p.clone()),
            None => StringValue::from(self.default_pool.clone()),
        };
        let command = instruments.commands.get(&req.command);
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let elapsed = started.elapsed().as_secs_f64();
            let status = if result.is_ok() { "success" } else { "error" };
            instruments.capture_exemplar(&pool, &command, elapsed);
            let pool_kv = KeyValue::new("pool_name", pool);
            let command_kv = KeyValue::new("command", command);
            instruments.requests.add(
                1,
                &[
                    pool_kv.clone(),
                    command_kv.clone(),
                    KeyValue::new("status", status),
                ],
            );
            instruments
                .duration
                .record(elapsed, &[pool_kv.clone(), command_kv]);
            if let Some(served) = result.as_ref().ok().and_then(Outcome::served) {
                instruments
                    .queue_time
                    .record(served.queue_time.as_secs_f64(), &[pool_kv]);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_keeps_the_first_values_then_overflows() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.get("a").as_str(), "a");
        assert_eq!(cap.get("b").as_str(), "b");
        assert_eq!(cap.get("c").as_str(), OVERFLOW_LABEL);
        assert_eq!(cap.get("a").as_str(), "a");
        for i in 0..1000 {
            assert_eq!(cap.get(&format!("x{i}")).as_str(), OVERFLOW_LABEL);
        }
        let long = LabelCap::new(5);
        assert_eq!(
            long.get(&"é".repeat(500)).as_str().chars().count(),
            MAX_LABEL_LEN
        );
    }
}
