//! The caller's side of a request: admission, validation, routing to a queue, and
//! waiting for the result (with the queue timeout).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, TryAcquireError};

use super::job::{Job, JobState, Reply, StreamReply};
use super::report::{queue_timed_out, refused};
use super::shared::PoolShared;
use super::stream::{ResponseStream, StreamParts};
use crate::error::Error;
use crate::events::{data, EventKind};
use crate::request::{Request, Response};

/// The longest per-request timeout a caller may ask for.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Chunks buffered between a streaming worker and a slow consumer.
const STREAM_BUFFER: usize = 16;

/// A request refused before reaching a worker: count it, tell the event stream.
fn refuse(shared: &PoolShared, req: &Request, request_id: &str, err: Error) -> Error {
    refused(
        shared,
        request_id,
        &req.command,
        req.correlation_id.as_deref(),
        Duration::ZERO,
        err,
    )
}

/// The queue is full: `QueueFull` plus a `pool.saturated` event.
pub(crate) fn queue_full(shared: &PoolShared, req: &Request) -> Error {
    shared.events.emit_with(
        EventKind::PoolSaturated,
        req.correlation_id.as_deref(),
        || {
            let busy = shared.busy.load(Ordering::Relaxed);
            let ready = shared.workers().len();
            data::PoolSaturated {
                queue_size: shared.queue_size() as u64,
                max_queue_size: shared.config.max_queue_size as u64,
                pool_name: shared.name.to_string(),
                available_workers: ready.saturating_sub(busy) as u64,
                busy_workers: busy as u64,
            }
            .into()
        },
    );
    let id = req.request_id.clone().unwrap_or_default();
    refuse(
        shared,
        req,
        &id,
        Error::QueueFull {
            pool: shared.name.to_string(),
            max_queue_size: shared.config.max_queue_size,
        },
    )
}

/// Admission without waiting (the `Reject` policy, or a call without `poll_ready`).
pub(crate) fn try_admit(
    shared: &Arc<PoolShared>,
    req: &Request,
) -> Result<OwnedSemaphorePermit, Error> {
    match shared.admission.clone().try_acquire_owned() {
        Ok(permit) => Ok(permit),
        Err(TryAcquireError::NoPermits) => Err(queue_full(shared, req)),
        Err(TryAcquireError::Closed) => Err(Error::ShuttingDown {
            pool: shared.name.to_string(),
        }),
    }
}

struct Prepared {
    job: Job,
    route: Option<Arc<str>>,
}

/// Validate the request and build its job; errors are the caller's (nothing queued).
fn prepare(shared: &PoolShared, req: Request, reply: Reply) -> Result<Prepared, Error> {
    let request_id = req
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let checked = (|| {
        if !shared.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown {
                pool: shared.name.to_string(),
            });
        }
        if req.command.is_empty() {
            return Err(Error::invalid_args("command must not be empty"));
        }
        let args = req.args.encoded()?.clone();
        if args.len() > shared.config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: args.len(),
                limit: shared.config.max_payload_bytes,
            });
        }
        if let Some(commands) = shared.commands() {
            if !commands.contains(&req.command) {
                return Err(Error::UnknownCommand {
                    command: req.command.clone(),
                    available: commands.iter().cloned().collect(),
                });
            }
        }
        if let Some(t) = req.timeout {
            if t.is_zero() || t > MAX_REQUEST_TIMEOUT {
                return Err(Error::invalid_args(format!(
                    "timeout must be 1 ms to {} ms, got {} ms",
                    MAX_REQUEST_TIMEOUT.as_millis(),
                    t.as_millis()
                )));
            }
        }
        let route = match &req.session_id {
            Some(id) => shared.sessions.route(id)?,
            None => None,
        };
        Ok((args, route))
    })();
    let (args, route) = match checked {
        Ok(ok) => ok,
        Err(err) => return Err(refuse(shared, &req, &request_id, err)),
    };
    Ok(Prepared {
        job: Job {
            command: req.command,
            args,
            session_id: req.session_id,
            timeout: req.timeout,
            request_id,
            correlation_id: req.correlation_id,
            metadata: req.metadata,
            admitted_at: Instant::now(),
            state: JobState::default(),
            reply,
        },
        route,
    })
}

/// Hand the job to the worker holding its session, else to the warmest idle worker,
/// else to the shared queue (unbounded: admission bounds it).
fn dispatch(shared: &PoolShared, prepared: Prepared) {
    let mut job = prepared.job;
    if let Some(worker_id) = prepared.route {
        if let Some(entry) = shared.workers().get(&worker_id) {
            match entry.private_tx.send(job) {
                Ok(()) => return,
                Err(returned) => job = returned.0, // that worker is going away
            }
        }
    }
    shared.dispatch.submit(job);
}

/// What a caller keeps of its queued job: enough to time out its wait and report it.
struct Ticket {
    state: JobState,
    admitted_at: Instant,
    request_id: String,
    command: String,
    correlation_id: Option<String>,
}

/// Validate, build and dispatch the job.
fn enqueue(shared: &PoolShared, req: Request, reply: Reply) -> Result<Ticket, Error> {
    let prepared = prepare(shared, req, reply)?;
    let job = &prepared.job;
    let ticket = Ticket {
        state: job.state.clone(),
        admitted_at: job.admitted_at,
        request_id: job.request_id.clone(),
        command: job.command.clone(),
        correlation_id: job.correlation_id.clone(),
    };
    dispatch(shared, prepared);
    Ok(ticket)
}

