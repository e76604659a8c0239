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

/// Where and how OTLP export goes (`[telemetry.otlp]`); the `OTEL_EXPORTER_OTLP_*`
/// variables fill what is unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector endpoint; `None` uses `OTEL_EXPORTER_OTLP_ENDPOINT` or the protocol's
    /// default on 127.0.0.1.
    pub endpoint: Option<String>,
    /// One signal's endpoint instead (`OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT`);
    /// for OTLP/HTTP the full URL, used as given.
    pub traces_endpoint: Option<String>,
    /// The metrics endpoint instead of `endpoint` (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
    pub metrics_endpoint: Option<String>,
    /// The logs endpoint instead of `endpoint` (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`).
    pub logs_endpoint: Option<String>,
    /// `grpc` (port 4317) or `http/protobuf` (port 4318); `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: OtlpProtocol,
    /// How long one export may take before it counts as failed (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout_ms: u64,
    /// Extra request headers (authentication for hosted backends).
    pub headers: BTreeMap<String, String>,
    /// Spans/log records buffered for export (per export thread); beyond it new ones are
    /// dropped and counted. 8192: a pipelined pool serves 60,000+ calls/s on two cores
    /// with two spans each, and a collector that stalls for 50 ms (seen with rotel on a
    /// busy machine) must not cost spans. A queued span is held already encoded as OTLP
    /// protobuf (a few hundred bytes), so 8192 measured no more RSS than 4096 did in the
    /// `observability` bench (+13.1 vs +12.8 MiB for all of observability), and dropped
    /// 0 spans where 4096 dropped 1.06 %.
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
            traces_endpoint: None,
            metrics_endpoint: None,
            logs_endpoint: None,
            protocol: OtlpProtocol::Grpc,
            timeout_ms: 5_000,
            headers: BTreeMap::new(),
            max_queue_size: 8_192,
            breaker_failures: 3,
            breaker_cooldown_ms: 15_000,
        }
    }
}

impl OtlpConfig {
    /// The endpoint of `signal` (`traces`, `metrics`, `logs`): its own if set, else the
    /// common one (for OTLP/HTTP with the signal's path appended).
    pub fn signal_endpoint(&self, signal: &str) -> String {
        let own = match signal {
            "traces" => &self.traces_endpoint,
            "metrics" => &self.metrics_endpoint,
            _ => &self.logs_endpoint,
        };
        match (own, self.protocol) {
            (Some(e), _) => e.clone(),
            (None, OtlpProtocol::Grpc) => self.endpoint_or_default(),
            (None, OtlpProtocol::HttpProtobuf) => http_url(&self.endpoint_or_default(), signal),
        }
    }

    /// The endpoint to use for this protocol.
    pub fn endpoint_or_default(&self) -> String {
        match (&self.endpoint, self.protocol) {
            (Some(e), _) => e.clone(),
            (None, OtlpProtocol::Grpc) => "http://127.0.0.1:4317".into(),
            (None, OtlpProtocol::HttpProtobuf) => "http://127.0.0.1:4318".into(),
        }
    }
}

/// The signal URL for OTLP/HTTP: `{endpoint}/v1/{signal}` unless a path is given.
fn http_url(endpoint: &str, signal: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .map(|(_, rest)| rest.contains('/'))
        .unwrap_or(false);
    if has_path {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/{signal}")
    }
}

/// Request spans (`[telemetry.traces]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// Export spans over OTLP. Unset: decided by the environment (see
    /// [`TelemetryConfig::apply_env`]); `false` keeps it off whatever the environment says.
    pub otlp: Option<bool>,
    /// Share of new traces sampled (a parent's decision is respected).
    pub sampling_ratio: f64,
    /// With spans exported, also export each sampled request's span inside the worker,
    /// built by the pool from the worker's own timing (see `worker_spans`), so a trace
    /// shows the hop into Python and the adapter's spans under it. Unset means on.
    pub worker_spans: Option<bool>,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp: None,
            sampling_ratio: 1.0,
            worker_spans: None,
        }
    }
}

impl TracesConfig {
    /// Whether spans leave the process (after [`TelemetryConfig::apply_env`]).
    pub fn exported(&self) -> bool {
        self.otlp == Some(true)
    }

    /// Whether worker spans are emitted: only with exported spans, on unless turned off.
    pub fn worker_spans_on(&self) -> bool {
        self.exported() && self.worker_spans != Some(false)
    }
}

