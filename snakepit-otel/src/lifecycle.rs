//! Metrics that no request carries: worker starts, crashes, recycles, start-up time and
//! saturation come from the core's event stream; worker and queue gauges are read from
//! `Pool::load()` when metrics are collected (never on the request path).

use std::sync::Arc;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use snakepit_core::events::ConsumerHandle;
use snakepit_core::{CrashCause, Event, EventBus, EventData, EventKind, Pattern, Pool};

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

/// Label values the counters can take, created at zero when a pool is first seen:
/// `increase()` cannot see a counter's first step from "absent" to 1.
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
        for cause in CrashCause::ALL {
            self.crashed.add(
                0,
                &[pool.clone(), KeyValue::new("error_type", cause.as_str())],
            );
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
        let name = ev.data.pool_name();
        let pool = KeyValue::new("pool_name", name.to_string());
        {
            let mut seen = snakepit_core::sync::lock(&self.seen);
            if !seen.contains(name) {
                seen.insert(name.to_string());
                self.init_pool(&pool);
            }
        }
        match &ev.data {
            EventData::WorkerStarted(d) => {
                self.started.add(1, std::slice::from_ref(&pool));
                self.startup.record(d.startup_time_ms / 1000.0, &[pool]);
            }
            EventData::WorkerCrashed(d) => self
                .crashed
                .add(1, &[pool, KeyValue::new("error_type", d.cause.as_str())]),
            EventData::WorkerRecycled(d) => self
                .recycled
                .add(1, &[pool, KeyValue::new("reason", d.reason.clone())]),
            EventData::PoolSaturated(_) => self.saturated.add(1, &[pool]),
            EventData::SessionExpired(d) => self
                .sessions_expired
                .add(1, &[pool, KeyValue::new("reason", d.reason.clone())]),
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
    type Count = fn(&snakepit_core::PythonLogCounts) -> u64;
    let counters: [(&'static str, &'static str, Count); 2] = [
        (
            "snakepit.python.log_records",
            "Records of Python's logging from the pool's workers that reached the log",
            |c| c.records,
        ),
        (
            "snakepit.python.log_records_dropped",
            "Python logging records the workers dropped because the log was read too slowly",
            |c| c.dropped,
        ),
    ];
    for (name, description, read) in counters {
        let pools = pools.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                for pool in pools.iter() {
                    observer.observe(
                        read(&pool.python_log_counts()),
                        &[KeyValue::new("pool_name", pool.name().to_string())],
                    );
                }
            })
            .build();
    }
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
