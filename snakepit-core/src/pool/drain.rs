//! A planned recycle of a worker that holds sessions: the worker keeps serving the
//! sessions it holds — and nothing else — until they are closed or expire, or until
//! `sessions.recycle_grace_secs` passes; only then is it recycled. Its slot has already
//! started the replacement, so new sessions and all other requests go there meanwhile.
//!
//! Recycles that are not planned (a timeout, failed health checks, a broken transport)
//! and crashes never wait: the state is already unreliable or gone, and the sessions
//! are reported lost (see `session.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::driver::{self, DrainEnd};
use super::exit::{is_planned, Exit};
use super::leave::{conclude, lost_reason, unregister, Registration};
use super::shared::PoolShared;
use crate::stats::WorkerState;
use crate::worker::Worker;

/// Whether the recycle of `worker` for `reason` waits for its sessions; if so the
/// worker counts as draining from now. At most `size` workers of a pool drain at once:
/// beyond that the recycle happens now (the sessions are lost, saying why), so
/// processes cannot pile up.
pub(crate) fn begin_drain(shared: &PoolShared, worker: &Worker, reason: &str) -> bool {
    if !is_planned(reason)
        || shared.config.sessions.recycle_grace_secs == 0
        || shared.stop.is_cancelled()
        || shared.sessions.held_by(&worker.id) == 0
    {
        return false;
    }
    let draining = shared.draining.fetch_add(1, Ordering::Relaxed);
    if draining >= shared.config.size {
        shared.draining.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(pool = %shared.name, worker_id = %worker.id, reason,
            "recycling now although the worker holds sessions: {} workers are already draining",
            shared.config.size);
        return false;
    }
    true
}

/// Serve the worker's sessions until they end or the grace passes, then recycle it.
/// `begin_drain` counted it among the draining workers already.
pub(crate) async fn run(
    shared: Arc<PoolShared>,
    worker: Worker,
    mut reg: Registration,
    reason: &'static str,
) {
    let grace = Duration::from_secs(shared.config.sessions.recycle_grace_secs);
    let held = shared.sessions.held_by(&worker.id);
    tracing::info!(pool = %shared.name, worker_id = %worker.id, reason, sessions = held,
        grace_secs = grace.as_secs(),
        "recycle deferred: the worker serves its sessions until they end (a replacement serves the rest)");
    worker.status.set_state(WorkerState::Draining);
    let until = tokio::time::Instant::now() + grace;
    let end = tokio::select! {
        end = driver::serve_sessions(&shared, &worker, &mut reg, until) => end,
        // The pool is being torn down: abandon a running request, as slots do.
        _ = shared.abort.cancelled() => DrainEnd::Exit(Exit::Shutdown),
    };
    shared.draining.fetch_sub(1, Ordering::Relaxed);
    worker.status.set_state(WorkerState::Stopping);
    let (exit, lost) = match end {
        DrainEnd::Drained => (Exit::Recycle { reason }, None),
        DrainEnd::GraceOver => (
            Exit::Recycle { reason },
            Some(format!(
                "its worker {} was recycled ({reason}) after waiting {} s (sessions.recycle_grace_secs) for its sessions to end",
                worker.id,
                grace.as_secs()
            )),
        ),
        DrainEnd::Exit(exit) => {
            let lost = lost_reason(&worker, &exit);
            (exit, lost)
        }
    };
    if let Some(reason) = &lost {
        tracing::warn!(pool = %shared.name, worker_id = %worker.id, %reason,
            "worker leaves while holding sessions; they lose their state");
    }
    unregister(&shared, &worker.id, reg, lost);
    // Its slot runs a replacement already: nothing to delay.
    conclude(&shared, worker, exit, Duration::ZERO).await;
}
