//! What runs beside the fork path: reading the keeper's reports (exits by pid, the
//! template's deaths) and restarting a template that died, with backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{ExitBoard, ForkServer, TemplateExits, TemplateStatus};
use crate::error::ExitInfo;
use crate::memory;

/// Read the keeper's stdout: template forks and every exit it reaped.
pub(super) async fn read_reports(
    mut lines: mpsc::UnboundedReceiver<String>,
    board: Arc<ExitBoard>,
    exits: watch::Sender<TemplateExits>,
    status: Arc<TemplateStatus>,
    changed: Arc<Notify>,
) {
    while let Some(line) = lines.recv().await {
        let Ok(report) = serde_json::from_str::<Value>(&line) else {
            tracing::info!(target: "snakepit::worker", line, "fork server output");
            continue;
        };
        let pid = report.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
        match report.get("ev").and_then(Value::as_str) {
            Some("template") => status.pid.store(pid, Ordering::Relaxed),
            Some("exit") => {
                let number = |k: &str| report.get(k).and_then(Value::as_i64).map(|v| v as i32);
                let info = ExitInfo {
                    code: number("code"),
                    signal: number("signal"),
                };
                if report.get("template").and_then(Value::as_bool) == Some(true) {
                    status.ready.store(false, Ordering::Relaxed);
                    exits.send_modify(|e| {
                        e.count += 1;
                        e.last = Some(info);
                    });
                    changed.notify_one();
                } else {
                    board.report(pid, info);
                }
            }
            _ => {}
        }
    }
    status.ready.store(false, Ordering::Relaxed);
    board.all_lost();
    exits.send_modify(|e| e.keeper_gone = true);
    changed.notify_one();
}

/// Restart a template that died (with backoff if it keeps dying soon after it was
/// ready) and measure its memory, until the pool stops.
pub(super) async fn supervise(
    server: Weak<ForkServer>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    memory_every: Duration,
) {
    let mut failures = 0u32;
    let mut ready_since = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(memory_every) => {}
        }
        let Some(server) = server.upgrade() else {
            return;
        };
        let slot = server.keeper.lock().await;
        let dead = slot.as_ref().is_none_or(|k| server.template_dead(k));
        if dead && !stop.is_cancelled() {
            if let Some(last) = slot.as_ref().and_then(|k| k.exits.borrow().last) {
                tracing::warn!(pool = %server.pool, exit = %last, "fork server template exited; starting a new one (forked workers keep serving)");
            }
            if ready_since.elapsed() < Duration::from_secs(30) {
                failures += 1;
            } else {
                failures = 0;
            }
            let delay = backoff(server.backoff, failures);
            drop(slot);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let mut slot = server.keeper.lock().await;
            if stop.is_cancelled() {
                return; // shutdown took the keeper: start nothing new
            }
            let restarted = tokio::select! {
                r = server.ensure(&mut slot) => r,
                _ = stop.cancelled() => return,
            };
            match restarted {
                Ok(()) => ready_since = Instant::now(),
                Err(e) => {
                    tracing::error!(pool = %server.pool, error = %e, "fork server template could not be restarted; retrying");
                    changed.notify_one();
                }
            }
            continue;
        }
        drop(slot);
        let pid = server.status.pid.load(Ordering::Relaxed);
        if let Some(usage) =
            memory::usage(pid).filter(|_| server.status.ready.load(Ordering::Relaxed))
        {
            server.status.rss.store(usage.rss, Ordering::Relaxed);
            server.status.pss.store(usage.pss, Ordering::Relaxed);
            server.status.uss.store(usage.uss, Ordering::Relaxed);
        }
    }
}

fn backoff((initial, max): (Duration, Duration), failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    initial
        .saturating_mul(1u32 << (failures - 2).min(20))
        .min(max)
}
