//! A request on its way through the queue to a worker, and how its result gets back.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::request::{Chunk, Response};

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Shared between the caller and the worker: exactly one of "a worker took it" and
/// "the caller gave up waiting" wins.
#[derive(Clone, Default)]
pub(crate) struct JobState(Arc<AtomicU8>);

impl JobState {
    /// Worker side: claim the job. False if the caller already gave up.
    pub fn take(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Caller side: give up waiting (queue timeout). False if a worker took it first.
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// One item of a streaming reply: a chunk, the end (`Ok(None)`), or the failure.
pub(crate) type StreamItem = Result<Option<Chunk>, Error>;

pub(crate) enum Reply {
    Unary(oneshot::Sender<Result<Response, Error>>),
    Stream(mpsc::Sender<StreamItem>),
}

impl Reply {
    /// True when nobody waits for the result any more.
    pub fn is_closed(&self) -> bool {
        match self {
            Reply::Unary(tx) => tx.is_closed(),
            Reply::Stream(tx) => tx.is_closed(),
        }
    }
}

pub(crate) struct Job {
    pub command: String,
    pub args: Bytes,
    pub session_id: Option<String>,
    pub timeout: Option<Duration>,
    pub request_id: String,
    pub correlation_id: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub admitted_at: Instant,
    pub state: JobState,
    pub reply: Reply,
}

impl Job {
    /// Send a failure to whoever waits (if anyone still does).
    pub fn fail(self, err: Error) {
        match self.reply {
            Reply::Unary(tx) => {
                let _ = tx.send(Err(err));
            }
            Reply::Stream(tx) => {
                let _ = tx.try_send(Err(err));
            }
        }
    }
}
