//! Health, rate-limit and dashboard configuration (serde).

use serde::{Deserialize, Serialize};
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
    pub min_requests_for_error_rate: u64,
    /// Requests waiting for a worker.
    pub max_queue_size: usize,
    /// p99 latency over the stats window.
    pub max_response_time_ms: f64,
}

impl Default for ReadinessCriteria {
    fn default() -> Self {
        ReadinessCriteria {
            min_available_workers: 1,
            max_error_rate: 0.1,
            min_requests_for_error_rate: 20,
            max_queue_size: 1000,
            max_response_time_ms: 5000.0,
        }
    }
}

/// Token buckets per client address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// `/health`, `/health/ready`, `/metrics`.
    pub probes_per_second: f64,
    pub probes_burst: f64,
    /// `/health/detailed` and the dashboard.
    pub detailed_per_second: f64,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    pub update_interval_ms: u64,
    /// History kept server-side, so a page opened late still shows it.
    pub history_minutes: u64,
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
    pub criteria: ReadinessCriteria,
    pub rate_limit: RateLimitConfig,
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
        if !(0.0..=1.0).contains(&c.max_error_rate) {
            return Err(ConfigError::new(
                "health.criteria.max_error_rate",
                c.max_error_rate,
                "a rate in [0, 1]",
            ));
        }
        if c.max_response_time_ms <= 0.0 {
            return Err(ConfigError::new(
                "health.criteria.max_response_time_ms",
                c.max_response_time_ms,
                "a positive number of milliseconds",
            ));
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
            if r.enabled && v <= 0.0 {
                return Err(ConfigError::new(key, v, "a positive number"));
            }
        }
        if self.dashboard.update_interval_ms < 100 {
            return Err(ConfigError::new(
                "health.dashboard.update_interval_ms",
                self.dashboard.update_interval_ms,
                "at least 100 ms",
            ));
        }
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
