//! The caller's side of a request: admission, validation, routing to a queue, and
//! waiting for the result (with the queue timeout).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, TryAcquireError};

use super::execute::{emit_failed_parts, ms};
use super::job::{Job, JobState, Reply, StreamItem};
use super::shared::PoolShared;
use crate::error::Error;
use crate::events::{data, EventKind};
use crate::request::{Chunk, Request, Response};

/// Chunks buffered between a streaming worker and a slow consumer.
const STREAM_BUFFER: usize = 16;

/// A request refused before reaching a worker: count it, tell the event stream.
fn refuse(shared: &PoolShared, req: &Request, request_id: &str, err: Error) -> Error {
    shared.requests_total.fetch_add(1, Ordering::Relaxed);
    shared.failures_total.fetch_add(1, Ordering::Relaxed);
    shared.window.record_rejection();
    emit_failed_parts(
        shared,
        request_id,
        &req.command,
        req.correlation_id.as_deref(),
        None,
        Duration::ZERO,
        Duration::ZERO,
        &err,
    );
    err
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
        if req.timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_args("timeout must be positive"));
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
/// else to the shared queue (unbounded: admission bounds it). True when an idle
/// worker took it, so there is no queue wait to time out.
fn dispatch(shared: &PoolShared, prepared: Prepared) -> bool {
    let mut job = prepared.job;
    if let Some(worker_id) = prepared.route {
        if let Some(entry) = shared.workers().get(&worker_id) {
            match entry.private_tx.send(job) {
                Ok(()) => return false,            // that worker may be busy: a real wait
                Err(returned) => job = returned.0, // that worker is going away
            }
        }
    }
    shared.dispatch.submit(job)
}

/// Wait for `fut` until the job's queue deadline; if no worker took the job by then,
/// give up with `QueueTimeout` (unless a worker claims it at that very moment).
/// A job handed straight to an idle worker skips the timer: it does not wait.
async fn until_taken<T>(
    shared: &PoolShared,
    state: &JobState,
    (admitted_at, handed): (Instant, bool),
    corr: Option<&str>,
    meta: (&str, &str),
    fut: impl std::future::Future<Output = T>,
) -> Result<T, Error> {
    if handed {
        return Ok(fut.await);
    }
    let deadline = tokio::time::Instant::from_std(admitted_at + shared.config.queue_timeout());
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => Ok(out),
        _ = tokio::time::sleep_until(deadline) => {
            if state.abandon() {
                let waited = admitted_at.elapsed();
                let err = Error::QueueTimeout {
                    pool: shared.name.to_string(),
                    timeout: shared.config.queue_timeout(),
                };
                shared.requests_total.fetch_add(1, Ordering::Relaxed);
                shared.failures_total.fetch_add(1, Ordering::Relaxed);
                shared.window.record_rejection();
                shared.events.emit_with(EventKind::RequestTimeout, corr, || data::RequestTimeout {
                    timeout_ms: ms(shared.config.queue_timeout()),
                    queue_time_ms: ms(waited),
                    request_id: meta.0.to_string(),
                    command: meta.1.to_string(),
                    pool_name: shared.name.to_string(),
                    worker_id: String::new(),
                }.into());
                emit_failed_parts(shared, meta.0, meta.1, corr, None, waited, Duration::ZERO, &err);
                Err(err)
            } else {
                Ok(fut.await)
            }
        }
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
    let prepared = prepare(&shared, req, Reply::Unary(tx))?;
    let state = prepared.job.state.clone();
    let admitted_at = prepared.job.admitted_at;
    let corr = prepared.job.correlation_id.clone();
    let ids = (
        prepared.job.request_id.clone(),
        prepared.job.command.clone(),
    );
    let handed = dispatch(&shared, prepared);
    let reply = until_taken(
        &shared,
        &state,
        (admitted_at, handed),
        corr.as_deref(),
        (&ids.0, &ids.1),
        rx,
    )
    .await?;
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
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    let prepared = prepare(&shared, req, Reply::Stream(tx))?;
    let state = prepared.job.state.clone();
    let admitted_at = prepared.job.admitted_at;
    let corr = prepared.job.correlation_id.clone();
    let ids = (
        prepared.job.request_id.clone(),
        prepared.job.command.clone(),
    );
    let handed = dispatch(&shared, prepared);
    // Return once the first item is in: a failure before any chunk is an Err here.
    let first = until_taken(
        &shared,
        &state,
        (admitted_at, handed),
        corr.as_deref(),
        (&ids.0, &ids.1),
        rx.recv(),
    )
    .await?;
    let first = match first {
        None => return Err(dropped(&shared)),
        Some(Err(err)) => return Err(err),
        Some(Ok(item)) => item,
    };
    Ok(ResponseStream {
        first: Some(first),
        rx,
        done: false,
        request_id: ids.0,
        pool: shared.name.clone(),
        permit: Some(permit),
    })
}

/// The chunks of a streaming call, in order; ends after the generator's last value,
/// or with one `Err` if it failed part way.
pub struct ResponseStream {
    first: Option<Option<Chunk>>,
    rx: mpsc::Receiver<StreamItem>,
    done: bool,
    request_id: String,
    pool: Arc<str>,
    /// The request's admission slot, held until the stream ends or is dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl ResponseStream {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("request_id", &self.request_id)
            .field("done", &self.done)
            .finish()
    }
}

impl Stream for ResponseStream {
    type Item = Result<Chunk, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            self.permit = None;
            return Poll::Ready(None);
        }
        let item = match self.first.take() {
            Some(first) => Some(Ok(first)),
            None => match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            },
        };
        match item {
            Some(Ok(Some(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Some(Ok(None)) => {
                self.done = true;
                self.permit = None;
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                self.done = true;
                Poll::Ready(Some(Err(err)))
            }
            None => {
                self.done = true;
                // Dropped without its end: only a pool being torn down does that.
                Poll::Ready(Some(Err(Error::ShuttingDown {
                    pool: self.pool.to_string(),
                })))
            }
        }
    }
}
