//! How a [`Telemetry`] is built from its [`TelemetryConfig`]: the resource, then per
//! signal the provider and its export path (traces in `traces.rs`; metrics and logs
//! here), then the log line writer. Nothing here runs after `build` returns.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use opentelemetry_otlp::WithExportConfig;
#[cfg(feature = "otlp-http")]
use opentelemetry_otlp::WithHttpConfig;
#[cfg(feature = "otlp-grpc")]
use opentelemetry_otlp::WithTonicConfig;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use snakepit_core::Sanitizer;

use crate::config::{LogFormat, TelemetryConfig};
use crate::export::SignalCounters;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::export::{Batcher, OtelLogs, QueueLogProcessor};
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::export_metrics::MetricPusher;
use crate::labels::DefaultPool;
use crate::logs::LineWriter;
use crate::metrics::RequestInstruments;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::otlp::{export_settings, otlp_exporter};
use crate::telemetry::{setup, Inner, Sinks, Telemetry, TelemetryError};

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
        let mut t = Inner {
            sanitizer: Sanitizer::new(&cfg.sanitize),
            tracer_provider: None,
            tracer: None,
            request_spans: None,
            worker_spans: None,
            meter_provider: None,
            meter: None,
            logger_provider: None,
            otlp_logger: None,
            #[cfg(feature = "prometheus")]
            registry: None,
            instruments: None,
            writer: None,
            span_counters: Arc::new(SignalCounters::default()),
            log_counters: Arc::new(SignalCounters::default()),
            metric_counters: Arc::new(SignalCounters::default()),
            metric_pusher: None,
            sinks: Mutex::new(Sinks::default()),
            stopped: AtomicBool::new(false),
            default_pool: DefaultPool::default(),
            user_instruments: std::sync::OnceLock::new(),
            cfg,
        };
        if !t.cfg.enabled {
            return Ok(Telemetry::from_inner(t));
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

        if t.cfg.metrics.prometheus || t.cfg.metrics.exported() {
            build_metrics(&mut t, &resource)?;
        }
        // Validation refused OTLP logs if this build cannot send them.
        #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
        if t.cfg.logs.exported() {
            build_otlp_logs(&mut t, resource)?;
        }
        if t.cfg.logs.format != LogFormat::Off {
            let writer = LineWriter::new(writer, t.cfg.logs.buffer_lines)
                .map_err(|e| setup("log writer thread")(e.to_string()))?;
            t.writer = Some(Arc::new(writer));
        }
        let t = Telemetry::from_inner(t);
        // A bad filter fails here, not when the subscriber is made.
        t.log_filter()?;
        Ok(t)
    }
}

/// The meter provider with its readers (the Prometheus registry, the OTLP pusher), the
/// request instruments and telemetry's own counters.
fn build_metrics(t: &mut Inner, resource: &Resource) -> Result<(), TelemetryError> {
    #[allow(unused_mut)] // without the exporters built in, nothing is added
    let mut meter_builder = SdkMeterProvider::builder().with_resource(resource.clone());
    #[cfg(feature = "prometheus")]
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
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
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
    crate::self_metrics::register(
        &meter,
        [
            ("spans", t.span_counters.clone()),
            ("logs", t.log_counters.clone()),
            ("metrics", t.metric_counters.clone()),
        ],
    );
    t.meter = Some(meter);
    t.meter_provider = Some(provider);
    Ok(())
}

/// The OTel logger whose records go through a bounded queue to their export thread.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
fn build_otlp_logs(t: &mut Inner, resource: Resource) -> Result<(), TelemetryError> {
    let otlp = t.cfg.otlp.clone();
    let res = resource.clone();
    let batcher = Batcher::start(
        "logs",
        export_settings(&otlp),
        t.log_counters.clone(),
        move || {
            let mut exporter =
                otlp_exporter!(opentelemetry_otlp::LogExporter::builder(), &otlp, "logs")?;
            opentelemetry_sdk::logs::LogExporter::set_resource(&mut exporter, &res);
            Ok(OtelLogs(exporter))
        },
    )
    .map_err(|e| setup("log export thread")(e.to_string()))?;
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(QueueLogProcessor(batcher))
        .build();
    t.otlp_logger = Some(opentelemetry::logs::LoggerProvider::logger(
        &provider, "snakepit",
    ));
    t.logger_provider = Some(provider);
    Ok(())
}
