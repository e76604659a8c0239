//! State shared by a pool's handles, slots, drivers and monitors.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::Dispatcher;
use super::job::Job;
use crate::catalog::CommandSpec;
use crate::config::PoolConfig;
use crate::events::{data, EventBus, EventKind};
use crate::observe::StackDumps;
use crate::session::SessionStore;
use crate::stats::Window;
use crate::sync;
use crate::transport::WorkerTransport;
use crate::worker::{LaunchSpec, WorkerStatus};

/// A ready worker as the router sees it.
pub(crate) struct WorkerEntry {
    /// Requests for sessions this worker holds.
    pub private_tx: mpsc::UnboundedSender<Job>,
    pub status: Arc<WorkerStatus>,
    pub transport: Arc<dyn WorkerTransport>,
    pub stacks: Arc<StackDumps>,
}

pub(crate) struct PoolShared {
    pub name: Arc<str>,
    pub config: PoolConfig,
    pub events: EventBus,
    pub launch: LaunchSpec,
    /// `size + max_queue_size` permits: one per admitted, unfinished request.
    pub admission: Arc<Semaphore>,
    pub dispatch: Dispatcher,
    pub workers: RwLock<HashMap<Arc<str>, WorkerEntry>>,
    pub sessions: SessionStore,
    pub window: Window,
    /// Command names the adapter offers, learnt from the first worker's describe.
    pub commands: OnceLock<BTreeSet<String>>,
    /// What those commands take and return, sorted by name; learnt with `commands`
    /// (set first, so whoever sees the names sees the specs).
    pub specs: OnceLock<Vec<CommandSpec>>,
    /// Cancelled to stop slots between requests (shutdown).
    pub stop: CancellationToken,
    /// Cancelled to stop slots at once, abandoning running requests (shutdown past its
    /// grace, or the last handle dropped). Cancelling it also cancels `stop`.
    pub abort: CancellationToken,
    pub tasks: TaskTracker,
    pub accepting: AtomicBool,
    pub busy: AtomicUsize,
    /// Workers past a planned recycle, still serving their sessions (not counted ready).
    pub draining: AtomicUsize,
    /// Requests those draining workers are running (not in `busy`).
    pub draining_busy: AtomicUsize,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub crashes_total: AtomicU64,
    pub recycles_total: AtomicU64,
    /// Requests written to a worker behind the one it was running (pipelining).
    pub pipelined_total: AtomicU64,
    /// Of those, requests taken back unrun and handed to another worker.
    pub taken_back_total: AtomicU64,
    /// Re-armed when utilization drops below the threshold.
    pub capacity_warning_armed: AtomicBool,
    pub started_at: Instant,
    worker_seq: AtomicU64,
}

impl PoolShared {
    pub fn new(config: PoolConfig, events: EventBus, launch: LaunchSpec) -> Self {
        let abort = CancellationToken::new();
        PoolShared {
            name: Arc::from(config.name.as_str()),
            admission: Arc::new(Semaphore::new(config.size + config.max_queue_size)),
            sessions: SessionStore::new(
                config.sessions.max_sessions,
                config.sessions.on_worker_loss,
            ),
            window: Window::new(std::time::Duration::from_secs(config.stats_window_secs)),
            config,
            events,
            launch,
            dispatch: Dispatcher::default(),
            workers: RwLock::new(HashMap::new()),
            commands: OnceLock::new(),
            specs: OnceLock::new(),
            stop: abort.child_token(),
            abort,
            tasks: TaskTracker::new(),
            accepting: AtomicBool::new(true),
            busy: AtomicUsize::new(0),
            draining: AtomicUsize::new(0),
            draining_busy: AtomicUsize::new(0),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            crashes_total: AtomicU64::new(0),
            recycles_total: AtomicU64::new(0),
            pipelined_total: AtomicU64::new(0),
            taken_back_total: AtomicU64::new(0),
            capacity_warning_armed: AtomicBool::new(true),
            started_at: Instant::now(),
            worker_seq: AtomicU64::new(0),
        }
    }

    /// The deadline `job` runs under: its own, else the pool's `request_timeout_ms`.
    pub fn request_timeout(&self, job: &Job) -> Option<std::time::Duration> {
        job.timeout.or_else(|| self.config.request_timeout())
    }

    pub fn next_worker_id(&self) -> Arc<str> {
        let n = self.worker_seq.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::from(format!("{}-{n}", self.name).as_str())
    }

    pub fn workers(&self) -> RwLockReadGuard<'_, HashMap<Arc<str>, WorkerEntry>> {
        sync::read(&self.workers)
    }

    pub fn workers_mut(&self) -> RwLockWriteGuard<'_, HashMap<Arc<str>, WorkerEntry>> {
        sync::write(&self.workers)
    }

    pub fn commands(&self) -> Option<&BTreeSet<String>> {
        self.commands.get()
    }

    /// The described commands, sorted by name; `None` until a worker described them.
    pub fn specs(&self) -> Option<&[CommandSpec]> {
        self.specs.get().map(Vec::as_slice)
    }

    /// Whether `command` is described as async (cancelled inside Python at its
    /// deadline); false when unknown.
    pub fn is_async(&self, command: &str) -> bool {
        self.specs().is_some_and(|specs| {
            specs
                .binary_search_by(|s| s.name.as_str().cmp(command))
                .is_ok_and(|i| specs[i].is_async)
        })
    }

    /// Admitted requests not yet finished.
    pub fn in_flight(&self) -> usize {
        (self.config.size + self.config.max_queue_size)
            .saturating_sub(self.admission.available_permits())
    }

    /// Admitted requests no worker has taken yet.
    pub fn queue_size(&self) -> usize {
        self.in_flight()
            .saturating_sub(self.busy.load(Ordering::Relaxed))
            .saturating_sub(self.draining_busy.load(Ordering::Relaxed))
    }

    /// A worker became busy: emit `pool.capacity_warning` on crossing the threshold.
    pub fn mark_busy(&self) {
        let busy = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
        let pct = busy as f64 * 100.0 / self.config.size as f64;
        if pct >= self.config.capacity_warning_percent
            && self.events.is_wanted(EventKind::PoolCapacityWarning)
            && self.capacity_warning_armed.swap(false, Ordering::Relaxed)
        {
            self.events
                .emit_with(EventKind::PoolCapacityWarning, None, || {
                    data::PoolCapacityWarning {
                        utilization_percent: pct,
                        queue_depth: self.queue_size() as u64,
                        pool_name: self.name.to_string(),
                        threshold_percent: self.config.capacity_warning_percent,
                    }
                    .into()
                });
        }
    }

    pub fn mark_idle(&self) {
        let busy = self.busy.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let pct = busy as f64 * 100.0 / self.config.size as f64;
        if pct < self.config.capacity_warning_percent {
            self.capacity_warning_armed.store(true, Ordering::Relaxed);
        }
    }
}
