//! A request on its way through the queue to a worker, and how its result gets back.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::proto;
use crate::request::{Chunk, Response, Served};
use crate::transport::CallMeta;

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

    /// Worker side: hand a taken job back unrun (it belongs on another worker), so the
    /// next worker can take it and the caller's queue deadline applies again.
    pub fn release(&self) {
        let _ = self
            .0
            .compare_exchange(TAKEN, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Caller side: give up waiting (queue timeout). False if a worker took it first.
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Where a streaming request runs, set when a worker takes it: a stream the caller
/// drops early still knows its worker and queue time.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub worker_id: Arc<str>,
    pub queue_time: Duration,
    pub taken_at: Instant,
}

/// How a streaming request ended on the worker.
#[derive(Debug)]
pub(crate) struct StreamFinish {
    /// None when no worker ran it (shutdown).
    pub served: Option<Served>,
    pub error: Option<Error>,
}

/// The caller's ends of a streaming reply. Chunks go through a bounded channel (a slow
/// consumer holds the worker back, up to the request deadline); the end goes through a
/// oneshot after the chunk sender is dropped, so delivering it never blocks the worker.
pub(crate) struct StreamReply {
    pub chunks: mpsc::Sender<Chunk>,
    pub finish: oneshot::Sender<StreamFinish>,
    pub placement: Arc<OnceLock<Placement>>,
}

pub(crate) enum Reply {
    Unary(oneshot::Sender<Result<Response, Error>>),
    Stream(StreamReply),
}

impl Reply {
    /// True when nobody waits for the result any more.
    pub fn is_closed(&self) -> bool {
        match self {
            Reply::Unary(tx) => tx.is_closed(),
            Reply::Stream(s) => s.finish.is_closed(),
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
    /// Claim the job to run it; false if its caller gave up waiting or went away.
    pub fn claim(&self) -> bool {
        self.state.take() && !self.reply.is_closed()
    }

    /// The request the worker gets.
    pub fn request(&self) -> proto::ExecuteRequest {
        proto::ExecuteRequest {
            command: self.command.clone(),
            args_json: self.args.clone(),
            session_id: self.session_id.clone().unwrap_or_default(),
        }
    }

    /// The context that travels with it, under `timeout`.
    pub fn meta(&self, timeout: Option<Duration>) -> CallMeta<'_> {
        CallMeta {
            request_id: &self.request_id,
            correlation_id: self.correlation_id.as_deref(),
            extra: &self.metadata,
            timeout,
        }
    }

    /// Send a failure to whoever waits (if anyone still does).
    pub fn fail(self, err: Error) {
        match self.reply {
            Reply::Unary(tx) => {
                let _ = tx.send(Err(err));
            }
            Reply::Stream(s) => {
                let _ = s.finish.send(StreamFinish {
                    served: None,
                    error: Some(err),
                });
            }
        }
    }
}
