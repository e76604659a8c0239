//! Label values that callers cannot poison.
//!
//! `command` and `pool_name` arrive in requests, so a client can send any number of
//! made-up values. Series are only ever created for values the pools know: a
//! registered pool (see [`Telemetry::watch_pools`](crate::Telemetry::watch_pools)) and
//! a command its adapter declares (learned at start). Anything else is recorded as
//! [`UNKNOWN_LABEL`]. Known commands beyond `max_command_labels` per pool (an adapter
//! declaring thousands) share [`OVERFLOW_LABEL`].
//!
//! A registered pool's declared commands are read once, at registration, into a fixed
//! map: the request path does one lookup and never allocates. Before a pool is
//! registered, or if it had not learned its commands then (a describe failed), the
//! request's outcome is the evidence: a command that ran (a result, or a
//! Python exception raised by it) is real; one that was refused is not, and one whose
//! outcome proves nothing (queue full, shutting down) keeps a label only if it already
//! has one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use opentelemetry::StringValue;
use snakepit_core::sync::{read, write};
use snakepit_core::Pool;

/// Longest label value kept (callers choose command names).
pub const MAX_LABEL_LEN: usize = 100;
/// The label value of commands and pools nobody declared.
pub const UNKNOWN_LABEL: &str = "__unknown__";
/// The label value shared by known commands beyond the per-pool cap.
pub const OVERFLOW_LABEL: &str = "__other__";
/// Pools learned from outcomes alone (no pool registered): at most this many.
const MAX_UNREGISTERED_POOLS: usize = 64;

/// The pool name of requests that name none, shared by every layer [`Telemetry`]
/// hands out, so it can be learned after the layers were made (from the pools
/// [`Telemetry::watch`] is given).
///
/// [`Telemetry`]: crate::Telemetry
/// [`Telemetry::watch`]: crate::Telemetry::watch
#[derive(Debug, Clone)]
pub struct DefaultPool(Arc<RwLock<Arc<str>>>);

impl DefaultPool {
    /// A shared name, `name` until [`DefaultPool::set`].
    pub fn new(name: &str) -> Self {
        DefaultPool(Arc::new(RwLock::new(Arc::from(name))))
    }

    /// The current name.
    pub fn get(&self) -> Arc<str> {
        read(&self.0).clone()
    }

    /// The name `req` is labelled with: its own pool, else the default.
    pub(crate) fn of(&self, req: &snakepit_core::Request) -> Arc<str> {
        match &req.pool {
            Some(p) => Arc::from(p.as_str()),
            None => self.get(),
        }
    }

    /// Change the name for every holder (layers made before included).
    pub fn set(&self, name: &str) {
        *write(&self.0) = Arc::from(name);
    }
}

impl Default for DefaultPool {
    fn default() -> Self {
        DefaultPool::new("default")
    }
}

/// Caps the distinct values of a label; values are cut to [`MAX_LABEL_LEN`] characters.
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    seen: RwLock<HashSet<Arc<str>>>,
}

fn cut(value: &str) -> &str {
    match value.char_indices().nth(MAX_LABEL_LEN) {
        Some((at, _)) => &value[..at],
        None => value,
    }
}

impl LabelCap {
    /// A cap of `max` distinct values.
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The value already admitted for `value`, if any.
    pub fn seen(&self, value: &str) -> Option<StringValue> {
        read(&self.seen)
            .get(cut(value))
            .map(|v| StringValue::from(v.clone()))
    }

    /// `value` itself while under the cap (admitting it), else [`OVERFLOW_LABEL`].
    pub fn get(&self, value: &str) -> StringValue {
        if let Some(v) = self.seen(value) {
            return v;
        }
        let value = cut(value);
        let mut seen = write(&self.seen);
        if let Some(v) = seen.get(value) {
            return StringValue::from(v.clone());
        }
        if seen.len() >= self.max {
            return StringValue::from(OVERFLOW_LABEL);
        }
        let v: Arc<str> = Arc::from(value);
        seen.insert(v.clone());
        StringValue::from(v)
    }
}

/// What a request's outcome proves about its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// It ran: a result, or an exception the command itself raised.
    Ran,
    /// The pool refused it as unknown (or the pool itself is unknown).
    Unknown,
    /// Nothing either way (queue full, shutting down, a timeout before an answer...).
    Unclear,
}

struct PoolLabels {
    name: StringValue,
    /// The registered pool: the judge of which commands exist.
    pool: Option<Pool>,
    /// Its declared commands and their label values, fixed when it was registered (the
    /// first `max_command_labels` in name order keep their name, so replicas agree);
    /// None if the pool had not learned its commands then.
    declared: Option<HashMap<String, StringValue>>,
    /// Commands admitted by evidence, when `declared` is None.
    commands: LabelCap,
}

