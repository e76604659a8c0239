//! How a pool starts its workers: a fresh interpreter each (`spawn`), or forked from a
//! template that has already imported the adapter (`fork_server`).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartMethod {
    /// Each worker is a new `python -m snakepit_bridge` that imports everything itself:
    /// nothing is shared, nothing needs to be fork-safe.
    #[default]
    Spawn,
    /// One template process per pool imports `snakepit_bridge`, the `preload` modules
    /// and the adapter (and constructs it with `fork_after = "init"`); each worker is
    /// forked from it. N workers start in about the time of one, a crashed worker is
    /// replaced in milliseconds, and memory the template loaded is shared
    /// copy-on-write (see `PoolStats` PSS/USS). The template must be single-threaded
    /// when it forks; CUDA contexts cannot cross a fork (use `fork_after = "import"`).
    ForkServer,
}

/// With `start_method = "fork_server"`: how far the template gets before forking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForkAfter {
    /// The adapter's module is imported; each worker constructs the adapter itself
    /// (what `__init__` loads is per worker). Safe for adapters that open devices,
    /// threads or connections in `__init__`.
    #[default]
    Import,
    /// The adapter is constructed in the template: a model loaded in `__init__` is
    /// loaded once and shared by every worker until one writes to it.
    Init,
}

/// Most modules a template preloads.
pub const MAX_PRELOAD: usize = 64;

/// `preload` holds Python module names (`numpy`, `sklearn.linear_model`).
pub(super) fn check_preload(pool: &str, preload: &[String]) -> Result<(), ConfigError> {
    let key = format!("pools.{pool}.preload");
    if preload.len() > MAX_PRELOAD {
        return Err(ConfigError::new(
            key,
            format!("{} modules", preload.len()),
            format!("at most {MAX_PRELOAD} module names"),
        ));
    }
    for name in preload {
        let valid = !name.is_empty()
            && name.len() <= 200
            && name.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(ConfigError::new(
                key,
                format!("{name:?}"),
                "Python module names such as \"numpy\" or \"sklearn.linear_model\"",
            ));
        }
    }
    Ok(())
}
