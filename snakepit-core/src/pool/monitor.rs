//! Per-worker monitor: periodic health-check calls and RSS readings, beside (never
//! inside) the request loop. It only ever *asks* the driver to recycle the worker;
//! the driver does so between requests, or — for a worker that stopped answering
//! health checks — at once, failing the request it is stuck in.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::exit::Control;
use super::report::ms;
use super::shared::PoolShared;
use crate::events::{data, EventKind};
use crate::memory;
use crate::observe::stacks::STACK_WAIT;
use crate::observe::StackDumps;
use crate::transport::WorkerTransport;
use crate::worker::WorkerStatus;

const MIB: f64 = 1024.0 * 1024.0;

pub(crate) async fn run(
    shared: Arc<PoolShared>,
    status: Arc<WorkerStatus>,
    transport: Arc<dyn WorkerTransport>,
    stacks: Arc<StackDumps>,
    control: watch::Sender<Control>,
    cancel: CancellationToken,
) {
    let cfg = &shared.config;
    let mut health = interval(Duration::from_millis(cfg.health_check_interval_ms));
    let mut memory = interval(Duration::from_millis(cfg.memory_check_interval_ms));
    let mut failures = 0u32;
    // Once over max_memory_mb the recycle is asked for; health checks go on (a
    // recycle deferred for sessions still needs them).
    let mut over_memory = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = memory.tick(), if !over_memory => {
                let Some(usage) = memory::usage(status.pid) else { continue };
                status.rss_bytes.store(usage.rss, Ordering::Relaxed);
                status.pss_bytes.store(usage.pss, Ordering::Relaxed);
                status.uss_bytes.store(usage.uss, Ordering::Relaxed);
                // A forked worker shares the template's pages: only its own count.
                let (measure, held) = status.held_memory(cfg.start_method);
                let limit = cfg.max_memory_mb;
                if limit > 0 && held as f64 / MIB > limit as f64 {
                    tracing::info!(worker_id = %status.id, measure, held_mb = held as f64 / MIB, limit_mb = limit,
                        "worker over max_memory_mb; recycling after its current request");
                    control.send_replace(Control::Recycle { reason: "max_memory" });
                    over_memory = true;
                }
            }
            _ = health.tick() => {
                let timeout = Duration::from_millis(cfg.health_check_timeout_ms);
                let start = Instant::now();
                let result = transport.health(timeout).await;
                let elapsed = start.elapsed();
                let (ok, details) = match &result {
                    Ok(h) => {
                        status.rss_bytes.store(h.rss_bytes, Ordering::Relaxed);
                        (h.status == "ok", serde_json::json!({
                            "rss_mb": h.rss_bytes as f64 / MIB,
                            "requests_handled": h.requests_handled,
                            "active_sessions": h.active_sessions,
                            "python_status": h.status,
                        }))
                    }
                    Err(e) => (false, serde_json::json!({ "error": e.to_string() })),
                };
                shared.events.emit_with(EventKind::WorkerHealthCheck, None, || {
                    data::WorkerHealthCheck {
                        response_time_ms: ms(elapsed),
                        worker_id: status.id.to_string(),
                        pool_name: shared.name.to_string(),
                        status: if ok { "ok" } else { "failed" }.to_string(),
                        details,
                    }
                    .into()
                });
                failures = if ok { 0 } else { failures + 1 };
                if failures >= cfg.health_check_failures {
                    // Where it is stuck, asked before the worker is killed for it.
                    let python_stack = stacks.capture(STACK_WAIT).await;
                    tracing::warn!(worker_id = %status.id, pool = %shared.name, failures,
                        python_stack = python_stack.as_deref(),
                        "worker failed consecutive health checks; replacing it");
                    // Now, not after its request: the request it is stuck in fails
                    // with these stacks (WorkerUnhealthy).
                    control.send_replace(Control::Unhealthy {
                        failures,
                        python_stack: python_stack.map(Arc::from),
                    });
                    return;
                }
            }
        }
    }
}

fn interval(period: Duration) -> tokio::time::Interval {
    // The first tick is one period away: a fresh worker just passed its handshake.
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}
