//! Metrics that no request carries: worker starts, crashes, recycles, start-up time and
//! saturation come from the core's event stream; worker and queue gauges are read from
//! `Pool::load()` when metrics are collected (never on the request path).

use std::sync::Arc;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use snakepit_core::events::ConsumerHandle;
use snakepit_core::{Event, EventBus, EventKind, Pattern, Pool};

use crate::metrics::STARTUP_BUCKETS;

struct Lifecycle {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    started: Counter<u64>,
    crashed: Counter<u64>,
    recycled: Counter<u64>,
    startup: Histogram<f64>,
    saturated: Counter<u64>,
    sessions_expired: Counter<u64>,
}

fn text(ev: &Event, key: &str) -> String {
    match ev.meta(key) {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// A bounded label for why a worker crashed.
fn crash_type(ev: &Event) -> &'static str {
    let error = text(ev, "error");
    let status = text(ev, "exit_status");
    if error.starts_with("worker failed to start") {
        "startup_failed"
    } else if status.contains("SIGKILL") {
        "killed"
    } else if status.contains("signal") {
        "signal"
    } else if status.starts_with("exit code") {
        "exit"
    } else {
        "unknown"
    }
}

/// Label values the counters can take, created at zero when a pool is first seen:
/// `increase()` cannot see a counter's first step from "absent" to 1.
const CRASH_TYPES: [&str; 5] = ["startup_failed", "killed", "signal", "exit", "unknown"];
const SESSION_END_REASONS: [&str; 3] = ["ttl", "closed", "worker_lost"];
const RECYCLE_REASONS: [&str; 6] = [
    "max_requests",
    "max_lifetime",
    "max_memory",
    "health_check_failed",
    "request_timeout",
    "transport_broken",
];

impl Lifecycle {
    fn init_pool(&self, pool: &KeyValue) {
        self.started.add(0, std::slice::from_ref(pool));
        self.saturated.add(0, std::slice::from_ref(pool));
        for t in CRASH_TYPES {
            self.crashed
                .add(0, &[pool.clone(), KeyValue::new("error_type", t)]);
        }
        for r in RECYCLE_REASONS {
            self.recycled
                .add(0, &[pool.clone(), KeyValue::new("reason", r)]);
        }
        for r in SESSION_END_REASONS {
            self.sessions_expired
                .add(0, &[pool.clone(), KeyValue::new("reason", r)]);
        }
    }

    fn record(&self, ev: &Event) {
        let name = text(ev, "pool_name");
        let pool = KeyValue::new("pool_name", name.clone());
        if let Ok(mut seen) = self.seen.lock() {
            if seen.insert(name) {
                self.init_pool(&pool);
            }
        }
        match ev.kind() {
            EventKind::WorkerStarted => {
                self.started.add(1, std::slice::from_ref(&pool));
                if let Some(ms) = ev.measurement("startup_time_ms") {
                    self.startup.record(ms / 1000.0, &[pool]);
                }
            }
            EventKind::WorkerCrashed => self
                .crashed
                .add(1, &[pool, KeyValue::new("error_type", crash_type(ev))]),
            EventKind::WorkerRecycled => self
                .recycled
                .add(1, &[pool, KeyValue::new("reason", text(ev, "reason"))]),
            EventKind::PoolSaturated => self.saturated.add(1, &[pool]),
            EventKind::SessionExpired => self
                .sessions_expired
                .add(1, &[pool, KeyValue::new("reason", text(ev, "reason"))]),
            _ => {}
        }
    }
}

/// Record lifecycle metrics from `bus` until the handle is detached.
pub fn attach_lifecycle_metrics(meter: &Meter, bus: &EventBus) -> ConsumerHandle {
    let lifecycle = Lifecycle {
        seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        started: meter
            .u64_counter("snakepit.workers.started")
            .with_description("Worker processes that passed their start-up handshake")
            .build(),
        crashed: meter
            .u64_counter("snakepit.workers.crashed")
            .with_description("Worker processes that died unexpectedly or failed to start")
            .build(),
        recycled: meter
            .u64_counter("snakepit.workers.recycled")
            .with_description("Workers replaced on purpose, by reason")
            .build(),
        startup: meter
            .f64_histogram("snakepit.worker.startup_duration")
            .with_unit("s")
            .with_description("Time from spawn to a worker being ready")
            .with_boundaries(STARTUP_BUCKETS.to_vec())
            .build(),
        saturated: meter
            .u64_counter("snakepit.pool.saturated")
            .with_description("Requests refused because the queue was full")
            .build(),
        sessions_expired: meter
            .u64_counter("snakepit.sessions.expired")
            .with_description(
                "Sessions that ended, by reason: ttl, closed, or worker_lost (their state went with their worker)",
            )
            .build(),
    };
    let pattern = Pattern::from(EventKind::WorkerStarted)
        .union(EventKind::WorkerCrashed.into())
        .union(EventKind::WorkerRecycled.into())
        .union(EventKind::PoolSaturated.into())
        .union(EventKind::SessionExpired.into());
    bus.attach("lifecycle-metrics", pattern, move |ev| lifecycle.record(ev))
}

/// Gauges of `pools`' load, read at collection time.
pub fn observe_pools(meter: &Meter, pools: Vec<Pool>) {
    let pools = Arc::new(pools);
    type Read = fn(&snakepit_core::PoolLoad) -> usize;
    let gauges: [(&'static str, &'static str, Read); 6] = [
        (
            "snakepit.pool.size",
            "Workers the pool is configured to run",
            |l| l.total_workers,
        ),
        (
            "snakepit.pool.available_workers",
            "Ready workers not running a request",
            |l| l.available_workers,
        ),
        (
            "snakepit.pool.busy_workers",
            "Workers running a request",
            |l| l.busy_workers,
        ),
        (
            "snakepit.pool.ready_workers",
            "Workers that passed their handshake",
            |l| l.ready_workers,
        ),
        (
            "snakepit.pool.queue_size",
            "Requests waiting for a worker",
            |l| l.queue_size,
        ),
        ("snakepit.sessions.active", "Open sessions", |l| {
            l.active_sessions
        }),
    ];
    for (name, description, read) in gauges {
        let pools = pools.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                for pool in pools.iter() {
                    let load = pool.load();
                    observer.observe(
                        read(&load) as u64,
                        &[KeyValue::new("pool_name", pool.name().to_string())],
                    );
                }
            })
            .build();
    }
}
