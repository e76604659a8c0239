//! [`Telemetry`], the handle: hands out the tower layers, attaches to event buses and
//! pools, renders metrics, and flushes everything on shutdown. Building it from
//! [`TelemetryConfig`] is in `setup.rs`; its `tracing` subscriber and layer in
//! `subscriber.rs`.
//!
//! ```text
//! request ─► CorrelationLayer ─► TraceLayer ─► MetricsLayer ─► Pool
//!                                   │ tracing span       │ OTel instruments
//!            tracing subscriber ◄───┘                    ▼
//!            TraceLayer ─► request span, encoded when it ends ─► export thread ─► OTLP
//!            TraceLayer ─► WorkerSpans (worker's timing) ─► export thread ─► OTLP
//!            Telemetry::tracer spans ─► QueueSpanProcessor ─► (the request spans' thread)
//!            └─ LogLayer ─► line writer thread (JSON/text)
//!                        └─► OTel logger ─► QueueLogProcessor ─► export thread ─► OTLP
//! meter ─► Prometheus registry (scraped by /metrics) and/or PeriodicReader ─► OTLP
//! EventBus ─► lifecycle metrics, StatsD sink (consumer threads)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::Meter;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use snakepit_core::events::ConsumerHandle;
use snakepit_core::sync::lock;
use snakepit_core::{EventBus, Pool, Pools, Sanitizer};

use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::correlation::CorrelationLayer;
use crate::export::SignalCounters;
use crate::export_metrics::MetricPusher;
use crate::labels::DefaultPool;
use crate::layer::TelemetryLayer;
use crate::lifecycle;
use crate::logs::LineWriter;
use crate::metrics::{MetricsLayer, RequestInstruments};
pub use crate::render::MetricsRenderer;
use crate::request_spans::SpanExport;
#[cfg(feature = "statsd")]
use crate::statsd::StatsdSink;
use crate::trace::TraceLayer;
use crate::worker_spans::WorkerSpans;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A value out of range, or what this build lacks; names the key.
    #[error("invalid telemetry configuration: {0}")]
    Config(#[from] snakepit_core::ConfigError),
    /// An exporter or thread could not be started.
    #[error("cannot set up {what}: {message}")]
    Setup {
        /// What could not be set up (`span export thread`, `StatsD sink`...).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// [`Telemetry::init`] found a global `tracing` subscriber already installed.
    #[error("a global tracing subscriber is already installed; use Telemetry::subscriber() and install it yourself")]
    SubscriberExists,
}

pub(crate) fn setup(what: &'static str) -> impl Fn(String) -> TelemetryError {
    move |message| TelemetryError::Setup { what, message }
}

/// Installed telemetry: a cheap, cloneable handle. Every clone shares the same
/// providers and exporters; [`Telemetry::shutdown`] (from any clone, idempotent) flushes
/// and stops them, and so does dropping the last clone — the handle is its own guard.
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: TelemetryConfig,
    pub(crate) sanitizer: Sanitizer,
    pub(crate) tracer_provider: Option<SdkTracerProvider>,
    pub(crate) tracer: Option<SdkTracer>,
    pub(crate) request_spans: Option<SpanExport>,
    pub(crate) worker_spans: Option<WorkerSpans>,
    pub(crate) meter_provider: Option<SdkMeterProvider>,
    pub(crate) meter: Option<Meter>,
    pub(crate) logger_provider: Option<SdkLoggerProvider>,
    pub(crate) otlp_logger: Option<SdkLogger>,
    #[cfg(feature = "prometheus")]
    pub(crate) registry: Option<prometheus::Registry>,
    pub(crate) instruments: Option<Arc<RequestInstruments>>,
    pub(crate) writer: Option<Arc<LineWriter>>,
    pub(crate) span_counters: Arc<SignalCounters>,
    pub(crate) log_counters: Arc<SignalCounters>,
    pub(crate) metric_counters: Arc<SignalCounters>,
    pub(crate) metric_pusher: Option<MetricPusher>,
    /// Event-bus consumers and the StatsD sink, stopped at shutdown.
    pub(crate) sinks: Mutex<Sinks>,
    pub(crate) stopped: AtomicBool,
    pub(crate) default_pool: DefaultPool,
    /// The pools' user metrics, made into instruments on first watch.
    pub(crate) user_instruments: std::sync::OnceLock<Arc<crate::user_metrics::UserInstruments>>,
}

