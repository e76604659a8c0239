//! The typed lifecycle event stream (SPEC §3).
//!
//! The pool, its workers and the session store emit [`Event`]s into an [`EventBus`];
//! consumers (metrics, logs, the dashboard, user code) subscribe by pattern
//! (`snakepit.worker.*`). On the way the bus applies per-event sampling and sanitizes
//! metadata once, so no consumer ever sees a redacted key's value. Delivery is a
//! non-blocking `try_send` into each consumer's bounded buffer: a slow consumer loses
//! events (counted), never time on the request path.

mod bus;
mod config;
mod kinds;
mod pattern;

use std::time::SystemTime;

use serde_json::{Map, Value};

pub use bus::{ConsumerHandle, ConsumerStats, EventBus, Subscription};
pub use config::EventsConfig;
pub use kinds::{data, CrashCause, EventData, EventKind, Measure, MetaField};
pub use pattern::{Pattern, PatternError};

/// One emitted event: its data plus when it happened and, where one exists, the
/// correlation id of the request behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it was emitted.
    pub timestamp: SystemTime,
    /// The correlation id of the request behind it, if a request was.
    pub correlation_id: Option<String>,
    /// What happened, typed.
    pub data: EventData,
}

impl Event {
    /// Which event this is.
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// Its full name, e.g. `snakepit.worker.crashed`.
    pub fn name(&self) -> &'static str {
        self.data.kind().name()
    }

    /// A metadata value by name (JSON), for consumers that handle events generically.
    pub fn meta(&self, key: &str) -> Option<Value> {
        self.data
            .metadata()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// A measurement by name.
    pub fn measurement(&self, key: &str) -> Option<f64> {
        self.data
            .measurements()
            .into_iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// `{"event", "timestamp_ms", "correlation_id", "measurements", "metadata"}`.
    pub fn to_json(&self) -> Value {
        let ts_ms = self
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let measurements: Map<String, Value> = self
            .data
            .measurements()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        let metadata: Map<String, Value> = self
            .data
            .metadata()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        serde_json::json!({
            "event": self.name(),
            "timestamp_ms": ts_ms,
            "correlation_id": self.correlation_id,
            "measurements": measurements,
            "metadata": metadata,
        })
    }
}
