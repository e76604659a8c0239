//! [`Telemetry`]: builds the tracer, meter and logger providers and the exporters from
//! [`TelemetryConfig`], hands out the tower layers, and flushes everything on shutdown.
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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use snakepit_core::events::ConsumerHandle;
use snakepit_core::{EventBus, Pool, Sanitizer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, OtlpProtocol, TelemetryConfig};
use crate::correlation::CorrelationLayer;
use crate::export::{Batcher, OtelLogs, QueueLogProcessor, SignalCounters};
use crate::export_metrics::MetricPusher;
use crate::lifecycle;
use crate::logs::{LineWriter, LogLayer};
use crate::metrics::{MetricsLayer, RequestInstruments};
use crate::otlp::{export_settings, otlp_exporter};
pub use crate::render::MetricsRenderer;
use crate::request_spans::SpanExport;
use crate::statsd::StatsdSink;
use crate::trace::TraceLayer;
use crate::worker_spans::WorkerSpans;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid telemetry configuration: {0}")]
    Config(#[from] snakepit_core::ConfigError),
    #[error("cannot set up {what}: {message}")]
    Setup { what: &'static str, message: String },
    #[error("a global tracing subscriber is already installed; use Telemetry::subscriber() and install it yourself")]
    SubscriberExists,
}

fn setup(what: &'static str) -> impl Fn(String) -> TelemetryError {
    move |message| TelemetryError::Setup { what, message }
}

/// Installed telemetry. Keep it alive for the program's life; call
/// [`Telemetry::shutdown`] at the end to flush what is buffered.
pub struct Telemetry {
    cfg: TelemetryConfig,
    sanitizer: Sanitizer,
    tracer_provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    request_spans: Option<SpanExport>,
    worker_spans: Option<WorkerSpans>,
    meter_provider: Option<SdkMeterProvider>,
    meter: Option<Meter>,
    logger_provider: Option<SdkLoggerProvider>,
    registry: Option<prometheus::Registry>,
    instruments: Option<Arc<RequestInstruments>>,
    writer: Option<Arc<LineWriter>>,
    span_counters: Arc<SignalCounters>,
    log_counters: Arc<SignalCounters>,
    metric_counters: Arc<SignalCounters>,
    metric_pusher: Option<MetricPusher>,
    consumers: Vec<ConsumerHandle>,
    statsd: Option<StatsdSink>,
    subscriber_parts: Option<SubscriberParts>,
    default_pool: String,
}

struct SubscriberParts {
    filter: EnvFilter,
    log_layer: LogLayer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.cfg.enabled)
            .field("traces", &self.tracer_provider.is_some())
            .field("metrics", &self.meter_provider.is_some())
            .field("logs_otlp", &self.logger_provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Build everything `cfg` asks for (after applying `OTEL_*` variables). Call from
    /// inside a Tokio runtime. Logs need a subscriber: see [`Telemetry::init`] and
    /// [`Telemetry::subscriber`].
    pub fn build(cfg: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        Telemetry::build_with_log_writer(cfg, Box::new(std::io::stdout()))
    }

    /// [`Telemetry::build`] with log lines going to `writer` instead of stdout.
    pub fn build_with_log_writer(
        mut cfg: TelemetryConfig,
        writer: Box<dyn std::io::Write + Send>,
    ) -> Result<Telemetry, TelemetryError> {
        cfg.apply_env()?;
        cfg.validate()?;
        let sanitizer = Sanitizer::new(&cfg.sanitize);
        let span_counters = Arc::new(SignalCounters::default());
        let log_counters = Arc::new(SignalCounters::default());
        let mut t = Telemetry {
            sanitizer: sanitizer.clone(),
            tracer_provider: None,
            tracer: None,
            request_spans: None,
            worker_spans: None,
            meter_provider: None,
            meter: None,
            logger_provider: None,
            registry: None,
            instruments: None,
            writer: None,
            span_counters,
            log_counters,
            metric_counters: Arc::new(SignalCounters::default()),
            metric_pusher: None,
            consumers: Vec::new(),
            statsd: None,
            subscriber_parts: None,
            default_pool: "default".into(),
            cfg,
        };
        if !t.cfg.enabled {
            return Ok(t);
        }
        let resource = Resource::builder()
            .with_service_name(t.cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();

        let traces = crate::traces::build(&t.cfg, &resource, &t.span_counters)
            .map_err(|e| setup("span export thread")(e.to_string()))?;
        t.tracer = Some(traces.provider.tracer("snakepit"));
        t.tracer_provider = Some(traces.provider);
        t.request_spans = traces.request_spans;
        t.worker_spans = traces.worker_spans;

        // Metrics.
        if t.cfg.metrics.prometheus || t.cfg.metrics.exported() {
            let mut meter_builder = SdkMeterProvider::builder().with_resource(resource.clone());
            if t.cfg.metrics.prometheus {
                let registry = prometheus::Registry::new();
                let exporter = opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .scope_info_enabled(false)
                    .build()
                    .map_err(|e| setup("Prometheus exporter")(e.to_string()))?;
                meter_builder = meter_builder.with_reader(exporter);
                t.registry = Some(registry);
            }
            if t.cfg.metrics.exported() {
                let otlp = t.cfg.otlp.clone();
                let (reader, pusher) = MetricPusher::start(
                    Duration::from_millis(t.cfg.metrics.export_interval_ms),
                    export_settings(&otlp),
                    t.metric_counters.clone(),
                    move || {
                        otlp_exporter!(
                            opentelemetry_otlp::MetricExporter::builder(),
                            &otlp,
                            "metrics"
                        )
                        .map_err(|e| e.to_string())
                    },
                )
                .map_err(|e| setup("metric export thread")(e.to_string()))?;
                meter_builder = meter_builder.with_reader(reader);
                t.metric_pusher = Some(pusher);
            }
            let provider = meter_builder.build();
            let meter = provider.meter("snakepit");
            let mut instruments = RequestInstruments::new(&meter, t.cfg.metrics.max_command_labels);
            // Exemplars point at traces: only worth keeping when traces are exported.
            if t.cfg.metrics.exemplars && t.cfg.metrics.prometheus && t.cfg.traces.exported() {
                instruments = instruments.with_exemplars();
            }
            t.instruments = Some(Arc::new(instruments));
            t.register_self_metrics(&meter);
            t.meter = Some(meter);
            t.meter_provider = Some(provider);
        }

        // Logs.
        let otlp_logger = if t.cfg.logs.exported() {
            let otlp = t.cfg.otlp.clone();
            let res = resource.clone();
            let batcher = Batcher::start(
                "logs",
                export_settings(&otlp),
                t.log_counters.clone(),
                move || {
                    let mut exporter =
                        otlp_exporter!(opentelemetry_otlp::LogExporter::builder(), &otlp, "logs")
                            .map_err(|e| e.to_string())?;
                    opentelemetry_sdk::logs::LogExporter::set_resource(&mut exporter, &res);
                    Ok(OtelLogs(exporter))
                },
            )
            .map_err(|e| setup("log export thread")(e.to_string()))?;
            let provider = SdkLoggerProvider::builder()
                .with_resource(resource)
                .with_log_processor(QueueLogProcessor(batcher))
                .build();
            let logger = opentelemetry::logs::LoggerProvider::logger(&provider, "snakepit");
            t.logger_provider = Some(provider);
            Some(logger)
        } else {
            None
        };
        if t.cfg.logs.format != LogFormat::Off {
            let writer = LineWriter::new(writer, t.cfg.logs.buffer_lines)
                .map_err(|e| setup("log writer thread")(e.to_string()))?;
            t.writer = Some(Arc::new(writer));
        }
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&t.cfg.logs.filter))
            .map_err(|e| setup("log filter (RUST_LOG or logs.filter)")(e.to_string()))?;
        t.subscriber_parts = Some(SubscriberParts {
            filter,
            log_layer: LogLayer::new(t.writer.clone(), t.cfg.logs.format, otlp_logger, sanitizer),
        });
        Ok(t)
    }

    /// [`Telemetry::build`], then install its subscriber as the global default.
    pub fn init(cfg: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let mut t = Telemetry::build(cfg)?;
        if let Some(dispatch) = t.subscriber() {
            tracing::dispatcher::set_global_default(dispatch)
                .map_err(|_| TelemetryError::SubscriberExists)?;
        }
        Ok(t)
    }

    /// The `tracing` dispatcher (filter + log layer), once. `None` when telemetry is
    /// disabled or it was taken already. Request spans do not need it: the trace layer
    /// exports them itself.
    pub fn subscriber(&mut self) -> Option<tracing::Dispatch> {
        let parts = self.subscriber_parts.take()?;
        let subscriber = tracing_subscriber::registry()
            .with(parts.filter)
            .with(parts.log_layer);
        Some(tracing::Dispatch::new(subscriber))
    }

    /// The tracer of this telemetry's provider: spans your code makes with it (through
    /// the OpenTelemetry API, or a `tracing-opentelemetry` layer of your own) go out
    /// with the request spans. `None` when telemetry is disabled.
    pub fn tracer(&self) -> Option<SdkTracer> {
        self.tracer.clone()
    }

    /// Name used for requests that do not name a pool (default "default").
    pub fn with_default_pool(mut self, name: impl Into<String>) -> Self {
        self.default_pool = name.into();
        self
    }

    pub fn config(&self) -> &TelemetryConfig {
        &self.cfg
    }

    pub fn sanitizer(&self) -> &Sanitizer {
        &self.sanitizer
    }

    pub fn correlation_layer(&self) -> CorrelationLayer {
        CorrelationLayer::new(&self.cfg.correlation)
    }

    pub fn trace_layer(&self) -> TraceLayer {
        if !self.cfg.enabled {
            return TraceLayer::disabled();
        }
        TraceLayer::new(
            self.default_pool.clone(),
            self.sanitizer.clone(),
            self.request_spans.clone(),
            self.cfg.logs.requests,
        )
        .with_worker_spans(self.worker_spans.clone())
    }

    pub fn metrics_layer(&self) -> MetricsLayer {
        match &self.instruments {
            Some(i) => MetricsLayer::new(i.clone(), self.default_pool.clone()),
            None => MetricsLayer::disabled(),
        }
    }

    /// Consume `bus` for lifecycle metrics and (if configured) StatsD. Call it before
    /// starting pools on that bus, or their start-up events are missed.
    pub fn attach(&mut self, bus: &EventBus) -> Result<(), TelemetryError> {
        if !self.cfg.enabled {
            return Ok(());
        }
        if let Some(meter) = &self.meter {
            self.consumers
                .push(lifecycle::attach_lifecycle_metrics(meter, bus));
        }
        if let Some(statsd) = &self.cfg.statsd {
            let sink =
                StatsdSink::start(statsd, bus).map_err(|e| setup("StatsD sink")(e.to_string()))?;
            self.statsd = Some(sink);
        }
        Ok(())
    }

    /// Worker, queue and session gauges of `pools`, read at each collection; and these
    /// pools (with the commands their adapters declare) become the only label values
    /// request metrics use, so callers cannot create series for made-up names.
    pub fn watch_pools(&self, pools: &[Pool]) {
        if let Some(meter) = &self.meter {
            lifecycle::observe_pools(meter, pools.to_vec());
        }
        if let Some(instruments) = &self.instruments {
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
    pub fn metrics_renderer(&self) -> Option<MetricsRenderer> {
        Some(MetricsRenderer {
            registry: self.registry.clone()?,
            instruments: self.instruments.clone(),
        })
    }

    /// Environment for Python workers (merge into `PoolConfig::python.env`): whether
    /// to time requests for the worker spans this telemetry emits, and where spans user
    /// code opens go, so they reach the same collector and join the trace.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        if !self.cfg.enabled || !self.cfg.traces.exported() {
            return vec![
                ("SNAKEPIT_OTEL".into(), "0".into()),
                ("SNAKEPIT_WORKER_SPANS".into(), "0".into()),
            ];
        }
        let worker_spans = if self.worker_spans.is_some() {
            "1"
        } else {
            "0"
        };
        let protocol = match self.cfg.otlp.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        };
        vec![
            ("SNAKEPIT_OTEL".into(), "1".into()),
            ("SNAKEPIT_WORKER_SPANS".into(), worker_spans.into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                self.cfg.otlp.endpoint_or_default(),
            ),
            // Adapter spans go where the pool's spans go, a traces endpoint included.
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into(),
                self.cfg.otlp.signal_endpoint("traces"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
            (
                "OTEL_SERVICE_NAME".into(),
                format!("{}-worker", self.cfg.service_name),
            ),
        ]
    }

    /// What export has lost so far: (spans dropped, log records dropped, log lines dropped).
    pub fn dropped(&self) -> (u64, u64, u64) {
        (
            self.span_counters.dropped(),
            self.log_counters.dropped(),
            self.writer
                .as_ref()
                .map_or(0, |w| w.dropped().load(Ordering::Relaxed)),
        )
    }

    pub fn span_counters(&self) -> &SignalCounters {
        &self.span_counters
    }

    pub fn log_counters(&self) -> &SignalCounters {
        &self.log_counters
    }

    fn register_self_metrics(&self, meter: &Meter) {
        crate::self_metrics::register(
            meter,
            [
                ("spans", self.span_counters.clone()),
                ("logs", self.log_counters.clone()),
                ("metrics", self.metric_counters.clone()),
            ],
        );
    }

    /// Export what spans and log records are buffered now (blocks until done or timed out).
    pub fn flush(&self) {
        if let Some(p) = &self.tracer_provider {
            let _ = p.force_flush();
        }
        if let Some(w) = &self.worker_spans {
            w.flush(Duration::from_secs(10));
        }
        if let Some(p) = &self.logger_provider {
            let _ = p.force_flush();
        }
    }

    /// Flush and stop every exporter; waits at most about `timeout` per signal.
    pub fn shutdown(mut self, timeout: Duration) {
        self.stop(timeout);
    }

    fn stop(&mut self, timeout: Duration) {
        for c in self.consumers.drain(..) {
            c.detach();
        }
        self.statsd.take();
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(w) = self.worker_spans.take() {
            w.shutdown(timeout);
        }
        if let Some(pusher) = self.metric_pusher.take() {
            pusher.stop(); // one last push before the provider goes away
        }
        if let Some(p) = self.meter_provider.take() {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(p) = self.logger_provider.take() {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(w) = self.writer.take() {
            w.close();
        }
    }
}

impl Drop for Telemetry {
    /// The guard: dropping telemetry flushes what is buffered, as `shutdown` does.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

#[cfg(test)]
#[path = "telemetry_tests.rs"]
mod tests;