#[derive(Default)]
pub(crate) struct Sinks {
    consumers: Vec<ConsumerHandle>,
    #[cfg(feature = "statsd")]
    statsd: Option<StatsdSink>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.inner.cfg.enabled)
            .field("traces", &self.inner.tracer_provider.is_some())
            .field("metrics", &self.inner.meter_provider.is_some())
            .field("logs_otlp", &self.inner.logger_provider.is_some())
            .finish()
    }
}

impl Telemetry {
    pub(crate) fn from_inner(inner: Inner) -> Telemetry {
        Telemetry {
            inner: Arc::new(inner),
        }
    }

    /// The tracer of this telemetry's provider: spans your code makes with it (through
    /// the OpenTelemetry API, or a `tracing-opentelemetry` layer of your own) go out
    /// with the request spans. `None` when telemetry is disabled.
    pub fn tracer(&self) -> Option<SdkTracer> {
        self.inner.tracer.clone()
    }

    /// Name used for requests that do not name a pool (default "default"; learned
    /// from the pools given to [`Telemetry::watch`]). Applies to layers made before too.
    pub fn with_default_pool(self, name: impl Into<String>) -> Self {
        self.inner.default_pool.set(&name.into());
        self
    }

    /// The configuration in effect (after the `OTEL_*` variables).
    pub fn config(&self) -> &TelemetryConfig {
        &self.inner.cfg
    }

    /// The redaction rules span attributes and log lines go through.
    pub fn sanitizer(&self) -> &Sanitizer {
        &self.inner.sanitizer
    }

    /// Correlation ids alone (part of [`Telemetry::layer`]).
    pub fn correlation_layer(&self) -> CorrelationLayer {
        CorrelationLayer::new(&self.inner.cfg.correlation)
    }

    /// Request spans alone (part of [`Telemetry::layer`]).
    pub fn trace_layer(&self) -> TraceLayer {
        if !self.inner.cfg.enabled {
            return TraceLayer::disabled();
        }
        TraceLayer::new(
            self.inner.default_pool.clone(),
            self.inner.sanitizer.clone(),
            self.inner.request_spans.clone(),
            self.inner.cfg.logs.requests,
        )
        .with_worker_spans(self.inner.worker_spans.clone())
    }

    /// Request metrics alone (part of [`Telemetry::layer`]).
    pub fn metrics_layer(&self) -> MetricsLayer {
        match &self.inner.instruments {
            Some(i) => MetricsLayer::new(i.clone(), self.inner.default_pool.clone()),
            None => MetricsLayer::disabled(),
        }
    }

    /// Correlation, the request span and the request metrics as one layer, for a
    /// `Pool` or `Pools`, unary or streaming (see [`TelemetryLayer`]).
    pub fn layer(&self) -> TelemetryLayer {
        TelemetryLayer::new(
            self.correlation_layer(),
            self.trace_layer(),
            self.metrics_layer(),
            self.inner.default_pool.clone(),
            self.inner.clone(),
        )
    }

    /// Consume `bus` for lifecycle metrics and (if configured) StatsD. Call it before
    /// starting pools on that bus, or their start-up events are missed.
    pub fn attach(&self, bus: &EventBus) -> Result<(), TelemetryError> {
        if !self.inner.cfg.enabled {
            return Ok(());
        }
        let mut sinks = lock(&self.inner.sinks);
        if let Some(meter) = &self.inner.meter {
            sinks
                .consumers
                .push(lifecycle::attach_lifecycle_metrics(meter, bus));
        }
        // Validation refused a StatsD config in a build without the sink.
        #[cfg(feature = "statsd")]
        if let Some(statsd) = &self.inner.cfg.statsd {
            let sink =
                StatsdSink::start(statsd, bus).map_err(|e| setup("StatsD sink")(e.to_string()))?;
            sinks.statsd = Some(sink);
        }
        Ok(())
    }

    /// [`Telemetry::watch_pools`] for every pool of `pools`, whose default pool also
    /// becomes the `pool_name` of requests that name none.
    pub fn watch(&self, pools: &Pools) {
        self.inner.default_pool.set(pools.default_pool().name());
        let all: Vec<Pool> = pools.iter().cloned().collect();
        self.watch_pools(&all);
    }

