//! Pipelining: while a worker runs a unary call, the oldest queued job is written
//! behind it, so the worker starts that job the moment it replies instead of idling
//! while its reply travels back and the next request travels in (two wake-ups per
//! call on a busy pool). `multiprocessing.Pool` keeps the next task in the worker's
//! pipe the same way; unlike it, a job held ahead never waits behind a slow call while
//! a worker could run it:
//!
//! - when a worker goes idle with nothing queued (`Dispatcher::hungry`), the holder
//!   takes its job back (a `Revoke` answered by the worker's control thread, which
//!   says whether the job had started) and the idle worker gets it;
//! - when the running call outlasts `AHEAD_PATIENCE`, the job goes back to the head of
//!   the queue anyway, so on a loaded pool (no worker ever idle) it is the next job any
//!   worker takes, not one stuck behind a long call while newer jobs are served;
//! - when the worker must go (timeout, crash, broken pipe), a job that never started
//!   goes back to the head of the queue; one whose fate is unknown fails, saying so.
//!
//! Only jobs that fit: unary, no session (a session's job belongs on its holder), and
//! a frame of at most `PIPE_BUF` bytes, which the pipe takes whole or not at all
//! without waiting (`Pipelined::try_send_ahead`). A large job written ahead could
//! block the driver while the worker blocks writing a large reply: a deadlock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dispatch::ReservedIdle;
use super::exit::Exit;
use super::job::{Job, Reply};
use super::report::release_unrun;
use super::shared::PoolShared;
use crate::error::Error;
use crate::proto;
use crate::transport::{by_deadline, CallMeta, Pipelined, TransportError};
use crate::worker::Worker;

/// The largest job considered for writing ahead, a little under `PIPE_BUF` (4096
/// bytes on Linux) to leave room for the frame's own fields; the exact check is the
/// transport's.
const AHEAD_MAX_BYTES: usize = 3584;

/// How long a take-back may wait for the worker's answer: as long as a health check
/// (its control thread answers both; one that cannot is unhealthy anyway).
fn revoke_timeout(shared: &PoolShared) -> Duration {
    Duration::from_millis(shared.config.health_check_timeout_ms)
}

/// How long a job may sit behind the running call before it goes back to the head of
/// the queue. Pipelining saves ≈ 50 µs per call: worth it for short calls, nothing for
/// long ones, and a take-back costs one control round trip (≈ 0.1 ms), ≤ 1 % of a
/// call that lasted this long.
const AHEAD_PATIENCE: Duration = Duration::from_millis(10);

/// A job written to the worker behind the running call.
pub(crate) struct Ahead {
    pub job: Job,
    pub call_id: u64,
    held_since: Instant,
}

/// A driver's job held ahead, if any.
#[derive(Default)]
pub(crate) struct AheadSlot {
    held: Option<Ahead>,
    /// The worker claimed the held job (it runs next): no take-back any more.
    started: bool,
    /// A take-back went unanswered: the held job's fate is unknown and the worker
    /// must go once its running call ends.
    broken: Option<String>,
}

/// How a unary call may pipeline.
pub(crate) struct Pipeline<'a> {
    /// Write the next queued job behind this call (config, and not draining).
    pub enabled: bool,
    /// This job was written ahead already, as this call id.
    pub sent: Option<u64>,
    pub slot: &'a mut AheadSlot,
}

impl<'a> Pipeline<'a> {
    pub fn off(slot: &'a mut AheadSlot) -> Self {
        Pipeline {
            enabled: false,
            sent: None,
            slot,
        }
    }
}

impl AheadSlot {
    /// The held job, to run now as the worker's next call.
    pub fn take_to_run(&mut self, shared: &PoolShared) -> Option<Ahead> {
        let held = self.held.take()?;
        if !std::mem::take(&mut self.started) {
            shared.dispatch.release_ahead();
        }
        Some(held)
    }

    /// Why the worker must go, if a take-back went unanswered.
    pub fn broken(&mut self) -> Option<String> {
        self.broken.take()
    }
}

