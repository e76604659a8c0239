//! Configuration of the event stream ([`EventsConfig`]): a part of `events` so the
//! dependency runs one way (events → config's validation helpers), never back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EventKind;
use crate::config::{check_float, check_range, ConfigError};
use crate::sanitize::SanitizeConfig;

/// The typed lifecycle event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Off: nothing is emitted and emission costs one atomic load.
    pub enabled: bool,
    /// Per-event sampling rate in [0, 1], keyed by full event name
    /// (`snakepit.worker.health_check = 0.1`). Unlisted events are kept.
    pub sampling: BTreeMap<String, f64>,
    /// Redaction of secrets in event metadata before any consumer sees it.
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
    /// Check every value; the error names the key (`events.sampling.<name>`...).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_names_and_rates_are_checked() {
        EventsConfig::default().validate().unwrap();
        let mut ev = EventsConfig::default();
        ev.sampling.insert("snakepit.worker.nope".into(), 0.5);
        let err = ev.validate().unwrap_err();
        assert!(
            err.allowed.contains("snakepit.worker.health_check"),
            "{err}"
        );
        let mut ev = EventsConfig::default();
        ev.sampling
            .insert("snakepit.worker.health_check".into(), 1.5);
        assert!(ev.validate().unwrap_err().allowed.contains("[0.0, 1.0]"));
        let mut ev = EventsConfig::default();
        ev.sampling
            .insert("snakepit.worker.health_check".into(), f64::NAN);
        assert!(ev.validate().is_err(), "NaN is no rate");
    }
}
