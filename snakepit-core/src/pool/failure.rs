//! What a failed call means: a failure the worker reported (an exception, arguments
//! that do not fit, a coroutine cancelled at its deadline) or a failed transport (a
//! timeout, a crash, a broken channel), as a typed error, and whether the worker must
//! go for it.

use std::time::Duration;

use super::exit::Exit;
use super::job::Job;
use super::shared::PoolShared;
use crate::error::{Error, PythonError};
use crate::observe::stacks::STACK_WAIT;
use crate::proto::{self, worker_error::Kind};
use crate::transport::TransportError;
use crate::worker::Worker;

/// After a broken call, how long to wait for the process to show it died.
const CRASH_CONFIRM: Duration = Duration::from_secs(1);

/// The worker's report of its Python time (0: it did not say).
pub(super) fn python_time(nanos: u64) -> Option<Duration> {
    (nanos > 0).then(|| Duration::from_nanos(nanos))
}

/// A worker-reported failure of `job` on `worker` (under `timeout`) as a typed error.
/// None of them costs the worker: it answered.
pub(super) fn worker_error(
    shared: &PoolShared,
    worker: &Worker,
    job: &Job,
    timeout: Option<Duration>,
    e: proto::WorkerError,
    python_nanos: u64,
) -> Error {
    match e.kind() {
        // An async command past its deadline, cancelled inside Python: a timeout, but
        // the worker is fine (no kill, no stacks to take: the traceback says where the
        // coroutine was awaiting).
        Kind::DeadlineExceeded => Error::Timeout {
            command: job.command.clone(),
            worker_id: worker.id.to_string(),
            timeout: timeout.unwrap_or_default(),
            caller_stalled: false,
            cancelled_in_python: true,
            python_stack: (!e.traceback.is_empty()).then_some(e.traceback),
        },
        Kind::UnknownCommand => Error::UnknownCommand {
            command: job.command.clone(),
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
                python_time: python_time(python_nanos),
            }))
        }
    }
}

/// A failed call: a timeout, a crash, or a broken or refused transport.
pub(super) async fn transport_failure(
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
                caller_stalled: false,
                cancelled_in_python: false,
                // Where it was stuck, asked before the worker is killed for it.
                python_stack: worker.stacks.capture(STACK_WAIT).await,
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