fn fits(job: &Job) -> bool {
    let size = job.args.len()
        + job.command.len()
        + job.request_id.len()
        + job.correlation_id.as_ref().map_or(0, String::len)
        + job
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    matches!(job.reply, Reply::Unary(_)) && job.session_id.is_none() && size <= AHEAD_MAX_BYTES
}

/// Room for one more request before `max_requests`, `done` requests in (the running
/// one not counted yet).
fn room_for_one_more(shared: &PoolShared, done: u64) -> bool {
    let max = shared.config.max_requests;
    max == 0 || done + 2 <= max
}

/// A unary call over a pipelining transport on a worker that has served `done`
/// requests: write it (unless it was written ahead), write the next queued job behind
/// it, and read its reply by `timeout`, handing the job behind it on if a worker goes
/// idle or the call outlasts `AHEAD_PATIENCE`.
pub(crate) async fn call(
    shared: &Arc<PoolShared>,
    done: u64,
    pipe: &dyn Pipelined,
    request: proto::ExecuteRequest,
    meta: CallMeta<'_>,
    timeout: Option<Duration>,
    pipeline: Pipeline<'_>,
) -> Result<proto::ExecuteResponse, TransportError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let call_id = match pipeline.sent {
        Some(id) => id,
        None => by_deadline(deadline, pipe.send(request, meta)).await?,
    };
    let slot = pipeline.slot;
    if pipeline.enabled && slot.held.is_none() && room_for_one_more(shared, done) {
        slot.held = send_next(shared, pipe).await;
    }
    let reply = by_deadline(deadline, pipe.receive(call_id));
    tokio::pin!(reply);
    // With one worker the held job has nowhere better to go: no patience take-back.
    let patient = shared.config.size > 1;
    loop {
        let patience_ends = match &slot.held {
            Some(held) if !slot.started => held.held_since + AHEAD_PATIENCE,
            _ => return reply.await,
        };
        // Listen before looking, so a worker that goes idle in between still wakes us.
        let hungry = shared.dispatch.hungry();
        tokio::pin!(hungry);
        hungry.as_mut().enable();
        let idle = match shared.dispatch.reserve_idle() {
            Some(idle) => Some(idle),
            None => tokio::select! {
                biased;
                r = &mut reply => return r,
                _ = &mut hungry => match shared.dispatch.reserve_idle() {
                    Some(idle) => Some(idle),
                    None => continue, // another holder serves it
                },
                _ = tokio::time::sleep_until(patience_ends), if patient => None,
            },
        };
        take_back(shared, pipe, slot, idle, deadline).await?;
    }
}

/// Take the oldest queued job if it fits and write it behind the running call.
async fn send_next(shared: &PoolShared, pipe: &dyn Pipelined) -> Option<Ahead> {
    loop {
        let job = shared.dispatch.take_ahead(fits)?;
        if !job.claim() {
            // Its caller gave up waiting, or went away: as a driver taking it would.
            shared.dispatch.release_ahead();
            continue;
        }
        let meta = job.meta(shared.request_timeout(&job));
        let sent = pipe.try_send_ahead(job.request(), meta).await;
        return match sent {
            Ok(Some(call_id)) => {
                shared.pipelined_total.fetch_add(1, Ordering::Relaxed);
                Some(Ahead {
                    job,
                    call_id,
                    held_since: Instant::now(),
                })
            }
            // The pipe is full or the frame too big, or the pipe broke (the running
            // call will report that): the job was not written; it stays first in line.
            Ok(None) | Err(_) => {
                tracing::trace!(request_id = %job.request_id, "job not written ahead");
                shared.dispatch.release_ahead();
                if let Some(job) = release_unrun(shared, job) {
                    shared.dispatch.give_back(job);
                }
                None
            }
        };
    }
}

