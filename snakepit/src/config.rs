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
//! Values are read as TOML (`8`, `true`, `0.5`, `["a"]`), else as strings. Then every
//! section validates itself; an error names the key, the value and what is allowed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use snakepit_core::{ConfigError, EventsConfig, PoolConfig};
use snakepit_health::HealthConfig;
use snakepit_otel::TelemetryConfig;
use toml::{Table, Value};

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
    pub server: ServerConfig,
    /// `[[pools]]`; none means one pool of the bundled example adapter.
    pub pools: Vec<PoolConfig>,
    pub events: EventsConfig,
    pub telemetry: TelemetryConfig,
    pub health: HealthConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
}

const ENV_PREFIX: &str = "SNAKEPIT_";
/// Variables with the prefix that are not config paths.
const NOT_PATHS: [&str; 7] = [
    "SNAKEPIT_PYTHON",
    "SNAKEPIT_VENV",
    "SNAKEPIT_BASE_PYTHON",
    "SNAKEPIT_CONFIG",
    "SNAKEPIT_OTEL",
    "SNAKEPIT_WORKER_SPANS",
    "SNAKEPIT_BRIDGE_SOURCE",
];

fn parse_value(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

/// Set `path` (lower-case segments) in `root` to `value`; `pools` is addressed by name or
/// index, and a name that does not exist yet adds a pool of that name.
fn set_path(root: &mut Table, path: &[String], value: Value, var: &str) -> Result<(), LoadError> {
    let bad = |why: &str| LoadError::Parse {
        source_name: format!("environment variable {var}"),
        message: why.to_string(),
    };
    let Some((first, rest)) = path.split_first() else {
        return Err(bad("empty key path"));
    };
    if rest.is_empty() {
        root.insert(first.clone(), value);
        return Ok(());
    }
    if first == "pools" {
        let pools = root
            .entry("pools")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = pools else {
            return Err(bad("`pools` is not a list"));
        };
        let (selector, inner) = (&rest[0], &rest[1..]);
        let index = match selector.parse::<usize>() {
            Ok(i) if i < list.len() => i,
            Ok(i) => {
                return Err(bad(&format!(
                    "no pool at index {i} ({} configured)",
                    list.len()
                )))
            }
            Err(_) => match list
                .iter()
                .position(|p| p.get("name").and_then(Value::as_str) == Some(selector.as_str()))
            {
                Some(i) => i,
                None if selector == "default" && list.is_empty() => {
                    list.push(Value::Table(Table::new()));
                    0
                }
                None => {
                    let mut t = Table::new();
                    t.insert("name".into(), Value::String(selector.clone()));
                    list.push(Value::Table(t));
                    list.len() - 1
                }
            },
        };
        let Value::Table(pool) = &mut list[index] else {
            return Err(bad("a pool entry is not a table"));
        };
        if inner.is_empty() {
            return Err(bad("name a pool key, e.g. SNAKEPIT_POOLS__DEFAULT__SIZE"));
        }
        return set_path(pool, inner, value, var);
    }
    let child = root
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    match child {
        Value::Table(t) => set_path(t, rest, value, var),
        _ => Err(bad(&format!("`{first}` is not a section"))),
    }
}

impl AppConfig {
    /// Read `path` (if given), apply `SNAKEPIT_*` overrides from `env`, fill in the
    /// default pool, validate everything.
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
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NOT_PATHS.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            let path: Vec<String> = var[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            set_path(&mut root, &path, parse_value(&raw), &var)?;
        }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "server.listen",
                &self.server.listen,
                "ip:port, e.g. 127.0.0.1:4000 (0.0.0.0:4000 for every interface)",
            ));
        }
        if self.server.max_payload_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_payload_bytes",
                0,
                "a positive number of bytes",
            ));
        }
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
        self.telemetry.validate()?;
        self.health.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_give_one_example_pool() {
        let cfg = AppConfig::load(None, env(&[])).unwrap();
        assert_eq!(cfg.pools.len(), 1);
        assert_eq!(
            cfg.pools[0].adapter,
            "snakepit_bridge.example:ExampleAdapter"
        );
        assert_eq!(cfg.server.listen, "127.0.0.1:4000");
    }

    #[test]
    fn env_overrides_reach_every_section() {
        let cfg = AppConfig::load(
            None,
            env(&[
                ("SNAKEPIT_SERVER__LISTEN", "0.0.0.0:5000"),
                ("SNAKEPIT_POOLS__DEFAULT__SIZE", "6"),
                ("SNAKEPIT_TELEMETRY__TRACES__SAMPLING_RATIO", "0.25"),
                ("SNAKEPIT_HEALTH__CRITERIA__MAX_QUEUE_SIZE", "7"),
                ("SNAKEPIT_POOLS__ML__ADAPTER", "models:Model"),
                ("SNAKEPIT_PYTHON", "/usr/bin/python3"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.listen, "0.0.0.0:5000");
        assert_eq!(cfg.pools[0].size, 6);
        assert_eq!(cfg.pools[1].name, "ml");
        assert_eq!(cfg.pools[1].adapter, "models:Model");
        assert_eq!(cfg.telemetry.traces.sampling_ratio, 0.25);
        assert_eq!(cfg.health.criteria.max_queue_size, 7);
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        let err =
            AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "0")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("pools.default.size = 0") && text.contains("positive"),
            "{text}"
        );

        let err =
            AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "many")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("size") && text.contains("many"), "{text}");

        let err = AppConfig::load(None, env(&[("SNAKEPIT_SERVER__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");

        let err =
            AppConfig::load(None, env(&[("SNAKEPIT_SERVER__LISTEN", "localhost")])).unwrap_err();
        assert!(
            err.to_string().contains("server.listen = localhost"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../snakepit.example.toml");
        let cfg = AppConfig::load(Some(&path), env(&[])).unwrap();
        assert!(!cfg.pools.is_empty());
    }
}
