//! The deadline of a call: an async command, which its worker cancels inside Python
//! at its deadline and answers `DEADLINE_EXCEEDED`, gets a grace past it for that
//! answer; everything else is cut at the deadline itself.

use std::future::Future;
use std::time::Duration;

use super::job::Job;
use super::shared::PoolShared;
use crate::transport::TransportError;

/// How long past its deadline the pool waits for an async command's worker to say it
/// cancelled the coroutine (`DEADLINE_EXCEEDED`), before treating the worker as stuck
/// and replacing it. The worker counts the deadline from when the request reached it,
/// a little after the pool started counting, and cancels a small margin before it
/// (`cancel_margin` in `aio.py`); a request that waited to be read longer than that
/// margin (a loaded machine) would otherwise lose its worker for nothing. A coroutine
/// that blocks its event loop past this is stuck indeed. (The gRPC transport enforces
/// the deadline it sends itself, so there the worker's margin is all there is.)
pub(crate) const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// The grace `job`'s answer has past its deadline: [`CANCEL_GRACE`] for an async
/// command (as its worker described it), none for code Python cannot interrupt.
pub(super) fn cancel_grace(shared: &PoolShared, job: &Job) -> Duration {
    if shared.is_async(&job.command) {
        CANCEL_GRACE
    } else {
        Duration::ZERO
    }
}

/// `call` under `timeout`; past it, `grace` more for the worker's own answer (an async
/// command cancelled inside Python), unless `cut_now()` says the wait is not the
/// worker's doing. The call is never polled again once it finished, even with an error.
pub(super) async fn with_grace<T>(
    timeout: Option<Duration>,
    grace: Duration,
    cut_now: impl Fn() -> bool,
    call: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let Some(timeout) = timeout else {
        return call.await;
    };
    tokio::pin!(call);
    match tokio::time::timeout(timeout, &mut call).await {
        Ok(result) => result,
        Err(_) if grace.is_zero() || cut_now() => Err(TransportError::TimedOut),
        Err(_) => tokio::time::timeout(grace, call)
            .await
            .unwrap_or(Err(TransportError::TimedOut)),
    }
}
