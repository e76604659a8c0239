//! One worker slot: start a worker, run it until it ends, report why, start the next.
//!
//! A pool of size N runs N slots concurrently (so workers start concurrently). Crashes
//! and failed starts back off exponentially (reset once a worker has lived
//! `restart_backoff_reset_secs`); recycles restart at once, with the old process
//! stopped gracefully in the background.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::driver::{self, Control, Exit};
use super::execute::ms;
use super::monitor;
use super::shared::{PoolShared, WorkerEntry};
use crate::error::StartError;
use crate::events::{data, EventKind};
use crate::stats::WorkerState;
use crate::worker::Worker;

const MIB: f64 = 1024.0 * 1024.0;

/// Run slot `index` until the pool stops. `first_start` learns how the first start went.
pub(crate) async fn run(
    shared: Arc<PoolShared>,
    mut first_start: Option<oneshot::Sender<Result<(), StartError>>>,
) {
    let mut consecutive_failures: u32 = 0;
    while !shared.stop.is_cancelled() {
        let id = shared.next_worker_id();
        let started = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = Worker::start(id.clone(), &shared.config, &shared.launch) => r,
        };
        let worker = match started {
            Ok(w) => w,
            Err(err) => {
                tracing::error!(pool = %shared.name, worker_id = %id, error = %err, "worker failed to start");
                report_start_failure(&shared, &id, &err);
                if let Some(tx) = first_start.take() {
                    let _ = tx.send(Err(err));
                }
                consecutive_failures += 1;
                backoff(&shared, consecutive_failures).await;
                continue;
            }
        };
        learn_commands(&shared, &worker).await;
        shared.events.emit_with(EventKind::WorkerStarted, None, || {
            data::WorkerStarted {
                startup_time_ms: ms(worker.uptime()),
                worker_id: worker.id.to_string(),
                pool_name: shared.name.to_string(),
                adapter: shared.config.adapter.clone(),
                pid: worker.process.pid(),
            }
            .into()
        });
        tracing::info!(pool = %shared.name, worker_id = %worker.id, pid = worker.process.pid(),
            startup_ms = worker.uptime().as_millis() as u64, "worker ready");

        let exit = serve(&shared, &worker, first_start.take()).await;
        worker.status.set_state(WorkerState::Stopping);
        let lived_long =
            worker.uptime() >= Duration::from_secs(shared.config.restart_backoff_reset_secs);
        match exit {
            Exit::Shutdown => {
                let grace = if shared.abort.is_cancelled() {
                    Duration::ZERO
                } else {
                    Duration::from_millis(shared.config.stop_grace_ms)
                };
                let status = worker.process.stop(grace).await;
                tracing::info!(worker_id = %worker.id, exit = ?status, "worker stopped");
                emit_stopped(&shared, &worker, "shutdown");
                return;
            }
            Exit::Crashed { exit } => {
                shared.crashes_total.fetch_add(1, Ordering::Relaxed);
                shared.window.record_crash();
                let tail = worker.process.stderr_tail().await;
                tracing::error!(pool = %shared.name, worker_id = %worker.id, %exit, stderr_tail = %tail,
                    "worker crashed; restarting");
                shared.events.emit_with(EventKind::WorkerCrashed, None, || {
                    data::WorkerCrashed {
                        uptime_ms: ms(worker.uptime()),
                        requests_handled: worker.requests(),
                        worker_id: worker.id.to_string(),
                        pool_name: shared.name.to_string(),
                        error: format!("worker process exited unexpectedly ({exit})"),
                        exit_status: exit.to_string(),
                        stderr_tail: tail.clone(),
                        pid: worker.process.pid(),
                    }
                    .into()
                });
                worker.process.kill(); // anything the worker spawned goes with it
                consecutive_failures = if lived_long {
                    1
                } else {
                    consecutive_failures + 1
                };
                backoff(&shared, consecutive_failures).await;
            }
            Exit::Recycle { reason } => {
                tracing::info!(pool = %shared.name, worker_id = %worker.id, reason,
                    rss_mb = worker.status.rss_bytes.load(Ordering::Relaxed) as f64 / MIB,
                    "recycling worker");
                emit_recycled(&shared, &worker, reason);
                if lived_long {
                    consecutive_failures = 0;
                }
                retire(&shared, worker, reason == "request_timeout");
            }
            Exit::Broken { message } => {
                tracing::error!(pool = %shared.name, worker_id = %worker.id, %message,
                    "worker transport broke while the process lives; replacing it");
                emit_recycled(&shared, &worker, "transport_broken");
                retire(&shared, worker, true);
                consecutive_failures += 1;
                backoff(&shared, consecutive_failures).await;
            }
        }
    }
}

