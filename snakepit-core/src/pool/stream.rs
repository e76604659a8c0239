//! The caller's side of a streaming call: [`ResponseStream`] yields the chunks in order
//! and knows how the stream ended, so telemetry can measure it to its end.
//!
//! A stream ends in one of three ways, reported once to every observer registered with
//! [`ResponseStream::on_end`] (what the trace and metrics layers use, like tower-http
//! records a body when it finishes): the generator finished (`Completed`), it raised
//! or the worker failed part way (`Failed`, also the stream's last item), or the caller
//! dropped the stream before reading its end (`Cancelled`).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::job::{Placement, StreamFinish};
use crate::error::Error;
use crate::request::{Chunk, Served};

/// How a stream ended.
#[derive(Debug, Clone, Copy)]
pub enum StreamOutcome<'a> {
    /// The generator finished and the caller read every chunk.
    Completed,
    /// The generator raised, or the worker failed or timed out part way.
    Failed(&'a Error),
    /// The caller dropped the stream before its end (with chunks unread, or while the
    /// worker was still producing).
    Cancelled,
}

impl StreamOutcome<'_> {
    /// `success`, `error` or `cancelled`: the status label of a finished stream.
    pub fn status(&self) -> &'static str {
        match self {
            StreamOutcome::Completed => "success",
            StreamOutcome::Failed(_) => "error",
            StreamOutcome::Cancelled => "cancelled",
        }
    }
}

/// What an observer learns when a stream ends.
#[derive(Debug, Clone, Copy)]
pub struct StreamEnd<'a> {
    /// How it ended: its last chunk, a failure, or the caller going away.
    pub outcome: StreamOutcome<'a>,
    /// The worker, the queue wait and the time on the worker (None only if no worker
    /// ever took the request).
    pub served: Option<&'a Served>,
    /// Chunks the caller received.
    pub chunks: u64,
    /// When the first chunk reached the caller's side.
    pub first_chunk_at: Option<Instant>,
}

type Observer = Box<dyn for<'a> FnOnce(&StreamEnd<'a>) + Send + Sync>;

/// The chunks of a streaming call, in order; ends after the generator's last value,
/// or with one `Err` if it failed part way. Dropping it early cancels the call.
pub struct ResponseStream {
    first: Option<Chunk>,
    chunks: mpsc::Receiver<Chunk>,
    finish: oneshot::Receiver<StreamFinish>,
    /// The end, once known (read from `finish`, or before the first chunk).
    ended: Option<StreamFinish>,
    /// True once the caller has seen the end (the observers ran).
    done: bool,
    request_id: String,
    pool: Arc<str>,
    placement: Arc<OnceLock<Placement>>,
    /// The request's admission slot, held until the stream ends or is dropped.
    permit: Option<OwnedSemaphorePermit>,
    observers: Vec<Observer>,
    received: u64,
    first_chunk_at: Option<Instant>,
}

/// The parts `call::stream` assembles a stream from.
pub(crate) struct StreamParts {
    pub first: Option<Chunk>,
    pub ended: Option<StreamFinish>,
    pub chunks: mpsc::Receiver<Chunk>,
    pub finish: oneshot::Receiver<StreamFinish>,
    pub request_id: String,
    pub pool: Arc<str>,
    pub placement: Arc<OnceLock<Placement>>,
    pub permit: OwnedSemaphorePermit,
}

impl ResponseStream {
    pub(crate) fn new(parts: StreamParts) -> Self {
        let first_chunk_at = parts.first.as_ref().map(|_| Instant::now());
        ResponseStream {
            received: u64::from(parts.first.is_some()),
            first: parts.first,
            chunks: parts.chunks,
            finish: parts.finish,
            ended: parts.ended,
            done: false,
            request_id: parts.request_id,
            pool: parts.pool,
            placement: parts.placement,
            permit: Some(parts.permit),
            observers: Vec::new(),
            first_chunk_at,
        }
    }

    /// The request's id (generated when the request had none).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Run `f` once when the stream ends (see [`StreamOutcome`]); at once if it has.
    pub fn on_end(&mut self, f: impl for<'a> FnOnce(&StreamEnd<'a>) + Send + Sync + 'static) {
        if self.done {
            self.report(vec![Box::new(f)]);
        } else {
            self.observers.push(Box::new(f));
        }
    }

    /// Tell `observers` how the stream ended.
    fn report(&self, observers: Vec<Observer>) {
        if observers.is_empty() {
            return;
        }
        let cancelled_served;
        let (outcome, served) = match &self.ended {
            Some(end) if self.done => (
                end.error
                    .as_ref()
                    .map_or(StreamOutcome::Completed, StreamOutcome::Failed),
                end.served.as_ref(),
            ),
            _ => {
                cancelled_served = self.placement.get().map(|p| Served {
                    request_id: self.request_id.clone(),
                    worker_id: p.worker_id.to_string(),
                    queue_time: p.queue_time,
                    duration: p.taken_at.elapsed(),
                    python_time: None,
                    worker_span: None,
                    session_recreated: None,
                });
                (StreamOutcome::Cancelled, cancelled_served.as_ref())
            }
        };
        let end = StreamEnd {
            outcome,
            served,
            chunks: self.received,
            first_chunk_at: self.first_chunk_at,
        };
        for f in observers {
            f(&end);
        }
    }

    /// The caller has seen the end: release the slot, tell the observers.
    fn end(&mut self, finish: StreamFinish) -> Option<Error> {
        let error = finish.error.clone();
        self.ended = Some(finish);
        self.done = true;
        self.permit = None;
        let observers = std::mem::take(&mut self.observers);
        self.report(observers);
        error
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Every chunk was read and the end is in; the caller only did not ask for it:
        // report how the stream really ended rather than a cancellation.
        let all_read = self.first.is_none()
            && matches!(
                self.chunks.try_recv(),
                Err(mpsc::error::TryRecvError::Disconnected)
            );
        if all_read {
            if let Some(finish) = self.ended.take().or_else(|| self.finish.try_recv().ok()) {
                self.end(finish);
                return;
            }
        }
        let observers = std::mem::take(&mut self.observers);
        self.report(observers);
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
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.ended.is_none() {
            match self.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(chunk)) => {
                    self.received += 1;
                    if self.first_chunk_at.is_none() {
                        self.first_chunk_at = Some(Instant::now());
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(None) => {}
            }
        }
        // Every chunk is read: the end follows (it is sent after the last chunk).
        let finish = match self.ended.take() {
            Some(f) => f,
            None => match Pin::new(&mut self.finish).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(f)) => f,
                // Dropped without its end: only a pool being torn down does that.
                Poll::Ready(Err(_)) => StreamFinish {
                    served: None,
                    error: Some(Error::ShuttingDown {
                        pool: self.pool.to_string(),
                    }),
                },
            },
        };
        Poll::Ready(self.end(finish).map(Err))
    }
}
