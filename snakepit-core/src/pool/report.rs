//! What a finished (or refused) request leaves behind: counters, the stats window,
//! and the `request.completed` / `request.failed` / `request.timeout` events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::job::Job;
use super::shared::PoolShared;
use crate::error::Error;
use crate::events::{data, EventKind};
use crate::worker::Worker;

/// Counters, the window, and the request events of a finished job.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    shared: &PoolShared,
    worker: &Worker,
    job: &Job,
    queue_time: Duration,
    duration: Duration,
    error: Option<&Error>,
    timeout: Option<Duration>,
    status: &'static str,
    is_stream: bool,
) {
    shared.requests_total.fetch_add(1, Ordering::Relaxed);
    let latency = (!is_stream).then_some(duration);
    let healthy = error.is_none_or(Error::is_caller_error);
    shared.window.record_request(latency, queue_time, healthy);
    let corr = job.correlation_id.as_deref();
    if let Some(err) = error {
        shared.failures_total.fetch_add(1, Ordering::Relaxed);
        if let Error::Timeout {
            caller_stalled,
            cancelled_in_python,
            ..
        } = err
        {
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
                        caller_stalled: *caller_stalled,
                        cancelled_in_python: *cancelled_in_python,
                    }
                    .into()
                });
        }
        emit_failed_parts(
            shared,
            &job.request_id,
            &job.command,
            corr,
            Some(&worker.id),
            queue_time,
            duration,
            err,
        );
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
                status: status.to_string(),
            }
            .into()
        });
}

/// Hand back a job a worker took but did not run (it belongs on another worker, or
/// was taken back from behind a running call), so the next worker can take it and its
/// caller's queue deadline applies again. The caller stopped timing the queue once a
/// worker took the job: if that deadline passed meanwhile, the job fails here with
/// `QueueTimeout` (as if it had never left the queue) and `None` comes back.
pub(crate) fn release_unrun(shared: &PoolShared, job: Job) -> Option<Job> {
    if job.admitted_at.elapsed() >= shared.config.queue_timeout() {
        let err = queue_timed_out(
            shared,
            &job.request_id,
            &job.command,
            job.correlation_id.as_deref(),
            job.admitted_at,
        );
        job.fail(err);
        return None;
    }
    job.state.release();
    Some(job)
}

/// A request whose queue deadline passed before a worker started it: the
/// `request.timeout` event, counters, and the `QueueTimeout` error for its caller.
pub(crate) fn queue_timed_out(
    shared: &PoolShared,
    request_id: &str,
    command: &str,
    correlation_id: Option<&str>,
    admitted_at: std::time::Instant,
) -> Error {
    let timeout = shared.config.queue_timeout();
    let waited = admitted_at.elapsed();
    let err = Error::QueueTimeout {
        pool: shared.name.to_string(),
        timeout,
    };
    shared
        .events
        .emit_with(EventKind::RequestTimeout, correlation_id, || {
            data::RequestTimeout {
                timeout_ms: ms(timeout),
                queue_time_ms: ms(waited),
                request_id: request_id.to_string(),
                command: command.to_string(),
                pool_name: shared.name.to_string(),
                worker_id: String::new(),
                caller_stalled: false,
                cancelled_in_python: false,
            }
            .into()
        });
    refused(shared, request_id, command, correlation_id, waited, err)
}

/// A request that failed before any worker ran it (refused, or timed out in the
/// queue): counters, the stats window (unless the caller caused it) and
/// `request.failed`.
pub(crate) fn refused(
    shared: &PoolShared,
    request_id: &str,
    command: &str,
    correlation_id: Option<&str>,
    queue_time: Duration,
    err: Error,
) -> Error {
    shared.requests_total.fetch_add(1, Ordering::Relaxed);
    shared.failures_total.fetch_add(1, Ordering::Relaxed);
    if !err.is_caller_error() {
        shared.window.record_rejection();
    }
    emit_failed_parts(
        shared,
        request_id,
        command,
        correlation_id,
        None,
        queue_time,
        Duration::ZERO,
        &err,
    );
    err
}

/// `request.failed`, for failures on a worker and refusals before one.
#[allow(clippy::too_many_arguments)]
fn emit_failed_parts(
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
                python_stack: err.python_stack().map(str::to_string),
            }
            .into()
        });
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