/// Request and lifecycle metrics (`[telemetry.metrics]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the Prometheus text exposition (see `Telemetry::prometheus_text`).
    pub prometheus: bool,
    /// Push metrics over OTLP. Unset: decided by the environment.
    pub otlp: Option<bool>,
    /// How often metrics are pushed over OTLP.
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
            // On when built in (the `prometheus` feature).
            prometheus: cfg!(feature = "prometheus"),
            otlp: None,
            export_interval_ms: 10_000,
            max_command_labels: 100,
            exemplars: true,
        }
    }
}

impl MetricsConfig {
    /// Whether metrics are pushed over OTLP (after [`TelemetryConfig::apply_env`]).
    pub fn exported(&self) -> bool {
        self.otlp == Some(true)
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

/// Log lines and OTLP log records (`[telemetry.logs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// JSON lines, text, or no lines (OTLP records only).
    pub format: LogFormat,
    /// Per-component levels in `RUST_LOG` syntax; `RUST_LOG` overrides it.
    pub filter: String,
    /// Bridge log records to OTLP. Unset: decided by the environment.
    pub otlp: Option<bool>,
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
            otlp: None,
            requests: false,
            buffer_lines: 8_192,
        }
    }
}

impl LogsConfig {
    /// Whether log records go out over OTLP (after [`TelemetryConfig::apply_env`]).
    pub fn exported(&self) -> bool {
        self.otlp == Some(true)
    }
}

/// The StatsD sink of lifecycle events (`[telemetry.statsd]`; absent: no sink).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsdConfig {
    /// `host:port` of the StatsD daemon (UDP).
    pub address: String,
    /// Prepended to every metric name (`{prefix}.{pool}.requests.success`).
    pub prefix: String,
    /// How often aggregated counters and timers are sent.
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