/// Take the held job back from the worker and hand it on (to `idle`, reserved for it,
/// else the head of the queue), unless it started. The answer is awaited up to the
/// running call's `deadline` (it comes from the worker's control thread, which needs
/// the GIL like the running call): `Err(TimedOut)` means that call's deadline passed.
async fn take_back(
    shared: &PoolShared,
    pipe: &dyn Pipelined,
    slot: &mut AheadSlot,
    idle: Option<ReservedIdle>,
    deadline: Option<Instant>,
) -> Result<(), TransportError> {
    let mut outcome = Ok(());
    let taken_back = match slot.held.take() {
        None => None,
        Some(held) => {
            let wait =
                deadline.map_or(NO_DEADLINE, |d| d.saturating_duration_since(Instant::now()));
            match pipe.revoke(held.call_id, wait).await {
                Ok(true) => {
                    shared.dispatch.release_ahead();
                    Some(held.job)
                }
                // Still held, fate unknown: the running call timed out, and `settle`
                // asks again before the worker goes.
                Err(TransportError::TimedOut) => {
                    slot.held = Some(held);
                    outcome = Err(TransportError::TimedOut);
                    None
                }
                // Started (it runs next here), or the control pipe failed (the worker
                // goes once the running call ends).
                answer => {
                    shared.dispatch.release_ahead();
                    slot.held = Some(held);
                    slot.started = true;
                    if let Err(e) = answer {
                        slot.broken = Some(format!(
                            "the worker's control pipe failed during a take-back of a request written behind the running one ({e})"
                        ));
                    }
                    None
                }
            }
        }
    };
    hand_on(shared, taken_back, idle);
    outcome
}

/// A take-back without a running call's deadline waits this long at most (the
/// control reader fails it at once if the worker's pipe closes).
const NO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A job taken back unrun goes to `idle` (reserved for it), else the head of the
/// queue; an unused reservation is returned.
fn hand_on(shared: &PoolShared, job: Option<Job>, idle: Option<ReservedIdle>) {
    let job = job.and_then(|job| release_unrun(shared, job));
    if job.is_some() {
        shared.taken_back_total.fetch_add(1, Ordering::Relaxed);
    }
    match (job, idle) {
        (Some(job), Some(idle)) => shared.dispatch.hand_to(idle, job),
        (Some(job), None) => shared.dispatch.give_back(job),
        (None, Some(idle)) => shared.dispatch.unreserve(idle),
        (None, None) => {}
    }
}

/// The worker goes (`exit`) with a job held ahead: requeue it if it surely never
/// started, else fail it saying what happened.
pub(crate) async fn settle(
    shared: &PoolShared,
    worker: &Worker,
    slot: &mut AheadSlot,
    exit: &Exit,
) {
    let started = slot.started;
    let broken = slot.broken.take();
    let Some(held) = slot.take_to_run(shared) else {
        return;
    };
    let never_started = match exit {
        // The call before it died unanswered, and the worker starts a call only after
        // writing the previous reply (which would have been read): it never started,
        // whatever a take-back that raced the death said.
        Exit::Crashed { .. } => true,
        _ if started || broken.is_some() => false,
        _ => match worker.transport.pipelined() {
            Some(pipe) => matches!(
                pipe.revoke(held.call_id, revoke_timeout(shared)).await,
                Ok(true)
            ),
            None => false,
        },
    };
    if never_started {
        hand_on(shared, Some(held.job), None);
        return;
    }
    let why = match exit {
        Exit::Recycle { reason } => format!("replaced ({reason})"),
        Exit::Crashed { exit } => format!("lost ({exit})"),
        Exit::Broken { message } => format!("replaced ({message})"),
        Exit::Shutdown => "stopped".to_string(),
    };
    held.job.fail(Error::Transport {
        worker_id: worker.id.to_string(),
        message: format!(
            "this request was written to the worker behind another call and the worker was {why} \
             before its result came back; it may have run. Retry if the command is idempotent"
        ),
    });
}

#[cfg(test)]
#[path = "ahead_tests.rs"]
mod tests;
