//! What the probes answer: liveness, readiness against the criteria, and the detailed
//! report. Bodies follow the health+json draft (`status` pass/warn/fail, a `checks`
//! map of `component:measurement` → observations) and keep the seed's fields.

use serde_json::{json, Map, Value};
use snakepit_core::{Pool, PoolStats};

use crate::config::ReadinessCriteria;
use crate::system::SystemStats;

/// `application/health+json`.
pub const HEALTH_JSON: &str = "application/health+json";

/// Where the service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Pools are still starting: not ready.
    Starting = 0,
    /// Pools are up: ready while the readiness criteria pass.
    Serving = 1,
    /// Shutting down: not ready (take me out of the load balancer), still live.
    Draining = 2,
}

impl Phase {
    /// The phase stored as `v` (anything past the last is `Draining`).
    pub fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }
}

/// One criterion's verdict for one pool.
struct Check {
    criterion: &'static str,
    pool: String,
    observed: f64,
    unit: &'static str,
    limit: f64,
    pass: bool,
}

fn checks_of(stats: &PoolStats, c: &ReadinessCriteria) -> Vec<Check> {
    // Rate and latency criteria judge the present (the stats window), and only once it
    // holds enough requests: an idle window passes, or an unready pod that gets no
    // traffic could never become ready again.
    let w = &stats.window;
    let enough_for_errors = w.requests >= c.min_requests_for_error_rate;
    let enough_for_latency = w.latency_samples >= c.min_requests_for_response_time;
    vec![
        Check {
            criterion: "min_available_workers",
            pool: stats.name.clone(),
            observed: stats.ready_workers as f64,
            unit: "workers",
            limit: c.min_available_workers as f64,
            pass: stats.ready_workers >= c.min_available_workers,
        },
        Check {
            criterion: "max_error_rate",
            pool: stats.name.clone(),
            observed: w.error_rate,
            unit: "ratio",
            limit: c.max_error_rate,
            pass: !enough_for_errors || w.error_rate <= c.max_error_rate,
        },
        Check {
            criterion: "max_queue_size",
            pool: stats.name.clone(),
            observed: stats.queue_size as f64,
            unit: "requests",
            limit: c.max_queue_size as f64,
            pass: stats.queue_size <= c.max_queue_size,
        },
        Check {
            criterion: "max_response_time_ms",
            pool: stats.name.clone(),
            observed: w.latency_p99_ms,
            unit: "ms",
            limit: c.max_response_time_ms,
            pass: !enough_for_latency || w.latency_p99_ms <= c.max_response_time_ms,
        },
    ]
}

fn checks_json(checks: &[Check], time: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for c in checks {
        let entry = map
            .entry(format!("{}:{}", c.pool, c.criterion))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(json!({
                "componentId": c.pool,
                "componentType": "pool",
                "observedValue": c.observed,
                "observedUnit": c.unit,
                "limit": c.limit,
                "status": if c.pass { "pass" } else { "fail" },
                "time": time,
            }));
        }
    }
    map
}

/// The liveness verdict: live while some pool is still supervised.
pub fn liveness(pools: &[Pool], phase: Phase, time: &str) -> (bool, Value) {
    let stopped: Vec<&str> = pools
        .iter()
        .filter(|p| p.is_stopped())
        .map(Pool::name)
        .collect();
    let live = pools.is_empty() || stopped.len() < pools.len();
    let body = json!({
        "status": if live { "ok" } else { "error" },
        "health": if live { "pass" } else { "fail" },
        "phase": phase.name(),
        "timestamp": time,
        "reason": if live { Value::Null } else { json!(format!("supervision stopped for pools: {}", stopped.join(", "))) },
    });
    (live, body)
}

/// The readiness verdict with the failing criteria named.
pub fn readiness(
    pools: &[Pool],
    phase: Phase,
    criteria: &ReadinessCriteria,
    time: &str,
) -> (bool, Value) {
    let mut failing: Vec<String> = Vec::new();
    if phase != Phase::Serving {
        failing.push(phase.name().to_string());
    }
    let mut all = Vec::new();
    for pool in pools {
        let checks = checks_of(&pool.stats(), criteria);
        failing.extend(
            checks
                .iter()
                .filter(|c| !c.pass)
                .map(|c| format!("{}:{}", c.pool, c.criterion)),
        );
        all.extend(checks);
    }
    let ready = failing.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "health": if ready { "pass" } else { "fail" },
        "phase": phase.name(),
        "failing": failing,
        "checks": checks_json(&all, time),
        "timestamp": time,
    });
    (ready, body)
}

/// Everything an operator wants at a glance.
pub fn detailed(
    pools: &[Pool],
    phase: Phase,
    criteria: &ReadinessCriteria,
    system: &SystemStats,
    time: &str,
) -> Value {
    let (ready, readiness_body) = readiness(pools, phase, criteria, time);
    let stats: Vec<PoolStats> = pools.iter().map(Pool::stats).collect();
    let total_requests: u64 = stats.iter().map(|s| s.window.requests).sum();
    let total_errors: u64 = stats.iter().map(|s| s.window.errors).sum();
    let rps: f64 = stats.iter().map(|s| s.window.requests_per_second).sum();
    let crash_rate: f64 = stats.iter().map(|s| s.window.crashes_per_minute).sum();
    let queue_time = if total_requests == 0 {
        0.0
    } else {
        stats
            .iter()
            .map(|s| s.window.queue_time_avg_ms * s.window.requests as f64)
            .sum::<f64>()
            / total_requests as f64
    };
    let any_degraded = stats.iter().any(|s| s.ready_workers < s.total_workers);
    let status = match (ready, any_degraded) {
        (false, _) => "fail",
        (true, true) => "warn",
        (true, false) => "pass",
    };
    json!({
        "status": status,
        "phase": phase.name(),
        "timestamp": time,
        "checks": readiness_body["checks"],
        "failing": readiness_body["failing"],
        "pools": stats,
        "system": system,
        "metrics": {
            "requests_per_second": rps,
            "queue_time_avg_ms": queue_time,
            "error_rate": if total_requests == 0 { 0.0 } else { total_errors as f64 / total_requests as f64 },
            "crash_rate_per_minute": crash_rate,
        },
    })
}
