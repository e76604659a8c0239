//! The 16 lifecycle events of SPEC §3, each a typed struct with its measurements and
//! metadata. One macro declares them so the name table, the generic accessors used by
//! consumers, and sanitization can never drift apart from the structs.

use serde_json::Value;

use crate::sanitize::Sanitizer;

/// A number an event measures.
pub trait Measure {
    /// The number, as metrics take it.
    fn value(&self) -> f64;
}
impl Measure for u64 {
    fn value(&self) -> f64 {
        *self as f64
    }
}
impl Measure for f64 {
    fn value(&self) -> f64 {
        *self
    }
}

/// A metadata field: rendered to JSON for generic consumers, scrubbed before delivery.
pub trait MetaField {
    /// The field as JSON.
    fn to_json(&self) -> Value;
    /// Redact or cut the field (stored under `key`) as the sanitizer's rules say.
    fn sanitize(&mut self, _key: &str, _s: &Sanitizer) {}
}
/// Fields whose end matters most when they are too long.
const KEEP_END: [&str; 2] = ["python_traceback", "stderr_tail"];

impl MetaField for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
    fn sanitize(&mut self, key: &str, s: &Sanitizer) {
        if s.is_sensitive(key) {
            *self = crate::sanitize::REDACTED.to_string();
        } else if KEEP_END.contains(&key) {
            s.truncate_keep_end(self);
        } else {
            s.truncate(self);
        }
    }
}
impl MetaField for Option<String> {
    fn to_json(&self) -> Value {
        self.as_ref()
            .map_or(Value::Null, |v| Value::String(v.clone()))
    }
    fn sanitize(&mut self, key: &str, s: &Sanitizer) {
        if let Some(v) = self {
            v.sanitize(key, s);
        }
    }
}
impl MetaField for Value {
    fn to_json(&self) -> Value {
        self.clone()
    }
    fn sanitize(&mut self, _key: &str, s: &Sanitizer) {
        s.value(self);
    }
}
impl MetaField for bool {
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}
impl MetaField for u64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}
impl MetaField for u32 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}
impl MetaField for f64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

/// Why a worker crashed, as a bounded label: `error_type` of
/// `snakepit.workers.crashed`, decided where the exit is known rather than read back
/// from the event's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashCause {
    /// The worker never became ready (exited, or was killed after the start-up timeout).
    StartupFailed,
    /// Killed by SIGKILL (the OOM killer, an operator's `kill -9`).
    Killed,
    /// Ended by another signal (SIGSEGV, SIGABRT, …).
    Signal,
    /// Exited by itself with a code.
    Exit,
    /// How it ended is not known (its exit status could not be read).
    Unknown,
}

impl CrashCause {
    /// Every cause, for metrics that pre-register their label values.
    pub const ALL: [CrashCause; 5] = [
        CrashCause::StartupFailed,
        CrashCause::Killed,
        CrashCause::Signal,
        CrashCause::Exit,
        CrashCause::Unknown,
    ];

    /// How a worker that was running ended.
    pub fn of_exit(exit: &crate::error::ExitInfo) -> Self {
        match (exit.code, exit.signal) {
            (Some(_), _) => CrashCause::Exit,
            (None, Some(libc::SIGKILL)) => CrashCause::Killed,
            (None, Some(_)) => CrashCause::Signal,
            (None, None) => CrashCause::Unknown,
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CrashCause::StartupFailed => "startup_failed",
            CrashCause::Killed => "killed",
            CrashCause::Signal => "signal",
            CrashCause::Exit => "exit",
            CrashCause::Unknown => "unknown",
        }
    }
}

impl MetaField for CrashCause {
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}

