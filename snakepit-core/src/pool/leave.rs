//! How a worker leaves the pool: out of routing first (its sessions marked lost, its
//! queued jobs handed to others), then reported (`worker.crashed`, `worker.recycled`,
//! `worker.stopped`) and its process stopped — in the background for a recycle, so
//! the replacement is not held up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::exit::{Control, Exit};
use super::job::Job;
use super::report::ms;
use super::shared::PoolShared;
use crate::events::{data, CrashCause, EventKind};
use crate::worker::Worker;

const MIB: f64 = 1024.0 * 1024.0;

/// What keeps a worker routable: its private queue, its driver's control channel and
/// its monitor. Dropped by [`unregister`].
pub(crate) struct Registration {
    pub private_tx: mpsc::UnboundedSender<Job>,
    pub private_rx: mpsc::UnboundedReceiver<Job>,
    pub control_rx: watch::Receiver<Control>,
    pub monitor_cancel: CancellationToken,
}

/// Why the sessions a worker held lost their state when it ended (None: shutdown).
pub(crate) fn lost_reason(worker: &Worker, exit: &Exit) -> Option<String> {
    match exit {
        Exit::Shutdown => None,
        Exit::Crashed { exit } => Some(format!("its worker {} crashed ({exit})", worker.id)),
        Exit::Recycle { reason } => {
            Some(format!("its worker {} was recycled ({reason})", worker.id))
        }
        Exit::Broken { message } => Some(format!(
            "its worker {} was replaced (transport broken: {message})",
            worker.id
        )),
    }
}

/// Take the worker out of routing. Its sessions lose their state first (so nothing
/// routed in between re-creates them silently); jobs routed or handed to it but not
/// run go to any other worker, where a lost session's jobs fail with `SessionLost`.
pub(crate) fn unregister(
    shared: &PoolShared,
    worker_id: &Arc<str>,
    mut reg: Registration,
    sessions_lost: Option<String>,
) {
    reg.monitor_cancel.cancel();
    if let Some(reason) = sessions_lost {
        for ended in shared.sessions.worker_lost(worker_id, &reason) {
            super::sessions::emit_session_lost(shared, &ended, &reason);
        }
    }
    shared.workers_mut().remove(worker_id);
    shared.dispatch.leave_idle(worker_id);
    reg.private_rx.close();
    while let Ok(job) = reg.private_rx.try_recv() {
        shared.dispatch.submit(job);
    }
}

/// Report how the worker ended and stop its process (in the background for recycles).
/// `restart_delay` is the crash-loop backoff its slot waits before the next start.
pub(crate) async fn conclude(
    shared: &Arc<PoolShared>,
    worker: Worker,
    exit: Exit,
    restart_delay: Duration,
) {
    match exit {
        Exit::Shutdown => {
            let grace = if shared.abort.is_cancelled() {
                Duration::ZERO
            } else {
                Duration::from_millis(shared.config.stop_grace_ms)
            };
            let status = worker.process.stop(grace).await;
            tracing::info!(worker_id = %worker.id, exit = ?status, "worker stopped");
            emit_stopped(shared, &worker, "shutdown");
        }
        Exit::Crashed { exit } => {
            shared.crashes_total.fetch_add(1, Ordering::Relaxed);
            shared.window.record_crash();
            let tail = worker.process.stderr_tail().await;
            tracing::error!(pool = %shared.name, worker_id = %worker.id, %exit, stderr_tail = %tail,
                restart_delay_ms = restart_delay.as_millis() as u64,
                "worker crashed");
            shared.events.emit_with(EventKind::WorkerCrashed, None, || {
                data::WorkerCrashed {
                    uptime_ms: ms(worker.uptime()),
                    requests_handled: worker.requests(),
                    worker_id: worker.id.to_string(),
                    pool_name: shared.name.to_string(),
                    error: format!("worker process exited unexpectedly ({exit})"),
                    exit_status: exit.to_string(),
                    cause: CrashCause::of_exit(&exit),
                    stderr_tail: tail.clone(),
                    pid: worker.process.pid(),
                    restart_delay_ms: ms(restart_delay),
                }
                .into()
            });
            worker.process.kill(); // anything the worker spawned goes with it
        }
        Exit::Recycle { reason } => {
            tracing::info!(pool = %shared.name, worker_id = %worker.id, reason,
                memory_mb = worker.status.held_memory(shared.config.start_method).1 as f64 / MIB,
                "recycling worker");
            emit_recycled(shared, &worker, reason);
            retire(shared, worker, reason == "request_timeout");
        }
        Exit::Broken { message } => {
            tracing::error!(pool = %shared.name, worker_id = %worker.id, %message,
                "worker transport broke while the process lives; replacing it");
            emit_recycled(shared, &worker, "transport_broken");
            retire(shared, worker, true);
        }
    }
}

/// Stop a replaced worker without holding up its replacement.
fn retire(shared: &Arc<PoolShared>, worker: Worker, kill_now: bool) {
    let grace = Duration::from_millis(shared.config.stop_grace_ms);
    shared.tasks.spawn(async move {
        if kill_now {
            worker.process.kill();
            let _ = worker.process.wait_exit(Duration::from_secs(5)).await;
        } else {
            let _ = worker.process.stop(grace).await;
        }
        drop(worker);
    });
}

/// Count a recycle and emit `worker.recycled` with the worker's last measured RSS.
fn emit_recycled(shared: &PoolShared, worker: &Worker, reason: &str) {
    shared.recycles_total.fetch_add(1, Ordering::Relaxed);
    shared
        .events
        .emit_with(EventKind::WorkerRecycled, None, || {
            data::WorkerRecycled {
                uptime_ms: ms(worker.uptime()),
                requests_handled: worker.requests(),
                worker_id: worker.id.to_string(),
                pool_name: shared.name.to_string(),
                reason: reason.to_string(),
                memory_mb: worker.status.held_memory(shared.config.start_method).1 as f64 / MIB,
                pid: worker.process.pid(),
            }
            .into()
        });
}

fn emit_stopped(shared: &PoolShared, worker: &Worker, reason: &str) {
    shared.events.emit_with(EventKind::WorkerStopped, None, || {
        data::WorkerStopped {
            uptime_ms: ms(worker.uptime()),
            requests_handled: worker.requests(),
            worker_id: worker.id.to_string(),
            pool_name: shared.name.to_string(),
            reason: reason.to_string(),
            pid: worker.process.pid(),
        }
        .into()
    });
}
