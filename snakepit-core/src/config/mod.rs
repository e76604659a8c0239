//! Configuration types (serde) for pools, workers and sessions, and the validation
//! helpers every config type uses. The event stream's and the sanitizer's configs live
//! with what they configure (`events::EventsConfig`, `sanitize::SanitizeConfig`).
//!
//! Every field has a default, so `PoolConfig::default()` is a working pool serving the
//! bundled example adapter. Durations carry their unit in the key (`_ms`, `_secs`) so a
//! TOML file or an environment override is never ambiguous. [`PoolConfig::validate`]
//! names the bad key, the bad value and what is allowed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod start;
pub use start::{ForkAfter, StartMethod, MAX_PRELOAD};

/// A configuration value that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value} is not allowed: {allowed}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `pools.default.size`.
    pub key: String,
    /// The value given.
    pub value: String,
    /// What the key takes.
    pub allowed: String,
}

impl ConfigError {
    /// `key = value` is not allowed; `allowed` says what is.
    pub fn new(key: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

/// What `poll_ready` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Fail at once with `QueueFull` (and emit `pool.saturated`): what an HTTP edge
    /// wants, so it can answer 429.
    #[default]
    Reject,
    /// Make `poll_ready` return `Pending` until a slot frees up: classic tower
    /// backpressure for callers that would rather wait.
    Wait,
}

/// How the pool talks to its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// gRPC over a Unix socket per worker (tonic ↔ grpcio): what remote workers will use.
    Grpc,
    /// Length-prefixed protobuf frames over two pairs of pipes the worker inherits:
    /// the same messages as gRPC at a fraction of the per-call cost. The default for
    /// local workers: the whole test suite runs on both transports.
    #[default]
    Pipe,
}

/// What happens to a session whose worker goes away (crash, timeout, a recycle past
/// its grace): its Python-side state is gone either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnWorkerLoss {
    /// Its next request fails with `SessionLost` (HTTP 410): the caller learns the
    /// state is gone and decides.
    #[default]
    Fail,
    /// Its next request re-creates it (metadata kept, state empty) on another worker,
    /// and the response says it was re-created.
    Recreate,
}

/// Where the worker's Python comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfig {
    /// A Python with `snakepit_bridge` installed. When unset, `SNAKEPIT_PYTHON` is used,
    /// else the bootstrapped environment (see [`crate::python_env`]).
    pub interpreter: Option<PathBuf>,
    /// Extra environment for worker processes.
    pub env: BTreeMap<String, String>,
    /// Directories prepended to the workers' `PYTHONPATH` (where your adapter lives).
    pub pythonpath: Vec<PathBuf>,
    /// Pin numeric libraries (OpenBLAS, OpenMP, MKL, numexpr) to one thread per worker so
    /// N workers do not fight over N×cores threads. On by default.
    pub limit_threads: bool,
    /// gRPC handler threads inside each worker (requests run one at a time; the others
    /// answer health checks and session calls meanwhile).
    pub rpc_threads: usize,
}

impl Default for PythonConfig {
    fn default() -> Self {
        PythonConfig {
            interpreter: None,
            env: BTreeMap::new(),
            pythonpath: Vec::new(),
            limit_threads: true,
            rpc_threads: 4,
        }
    }
}

/// Session behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Idle time after which a session expires, when its creator gives no TTL.
    pub default_ttl_secs: u64,
    /// How often expired sessions are swept.
    pub cleanup_interval_ms: u64,
    /// Creating more sessions than this fails with `InvalidArgs`.
    pub max_sessions: usize,
    /// What a session's next request gets when its worker went away.
    pub on_worker_loss: OnWorkerLoss,
    /// A planned recycle (max_requests, max_lifetime, max_memory_mb) of a worker that
    /// holds live sessions waits up to this long for them to be closed or expire; a
    /// replacement serves everything else meanwhile. Sessions still open after it are
    /// lost (see `on_worker_loss`).
    pub recycle_grace_secs: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            default_ttl_secs: 3600,
            cleanup_interval_ms: 60_000,
            max_sessions: 100_000,
            on_worker_loss: OnWorkerLoss::Fail,
            recycle_grace_secs: 300,
        }
    }
}

