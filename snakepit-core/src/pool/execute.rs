//! Running one job on one worker: the call under its deadline (`deadline.rs`), what
//! came back as a typed result (failures: `failure.rs`), and the request events and
//! counters around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::ahead::{self, Pipeline};
use super::deadline::{cancel_grace, with_grace};
use super::exit::{Control, Exit};
use super::failure::{python_time, transport_failure, worker_error};
use super::job::{Job, Placement, Reply, StreamFinish, StreamReply};
use super::report::{finish, ms};
use super::sessions;
use super::shared::PoolShared;
use crate::error::Error;
use crate::events::{data, EventKind};
use crate::proto;
use crate::request::{Chunk, Response, Served, WorkerSpan};
use crate::session::Claim;
use crate::stats::WorkerState;
use crate::transport::{CallMeta, TransportError};
use crate::worker::Worker;

/// Run `job` on `worker`; `Some(exit)` when the worker must be replaced. A unary call
/// may write the next queued job behind itself (`pipeline`). A monitor's verdict that
/// the worker is unhealthy (`control`) ends the call at once.
pub(crate) async fn run_job(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: Job,
    pipeline: Pipeline<'_>,
    control: &watch::Receiver<Control>,
) -> Option<Exit> {
    // A draining worker (serving only its sessions) stays shown as draining.
    let draining = worker.status.state() == WorkerState::Draining;
    // The session first: it may belong on another worker, or have lost its state.
    let session = match &job.session_id {
        Some(id) => match sessions::claim_for(shared, worker, id, !draining) {
            Ok(Claim::Elsewhere(holder)) => {
                sessions::forward(shared, holder, job);
                return None;
            }
            claim => Some(claim),
        },
        None => None,
    };
    let queue_time = job.admitted_at.elapsed();
    if draining {
        shared.draining_busy.fetch_add(1, Ordering::Relaxed);
    } else {
        worker.status.set_state(WorkerState::Busy);
        shared.mark_busy();
    }
    shared.events.emit_with(
        EventKind::RequestStarted,
        job.correlation_id.as_deref(),
        || {
            data::RequestStarted {
                queue_time_ms: ms(queue_time),
                request_id: job.request_id.clone(),
                command: job.command.clone(),
                pool_name: shared.name.to_string(),
                worker_id: worker.id.to_string(),
                session_id: job.session_id.clone(),
                correlation_id: job.correlation_id.clone(),
            }
            .into()
        },
    );
    let started = Instant::now();
    if let Reply::Stream(s) = &job.reply {
        let _ = s.placement.set(Placement {
            worker_id: worker.id.clone(),
            queue_time,
            taken_at: started,
        });
    }
    let timeout = shared.request_timeout(&job);
    let session_recreated = match session {
        Some(Err(err)) => Err(err),
        Some(Ok(claim)) => Ok(sessions::prepare_on(shared, worker, &job, claim).await),
        None => Ok(None),
    };
    let (outcome, exit, session_recreated) = match session_recreated {
        Err(err) => (Err(err), None, None),
        Ok(recreated) => {
            let (outcome, exit) = tokio::select! {
                biased;
                done = call(shared, worker, &job, timeout, pipeline) => done,
                (failures, python_stack) = unhealthy(control.clone()) => (
                    Err(Error::WorkerUnhealthy {
                        command: job.command.clone(),
                        worker_id: worker.id.to_string(),
                        failures,
                        python_stack: python_stack.map(|s| s.to_string()),
                    }),
                    Some(Exit::Recycle { reason: "health_check_failed" }),
                ),
            };
            (outcome, exit, recreated)
        }
    };
    let duration = started.elapsed();
    worker.status.requests.fetch_add(1, Ordering::Relaxed);
    if exit.is_none() {
        worker.status.completed.fetch_add(1, Ordering::Relaxed);
    }
    if draining {
        shared.draining_busy.fetch_sub(1, Ordering::Relaxed);
    } else {
        worker.status.set_state(WorkerState::Idle);
        shared.mark_idle();
    }
    let status = match (&outcome, &job.reply) {
        (Err(_), _) => "error",
        (Ok(_), Reply::Stream(s)) if s.chunks.is_closed() => "cancelled",
        (Ok(_), _) => "success",
    };
    let is_stream = matches!(job.reply, Reply::Stream(_));
    finish(
        shared,
        worker,
        &job,
        queue_time,
        duration,
        outcome.as_ref().err(),
        timeout,
        status,
        is_stream,
    );
    let served = |worker_span, python_time| Served {
        request_id: job.request_id.clone(),
        worker_id: worker.id.to_string(),
        queue_time,
        duration,
        python_time,
        worker_span,
        session_recreated: session_recreated.clone(),
    };
    match job.reply {
        Reply::Unary(tx) => {
            let _ = tx.send(outcome.map(|done| Response {
                result: done.result,
                served: served(done.worker_span, done.python_time),
            }));
        }
        Reply::Stream(reply) => {
            // The chunk sender goes first, so the caller reads every chunk, then the end;
            // the end is a oneshot: delivering it never waits for the caller.
            let StreamReply { chunks, finish, .. } = reply;
            drop(chunks);
            let python_time = outcome.as_ref().ok().and_then(|done| done.python_time);
            let _ = finish.send(StreamFinish {
                served: Some(served(None, python_time)),
                error: outcome.err(),
            });
        }
    }
    exit
}

