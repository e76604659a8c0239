//! Running one job on one worker: the call, its deadline, mapping what came back to a
//! typed result, and the request events and counters around it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::driver::Exit;
use super::job::{Job, Reply, StreamItem};
use super::shared::PoolShared;
use crate::error::{Error, PythonError};
use crate::events::{data, EventKind};
use crate::proto::{self, worker_error::Kind};
use crate::request::{Chunk, Response, Served, WorkerSpan};
use crate::stats::WorkerState;
use crate::transport::{CallMeta, TransportError};
use crate::worker::Worker;

/// How long session set-up calls may take before the request proceeds without them.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a broken call, how long to wait for the process to show it died.
const CRASH_CONFIRM: Duration = Duration::from_secs(1);

/// Run `job` on `worker`; `Some(exit)` when the worker must be replaced.
pub(crate) async fn run_job(shared: &Arc<PoolShared>, worker: &Worker, job: Job) -> Option<Exit> {
    let queue_time = job.admitted_at.elapsed();
    worker.status.set_state(WorkerState::Busy);
    shared.mark_busy();
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
    if let Some(session_id) = &job.session_id {
        ensure_session(shared, worker, session_id).await;
    }
    let timeout = job.timeout.or_else(|| shared.config.request_timeout());
    let request = proto::ExecuteRequest {
        command: job.command.clone(),
        args_json: job.args.clone(),
        session_id: job.session_id.clone().unwrap_or_default(),
    };
    let meta = CallMeta {
        request_id: &job.request_id,
        correlation_id: job.correlation_id.as_deref(),
        extra: &job.metadata,
        timeout,
    };
    let served = |duration, worker_span| Served {
        request_id: job.request_id.clone(),
        worker_id: worker.id.to_string(),
        queue_time,
        duration,
        worker_span,
    };
    let (outcome, exit) = match &job.reply {
        Reply::Unary(_) => {
            let call = worker.transport.execute(request, meta);
            let result = match timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or(Err(TransportError::TimedOut)),
                None => call.await,
            };
            match result {
                Ok(resp) => match resp.outcome {
                    Some(proto::execute_response::Outcome::ResultJson(bytes)) => {
                        let span = resp
                            .span
                            .as_ref()
                            .and_then(|s| WorkerSpan::from_proto(s, &worker.id));
                        (Ok((bytes, span)), None)
                    }
                    Some(proto::execute_response::Outcome::Error(e)) => {
                        let mut err = worker_error(shared, &job.command, e);
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
        Reply::Stream(tx) => {
            let (result, exit) = stream(shared, worker, &job, request, meta, timeout, tx).await;
            (result.map(|()| (bytes::Bytes::new(), None)), exit)
        }
    };
    let duration = started.elapsed();
    worker.status.requests.fetch_add(1, Ordering::Relaxed);
    worker.status.set_state(WorkerState::Idle);
    shared.mark_idle();
    finish(
        shared,
        worker,
        &job,
        queue_time,
        duration,
        outcome.as_ref().err(),
        timeout,
    );
    match (job.reply, outcome) {
        (Reply::Unary(tx), Ok((result, worker_span))) => {
            let _ = tx.send(Ok(Response {
                result,
                served: served(duration, worker_span),
            }));
        }
        (Reply::Unary(tx), Err(err)) => {
            let _ = tx.send(Err(err));
        }
        (Reply::Stream(tx), Ok(_)) => {
            let _ = tx.send(Ok(None)).await;
        }
        (Reply::Stream(tx), Err(err)) => {
            let _ = tx.send(Err(err)).await;
        }
    }
    exit
}

/// Forward chunks to the caller until the final one; the deadline covers the whole stream.
async fn stream(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    job: &Job,
    request: proto::ExecuteRequest,
    meta: CallMeta<'_>,
    timeout: Option<Duration>,
    tx: &mpsc::Sender<StreamItem>,
) -> (Result<(), Error>, Option<Exit>) {
    let forward = async {
        let mut chunks = worker.transport.execute_stream(request, meta).await?;
        loop {
            match chunks.next().await {
                None => {
                    return Err(TransportError::Disconnected(
                        "stream ended without its final chunk".into(),
                    ))
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) if chunk.r#final => return Ok(chunk.error),
                Some(Ok(chunk)) => {
                    if tx
                        .send(Ok(Some(Chunk {
                            data: chunk.data_json,
                        })))
                        .await
                        .is_err()
                    {
                        // The caller dropped the stream; dropping ours cancels the call
                        // and the worker closes the generator.
                        return Ok(None);
                    }
                }
            }
        }
    };
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, forward)
            .await
            .unwrap_or(Err(TransportError::TimedOut)),
        None => forward.await,
    };
    match result {
        Ok(None) => (Ok(()), None),
        Ok(Some(err)) => (Err(worker_error(shared, &job.command, err)), None),
        Err(e) => {
            let (err, exit) = transport_failure(worker, &job.command, timeout, e).await;
            (Err(err), exit)
        }
    }
}

/// Create the session in this worker if another worker (or none) held it so far.
async fn ensure_session(shared: &PoolShared, worker: &Worker, session_id: &str) {
    if let Some(metadata) = shared.sessions.claim(session_id, &worker.id) {
        if let Err(e) = worker
            .transport
            .init_session(session_id, metadata, SESSION_CALL_TIMEOUT)
            .await
        {
            // The worker creates unknown sessions on first use, without metadata.
            tracing::warn!(worker_id = %worker.id, session_id, error = %e,
                "could not initialise session on worker; it starts without metadata");
        }
    }
}

/// A worker-reported failure as a typed error.
fn worker_error(shared: &PoolShared, command: &str, e: proto::WorkerError) -> Error {
    match e.kind() {
        Kind::UnknownCommand => Error::UnknownCommand {
            command: command.to_string(),
            available: shared
                .commands()
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default(),
        },
        Kind::InvalidArgs => Error::InvalidArgs { message: e.message },
        Kind::Exception | Kind::InvalidResult | Kind::Unspecified => {
            Error::Python(Box::new(PythonError {
                python_type: e.r#type,
                message: e.message,
                traceback: e.traceback,
                worker_span: None,
            }))
        }
    }
}

/// A failed call: a timeout, a crash, or a broken or refused transport.
async fn transport_failure(
    worker: &Worker,
    command: &str,
    timeout: Option<Duration>,
    e: TransportError,
) -> (Error, Option<Exit>) {
    let worker_id = worker.id.to_string();
    match e {
        TransportError::TimedOut => (
            Error::Timeout {
                command: command.to_string(),
                worker_id,
                timeout: timeout.unwrap_or_default(),
            },
            // Python cannot be interrupted safely: the worker is replaced.
            Some(Exit::Recycle {
                reason: "request_timeout",
            }),
        ),
        TransportError::Disconnected(message) => {
            match worker.process.wait_exit(CRASH_CONFIRM).await {
                Some(exit) => (
                    Error::WorkerCrashed {
                        command: command.to_string(),
                        worker_id,
                        exit,
                        stderr_tail: worker.process.stderr_tail().await,
                    },
                    Some(Exit::Crashed { exit }),
                ),
                None => (
                    Error::Transport {
                        worker_id,
                        message: message.clone(),
                    },
                    Some(Exit::Broken { message }),
                ),
            }
        }
        TransportError::TooLarge(message) => (
            Error::Transport {
                worker_id,
                message: format!("the worker's response exceeds max_response_bytes ({message})"),
            },
            None,
        ),
        TransportError::Protocol(message) => (
            Error::Transport {
                worker_id,
                message: format!("{message}; the worker is replaced"),
            },
            Some(Exit::Broken { message }),
        ),
        TransportError::Other(message) => (Error::Transport { worker_id, message }, None),
    }
}

/// Counters, the window, and the request events of a finished job.
fn finish(
    shared: &PoolShared,
    worker: &Worker,
    job: &Job,
    queue_time: Duration,
    duration: Duration,
    error: Option<&Error>,
    timeout: Option<Duration>,
) {
    shared.requests_total.fetch_add(1, Ordering::Relaxed);
    shared
        .window
        .record_request(duration, queue_time, error.is_none());
    let corr = job.correlation_id.as_deref();
    if let Some(err) = error {
        shared.failures_total.fetch_add(1, Ordering::Relaxed);
        if matches!(err, Error::Timeout { .. }) {
            shared
                .events
                .emit_with(EventKind::RequestTimeout, corr, || {
                    data::RequestTimeout {
                        timeout_ms: ms(timeout.unwrap_or_default()),
                        queue_time_ms: ms(queue_time),
                        request_id: job.request_id.clone(),
                        command: job.command.clone(),
                        pool_name: shared.name.to_string(),
                        worker_id: worker.id.to_string(),
                    }
                    .into()
                });
        }
        emit_failed(shared, job, Some(&worker.id), queue_time, duration, err);
    }
    shared
        .events
        .emit_with(EventKind::RequestCompleted, corr, || {
            data::RequestCompleted {
                duration_ms: ms(duration),
                queue_time_ms: ms(queue_time),
                request_id: job.request_id.clone(),
                command: job.command.clone(),
                pool_name: shared.name.to_string(),
                worker_id: worker.id.to_string(),
                success: error.is_none(),
            }
            .into()
        });
}

/// `request.failed`, for failures on a worker and refusals before one.
pub(crate) fn emit_failed(
    shared: &PoolShared,
    job: &Job,
    worker_id: Option<&Arc<str>>,
    queue_time: Duration,
    duration: Duration,
    err: &Error,
) {
    emit_failed_parts(
        shared,
        &job.request_id,
        &job.command,
        job.correlation_id.as_deref(),
        worker_id,
        queue_time,
        duration,
        err,
    );
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_failed_parts(
    shared: &PoolShared,
    request_id: &str,
    command: &str,
    correlation_id: Option<&str>,
    worker_id: Option<&Arc<str>>,
    queue_time: Duration,
    duration: Duration,
    err: &Error,
) {
    shared
        .events
        .emit_with(EventKind::RequestFailed, correlation_id, || {
            let py = err.python();
            data::RequestFailed {
                duration_ms: ms(duration),
                queue_time_ms: ms(queue_time),
                request_id: request_id.to_string(),
                command: command.to_string(),
                pool_name: shared.name.to_string(),
                worker_id: worker_id.map(|w| w.to_string()),
                error_type: err.error_type().to_string(),
                error_message: err.to_string(),
                python_type: py.map(|p| p.python_type.clone()),
                python_traceback: py.map(|p| p.traceback.clone()),
            }
            .into()
        });
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