    /// Worker, queue and session gauges of `pools`, read at each collection; and these
    /// pools (with the commands their adapters declare) become the only label values
    /// request metrics use, so callers cannot create series for made-up names.
    ///
    /// A single pool also becomes the `pool_name` of requests that name none (they can
    /// only go to it).
    pub fn watch_pools(&self, pools: &[Pool]) {
        if let [only] = pools {
            self.inner.default_pool.set(only.name());
        }
        if let Some(meter) = &self.inner.meter {
            lifecycle::observe_pools(meter, pools.to_vec());
            self.inner
                .user_instruments
                .get_or_init(|| crate::user_metrics::UserInstruments::new(meter.clone()))
                .watch(pools);
        }
        if let Some(instruments) = &self.inner.instruments {
            instruments.register_pools(pools);
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of all metrics.
    pub fn prometheus_text(&self) -> Option<String> {
        self.metrics_renderer()?.prometheus_text()
    }

    /// The OpenMetrics exposition (with exemplars on the duration histogram), for
    /// scrapers that ask for `application/openmetrics-text`.
    pub fn openmetrics_text(&self) -> Option<String> {
        self.metrics_renderer()?.openmetrics_text()
    }

    /// A cheap, cloneable handle that renders the metrics: hand it to an HTTP handler
    /// without sharing the whole `Telemetry`.
    /// `None` when the Prometheus exposition is off (or not built: the `prometheus`
    /// feature).
    pub fn metrics_renderer(&self) -> Option<MetricsRenderer> {
        #[cfg(feature = "prometheus")]
        return Some(MetricsRenderer {
            registry: self.inner.registry.clone()?,
            instruments: self.inner.instruments.clone(),
        });
        #[cfg(not(feature = "prometheus"))]
        None
    }

    /// Environment for Python workers (merge into `PoolConfig::python.env`): whether
    /// to time requests for the worker spans this telemetry emits, and where spans user
    /// code opens go, so they reach the same collector and join the trace.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        if !self.inner.cfg.enabled || !self.inner.cfg.traces.exported() {
            return vec![
                ("SNAKEPIT_OTEL".into(), "0".into()),
                ("SNAKEPIT_WORKER_SPANS".into(), "0".into()),
            ];
        }
        let worker_spans = if self.inner.worker_spans.is_some() {
            "1"
        } else {
            "0"
        };
        let protocol = match self.inner.cfg.otlp.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        };
        vec![
            ("SNAKEPIT_OTEL".into(), "1".into()),
            ("SNAKEPIT_WORKER_SPANS".into(), worker_spans.into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                self.inner.cfg.otlp.endpoint_or_default(),
            ),
            // Adapter spans go where the pool's spans go, a traces endpoint included.
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
                self.inner.cfg.otlp.signal_endpoint("traces"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
            (
                "OTEL_SERVICE_NAME".into(),
                format!("{}-worker", self.inner.cfg.service_name),
            ),
        ]
    }

    /// What export has lost so far: (spans dropped, log records dropped, log lines dropped).
    pub fn dropped(&self) -> (u64, u64, u64) {
        (
            self.inner.span_counters.dropped(),
            self.inner.log_counters.dropped(),
            self.inner
                .writer
                .as_ref()
                .map_or(0, |w| w.dropped().load(Ordering::Relaxed)),
        )
    }

    /// What span export has sent, dropped and failed.
    pub fn span_counters(&self) -> &SignalCounters {
        &self.inner.span_counters
    }

    /// What OTLP log export has sent, dropped and failed.
    pub fn log_counters(&self) -> &SignalCounters {
        &self.inner.log_counters
    }

    /// Export what spans and log records are buffered now (blocks until done or timed out).
    pub fn flush(&self) {
        if let Some(p) = &self.inner.tracer_provider {
            let _ = p.force_flush();
        }
        if let Some(w) = &self.inner.worker_spans {
            w.flush(Duration::from_secs(10));
        }
        if let Some(p) = &self.inner.logger_provider {
            let _ = p.force_flush();
        }
    }

    /// Flush and stop every exporter; waits at most about `timeout` per signal. Once
    /// is enough: later calls, and dropping the last clone afterwards, do nothing.
    /// Layers handed out before keep working and record into stopped exporters, which
    /// drop what they get.
    pub fn shutdown(&self, timeout: Duration) {
        self.inner.stop(timeout);
    }
}

impl Inner {
    fn stop(&self, timeout: Duration) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let sinks = std::mem::take(&mut *lock(&self.sinks));
        for c in sinks.consumers {
            c.detach();
        }
        #[cfg(feature = "statsd")]
        drop(sinks.statsd);
        if let Some(p) = &self.tracer_provider {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(w) = &self.worker_spans {
            w.shutdown(timeout);
        }
        if let Some(pusher) = &self.metric_pusher {
            pusher.stop(); // one last push before the provider goes away
        }
        if let Some(p) = &self.meter_provider {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(p) = &self.logger_provider {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(w) = &self.writer {
            w.close();
        }
    }
}

impl Drop for Inner {
    /// The guard: dropping the last handle flushes what is buffered, as `shutdown` does.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
