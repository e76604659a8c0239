//! The request loop of one worker: take the next job (its own session jobs first,
//! then the shared queue), run it, repeat, until something ends the worker.
//!
//! The driver is the only code that sends requests to its worker, in order: the
//! running one and at most one written behind it (`ahead.rs`), which runs next
//! whatever else changed meanwhile. It never answers health checks or stats (the monitor and `stats()` read counters), so
//! a slow request can never stall them.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::ahead::{self, AheadSlot, Pipeline};
use super::execute;
use super::exit::{is_planned, Control, Exit};
use super::job::Job;
use super::leave::Registration;
use super::shared::PoolShared;
use crate::error::ExitInfo;
use crate::worker::Worker;

pub(crate) async fn run(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    private: (
        &mpsc::UnboundedSender<Job>,
        &mut mpsc::UnboundedReceiver<Job>,
    ),
    control: &mut watch::Receiver<Control>,
) -> Exit {
    let (private_tx, private_rx) = private;
    let lifetime_end = shared
        .config
        .max_lifetime()
        .map(|d| tokio::time::Instant::from_std(worker.process.started_at + d));
    let mut exited = worker.process.exit_watch();
    let pipelining = shared.config.pipeline;
    let mut slot = AheadSlot::default();
    loop {
        // A job written behind the last call is in the worker's pipe: it runs next.
        let (job, sent) = match slot.take_to_run(shared) {
            Some(held) => (held.job, Some(held.call_id)),
            None => {
                if let Some(reason) = control.borrow_and_update().recycle_reason() {
                    return Exit::Recycle { reason };
                }
                let private = (private_tx, &mut *private_rx);
                match next_job(shared, worker, private, control, lifetime_end, &mut exited).await {
                    Next::Job(job) => (job, None),
                    Next::Exit(exit) => return exit,
                    Next::Recheck => continue,
                }
            }
        };
        // Nothing is written behind this call while a recycle is pending or this
        // worker's own jobs (sessions, handoffs) wait: those come next.
        let pipeline = Pipeline {
            enabled: pipelining && *control.borrow() == Control::Run && private_rx.is_empty(),
            sent,
            slot: &mut slot,
        };
        // The caller may have timed out in the queue, or gone away entirely (a job
        // written ahead was taken already and runs regardless: its frame is sent).
        let exit = match sent {
            Some(_) => execute::run_job(shared, worker, job, pipeline, control).await,
            None => run_taken(shared, worker, job, pipeline, control).await,
        };
        let exit = match (exit, slot.broken()) {
            (Some(exit), _) => Some(exit),
            (None, Some(message)) => Some(Exit::Broken { message }),
            (None, None) => None,
        };
        let max = shared.config.max_requests;
        let exit = match exit {
            None if max > 0 && worker.requests() >= max => Some(Exit::Recycle {
                reason: "max_requests",
            }),
            other => other,
        };
        if let Some(exit) = exit {
            ahead::settle(shared, worker, &mut slot, &exit).await;
            return exit;
        }
    }
}

/// What an idle worker got.
enum Next {
    Job(Job),
    Exit(Exit),
    Recheck,
}

/// The next job for an idle worker: its own (sessions, handoffs) first, then the
/// shared queue, else wait for one or for something that ends the worker.
async fn next_job(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    private: (
        &mpsc::UnboundedSender<Job>,
        &mut mpsc::UnboundedReceiver<Job>,
    ),
    control: &mut watch::Receiver<Control>,
    lifetime_end: Option<tokio::time::Instant>,
    exited: &mut watch::Receiver<Option<ExitInfo>>,
) -> Next {
    let (private_tx, private_rx) = private;
    // Jobs for this worker first (its sessions, handoffs), then the shared queue.
    let queued = match private_rx.try_recv() {
        Ok(job) => Some(job),
        Err(_) => shared.dispatch.next_or_idle(&worker.id, private_tx),
    };
    if let Some(job) = queued {
        return Next::Job(job);
    }
    let wake = tokio::select! {
        biased;
        _ = shared.stop.cancelled() => Next::Exit(Exit::Shutdown),
        _ = exited.wait_for(Option::is_some) => Next::Exit(crashed(worker)),
        _ = changed(control) => Next::Recheck,
        _ = sleep_until(lifetime_end) => Next::Exit(Exit::Recycle { reason: "max_lifetime" }),
        Some(job) = private_rx.recv() => Next::Job(job),
    };
    shared.dispatch.leave_idle(&worker.id);
    wake
}

/// How a draining worker's session-only service ended.
pub(crate) enum DrainEnd {
    /// It holds no session any more.
    Drained,
    /// `sessions.recycle_grace_secs` passed with sessions still open.
    GraceOver,
    /// Something else ended the worker meanwhile.
    Exit(Exit),
}

/// After a planned recycle: run only the jobs of the sessions this worker holds (its
/// private queue; it takes nothing from the shared queue) until it holds none, the
/// grace passes `until`, or the worker ends otherwise (crash, failed health checks,
/// a timeout, shutdown).
pub(crate) async fn serve_sessions(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    reg: &mut Registration,
    until: tokio::time::Instant,
) -> DrainEnd {
    let mut exited = worker.process.exit_watch();
    // Only its sessions' jobs: nothing is written ahead here.
    let mut slot = AheadSlot::default();
    loop {
        if shared.stop.is_cancelled() {
            return DrainEnd::Exit(Exit::Shutdown);
        }
        // Listen before looking, so a session that ends in between still wakes us.
        let session_ended = shared.sessions.changed();
        tokio::pin!(session_ended);
        session_ended.as_mut().enable();
        if let Some(reason) = reg.control_rx.borrow_and_update().recycle_reason() {
            if !is_planned(reason) {
                return DrainEnd::Exit(Exit::Recycle { reason });
            }
        }
        if shared.sessions.held_by(&worker.id) == 0 {
            // Requests already routed here (a session closed meanwhile) still run.
            match reg.private_rx.try_recv() {
                Ok(job) => match run_taken(
                    shared,
                    worker,
                    job,
                    Pipeline::off(&mut slot),
                    &reg.control_rx,
                )
                .await
                {
                    Some(exit) => return DrainEnd::Exit(exit),
                    None => continue,
                },
                Err(_) => return DrainEnd::Drained,
            }
        }
        let job = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return DrainEnd::Exit(Exit::Shutdown),
            _ = exited.wait_for(Option::is_some) => return DrainEnd::Exit(crashed(worker)),
            _ = tokio::time::sleep_until(until) => return DrainEnd::GraceOver,
            _ = changed(&mut reg.control_rx) => continue,
            _ = &mut session_ended => continue,
            Some(job) = reg.private_rx.recv() => job,
        };
        if let Some(exit) = run_taken(
            shared,
            worker,
            job,
            Pipeline::off(&mut slot),
            &reg.control_rx,
        )
        .await
        {
            return DrainEnd::Exit(exit);
        }
    }
}

/// Run `job` unless its caller gave up; `Some(exit)` when the worker must go.
async fn run_taken(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: Job,
    pipeline: Pipeline<'_>,
    control: &watch::Receiver<Control>,
) -> Option<Exit> {
    if !job.claim() {
        return None;
    }
    execute::run_job(shared, worker, job, pipeline, control).await
}

fn crashed(worker: &Worker) -> Exit {
    Exit::Crashed {
        exit: worker.process.exit_status().unwrap_or(ExitInfo {
            code: None,
            signal: None,
        }),
    }
}

async fn changed(control: &mut watch::Receiver<Control>) {
    if control.changed().await.is_err() {
        // The monitor is gone; nothing more will come from it.
        std::future::pending::<()>().await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