/// The `pool_name` and `command` label values of requests, per pool.
pub struct RequestLabels {
    max_commands: usize,
    pools: RwLock<HashMap<String, Arc<PoolLabels>>>,
    /// True once pools were registered: then no other pool name gets a series.
    registered: std::sync::atomic::AtomicBool,
}

impl RequestLabels {
    /// Label values for requests, at most `max_commands_per_pool` commands per pool.
    pub fn new(max_commands_per_pool: usize) -> Self {
        RequestLabels {
            max_commands: max_commands_per_pool,
            pools: RwLock::new(HashMap::new()),
            registered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// These pools (and their declared commands) are the ones that get series.
    pub fn register(&self, pools: &[Pool]) {
        let mut map = write(&self.pools);
        for pool in pools {
            let commands = pool.commands(); // sorted
            let declared = (!commands.is_empty()).then(|| {
                commands
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let label = if i < self.max_commands {
                            StringValue::from(cut(&c).to_string())
                        } else {
                            StringValue::from(OVERFLOW_LABEL)
                        };
                        (c, label)
                    })
                    .collect()
            });
            map.insert(
                pool.name().to_string(),
                Arc::new(PoolLabels {
                    name: StringValue::from(pool.name().to_string()),
                    pool: Some(pool.clone()),
                    declared,
                    commands: LabelCap::new(self.max_commands),
                }),
            );
        }
        self.registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn pool(&self, name: &str, evidence: Evidence) -> Option<Arc<PoolLabels>> {
        if let Some(p) = read(&self.pools).get(name) {
            return Some(p.clone());
        }
        if evidence != Evidence::Ran || self.registered.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut map = write(&self.pools);
        if map.len() >= MAX_UNREGISTERED_POOLS && !map.contains_key(name) {
            return None;
        }
        let entry = map.entry(name.to_string()).or_insert_with(|| {
            Arc::new(PoolLabels {
                name: StringValue::from(cut(name).to_string()),
                pool: None,
                declared: None,
                commands: LabelCap::new(self.max_commands),
            })
        });
        Some(entry.clone())
    }

    /// The (`pool_name`, `command`) values to record a request of `command` on `pool`.
    pub fn get(&self, pool: &str, command: &str, evidence: Evidence) -> (StringValue, StringValue) {
        let unknown = || StringValue::from(UNKNOWN_LABEL);
        let Some(labels) = self.pool(pool, evidence) else {
            return (unknown(), unknown());
        };
        if let Some(declared) = &labels.declared {
            let command = declared.get(command).cloned().unwrap_or_else(unknown);
            return (labels.name.clone(), command);
        }
        let known = labels
            .pool
            .as_ref()
            .and_then(|p| p.knows_command(command))
            .unwrap_or(evidence == Evidence::Ran);
        let command = if known {
            labels.commands.get(command)
        } else {
            labels.commands.seen(command).unwrap_or_else(unknown)
        };
        (labels.name.clone(), command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_keeps_the_first_values_then_overflows() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.get("a").as_str(), "a");
        assert_eq!(cap.get("b").as_str(), "b");
        assert_eq!(cap.get("c").as_str(), OVERFLOW_LABEL);
        assert_eq!(cap.get("a").as_str(), "a");
        assert!(cap.seen("c").is_none());
        let long = LabelCap::new(5);
        assert_eq!(
            long.get(&"é".repeat(500)).as_str().chars().count(),
            MAX_LABEL_LEN
        );
    }

    #[test]
    fn without_registered_pools_only_commands_that_ran_get_series() {
        let labels = RequestLabels::new(100);
        for i in 0..1000 {
            let (pool, command) = labels.get("default", &format!("madeup-{i}"), Evidence::Unknown);
            assert_eq!(
                (pool.as_str(), command.as_str()),
                (UNKNOWN_LABEL, UNKNOWN_LABEL)
            );
            let (_, command) = labels.get("default", &format!("full-{i}"), Evidence::Unclear);
            assert_eq!(command.as_str(), UNKNOWN_LABEL);
        }
        let (pool, command) = labels.get("default", "echo", Evidence::Ran);
        assert_eq!((pool.as_str(), command.as_str()), ("default", "echo"));
        // Once seen, an unclear outcome (say, queue full) keeps the real label.
        assert_eq!(
            labels.get("default", "echo", Evidence::Unclear).1.as_str(),
            "echo"
        );
        // Made-up pool names are refused (UnknownPool) and never get a series.
        for i in 0..1000 {
            let (pool, _) = labels.get(&format!("pool-{i}"), "echo", Evidence::Unknown);
            assert_eq!(pool.as_str(), UNKNOWN_LABEL);
        }
        assert_eq!(read(&labels.pools).len(), 1);
    }
}
