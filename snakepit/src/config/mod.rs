//! `snakepit.toml` plus `SNAKEPIT_*` environment overrides.
//!
//! Every key of the file can be overridden from the environment: the path in upper case,
//! sections joined by `__`, pools addressed by name (or index):
//!
//! ```text
//! SNAKEPIT_SERVER__LISTEN=0.0.0.0:4000
//! SNAKEPIT_POOLS__DEFAULT__SIZE=8
//! SNAKEPIT_TELEMETRY__TRACES__OTLP=true
//! SNAKEPIT_HEALTH__AUTH_TOKEN=...
//! ```
//!
//! A value is read by the type of the key it targets: as TOML (`8`, `true`, `0.5`,
//! `["a"]`) where the key takes such a value, else as a string — so
//! `SNAKEPIT_HEALTH__AUTH_TOKEN=123456` stays a string. Any number of overrides may
//! target one pool; a pool named in a variable that the file does not define is added
//! (`DEFAULT` is the default pool's name; `SNAKEPIT_POOLS__0__SIZE` addresses the first
//! pool by index). Then every section validates itself; an error names the key, the
//! value and what is allowed.

#[cfg(feature = "config-file")]
use std::path::Path;

use serde::{Deserialize, Serialize};
use snakepit_core::config::check_range;
use snakepit_core::{ConfigError, EventsConfig, PoolConfig};
use snakepit_health::HealthConfig;
use snakepit_otel::TelemetryConfig;
#[cfg(feature = "config-file")]
use toml::Table;

/// The HTTP server of `snakepit serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// One listener for the execute API, probes, /metrics and the dashboard.
    pub listen: String,
    /// Largest request body accepted by the execute API (413 beyond).
    pub max_payload_bytes: usize,
    /// On SIGTERM/SIGINT: how long accepted requests may take to finish.
    pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4000".into(),
            max_payload_bytes: 4 * 1024 * 1024,
            drain_timeout_ms: 30_000,
        }
    }
}

/// Everything `snakepit serve` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// `[server]`: the listener and request limits.
    pub server: ServerConfig,
    /// `[[pools]]`; none means one pool of the bundled example adapter.
    pub pools: Vec<PoolConfig>,
    /// `[events]`: the lifecycle event bus.
    pub events: EventsConfig,
    /// `[telemetry]`: traces, metrics, logs, StatsD.
    pub telemetry: TelemetryConfig,
    /// `[health]`: probes, readiness criteria, dashboard.
    pub health: HealthConfig,
}

/// Why `snakepit.toml` (with its overrides) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
    /// Not valid TOML, or a key or value the configuration does not take.
    #[error("{source_name}: {message}")]
    Parse {
        /// The file (or "configuration" for the merged overrides).
        source_name: String,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
}

#[cfg(feature = "config-file")]
mod env;

impl AppConfig {
    /// Read `path` (if given), apply `SNAKEPIT_*` overrides from `env`, fill in the
    /// default pool, validate everything (the `config-file` feature).
    #[cfg(feature = "config-file")]
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<AppConfig, LoadError> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| LoadError::Read {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                text.parse::<Table>().map_err(|e| LoadError::Parse {
                    source_name: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => Table::new(),
        };
        env::apply(&mut root, env)?;
        // Through text again: toml's own deserializer names the offending key and line.
        let text = toml::to_string(&root).map_err(|e| LoadError::Parse {
            source_name: "configuration".into(),
            message: e.to_string(),
        })?;
        let mut cfg: AppConfig = toml::from_str(&text).map_err(|e| LoadError::Parse {
            source_name: path.map_or("configuration".into(), |p| p.display().to_string())
                + " (after SNAKEPIT_* overrides)",
            message: e.to_string(),
        })?;
        if cfg.pools.is_empty() {
            cfg.pools.push(PoolConfig::default());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every section; the error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "server.listen",
                &self.server.listen,
                "ip:port, e.g. 127.0.0.1:4000 (0.0.0.0:4000 for every interface)",
            ));
        }
        check_range(
            "server.max_payload_bytes",
            self.server.max_payload_bytes as u64,
            1,
            1 << 30,
            "bytes",
        )?;
        check_range(
            "server.drain_timeout_ms",
            self.server.drain_timeout_ms,
            0,
            24 * 3_600_000,
            "ms",
        )?;
        let mut names = std::collections::BTreeSet::new();
        for pool in &self.pools {
            pool.validate()?;
            if !names.insert(pool.name.clone()) {
                return Err(ConfigError::new(
                    format!("pools.{}.name", pool.name),
                    &pool.name,
                    "names unique across [[pools]]",
                ));
            }
        }
        self.events.validate()?;
        // As it will run: the OTEL_* variables can turn export on (and a build without
        // OTLP must say so now, not when serve starts).
        let mut telemetry = self.telemetry.clone();
        telemetry.apply_env()?;
        telemetry.validate()?;
        self.health.validate()?;
        Ok(())
    }
}

#[cfg(all(test, feature = "config-file"))]
#[path = "tests.rs"]
mod tests;