macro_rules! define_events {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal {
            measurements { $($m:ident : $mt:ty),* $(,)? }
            metadata { $($k:ident : $kt:ty),* $(,)? }
        }
    )*) => {
        /// Which event, without its data: for patterns, sampling and metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum EventKind { $($(#[$doc])* $variant),* }

        impl EventKind {
            /// Every event kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The full name, e.g. `snakepit.worker.crashed`.
            pub const fn name(self) -> &'static str {
                match self { $(EventKind::$variant => $name),* }
            }

            /// The kind named `name` (`snakepit.worker.crashed`), if there is one.
            pub fn from_name(name: &str) -> Option<EventKind> {
                match name { $($name => Some(EventKind::$variant),)* _ => None }
            }

            pub(crate) const fn bit(self) -> u32 {
                1 << (self as u8)
            }
        }

        /// Event payloads, one struct per event.
        pub mod data {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, PartialEq)]
                // The fields are the event's measurements and metadata, named and
                // described in the event table of the README ("Events").
                #[allow(missing_docs)]
                pub struct $variant { $(pub $m: $mt,)* $(pub $k: $kt,)* }

                impl From<$variant> for EventData {
                    fn from(d: $variant) -> Self { EventData::$variant(d) }
                }
            )*
        }

        /// The data of one event.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventData { $($(#[$doc])* $variant(data::$variant)),* }

        impl EventData {
            /// Which event this is.
            pub fn kind(&self) -> EventKind {
                match self { $(EventData::$variant(_) => EventKind::$variant),* }
            }

            /// The numeric measurements, by name.
            pub fn measurements(&self) -> Vec<(&'static str, f64)> {
                match self {
                    $(EventData::$variant(d) => vec![$((stringify!($m), Measure::value(&d.$m))),*]),*
                }
            }

            /// The metadata, by name, as JSON values.
            pub fn metadata(&self) -> Vec<(&'static str, Value)> {
                match self {
                    $(EventData::$variant(d) => vec![$((stringify!($k), MetaField::to_json(&d.$k))),*]),*
                }
            }

            /// The pool the event is about (every event names one).
            pub fn pool_name(&self) -> &str {
                match self { $(EventData::$variant(d) => &d.pool_name),* }
            }

            pub(crate) fn sanitize(&mut self, s: &Sanitizer) {
                match self {
                    $(EventData::$variant(d) => { $(MetaField::sanitize(&mut d.$k, stringify!($k), s);)* }),*
                }
            }
        }
    };
}