impl Ticket {
    /// Wait for `fut` until the job's queue deadline; if no worker took the job by
    /// then, give up with `QueueTimeout` (unless a worker claims it at that moment).
    /// The deadline holds even for a job handed straight to an idle worker: if that
    /// worker dies before taking it, the job is queued again and may wait for others.
    async fn wait<T>(
        &self,
        shared: &PoolShared,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Error> {
        let timeout = shared.config.queue_timeout();
        let deadline = tokio::time::Instant::from_std(self.admitted_at + timeout);
        tokio::pin!(fut);
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if !self.state.abandon() {
            return Ok(fut.await); // a worker took it just now
        }
        Err(queue_timed_out(
            shared,
            &self.request_id,
            &self.command,
            self.correlation_id.as_deref(),
            self.admitted_at,
        ))
    }
}

fn dropped(shared: &PoolShared) -> Error {
    // The job was dropped unanswered: only a pool being torn down does that.
    Error::ShuttingDown {
        pool: shared.name.to_string(),
    }
}

pub(crate) async fn unary(
    shared: Arc<PoolShared>,
    permit: Option<OwnedSemaphorePermit>,
    req: Request,
) -> Result<Response, Error> {
    let _permit = match permit {
        Some(p) => p,
        None => try_admit(&shared, &req)?,
    };
    let (tx, rx) = oneshot::channel();
    let ticket = enqueue(&shared, req, Reply::Unary(tx))?;
    let reply = ticket.wait(&shared, rx).await?;
    reply.unwrap_or_else(|_| Err(dropped(&shared)))
}

pub(crate) async fn stream(
    shared: Arc<PoolShared>,
    permit: Option<OwnedSemaphorePermit>,
    req: Request,
) -> Result<ResponseStream, Error> {
    let permit = match permit {
        Some(p) => p,
        None => try_admit(&shared, &req)?,
    };
    let (chunks_tx, mut chunks) = mpsc::channel(STREAM_BUFFER);
    let (finish_tx, mut finish) = oneshot::channel();
    let placement = Arc::new(OnceLock::new());
    let reply = Reply::Stream(StreamReply {
        chunks: chunks_tx,
        finish: finish_tx,
        placement: placement.clone(),
    });
    let ticket = enqueue(&shared, req, reply)?;
    // Return once the first chunk is in; a failure before any chunk is an Err here.
    let (first, ended) = match ticket.wait(&shared, chunks.recv()).await? {
        Some(chunk) => (Some(chunk), None),
        // No chunk: the end is (about to be) there.
        None => match (&mut finish).await {
            Ok(end) => match end.error {
                Some(err) => return Err(err),
                None => (None, Some(end)),
            },
            Err(_) => return Err(dropped(&shared)),
        },
    };
    Ok(ResponseStream::new(StreamParts {
        first,
        ended,
        chunks,
        finish,
        request_id: ticket.request_id,
        pool: shared.name.clone(),
        placement,
        permit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;
    use crate::events::EventBus;
    use crate::worker::LaunchSpec;

    /// A pool with no real workers: this test plays the worker through the dispatcher
    /// (a real worker cannot be made to die exactly between being handed a job and
    /// taking it).
    fn bare_pool(queue_timeout_ms: u64) -> Arc<PoolShared> {
        let launch = LaunchSpec {
            python: "/nonexistent/python".into(),
            run_id: "test".into(),
            run_dir: std::env::temp_dir(),
            observed: Arc::new(crate::observe::PoolObserved::new("test")),
            fork_server: None,
        };
        let config = PoolConfig {
            queue_timeout_ms,
            ..PoolConfig::default()
        };
        Arc::new(PoolShared::new(config, EventBus::default(), launch))
    }

    #[tokio::test]
    async fn a_job_handed_to_a_worker_that_leaves_keeps_its_queue_deadline() {
        let shared = bare_pool(300);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let worker: Arc<str> = Arc::from("fake-1");
        assert!(shared.dispatch.next_or_idle(&worker, &tx).is_none(), "idle");
        let started = Instant::now();
        let call = tokio::spawn(unary(
            shared.clone(),
            None,
            Request::new("ping", serde_json::json!({})),
        ));
        // Handed straight to the idle worker, which leaves before taking it: the job
        // goes back to the queue, where no worker will ever come.
        let job = rx.recv().await.expect("handed to the idle worker");
        shared.dispatch.leave_idle(&worker);
        shared.dispatch.submit(job);
        let result = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the requeued job waited past its queue deadline")
            .unwrap();
        assert!(
            matches!(result, Err(Error::QueueTimeout { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn caller_timeouts_are_bounded() {
        let shared = bare_pool(300);
        for timeout in [
            Duration::ZERO,
            MAX_REQUEST_TIMEOUT + Duration::from_millis(1),
        ] {
            let req = Request::new("ping", serde_json::json!({})).timeout(timeout);
            let result = unary(shared.clone(), None, req).await;
            assert!(
                matches!(result, Err(Error::InvalidArgs { .. })),
                "{result:?}"
            );
        }
    }
}