/// Correlation ids (`[telemetry.correlation]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationConfig {
    /// The header an HTTP/gRPC edge reads and echoes.
    pub header_name: String,
    /// Give a request without one a new id (a UUID).
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
    /// Off: nothing is installed and every layer passes requests through.
    pub enabled: bool,
    /// `service.name` of spans, metrics and logs (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Correlation ids.
    pub correlation: CorrelationConfig,
    /// Request spans.
    pub traces: TracesConfig,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// Logs.
    pub logs: LogsConfig,
    /// OTLP export, shared by the three signals.
    pub otlp: OtlpConfig,
    /// The StatsD sink, if any.
    pub statsd: Option<StatsdConfig>,
    /// Redaction of secrets in span attributes, log lines and OTLP logs.
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
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (and the `_TRACES_`, `_METRICS_`, `_LOGS_` ones),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`),
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_EXPORTER`,
    /// `OTEL_METRICS_EXPORTER`, `OTEL_LOGS_EXPORTER` (`otlp`, `prometheus`, `none`),
    /// `OTEL_TRACES_SAMPLER` + `OTEL_TRACES_SAMPLER_ARG`.
    ///
    /// Whether a signal is exported over OTLP, in order: `OTEL_{SIGNAL}_EXPORTER=none`
    /// turns it off; else a value the configuration sets (`otlp = true|false`) wins;
    /// else a set `OTEL_{SIGNAL}_EXPORTER` decides (on iff it names `otlp`); else an OTLP
    /// endpoint variable (the common one or the signal's own) turns it on — the
    /// OpenTelemetry SDKs' default exporter is OTLP; else it stays off. Afterwards every
    /// `otlp` is set.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_vars(env)
    }

    /// [`TelemetryConfig::apply_env`] with the variables read through `get`.
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.otlp.endpoint = Some(v);
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_PROTOCOL") {
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
        if let Some(v) = get("OTEL_EXPORTER_OTLP_HEADERS") {
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
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            self.otlp.timeout_ms = v
                .parse()
                .map_err(|_| ConfigError::new("OTEL_EXPORTER_OTLP_TIMEOUT", &v, "milliseconds"))?;
        }
        for (signal, var) in [
            ("traces", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            ("metrics", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            ("logs", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
        ] {
            if let Some(v) = get(var) {
                let slot = match signal {
                    "traces" => &mut self.otlp.traces_endpoint,
                    "metrics" => &mut self.otlp.metrics_endpoint,
                    _ => &mut self.otlp.logs_endpoint,
                };
                *slot = Some(v);
            }
        }
        let own = |var: &str| get(var).is_some();
        let any_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let traces = exporters(
            get("OTEL_TRACES_EXPORTER"),
            "OTEL_TRACES_EXPORTER",
            &["otlp"],
        )?;
        let endpoint = any_endpoint || own("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        self.traces.otlp = Some(decide(self.traces.otlp, traces.as_deref(), endpoint));
        let metrics = exporters(
            get("OTEL_METRICS_EXPORTER"),
            "OTEL_METRICS_EXPORTER",
            &["otlp", "prometheus"],
        )?;
        let endpoint = any_endpoint || own("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        self.metrics.otlp = Some(decide(self.metrics.otlp, metrics.as_deref(), endpoint));
        if let Some(list) = &metrics {
            self.metrics.prometheus = list.iter().any(|e| e == "prometheus");
        }
        let logs = exporters(get("OTEL_LOGS_EXPORTER"), "OTEL_LOGS_EXPORTER", &["otlp"])?;
        let endpoint = any_endpoint || own("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
        self.logs.otlp = Some(decide(self.logs.otlp, logs.as_deref(), endpoint));
        if let Some(sampler) = get("OTEL_TRACES_SAMPLER") {
            let arg = get("OTEL_TRACES_SAMPLER_ARG");
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

    /// Check every value, and that this build can do what is asked (cargo features);
    /// the error names the key, the value and what is allowed.
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
        self.check_built()?;
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

impl TelemetryConfig {
    /// Refuses what this build cannot do (a cargo feature left out), naming the feature.
    fn check_built(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        for (signal, on) in [
            ("traces", self.traces.exported()),
            ("metrics", self.metrics.exported()),
            ("logs", self.logs.exported()),
        ] {
            if on && !protocol_built(self.otlp.protocol) {
                return Err(ConfigError::new(
                    format!("telemetry.{signal}.otlp"),
                    "true (set, or turned on by an OTEL_EXPORTER_OTLP_* endpoint variable)",
                    format!(
                        "false here (or OTEL_{}_EXPORTER=none): {}",
                        signal.to_uppercase(),
                        protocol_not_built(self.otlp.protocol)
                    ),
                ));
            }
        }
        if self.metrics.prometheus && !cfg!(feature = "prometheus") {
            return Err(ConfigError::new(
                "telemetry.metrics.prometheus",
                "true",
                "false here: this build has no Prometheus exposition; enable the `prometheus` \
                 feature of snakepit-otel (or snakepit)",
            ));
        }
        if self.statsd.is_some() && !cfg!(feature = "statsd") {
            return Err(ConfigError::new(
                "telemetry.statsd",
                "a StatsD section",
                "none here: this build has no StatsD sink; enable the `statsd` feature of \
                 snakepit-otel (or snakepit)",
            ));
        }
        Ok(())
    }
}

/// Whether this build can send OTLP over `protocol`.
pub(crate) fn protocol_built(protocol: OtlpProtocol) -> bool {
    match protocol {
        OtlpProtocol::Grpc => cfg!(feature = "otlp-grpc"),
        OtlpProtocol::HttpProtobuf => cfg!(feature = "otlp-http"),
    }
}

/// What to do when OTLP over `protocol` is asked for but not built in.
pub(crate) fn protocol_not_built(protocol: OtlpProtocol) -> String {
    let (name, feature) = match protocol {
        OtlpProtocol::Grpc => ("grpc", "otlp-grpc"),
        OtlpProtocol::HttpProtobuf => ("http/protobuf", "otlp-http"),
    };
    format!(
        "this build has no OTLP over {name}; enable the `{feature}` feature of snakepit-otel \
         (or snakepit), or choose the other telemetry.otlp.protocol"
    )
}

/// The exporters `OTEL_{SIGNAL}_EXPORTER` (`key`, = `value`) names, if it is set.
fn exporters(
    value: Option<String>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let list: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
    for item in &list {
        if item != "none" && !allowed.contains(&item.as_str()) {
            return Err(ConfigError::new(
                key,
                item,
                format!("a comma-separated list of: none, {}", allowed.join(", ")),
            ));
        }
    }
    Ok(Some(list))
}

/// Whether a signal is exported over OTLP. In order: `OTEL_{SIGNAL}_EXPORTER=none` is
/// off; a value the configuration sets wins; a set `OTEL_{SIGNAL}_EXPORTER` decides
/// (on iff it names `otlp`); an OTLP endpoint in the environment (common or the
/// signal's own) is on; else off.
fn decide(configured: Option<bool>, exporters: Option<&[String]>, endpoint: bool) -> bool {
    let named = |e: &str| exporters.is_some_and(|list| list.iter().any(|x| x == e));
    if exporters.is_some() && !named("otlp") && named("none") {
        return false;
    }
    match (configured, exporters) {
        (Some(on), _) => on,
        // The list names this signal's exporters: OTLP iff it is among them.
        (None, Some(_)) => named("otlp"),
        (None, None) => endpoint,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
