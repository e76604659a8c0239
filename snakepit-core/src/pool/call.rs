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

/// What a caller keeps of its queued job: enough to time out its wait and report it.
struct Ticket {
    state: JobState,
    admitted_at: Instant,
    /// Handed straight to an idle worker: no queue wait to time out.
    handed: bool,
    request_id: String,
    command: String,
    correlation_id: Option<String>,
}

/// Validate, build and dispatch the job.
fn enqueue(shared: &PoolShared, req: Request, reply: Reply) -> Result<Ticket, Error> {
    let prepared = prepare(shared, req, reply)?;
    let job = &prepared.job;
    let mut ticket = Ticket {
        state: job.state.clone(),
        admitted_at: job.admitted_at,
        handed: false,
        request_id: job.request_id.clone(),
        command: job.command.clone(),
        correlation_id: job.correlation_id.clone(),
    };
    ticket.handed = dispatch(shared, prepared);
    Ok(ticket)
}

impl Ticket {
    /// Wait for `fut` until the job's queue deadline; if no worker took the job by
    /// then, give up with `QueueTimeout` (unless a worker claims it at that moment).
    async fn wait<T>(
        &self,
        shared: &PoolShared,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Error> {
        if self.handed {
            return Ok(fut.await);
        }
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
        let waited = self.admitted_at.elapsed();
        let err = Error::QueueTimeout {
            pool: shared.name.to_string(),
            timeout,
        };
        shared.requests_total.fetch_add(1, Ordering::Relaxed);
        shared.failures_total.fetch_add(1, Ordering::Relaxed);
        shared.window.record_rejection();
        let corr = self.correlation_id.as_deref();
        shared
            .events
            .emit_with(EventKind::RequestTimeout, corr, || {
                data::RequestTimeout {
                    timeout_ms: ms(timeout),
                    queue_time_ms: ms(waited),
                    request_id: self.request_id.clone(),
                    command: self.command.clone(),
                    pool_name: shared.name.to_string(),
                    worker_id: String::new(),
                }
                .into()
            });
        emit_failed_parts(
            shared,
            &self.request_id,
            &self.command,
            corr,
            None,
            waited,
            Duration::ZERO,
            &err,
        );
        Err(err)
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
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    let ticket = enqueue(&shared, req, Reply::Stream(tx))?;
    // Return once the first item is in: a failure before any chunk is an Err here.
    let first = match ticket.wait(&shared, rx.recv()).await? {
        None => return Err(dropped(&shared)),
        Some(Err(err)) => return Err(err),
        Some(Ok(item)) => item,
    };
    Ok(ResponseStream {
        first: Some(first),
        rx,
        done: false,
        request_id: ticket.request_id,
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