/// One pool of identical workers serving one adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Names the pool in requests, metrics and logs (letters, digits, `_`, `-`).
    pub name: String,
    /// `module:Class` of a `snakepit_bridge.Adapter` subclass.
    pub adapter: String,
    /// Worker processes kept running.
    pub size: usize,
    /// How the pool talks to its workers (`pipe`, or `grpc` with that feature).
    pub transport: TransportKind,
    /// How workers are started: `spawn` (a fresh interpreter each) or `fork_server`
    /// (forked from a template that imported the adapter once).
    pub start_method: StartMethod,
    /// `fork_server`: fork after importing the adapter's module (`import`) or after
    /// constructing the adapter (`init`, so what `__init__` loads is shared).
    pub fork_after: ForkAfter,
    /// `fork_server`: modules the template imports before the adapter (`["numpy"]`),
    /// so every worker shares them.
    pub preload: Vec<String>,
    /// Requests that may wait for a worker beyond those being served.
    pub max_queue_size: usize,
    /// What a request meets when `max_queue_size` are already waiting.
    pub when_full: WhenFull,
    /// Longest a request may wait for a worker.
    pub queue_timeout_ms: u64,
    /// Default per-request timeout (sent to Python as the gRPC deadline); 0 = none.
    pub request_timeout_ms: u64,
    /// How long a worker may take to become ready.
    pub startup_timeout_ms: u64,
    /// Recycle a worker after this many requests; 0 = never.
    pub max_requests: u64,
    /// Recycle a worker after this long; 0 = never.
    pub max_lifetime_secs: u64,
    /// Recycle a worker whose memory exceeds this; 0 = never. Spawned workers are
    /// measured by RSS; forked workers by USS (the pages only they hold: the pages
    /// they share with the template are not theirs to give back).
    pub max_memory_mb: u64,
    /// How often workers' RSS is measured (for `max_memory_mb` and stats).
    pub memory_check_interval_ms: u64,
    /// How often each worker is health-checked.
    pub health_check_interval_ms: u64,
    /// How long a health check may take before it counts as failed.
    pub health_check_timeout_ms: u64,
    /// Consecutive failed health checks before the worker is replaced.
    pub health_check_failures: u32,
    /// After SIGTERM, how long a worker may take to exit before SIGKILL.
    pub stop_grace_ms: u64,
    /// First delay before restarting a worker in a crash loop.
    pub restart_backoff_initial_ms: u64,
    /// Longest delay (the backoff doubles up to it).
    pub restart_backoff_max_ms: u64,
    /// Restarts back off only in a crash loop: a worker that failed to start, or died
    /// before completing a request and within this long of becoming ready. A worker
    /// that was serving is replaced at once and resets the backoff.
    pub restart_backoff_reset_secs: u64,
    /// Largest accepted request arguments, in bytes.
    pub max_payload_bytes: usize,
    /// Largest accepted worker response, in bytes.
    pub max_response_bytes: usize,
    /// `pool.capacity_warning` fires when this share of workers is busy.
    pub capacity_warning_percent: f64,
    /// Window for error rate, throughput and latency percentiles in `stats()`.
    pub stats_window_secs: u64,
    /// Pipe transport: after a reply, how long the worker polls for the next request
    /// before it sleeps (0 = sleep at once). Under load this saves the worker a
    /// sleep/wake pair per call; when idle it costs at most this much CPU per request
    /// (adaptive: after a window that caught nothing the worker sleeps at once).
    pub busy_poll_us: u64,
    /// Pipe transport: write the next queued unary request behind the running one, so
    /// the worker starts it the moment it replies. A request written ahead is taken
    /// back and handed on as soon as another worker is idle, or to the head of the
    /// queue once the running call has lasted 10 ms, so it never waits behind a slow
    /// call while a worker could run it.
    pub pipeline: bool,
    /// The interpreter and environment workers run in.
    pub python: PythonConfig,
    /// Session defaults.
    pub sessions: SessionConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "default".into(),
            adapter: "snakepit_bridge.example:ExampleAdapter".into(),
            size: 2,
            transport: TransportKind::default(),
            start_method: StartMethod::default(),
            fork_after: ForkAfter::default(),
            preload: Vec::new(),
            max_queue_size: 1000,
            when_full: WhenFull::Reject,
            queue_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            startup_timeout_ms: 30_000,
            max_requests: 0,
            max_lifetime_secs: 0,
            max_memory_mb: 0,
            memory_check_interval_ms: 1_000,
            health_check_interval_ms: 10_000,
            health_check_timeout_ms: 5_000,
            health_check_failures: 3,
            stop_grace_ms: 5_000,
            restart_backoff_initial_ms: 100,
            restart_backoff_max_ms: 30_000,
            restart_backoff_reset_secs: 30,
            max_payload_bytes: 4 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            capacity_warning_percent: 80.0,
            stats_window_secs: 60,
            busy_poll_us: 100,
            pipeline: true,
            python: PythonConfig::default(),
            sessions: SessionConfig::default(),
        }
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
const DAY_SECS: u64 = 24 * 3600;
const YEAR_SECS: u64 = 365 * DAY_SECS;
/// `transport = "grpc"` in a build without the gRPC transport.
#[cfg(not(feature = "grpc"))]
pub(crate) fn grpc_not_built(pool: &str) -> ConfigError {
    ConfigError::new(
        format!("pools.{pool}.transport"),
        "\"grpc\"",
        "\"pipe\" (this build has no gRPC transport: enable the `grpc` feature of snakepit-core, or of snakepit)",
    )
}

