//! One worker slot: start a worker, run it until it ends, report why, start the next.
//!
//! A pool of size N runs N slots concurrently (so workers start concurrently).
//! Restarts follow supervisor `startsecs` semantics: only a crash loop backs off — a
//! worker that failed to start, or died before answering any request and within
//! `restart_backoff_reset_secs` of becoming ready. A worker that was serving is
//! replaced at once and resets the backoff, so a storm of external kills never leaves
//! the pool empty. Recycles restart at once, with the old process stopped gracefully in
//! the background; a planned recycle of a worker holding sessions lets it finish them
//! first (`drain.rs`) while its replacement serves everything else.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::driver;
use super::exit::{Control, Exit};
use super::leave::{conclude, lost_reason, unregister, Registration};
use super::monitor;
use super::report::ms;
use super::shared::{PoolShared, WorkerEntry};
use crate::error::StartError;
use crate::events::{data, CrashCause, EventKind};
use crate::stats::WorkerState;
use crate::worker::Worker;

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
                consecutive_failures += 1;
                let delay = backoff_delay(&shared.config, consecutive_failures);
                report_start_failure(&shared, &id, &err, delay);
                if let Some(tx) = first_start.take() {
                    let _ = tx.send(Err(err));
                }
                pause(&shared, delay).await;
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

        let (exit, registration) = serve(&shared, &worker, first_start.take()).await;
        // Supervisor `startsecs` semantics: answered a request, or stayed up long enough.
        let serving = worker.completed() > 0
            || worker.ready_at.elapsed()
                >= Duration::from_secs(shared.config.restart_backoff_reset_secs);
        if let Exit::Recycle { reason } = exit {
            if super::drain::begin_drain(&shared, &worker, reason) {
                consecutive_failures = 0;
                shared.tasks.spawn(super::drain::run(
                    shared.clone(),
                    worker,
                    registration,
                    reason,
                ));
                continue;
            }
        }
        worker.status.set_state(WorkerState::Stopping);
        unregister(
            &shared,
            &worker.id,
            registration,
            lost_reason(&worker, &exit),
        );
        let crash_loop_step = match &exit {
            Exit::Shutdown => {
                conclude(&shared, worker, exit, Duration::ZERO).await;
                return;
            }
            Exit::Crashed { .. } | Exit::Broken { .. } => !serving,
            Exit::Recycle { .. } => false,
        };
        let delay = if crash_loop_step {
            consecutive_failures += 1;
            backoff_delay(&shared.config, consecutive_failures)
        } else {
            if serving {
                consecutive_failures = 0;
            }
            Duration::ZERO
        };
        conclude(&shared, worker, exit, delay).await;
        pause(&shared, delay).await;
    }
}

/// Register the worker, run its driver and monitor; returns why it ended, with the
/// worker still registered.
async fn serve(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    first_start: Option<oneshot::Sender<Result<(), StartError>>>,
) -> (Exit, Registration) {
    let (private_tx, private_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = watch::channel(Control::Run);
    let monitor_cancel = shared.stop.child_token();
    shared.tasks.spawn(monitor::run(
        shared.clone(),
        worker.status.clone(),
        worker.transport.clone(),
        worker.stacks.clone(),
        control_tx,
        monitor_cancel.clone(),
    ));
    shared.workers_mut().insert(
        worker.id.clone(),
        WorkerEntry {
            private_tx: private_tx.clone(),
            status: worker.status.clone(),
            transport: worker.transport.clone(),
            stacks: worker.stacks.clone(),
        },
    );
    // Only now is the worker routable: tell `Pool::start` it is ready.
    if let Some(tx) = first_start {
        let _ = tx.send(Ok(()));
    }
    let mut reg = Registration {
        private_tx,
        private_rx,
        control_rx,
        monitor_cancel,
    };
    let exit = tokio::select! {
        exit = driver::run(shared, worker, (&reg.private_tx, &mut reg.private_rx), &mut reg.control_rx) => exit,
        // Dropping the driver drops a running request's reply: its caller gets ShuttingDown.
        _ = shared.abort.cancelled() => Exit::Shutdown,
    };
    (exit, reg)
}

/// A start that failed counts as a crash: it is what a crash-rate alert must see.
fn report_start_failure(shared: &PoolShared, id: &str, err: &StartError, delay: Duration) {
    shared.crashes_total.fetch_add(1, Ordering::Relaxed);
    shared.window.record_crash();
    let (exit_status, stderr_tail) = match err {
        StartError::ExitedDuringStartup {
            exit, stderr_tail, ..
        } => (exit.to_string(), stderr_tail.clone()),
        StartError::StartupTimeout { stderr_tail, .. } => {
            ("killed after startup timeout".into(), stderr_tail.clone())
        }
        StartError::ForkServer { stderr_tail, .. } => (String::new(), stderr_tail.clone()),
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
            cause: CrashCause::StartupFailed,
            stderr_tail,
            pid: 0,
            restart_delay_ms: ms(delay),
        }
        .into()
    });
}

/// Learn the adapter's commands once, so unknown commands fail without a worker call,
/// with what they take and return (the catalog).
async fn learn_commands(shared: &PoolShared, worker: &Worker) {
    if shared.commands().is_some() {
        return;
    }
    match worker.transport.describe(Duration::from_secs(5)).await {
        Ok(desc) => {
            let specs = crate::catalog::from_describe(&shared.name, desc.commands);
            let names = specs.iter().map(|c| c.name.clone()).collect();
            let _ = shared.specs.set(specs);
            let _ = shared.commands.set(names);
        }
        Err(e) => {
            tracing::warn!(worker_id = %worker.id, error = %e, "describe failed; unknown commands will be reported by the worker")
        }
    }
}

/// The wait before the next start after `failures` consecutive crash-loop steps.
fn backoff_delay(cfg: &crate::config::PoolConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let delay = cfg
        .restart_backoff_initial_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.restart_backoff_max_ms);
    Duration::from_millis(delay)
}

async fn pause(shared: &PoolShared, delay: Duration) {
    if delay.is_zero() {
        return;
    }
    tokio::select! {
        _ = shared.stop.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