define_events! {
    /// A pool has all its initial workers ready (or gave up on some).
    PoolStarted = "snakepit.pool.started" {
        measurements { pool_size: u64, startup_time_ms: f64 }
        metadata { pool_name: String, adapter: String }
    }
    /// A pool finished shutting down.
    PoolStopped = "snakepit.pool.stopped" {
        measurements { uptime_ms: f64, total_requests: u64 }
        metadata { pool_name: String, reason: String }
    }
    /// A request was refused because the queue was full.
    PoolSaturated = "snakepit.pool.saturated" {
        measurements { queue_size: u64, max_queue_size: u64 }
        metadata { pool_name: String, available_workers: u64, busy_workers: u64 }
    }
    /// Busy workers crossed `capacity_warning_percent` (fires again after dropping below).
    PoolCapacityWarning = "snakepit.pool.capacity_warning" {
        measurements { utilization_percent: f64, queue_depth: u64 }
        metadata { pool_name: String, threshold_percent: f64 }
    }
    /// A worker is ready: started, handshaken, its commands known.
    WorkerStarted = "snakepit.worker.started" {
        measurements { startup_time_ms: f64 }
        metadata { worker_id: String, pool_name: String, adapter: String, pid: u32 }
    }
    /// A worker stopped because the pool asked it to (shutdown).
    WorkerStopped = "snakepit.worker.stopped" {
        measurements { uptime_ms: f64, requests_handled: u64 }
        metadata { worker_id: String, pool_name: String, reason: String, pid: u32 }
    }
    /// A worker process died unexpectedly, or could not start.
    WorkerCrashed = "snakepit.worker.crashed" {
        measurements { uptime_ms: f64, requests_handled: u64 }
        metadata {
            worker_id: String, pool_name: String, error: String, exit_status: String,
            // The same, typed: what consumers label crashes by.
            cause: CrashCause,
            stderr_tail: String, pid: u32,
            // The slot's wait before the next start: 0 unless this was a crash-loop step.
            restart_delay_ms: f64,
        }
    }
    /// A worker was replaced on purpose: max_requests, max_lifetime, memory, a request
    /// timeout, or failed health checks.
    WorkerRecycled = "snakepit.worker.recycled" {
        measurements { uptime_ms: f64, requests_handled: u64 }
        metadata { worker_id: String, pool_name: String, reason: String, memory_mb: f64, pid: u32 }
    }
    /// A health check of a worker answered, or failed.
    WorkerHealthCheck = "snakepit.worker.health_check" {
        measurements { response_time_ms: f64 }
        metadata { worker_id: String, pool_name: String, status: String, details: Value }
    }
    /// A worker took the request off the queue.
    RequestStarted = "snakepit.request.started" {
        measurements { queue_time_ms: f64 }
        metadata {
            request_id: String, command: String, pool_name: String, worker_id: String,
            session_id: Option<String>, correlation_id: Option<String>,
        }
    }
    /// A request that a worker started has finished, successfully or not.
    RequestCompleted = "snakepit.request.completed" {
        measurements { duration_ms: f64, queue_time_ms: f64 }
        metadata { request_id: String, command: String, pool_name: String, worker_id: String, success: bool, status: String }
    }
    /// Any failed request, including those refused before reaching a worker.
    RequestFailed = "snakepit.request.failed" {
        measurements { duration_ms: f64, queue_time_ms: f64 }
        metadata {
            request_id: String, command: String, pool_name: String, worker_id: Option<String>,
            error_type: String, error_message: String, python_type: Option<String>,
            python_traceback: Option<String>,
            // A timed-out request: where the worker's Python threads were stuck.
            python_stack: Option<String>,
        }
    }
    /// A request overran its timeout (its worker is replaced, unless `caller_stalled`
    /// or `cancelled_in_python`).
    RequestTimeout = "snakepit.request.timeout" {
        measurements { timeout_ms: f64, queue_time_ms: f64 }
        metadata { request_id: String, command: String, pool_name: String, worker_id: String,
            // The deadline passed while the worker waited for the caller to read a stream.
            caller_stalled: bool,
            // An async command: the worker cancelled the coroutine and was kept.
            cancelled_in_python: bool,
         }
    }
    /// A session was created (bound to the worker that holds its state).
    SessionCreated = "snakepit.session.created" {
        measurements { creation_time_ms: f64 }
        metadata {
            session_id: String, pool_name: String, ttl_seconds: u64, metadata: Value,
            // Re-created (same id, empty state) after its worker was lost.
            recreated: bool,
        }
    }
    /// A session ended: `reason` is `ttl` (idle past its TTL), `closed` (explicitly), or
    /// `worker_lost` (its worker went away with its state; `detail` says how).
    SessionExpired = "snakepit.session.expired" {
        measurements { lifetime_ms: f64, requests_handled: u64 }
        metadata { session_id: String, pool_name: String, reason: String, detail: Option<String> }
    }
    /// A sweep removed expired sessions.
    SessionCleanup = "snakepit.session.cleanup" {
        measurements { sessions_cleaned: u64, cleanup_time_ms: f64 }
        metadata { pool_name: String, cleanup_reason: String }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitInfo;

    #[test]
    fn crash_causes_come_from_the_typed_exit() {
        let exit = |code, signal| CrashCause::of_exit(&ExitInfo { code, signal });
        assert_eq!(exit(None, Some(libc::SIGKILL)), CrashCause::Killed);
        assert_eq!(exit(None, Some(libc::SIGSEGV)), CrashCause::Signal);
        assert_eq!(exit(Some(7), None), CrashCause::Exit);
        assert_eq!(exit(None, None), CrashCause::Unknown);
        let labels: Vec<&str> = CrashCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            labels,
            ["startup_failed", "killed", "signal", "exit", "unknown"]
        );
        assert_eq!(CrashCause::Killed.to_json(), serde_json::json!("killed"));
    }

    #[test]
    fn sixteen_events_with_unique_names_and_bits() {
        assert_eq!(EventKind::ALL.len(), 16);
        let mut names: Vec<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 16);
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(*k));
            assert!(k.name().starts_with("snakepit."));
        }
        let all_bits = EventKind::ALL.iter().fold(0u32, |acc, k| acc | k.bit());
        assert_eq!(all_bits.count_ones(), 16);
    }

    #[test]
    fn generic_accessors_follow_the_struct() {
        let d: EventData = data::WorkerRecycled {
            uptime_ms: 12.5,
            requests_handled: 3,
            worker_id: "w1".into(),
            pool_name: "p".into(),
            reason: "memory".into(),
            memory_mb: 120.0,
            pid: 42,
        }
        .into();
        assert_eq!(d.kind(), EventKind::WorkerRecycled);
        assert_eq!(
            d.measurements(),
            vec![("uptime_ms", 12.5), ("requests_handled", 3.0)]
        );
        let meta = d.metadata();
        assert_eq!(meta[2], ("reason", Value::from("memory")));
        assert_eq!(meta.len(), 5);
    }
}
