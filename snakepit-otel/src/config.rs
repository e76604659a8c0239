//! Telemetry configuration (serde), with the standard `OTEL_*` environment variables
//! applied on top by [`TelemetryConfig::apply_env`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use snakepit_core::config::{check_float, check_range};
use snakepit_core::{ConfigError, SanitizeConfig};

/// OTLP wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector endpoint; `None` uses `OTEL_EXPORTER_OTLP_ENDPOINT` or the protocol's
    /// default on 127.0.0.1.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub timeout_ms: u64,
    /// Extra request headers (authentication for hosted backends).
    pub headers: BTreeMap<String, String>,
    /// Spans/log records buffered for export; beyond it new ones are dropped and counted.
    pub max_queue_size: usize,
    /// Consecutive failed exports that open the circuit breaker...
    pub breaker_failures: u32,
    /// ...and how long it stays open (exports are dropped and counted meanwhile).
    pub breaker_cooldown_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            timeout_ms: 5_000,
            headers: BTreeMap::new(),
            max_queue_size: 2_048,
            breaker_failures: 3,
            breaker_cooldown_ms: 15_000,
        }
    }
}

impl OtlpConfig {
    /// The endpoint to use for this protocol.
    pub fn endpoint_or_default(&self) -> String {
        match (&self.endpoint, self.protocol) {
            (Some(e), _) => e.clone(),
            (None, OtlpProtocol::Grpc) => "http://127.0.0.1:4317".into(),
            (None, OtlpProtocol::HttpProtobuf) => "http://127.0.0.1:4318".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// Export spans over OTLP.
    pub otlp: bool,
    /// Share of new traces sampled (a parent's decision is respected).
    pub sampling_ratio: f64,
    /// With `otlp`, also export each sampled request's span inside the worker, built
    /// by the pool from the worker's own timing (see `worker_spans`). Off by default:
    /// with the pipe transport the request span already spans the worker's time to
    /// within ≈ 50 µs, and a second exported span per call costs ≈ 10–25 µs of machine
    /// CPU; turn it on to see the hop into the worker process as its own bar.
    pub worker_spans: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp: false,
            sampling_ratio: 1.0,
            worker_spans: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the Prometheus text exposition (see `Telemetry::prometheus_text`).
    pub prometheus: bool,
    /// Push metrics over OTLP.
    pub otlp: bool,
    pub export_interval_ms: u64,
    /// Distinct `command` label values kept per pool; further ones become `__other__`.
    pub max_command_labels: usize,
    /// Keep trace ids of recent requests as exemplars on the duration histogram
    /// (OpenMetrics exposition only).
    pub exemplars: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            prometheus: true,
            otlp: false,
            export_interval_ms: 10_000,
            max_command_labels: 100,
            exemplars: true,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line with trace ids (for collectors).
    #[default]
    Json,
    /// Human-readable lines (for terminals).
    Text,
    /// No local log output (OTLP logs may still be on).
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub format: LogFormat,
    /// Per-component levels in `RUST_LOG` syntax; `RUST_LOG` overrides it.
    pub filter: String,
    /// Bridge log records to OTLP.
    pub otlp: bool,
    /// Log each request and its outcome (arguments sanitized) at info level.
    pub requests: bool,
    /// Lines buffered for the writer thread; beyond it lines are dropped and counted.
    pub buffer_lines: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            format: LogFormat::Json,
            filter: "info".into(),
            otlp: false,
            requests: false,
            buffer_lines: 8_192,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsdConfig {
    /// `host:port` of the StatsD daemon (UDP).
    pub address: String,
    pub prefix: String,
    pub flush_interval_ms: u64,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            address: "127.0.0.1:8125".into(),
            prefix: "snakepit".into(),
            flush_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationConfig {
    /// The header an HTTP/gRPC edge reads and echoes.
    pub header_name: String,
    pub generate_if_missing: bool,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            header_name: "x-correlation-id".into(),
            generate_if_missing: true,
        }
    }
}

/// Everything observability. `enabled = false` installs nothing and makes every layer
/// a pass-through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub enabled: bool,
    pub service_name: String,
    pub correlation: CorrelationConfig,
    pub traces: TracesConfig,
    pub metrics: MetricsConfig,
    pub logs: LogsConfig,
    pub otlp: OtlpConfig,
    pub statsd: Option<StatsdConfig>,
    pub sanitize: SanitizeConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            service_name: "snakepit".into(),
            correlation: CorrelationConfig::default(),
            traces: TracesConfig::default(),
            metrics: MetricsConfig::default(),
            logs: LogsConfig::default(),
            otlp: OtlpConfig::default(),
            statsd: None,
            sanitize: SanitizeConfig::default(),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl TelemetryConfig {
    /// Apply the standard OpenTelemetry variables that are set: `OTEL_SERVICE_NAME`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
    /// `http/protobuf`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`, `OTEL_LOGS_EXPORTER` (`otlp`,
    /// `prometheus`, `none`), `OTEL_TRACES_SAMPLER` + `OTEL_TRACES_SAMPLER_ARG`.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Some(v) = env("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp.endpoint = Some(v);
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            self.otlp.protocol = match v.as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                other => {
                    return Err(ConfigError::new(
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        other,
                        "grpc or http/protobuf",
                    ))
                }
            };
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_HEADERS") {
            for pair in v.split(',').filter(|p| !p.is_empty()) {
                let Some((k, val)) = pair.split_once('=') else {
                    return Err(ConfigError::new(
                        "OTEL_EXPORTER_OTLP_HEADERS",
                        pair,
                        "comma-separated key=value pairs",
                    ));
                };
                self.otlp.headers.insert(k.trim().into(), val.trim().into());
            }
        }
        if let Some(v) = env("OTEL_EXPORTER_OTLP_TIMEOUT") {
            self.otlp.timeout_ms = v
                .parse()
                .map_err(|_| ConfigError::new("OTEL_EXPORTER_OTLP_TIMEOUT", &v, "milliseconds"))?;
        }
        if let Some(v) = env("OTEL_TRACES_EXPORTER") {
            self.traces.otlp =
                exporter_list("OTEL_TRACES_EXPORTER", &v, &["otlp"])?.contains(&"otlp");
        }
        if let Some(v) = env("OTEL_METRICS_EXPORTER") {
            let list = exporter_list("OTEL_METRICS_EXPORTER", &v, &["otlp", "prometheus"])?;
            self.metrics.otlp = list.contains(&"otlp");
            self.metrics.prometheus = list.contains(&"prometheus");
        }
        if let Some(v) = env("OTEL_LOGS_EXPORTER") {
            self.logs.otlp = exporter_list("OTEL_LOGS_EXPORTER", &v, &["otlp"])?.contains(&"otlp");
        }
        if let Some(sampler) = env("OTEL_TRACES_SAMPLER") {
            let arg = env("OTEL_TRACES_SAMPLER_ARG");
            self.traces.sampling_ratio = match sampler.as_str() {
                "always_on" | "parentbased_always_on" => 1.0,
                "always_off" | "parentbased_always_off" => 0.0,
                "traceidratio" | "parentbased_traceidratio" => match arg {
                    Some(a) => a.parse().map_err(|_| {
                        ConfigError::new("OTEL_TRACES_SAMPLER_ARG", &a, "a ratio in [0, 1]")
                    })?,
                    None => 1.0,
                },
                other => {
                    return Err(ConfigError::new(
                        "OTEL_TRACES_SAMPLER",
                        other,
                        "always_on, always_off, traceidratio or their parentbased_ forms",
                    ))
                }
            };
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_float(
            "telemetry.traces.sampling_ratio",
            self.traces.sampling_ratio,
            0.0,
            1.0,
            "a ratio",
        )?;
        const HOUR_MS: u64 = 3_600_000;
        let ranges: [(&str, u64, u64, u64, &str); 9] = [
            (
                "telemetry.sanitize.max_string_length",
                self.sanitize.max_string_length as u64,
                16,
                10_000_000,
                "characters",
            ),
            (
                "telemetry.otlp.timeout_ms",
                self.otlp.timeout_ms,
                1,
                HOUR_MS,
                "ms",
            ),
            (
                "telemetry.otlp.max_queue_size",
                self.otlp.max_queue_size as u64,
                1,
                10_000_000,
                "items",
            ),
            (
                "telemetry.otlp.breaker_failures",
                self.otlp.breaker_failures as u64,
                1,
                1_000_000,
                "failures",
            ),
            (
                "telemetry.otlp.breaker_cooldown_ms",
                self.otlp.breaker_cooldown_ms,
                0,
                HOUR_MS,
                "ms",
            ),
            (
                "telemetry.metrics.export_interval_ms",
                self.metrics.export_interval_ms,
                100,
                HOUR_MS,
                "ms",
            ),
            (
                "telemetry.metrics.max_command_labels",
                self.metrics.max_command_labels as u64,
                1,
                10_000,
                "labels per pool",
            ),
            (
                "telemetry.logs.buffer_lines",
                self.logs.buffer_lines as u64,
                1,
                10_000_000,
                "lines",
            ),
            (
                "telemetry.statsd.flush_interval_ms",
                self.statsd.as_ref().map_or(1000, |s| s.flush_interval_ms),
                10,
                HOUR_MS,
                "ms",
            ),
        ];
        for (key, value, min, max, unit) in ranges {
            check_range(key, value, min, max, unit)?;
        }
        if self.correlation.header_name.is_empty()
            || !self
                .correlation
                .header_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                "telemetry.correlation.header_name",
                &self.correlation.header_name,
                "a lower-case header name (letters, digits, '-')",
            ));
        }
        if let Some(statsd) = &self.statsd {
            if statsd.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::new(
                    "telemetry.statsd.address",
                    &statsd.address,
                    "host:port with a numeric IP, e.g. 127.0.0.1:8125",
                ));
            }
        }
        Ok(())
    }
}

fn exporter_list<'a>(
    key: &str,
    value: &'a str,
    allowed: &[&str],
) -> Result<Vec<&'a str>, ConfigError> {
    let list: Vec<&str> = value.split(',').map(str::trim).collect();
    for item in &list {
        if *item != "none" && !allowed.contains(item) {
            return Err(ConfigError::new(
                key,
                item,
                format!("a comma-separated list of: none, {}", allowed.join(", ")),
            ));
        }
    }
    Ok(list)
}