/// Resolves when the monitor finds the worker unhealthy: the failures in a row and
/// the stacks it took. (A call dropped here is dropped as a timed-out one is: the
/// worker is replaced, and a job written behind the call goes back to the queue.)
async fn unhealthy(mut control: watch::Receiver<Control>) -> (u32, Option<Arc<str>>) {
    loop {
        if let Control::Unhealthy {
            failures,
            python_stack,
        } = &*control.borrow_and_update()
        {
            return (*failures, python_stack.clone());
        }
        if control.changed().await.is_err() {
            // The monitor is gone; no verdict will come.
            std::future::pending::<()>().await;
        }
    }
}

/// What a call produced, or the failure.
type CallOutcome = Result<Produced, Error>;

/// A call that produced its result: the bytes and worker span of a unary call (empty
/// for a stream, whose chunks went to the caller), and Python's own time.
struct Produced {
    result: bytes::Bytes,
    worker_span: Option<WorkerSpan>,
    python_time: Option<Duration>,
}

/// The worker call itself, under the request deadline.
async fn call(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: &Job,
    timeout: Option<Duration>,
    pipeline: Pipeline<'_>,
) -> (CallOutcome, Option<Exit>) {
    let (request, meta) = (job.request(), job.meta(timeout));
    let tx = match &job.reply {
        Reply::Stream(s) => &s.chunks,
        Reply::Unary(_) => {
            return unary(shared, worker, job, request, meta, timeout, pipeline).await
        }
    };
    let (result, exit) = stream(shared, worker, job, request, meta, timeout, tx).await;
    let produced = |python_time| Produced {
        result: bytes::Bytes::new(),
        worker_span: None,
        python_time,
    };
    (result.map(produced), exit)
}

async fn unary(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: &Job,
    request: proto::ExecuteRequest,
    meta: CallMeta<'_>,
    timeout: Option<Duration>,
    pipeline: Pipeline<'_>,
) -> (CallOutcome, Option<Exit>) {
    let grace = cancel_grace(shared, job);
    let result = match worker.transport.pipelined() {
        Some(pipe) if pipeline.enabled || pipeline.sent.is_some() => {
            let done = worker.requests();
            let wait = timeout.map(|t| t + grace);
            ahead::call(shared, done, pipe, request, meta, wait, pipeline).await
        }
        _ => {
            with_grace(
                timeout,
                grace,
                || false,
                worker.transport.execute(request, meta),
            )
            .await
        }
    };
    match result {
        Ok(resp) => match resp.outcome {
            Some(proto::execute_response::Outcome::ResultJson(bytes)) => {
                let worker_span = resp
                    .span
                    .as_ref()
                    .and_then(|s| WorkerSpan::from_proto(s, &worker.id));
                let done = Produced {
                    result: bytes,
                    worker_span,
                    python_time: python_time(resp.python_nanos),
                };
                (Ok(done), None)
            }
            Some(proto::execute_response::Outcome::Error(e)) => {
                let mut err = worker_error(shared, worker, job, timeout, e, resp.python_nanos);
                if let (Error::Python(p), Some(span)) = (&mut err, &resp.span) {
                    p.worker_span = WorkerSpan::from_proto(span, &worker.id);
                }
                (Err(err), None)
            }
            None => (
                Err(Error::Transport {
                    worker_id: worker.id.to_string(),
                    message: "worker sent an empty response".into(),
                }),
                None,
            ),
        },
        Err(e) => {
            let (err, exit) = transport_failure(worker, &job.command, timeout, e).await;
            (Err(err), exit)
        }
    }
}