/// Register the worker, run its driver and monitor, unregister it; returns why it ended.
async fn serve(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    first_start: Option<oneshot::Sender<Result<(), StartError>>>,
) -> Exit {
    let (private_tx, mut private_rx) = mpsc::unbounded_channel();
    let (control_tx, mut control_rx) = watch::channel(Control::Run);
    let monitor_cancel = shared.stop.child_token();
    shared.tasks.spawn(monitor::run(
        shared.clone(),
        worker.status.clone(),
        worker.transport.clone(),
        control_tx,
        monitor_cancel.clone(),
    ));
    shared.workers_mut().insert(
        worker.id.clone(),
        WorkerEntry {
            private_tx: private_tx.clone(),
            status: worker.status.clone(),
            transport: worker.transport.clone(),
        },
    );
    // Only now is the worker routable: tell `Pool::start` it is ready.
    if let Some(tx) = first_start {
        let _ = tx.send(Ok(()));
    }
    let exit = tokio::select! {
        exit = driver::run(shared, worker, (&private_tx, &mut private_rx), &mut control_rx) => exit,
        // Dropping the driver drops a running request's reply: its caller gets ShuttingDown.
        _ = shared.abort.cancelled() => Exit::Shutdown,
    };
    monitor_cancel.cancel();
    shared.workers_mut().remove(&worker.id);
    shared.dispatch.leave_idle(&worker.id);
    // Jobs routed or handed here but not run go to any other worker.
    private_rx.close();
    while let Ok(job) = private_rx.try_recv() {
        let _ = shared.dispatch.submit(job);
    }
    exit
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
                memory_mb: worker.status.rss_bytes.load(Ordering::Relaxed) as f64 / MIB,
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

/// A start that failed counts as a crash: it is what a crash-rate alert must see.
fn report_start_failure(shared: &PoolShared, id: &str, err: &StartError) {
    shared.crashes_total.fetch_add(1, Ordering::Relaxed);
    shared.window.record_crash();
    let (exit_status, stderr_tail) = match err {
        StartError::ExitedDuringStartup {
            exit, stderr_tail, ..
        } => (exit.to_string(), stderr_tail.clone()),
        StartError::StartupTimeout { stderr_tail, .. } => {
            ("killed after startup timeout".into(), stderr_tail.clone())
        }
        _ => (String::new(), String::new()),
    };
    shared.events.emit_with(EventKind::WorkerCrashed, None, || {
        data::WorkerCrashed {
            uptime_ms: 0.0,
            requests_handled: 0,
            worker_id: id.to_string(),
            pool_name: shared.name.to_string(),
            error: format!("worker failed to start: {err}"),
            exit_status,
            stderr_tail,
            pid: 0,
        }
        .into()
    });
}

/// Learn the adapter's commands once, so unknown commands fail without a worker call.
async fn learn_commands(shared: &PoolShared, worker: &Worker) {
    if shared.commands().is_some() {
        return;
    }
    match worker.transport.describe(Duration::from_secs(5)).await {
        Ok(desc) => {
            let names = desc.commands.into_iter().map(|c| c.name).collect();
            let mut slot = match shared.commands.write() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            slot.get_or_insert_with(|| Arc::new(names));
        }
        Err(e) => {
            tracing::warn!(worker_id = %worker.id, error = %e, "describe failed; unknown commands will be reported by the worker")
        }
    }
}

async fn backoff(shared: &PoolShared, failures: u32) {
    let cfg = &shared.config;
    let exp = failures.saturating_sub(1).min(20);
    let delay = cfg
        .restart_backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.restart_backoff_max_ms);
    tokio::select! {
        _ = shared.stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
    }
}
