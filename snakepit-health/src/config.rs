//! Health, rate-limit and dashboard configuration (serde).

use serde::{Deserialize, Serialize};
use snakepit_core::config::{check_float, check_range};
use snakepit_core::ConfigError;

/// When a pool counts as ready. A pool failing any criterion makes `/health/ready`
/// answer 503 with the criterion named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadinessCriteria {
    /// Live workers (started, handshake passed) a pool needs. Busy workers count: a
    /// pool under full load is still ready.
    pub min_available_workers: usize,
    /// Failed share of requests over the stats window (evaluated once the window holds
    /// at least `min_requests_for_error_rate` requests).
    pub max_error_rate: f64,
    /// Fewer requests than this in the window: the error rate is not judged.
    pub min_requests_for_error_rate: u64,
    /// Requests waiting for a worker.
    pub max_queue_size: usize,
    /// p99 latency over the stats window (evaluated once the window holds at least
    /// `min_requests_for_response_time` requests that reached a worker).
    pub max_response_time_ms: f64,
    /// Fewer requests than this in the window: the response time is not judged.
    pub min_requests_for_response_time: u64,
}

impl Default for ReadinessCriteria {
    fn default() -> Self {
        ReadinessCriteria {
            min_available_workers: 1,
            max_error_rate: 0.1,
            min_requests_for_error_rate: 20,
            max_queue_size: 1000,
            max_response_time_ms: 5000.0,
            min_requests_for_response_time: 20,
        }
    }
}

/// Token buckets per client address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Off: every client may call as often as it likes.
    pub enabled: bool,
    /// `/health`, `/health/ready`, `/metrics`.
    pub probes_per_second: f64,
    /// How many probe calls a client may make at once before the rate applies.
    pub probes_burst: f64,
    /// `/health/detailed` and the dashboard.
    pub detailed_per_second: f64,
    /// How many detailed calls a client may make at once before the rate applies.
    pub detailed_burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            probes_per_second: 100.0,
            probes_burst: 200.0,
            detailed_per_second: 20.0,
            detailed_burst: 40.0,
        }
    }
}

/// The live dashboard at `/dashboard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Off: `/dashboard` answers 404.
    pub enabled: bool,
    /// How often the dashboard gets a new point per pool.
    pub update_interval_ms: u64,
    /// History kept server-side, so a page opened late still shows it.
    pub history_minutes: u64,
    /// How many recent errors (with tracebacks) the dashboard keeps.
    pub max_recent_errors: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            update_interval_ms: 1000,
            history_minutes: 15,
            max_recent_errors: 50,
        }
    }
}

/// Probes, readiness criteria, rate limits and the dashboard (`[health]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Address [`crate::Health::serve`] binds; loopback unless you decide otherwise.
    pub listen: String,
    /// Where the probes live: `{prefix}`, `{prefix}/ready`, `{prefix}/detailed`.
    pub endpoint_prefix: String,
    /// Path of the metrics exposition.
    pub metrics_path: String,
    /// When set, `/health/detailed` and the dashboard need `Authorization: Bearer <token>`
    /// (or `?token=<token>`, for the browser's event stream).
    pub auth_token: Option<String>,
    /// When `/health/ready` says ready.
    pub criteria: ReadinessCriteria,
    /// Per-client limits on the health endpoints.
    pub rate_limit: RateLimitConfig,
    /// The live dashboard.
    pub dashboard: DashboardConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            listen: "127.0.0.1:4000".into(),
            endpoint_prefix: "/health".into(),
            metrics_path: "/metrics".into(),
            auth_token: None,
            criteria: ReadinessCriteria::default(),
            rate_limit: RateLimitConfig::default(),
            dashboard: DashboardConfig::default(),
        }
    }
}

impl HealthConfig {
    /// Check every value; the error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "health.listen",
                &self.listen,
                "ip:port, e.g. 127.0.0.1:4000 (0.0.0.0:4000 to listen on every interface)",
            ));
        }
        for (key, path) in [
            ("health.endpoint_prefix", &self.endpoint_prefix),
            ("health.metrics_path", &self.metrics_path),
        ] {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                return Err(ConfigError::new(
                    key,
                    path,
                    "a path like /health (leading '/', no trailing '/')",
                ));
            }
        }
        let c = &self.criteria;
        check_float(
            "health.criteria.max_error_rate",
            c.max_error_rate,
            0.0,
            1.0,
            "a rate",
        )?;
        if !(c.max_response_time_ms > 0.0 && c.max_response_time_ms <= 86_400_000.0) {
            return Err(ConfigError::new(
                "health.criteria.max_response_time_ms",
                c.max_response_time_ms,
                "a positive number of milliseconds, at most 86400000 (a day)",
            ));
        }
        for (key, value, max, unit) in [
            (
                "health.criteria.min_available_workers",
                c.min_available_workers as u64,
                1024,
                "workers",
            ),
            (
                "health.criteria.min_requests_for_error_rate",
                c.min_requests_for_error_rate,
                1_000_000,
                "requests",
            ),
            (
                "health.criteria.min_requests_for_response_time",
                c.min_requests_for_response_time,
                1_000_000,
                "requests",
            ),
            (
                "health.criteria.max_queue_size",
                c.max_queue_size as u64,
                1_000_000,
                "requests",
            ),
        ] {
            check_range(key, value, 0, max, unit)?;
        }
        let r = &self.rate_limit;
        for (key, v) in [
            ("health.rate_limit.probes_per_second", r.probes_per_second),
            ("health.rate_limit.probes_burst", r.probes_burst),
            (
                "health.rate_limit.detailed_per_second",
                r.detailed_per_second,
            ),
            ("health.rate_limit.detailed_burst", r.detailed_burst),
        ] {
            if r.enabled && !(v > 0.0 && v <= 1_000_000.0) {
                return Err(ConfigError::new(
                    key,
                    v,
                    "a positive number, at most 1000000",
                ));
            }
        }
        let d = &self.dashboard;
        check_range(
            "health.dashboard.update_interval_ms",
            d.update_interval_ms,
            100,
            3_600_000,
            "ms",
        )?;
        // The ring holds history_minutes × 60 000 / update_interval_ms points per pool.
        check_range(
            "health.dashboard.history_minutes",
            d.history_minutes,
            1,
            24 * 60,
            "minutes",
        )?;
        let points = d.history_minutes * 60_000 / d.update_interval_ms;
        if points > 100_000 {
            return Err(ConfigError::new(
                "health.dashboard.history_minutes",
                d.history_minutes,
                format!(
                    "at most {} minutes at update_interval_ms = {} (100000 points per pool)",
                    100_000 * d.update_interval_ms / 60_000,
                    d.update_interval_ms
                ),
            ));
        }
        check_range(
            "health.dashboard.max_recent_errors",
            d.max_recent_errors as u64,
            1,
            10_000,
            "errors",
        )?;
        if self.auth_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "health.auth_token",
                "(hidden)",
                "at least 16 characters",
            ));
        }
        Ok(())
    }
}
