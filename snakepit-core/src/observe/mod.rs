//! What a worker says about itself beside its transport, on two pipes of its own.
//!
//! Each worker gets, whatever its transport, the write ends of two pipes:
//! - the *telemetry* pipe (`--telemetry-fd 7`): JSON lines from the bridge's
//!   `channel.py` ([`pipe`] reads them): the records of Python's `logging` (see
//!   [`python_logs`]) and the user metrics (see [`user_metrics`]);
//! - the *stacks* pipe (`--stacks-fd 8`): what Python's `faulthandler` writes when the
//!   pool sends the worker `SIGUSR1` — the stacks of all its threads, dumped from the
//!   signal handler, so it works even while C code holds the GIL (see [`stacks`]).
//!
//! The pool reads both with a task per worker; neither is on the request path, and
//! both are bounded (lines capped, records dropped and counted in the worker, the
//! dump buffer capped here).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod pipe;
pub(crate) mod python_logs;
pub(crate) mod stacks;
pub mod user_metrics;

pub(crate) use stacks::StackDumps;
pub use user_metrics::UserMetrics;

/// The descriptors the worker finds the two pipes on: telemetry, stacks.
pub(crate) const CHILD_FDS: [i32; 2] = [7, 8];

/// Counts of a pool's Python log records, over all its workers, past and present.
#[derive(Default)]
pub(crate) struct LogCounters {
    /// Records that reached the pool's log.
    pub records: AtomicU64,
    /// Records the workers dropped because the pool read too slowly (or a line was
    /// not a record).
    pub dropped: AtomicU64,
}

impl LogCounters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// What a pool keeps of what its workers observe: log record counts and user metrics.
pub(crate) struct PoolObserved {
    pub logs: LogCounters,
    pub metrics: Arc<UserMetrics>,
}

impl PoolObserved {
    pub fn new(pool: &str) -> Self {
        PoolObserved {
            logs: LogCounters::default(),
            metrics: Arc::new(UserMetrics::new(pool)),
        }
    }
}

/// The pool's read ends of one worker's two pipes.
pub(crate) struct ObserveEnds {
    telemetry: OwnedFd,
    stacks: OwnedFd,
}

/// Create the pipes: the pool's read ends, and the worker's write ends (in
/// [`CHILD_FDS`] order).
pub(crate) fn pipes() -> std::io::Result<(ObserveEnds, [OwnedFd; 2])> {
    let (telemetry, telemetry_child) = std::io::pipe()?;
    let (stacks, stacks_child) = std::io::pipe()?;
    Ok((
        ObserveEnds {
            telemetry: telemetry.into(),
            stacks: stacks.into(),
        },
        [telemetry_child.into(), stacks_child.into()],
    ))
}

/// Start reading a started worker's two pipes; the stack dumps handle comes back.
pub(crate) fn start(
    ends: ObserveEnds,
    pid: u32,
    worker_id: Arc<str>,
    pool: Arc<str>,
    observed: Arc<PoolObserved>,
) -> std::io::Result<Arc<StackDumps>> {
    let telemetry = tokio::net::unix::pipe::Receiver::from_owned_fd(ends.telemetry)?;
    let stacks = tokio::net::unix::pipe::Receiver::from_owned_fd(ends.stacks)?;
    tokio::spawn(pipe::read(telemetry, worker_id, pool, observed));
    Ok(StackDumps::start(pid, stacks))
}