/// Largest message either transport carries (gRPC's i32 length).
const MAX_MESSAGE: u64 = i32::MAX as u64;

/// `value` must lie in `min..=max`; the error names the key, the value and the range.
pub fn check_range(
    key: &str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::new(
        key,
        value,
        format!("{min}..={max} {unit}"),
    ))
}

/// `value` must be a finite number in `min..=max`.
pub fn check_float(
    key: &str,
    value: f64,
    min: f64,
    max: f64,
    what: &str,
) -> Result<(), ConfigError> {
    if value.is_finite() && (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::new(
        key,
        value,
        format!("{what} in [{min:?}, {max:?}]"),
    ))
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn nonzero(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl PoolConfig {
    /// The default configuration, with `name`.
    pub fn named(name: impl Into<String>) -> Self {
        PoolConfig {
            name: name.into(),
            ..PoolConfig::default()
        }
    }

    /// `queue_timeout_ms` as a duration.
    pub fn queue_timeout(&self) -> Duration {
        ms(self.queue_timeout_ms)
    }
    /// `request_timeout_ms` as a duration (`None`: no deadline).
    pub fn request_timeout(&self) -> Option<Duration> {
        nonzero(self.request_timeout_ms)
    }
    /// `startup_timeout_ms` as a duration.
    pub fn startup_timeout(&self) -> Duration {
        ms(self.startup_timeout_ms)
    }
    /// `max_lifetime_secs` as a duration (`None`: workers live on).
    pub fn max_lifetime(&self) -> Option<Duration> {
        nonzero(self.max_lifetime_secs.saturating_mul(1000))
    }

    /// Check every value; the error names the first bad key as `pools.<name>.<key>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("pools.{}.{k}", self.name);
        #[cfg(not(feature = "grpc"))]
        if self.transport == TransportKind::Grpc {
            return Err(grpc_not_built(&self.name));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::new(
                "pools.<name>",
                format!("{:?}", self.name),
                "a non-empty name of ASCII letters, digits, '_' and '-'",
            ));
        }
        let (module, class) = self.adapter.split_once(':').unwrap_or(("", ""));
        if module.is_empty() || class.is_empty() {
            return Err(ConfigError::new(
                key("adapter"),
                format!("{:?}", self.adapter),
                "'module:Class', e.g. 'snakepit_bridge.example:ExampleAdapter'",
            ));
        }
        // Every duration and size has a range: huge values would overflow a deadline
        // (`Instant + Duration`) or the admission semaphore instead of meaning "never".
        let ranges: [(&str, u64, u64, u64, &str); 22] = [
            ("size", self.size as u64, 1, 1024, "workers"),
            (
                "max_queue_size",
                self.max_queue_size as u64,
                0,
                1_000_000,
                "requests",
            ),
            ("queue_timeout_ms", self.queue_timeout_ms, 1, DAY_MS, "ms"),
            (
                "request_timeout_ms",
                self.request_timeout_ms,
                0,
                DAY_MS,
                "ms (0 = none)",
            ),
            (
                "startup_timeout_ms",
                self.startup_timeout_ms,
                1,
                HOUR_MS,
                "ms",
            ),
            (
                "max_lifetime_secs",
                self.max_lifetime_secs,
                0,
                YEAR_SECS,
                "s (0 = never)",
            ),
            (
                "max_memory_mb",
                self.max_memory_mb,
                0,
                16 << 20,
                "MiB (0 = no limit)",
            ),
            (
                "memory_check_interval_ms",
                self.memory_check_interval_ms,
                10,
                DAY_MS,
                "ms",
            ),
            (
                "health_check_interval_ms",
                self.health_check_interval_ms,
                10,
                DAY_MS,
                "ms",
            ),
            (
                "health_check_timeout_ms",
                self.health_check_timeout_ms,
                1,
                HOUR_MS,
                "ms",
            ),
            (
                "health_check_failures",
                self.health_check_failures as u64,
                1,
                1000,
                "checks",
            ),
            ("stop_grace_ms", self.stop_grace_ms, 0, HOUR_MS, "ms"),
            ("busy_poll_us", self.busy_poll_us, 0, 10_000, "µs"),
            (
                "restart_backoff_max_ms",
                self.restart_backoff_max_ms,
                1,
                HOUR_MS,
                "ms",
            ),
            (
                "restart_backoff_reset_secs",
                self.restart_backoff_reset_secs,
                0,
                DAY_SECS,
                "s",
            ),
            (
                "max_payload_bytes",
                self.max_payload_bytes as u64,
                1,
                MAX_MESSAGE,
                "bytes",
            ),
            (
                "max_response_bytes",
                self.max_response_bytes as u64,
                1,
                MAX_MESSAGE,
                "bytes (gRPC's limit)",
            ),
            ("stats_window_secs", self.stats_window_secs, 1, 3600, "s"),
            (
                "python.rpc_threads",
                self.python.rpc_threads as u64,
                2,
                256,
                "threads (one runs the request, one answers health checks)",
            ),
            (
                "sessions.default_ttl_secs",
                self.sessions.default_ttl_secs,
                1,
                YEAR_SECS,
                "s",
            ),
            (
                "sessions.cleanup_interval_ms",
                self.sessions.cleanup_interval_ms,
                10,
                DAY_MS,
                "ms",
            ),
            (
                "sessions.recycle_grace_secs",
                self.sessions.recycle_grace_secs,
                0,
                DAY_SECS,
                "s",
            ),
        ];
        for (name, value, min, max, unit) in ranges {
            check_range(&key(name), value, min, max, unit)?;
        }
        start::check_preload(&self.name, &self.preload)?;
        check_range(
            &key("sessions.max_sessions"),
            self.sessions.max_sessions as u64,
            1,
            10_000_000,
            "sessions",
        )?;
        if self.max_payload_bytes > self.max_response_bytes {
            return Err(ConfigError::new(
                key("max_payload_bytes"),
                self.max_payload_bytes,
                format!("1..={} bytes (max_response_bytes)", self.max_response_bytes),
            ));
        }
        if self.restart_backoff_initial_ms == 0
            || self.restart_backoff_initial_ms > self.restart_backoff_max_ms
        {
            return Err(ConfigError::new(
                key("restart_backoff_initial_ms"),
                self.restart_backoff_initial_ms,
                format!(
                    "1..={} ms (restart_backoff_max_ms)",
                    self.restart_backoff_max_ms
                ),
            ));
        }
        if !(self.capacity_warning_percent > 0.0 && self.capacity_warning_percent <= 100.0) {
            return Err(ConfigError::new(
                key("capacity_warning_percent"),
                self.capacity_warning_percent,
                "a percentage in (0, 100]",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