/// How a stream ended, short of a transport failure.
enum Ended {
    /// Its final chunk came: Python's time producing it, if reported.
    Done(Option<Duration>),
    /// The generator raised (after this long in Python, in nanoseconds).
    Failed(proto::WorkerError, u64),
    /// The caller dropped the stream.
    Left,
}

/// Forward chunks to the caller until the final one; the deadline covers the whole
/// stream, the caller's reading included. A caller that stops reading holds the worker
/// at most until the deadline: then the stream is cancelled (the worker stays, unlike
/// a deadline that passes while Python works).
async fn stream(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: &Job,
    request: proto::ExecuteRequest,
    meta: CallMeta<'_>,
    timeout: Option<Duration>,
    tx: &mpsc::Sender<Chunk>,
) -> (Result<Option<Duration>, Error>, Option<Exit>) {
    let waiting_on_caller = AtomicBool::new(false);
    let grace = cancel_grace(shared, job);
    let forward = async {
        let mut chunks = worker.transport.execute_stream(request, meta).await?;
        loop {
            let next = tokio::select! {
                biased;
                next = chunks.next() => next,
                // The caller dropped the stream while Python works on the next chunk:
                // stop now rather than at the next send.
                _ = tx.closed() => return Ok(Ended::Left),
            };
            match next {
                None => {
                    return Err(TransportError::Disconnected(
                        "stream ended without its final chunk".into(),
                    ))
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) if chunk.r#final => {
                    return Ok(match chunk.error {
                        Some(e) => Ended::Failed(e, chunk.python_nanos),
                        None => Ended::Done(python_time(chunk.python_nanos)),
                    })
                }
                Some(Ok(chunk)) => {
                    let chunk = Chunk {
                        data: chunk.data_json,
                    };
                    let sent = match tx.try_send(chunk) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                        Err(mpsc::error::TrySendError::Full(chunk)) => {
                            waiting_on_caller.store(true, Ordering::Relaxed);
                            let sent = tx.send(chunk).await.map_err(|_| ());
                            waiting_on_caller.store(false, Ordering::Relaxed);
                            sent
                        }
                    };
                    if sent.is_err() {
                        // The caller dropped the stream; dropping ours cancels the call
                        // and the worker closes the generator.
                        return Ok(Ended::Left);
                    }
                }
            }
        }
    };
    // Past the deadline, a worker cancelling an async generator gets its grace; a
    // caller that stopped reading gets none.
    let stalled = || waiting_on_caller.load(Ordering::Relaxed);
    let result = with_grace(timeout, grace, stalled, forward).await;
    match result {
        Ok(Ended::Done(python_time)) => (Ok(python_time), None),
        Ok(Ended::Left) => (Ok(None), None),
        Ok(Ended::Failed(err, nanos)) => (
            Err(worker_error(shared, worker, job, timeout, err, nanos)),
            None,
        ),
        // The transport stream is dropped by now, which cancels the call: the worker
        // closes the generator and stays.
        Err(TransportError::TimedOut) if waiting_on_caller.load(Ordering::Relaxed) => (
            Err(Error::Timeout {
                command: job.command.clone(),
                worker_id: worker.id.to_string(),
                timeout: timeout.unwrap_or_default(),
                caller_stalled: true,
                cancelled_in_python: false,
                python_stack: None,
            }),
            None,
        ),
        Err(e) => {
            let (err, exit) = transport_failure(worker, &job.command, timeout, e).await;
            (Err(err), exit)
        }
    }
}

#[cfg(test)]
use super::deadline::CANCEL_GRACE;
#[cfg(test)]
#[path = "deadline_tests.rs"]
mod deadline_tests;
#[cfg(test)]
#[path = "fake_worker.rs"]
mod fake;
#[cfg(test)]
#[path = "execute_tests.rs"]
mod tests;
