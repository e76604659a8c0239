//! # snakepit-otel
//!
//! Observability for Snakepit pools, as tower layers and event-stream sinks a user
//! composes around any pool service:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tower::BoxError> {
//! use snakepit_core::{EventBus, Pool, PoolConfig, Request};
//! use snakepit_otel::{Telemetry, TelemetryConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let telemetry = Telemetry::init(TelemetryConfig::default())?; // a cheap Clone handle
//! let events = EventBus::default();
//! telemetry.attach(&events)?; // before pools start, to see their start-up events
//! let pool = Pool::start(PoolConfig::default(), events.clone()).await?;
//! telemetry.watch_pools(&[pool.clone()]); // gauges; labels say this pool's name
//! let svc = ServiceBuilder::new()
//!     .layer(telemetry.layer()) // correlation id, request span, metrics
//!     .timeout(std::time::Duration::from_secs(5)) // tower's layers fit inside (or out)
//!     .service(pool.clone());
//! let resp = svc.oneshot(Request::new("ping", serde_json::json!({}))).await?;
//! println!("{}", telemetry.prometheus_text().unwrap_or_default());
//! telemetry.shutdown(std::time::Duration::from_secs(5));
//! # Ok(()) }
//! ```
//!
//! The layer is generic over the inner service's error ([`ClassifyError`]: the pool's
//! own, or tower's `BoxError` from `Timeout`, `LoadShed`, `Buffer`…), and works for
//! unary and streaming services alike. An application with its own `tracing`
//! subscriber adds [`Telemetry::tracing_layer`] to it instead of calling `init`.
//!
//! ## How data flows
//! - **Requests**: [`TelemetryLayer`] ([`Telemetry::layer`]) is these three in one
//!   service: [`CorrelationLayer`] makes sure a correlation id exists;
//!   [`TraceLayer`] opens the request span, injects W3C `traceparent` into the request
//!   metadata (so Python spans join the trace), records errors and Python exceptions,
//!   and emits the worker's server span from the timing the worker reported
//!   ([`worker_spans`]);
//!   [`MetricsLayer`] records `snakepit_requests_total`, the duration and queue-time
//!   histograms.
//! - **Lifecycle**: the core's event stream feeds the worker/pool counters and the
//!   StatsD sink on their own threads; pool gauges are read from `Pool::load()` at
//!   collection time.
//! - **Export**: spans and log records go through bounded queues to one export thread
//!   per signal ([`export`]), with a circuit breaker and drop counters; metrics are pulled
//!   by the Prometheus registry ([`Telemetry::prometheus_text`]) and/or pushed over OTLP.
//! - **Logs**: [`logs::LogLayer`] turns `tracing` events into sanitized JSON (or text)
//!   lines with trace ids, and into OTLP log records.

#![warn(missing_docs)]

pub mod classify;
pub mod config;
pub mod correlation;
pub mod exemplars;
pub mod export;
pub mod export_metrics;
pub mod labels;
pub mod layer;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
#[cfg(feature = "prometheus")]
pub mod openmetrics;
mod otlp;
mod otlp_spans;
mod outcome;
mod render;
mod request_spans;
mod self_metrics;
mod setup;
mod span_encoding;
#[cfg(feature = "statsd")]
pub mod statsd;
mod subscriber;
pub mod telemetry;
pub mod trace;
mod trace_end;
mod traces;
pub mod user_metrics;
pub mod worker_spans;

/// The optional cargo features this build of `snakepit-otel` has.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "otlp-grpc")]
    "otlp-grpc",
    #[cfg(feature = "otlp-http")]
    "otlp-http",
    #[cfg(feature = "prometheus")]
    "prometheus",
    #[cfg(feature = "statsd")]
    "statsd",
];

pub use classify::ClassifyError;
pub use config::{
    CorrelationConfig, LogFormat, LogsConfig, MetricsConfig, OtlpConfig, OtlpProtocol,
    StatsdConfig, TelemetryConfig, TracesConfig,
};
pub use correlation::CorrelationLayer;
pub use layer::TelemetryLayer;
pub use metrics::MetricsLayer;
pub use render::MetricsRenderer;
pub use telemetry::{Telemetry, TelemetryError};
pub use trace::{Outcome, TraceLayer};
