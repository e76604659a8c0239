//! Configuration of the event stream and of how telemetry data is scrubbed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_float, check_range, ConfigError};
use crate::events::EventKind;

/// How telemetry data is scrubbed before any consumer sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SanitizeConfig {
    pub enabled: bool,
    /// A key containing any of these (case-insensitive) has its value replaced.
    pub sensitive_keys: Vec<String>,
    /// Longer strings are cut to this many characters and marked as truncated.
    pub max_string_length: usize,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        SanitizeConfig {
            enabled: true,
            sensitive_keys: ["password", "token", "secret", "key", "auth"]
                .map(String::from)
                .to_vec(),
            max_string_length: 1000,
        }
    }
}

/// The typed lifecycle event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Off: nothing is emitted and emission costs one atomic load.
    pub enabled: bool,
    /// Per-event sampling rate in [0, 1], keyed by full event name
    /// (`snakepit.worker.health_check = 0.1`). Unlisted events are kept.
    pub sampling: BTreeMap<String, f64>,
    pub sanitize: SanitizeConfig,
    /// Events buffered per consumer before new ones are dropped (and counted).
    pub consumer_buffer: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            sampling: BTreeMap::new(),
            sanitize: SanitizeConfig::default(),
            consumer_buffer: 1024,
        }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, rate) in &self.sampling {
            if EventKind::from_name(name).is_none() {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                return Err(ConfigError::new(
                    format!("events.sampling.\"{name}\""),
                    name,
                    format!("one of: {}", known.join(", ")),
                ));
            }
            check_float(
                &format!("events.sampling.\"{name}\""),
                *rate,
                0.0,
                1.0,
                "a rate",
            )?;
        }
        check_range(
            "events.consumer_buffer",
            self.consumer_buffer as u64,
            1,
            1_000_000,
            "events",
        )?;
        check_range(
            "events.sanitize.max_string_length",
            self.sanitize.max_string_length as u64,
            16,
            10_000_000,
            "characters",
        )?;
        Ok(())
    }
}
