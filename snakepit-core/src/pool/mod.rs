//! The pool: a `tower::Service` in front of N Python worker processes.
//!
//! ```text
//! caller ─► Pool (handle, Clone) ─ admission (size + max_queue_size permits)
//!              │ validate, route
//!              ├─► worker's private queue (session affinity)
//!              └─► shared queue ─► slot 1..N: driver ─► transport ─► Python
//!                                          monitor (health, RSS) ┘
//! ```
//! A handle is cheap to clone; all clones share one pool. Dropping the last handle
//! without [`Pool::shutdown`] kills the workers.

mod ahead;
mod call;
mod deadline;
mod dispatch;
mod drain;
mod driver;
mod execute;
mod exit;
mod failure;
mod job;
mod leave;
mod monitor;
mod report;
mod service;
mod sessions;
mod shared;
mod slot;
mod stream;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::{CancellationToken, PollSemaphore};

pub use call::MAX_REQUEST_TIMEOUT;
pub use service::{PoolFuture, StreamingPool};
pub use stream::{ResponseStream, StreamEnd, StreamOutcome};

use crate::catalog::CommandSpec;
use crate::config::{PoolConfig, StartMethod, WhenFull};
use crate::error::{Error, StackDumpError, StartError};
use crate::events::{data, EventBus, EventKind};
use crate::fork_server::ForkServer;
use crate::observe::UserMetrics;
use crate::python_env;
use crate::request::{Request, Response};
use crate::session::{SessionInfo, SessionOptions};
use crate::stats::{PoolLoad, PoolStats, PythonLogCounts, WorkerState};
use crate::worker::LaunchSpec;
use report::ms;
use sessions::{emit_session_created, end_session, sweep_sessions};
use shared::PoolShared;

/// Stops the pool's workers when the last handle goes away.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A pool of Python workers. See the [module docs](self).
pub struct Pool {
    shared: Arc<PoolShared>,
    _guard: Arc<StopOnDrop>,
    /// Admission slot reserved by `poll_ready`, consumed by `call`.
    reserved: Option<OwnedSemaphorePermit>,
    semaphore: PollSemaphore,
}

impl Clone for Pool {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
            _guard: self._guard.clone(),
            reserved: None,
            semaphore: self.semaphore.clone(),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("size", &self.shared.config.size)
            .finish()
    }
}

impl Pool {
    /// Validate `config`, find (or bootstrap) Python, start all workers concurrently and
    /// return once each has passed its handshake or failed. Fails only if none started;
    /// slots whose worker failed keep retrying with backoff.
    pub async fn start(config: PoolConfig, events: EventBus) -> Result<Pool, StartError> {
        config.validate()?;
        let started = Instant::now();
        let (python_cfg, transport) = (config.python.clone(), config.transport);
        let python = tokio::task::spawn_blocking(move || {
            python_env::resolve_interpreter_for(&python_cfg, transport)
        })
        .await
        .map_err(|e| StartError::Environment(format!("bootstrap task failed: {e}")))??;
        let run_id = format!("{:08x}", fastrand::u32(..));
        let run_dir = socket_dir(&run_id);
        std::fs::create_dir_all(&run_dir).map_err(|e| {
            StartError::Io(format!(
                "cannot create socket dir {}: {e}",
                run_dir.display()
            ))
        })?;
        let observed = Arc::new(crate::observe::PoolObserved::new(&config.name));
        let fork_server = match config.start_method {
            StartMethod::Spawn => None,
            StartMethod::ForkServer => {
                let env = crate::worker::worker_env(&config);
                let started =
                    ForkServer::start(&config, python.clone(), env, &run_id, observed.clone());
                match started.await {
                    Ok(server) => Some(server),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&run_dir);
                        return Err(e);
                    }
                }
            }
        };
        let launch = LaunchSpec {
            python,
            run_id,
            run_dir,
            observed,
            fork_server,
        };
        let shared = Arc::new(PoolShared::new(config, events, launch));
        let mut first_starts = Vec::with_capacity(shared.config.size);
        for _ in 0..shared.config.size {
            let (tx, rx) = oneshot::channel();
            shared.tasks.spawn(slot::run(shared.clone(), Some(tx)));
            first_starts.push(rx);
        }
        shared.tasks.spawn(sweep_sessions(shared.clone()));
        let pool = Pool {
            _guard: Arc::new(StopOnDrop(shared.abort.clone())),
            semaphore: PollSemaphore::new(shared.admission.clone()),
            reserved: None,
            shared,
        };
        let mut first_error = None;
        let mut ready = 0usize;
        for result in futures_util::future::join_all(first_starts).await {
            match result {
                Ok(Ok(())) => ready += 1,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        let shared = &pool.shared;
        if ready == 0 {
            pool.shutdown(Duration::ZERO).await;
            return Err(StartError::NoWorkers {
                pool: shared.name.to_string(),
                first: Box::new(first_error.unwrap_or(StartError::ShuttingDown {
                    pool: shared.name.to_string(),
                })),
            });
        }
        let startup = started.elapsed();
        tracing::info!(pool = %shared.name, ready, size = shared.config.size,
            startup_ms = startup.as_millis() as u64, "pool started");
        shared.events.emit_with(EventKind::PoolStarted, None, || {
            data::PoolStarted {
                pool_size: shared.config.size as u64,
                startup_time_ms: ms(startup),
                pool_name: shared.name.to_string(),
                adapter: shared.config.adapter.clone(),
            }
            .into()
        });
        Ok(pool)
    }

    /// The pool's name (`PoolConfig::name`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The id on every worker's command line (`--run-id`): finds leftovers of a run.
    pub fn run_id(&self) -> &str {
        &self.shared.launch.run_id
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The bus its lifecycle events go to.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// The adapter's command names, once a worker has described them.
    pub fn commands(&self) -> Vec<String> {
        self.shared
            .commands()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What the adapter's commands take and return (names, streaming or async, doc,
    /// parameters, JSON Schemas from the type hints), sorted by name; `None` until a
    /// worker has described them (at the first worker's start; a worker that could not
    /// describe leaves it `None`, and the next one started tries again).
    pub fn command_specs(&self) -> Option<&[CommandSpec]> {
        self.shared.specs()
    }

    /// Whether the adapter declares `command`; `None` until a worker has described
    /// its commands. Cheap (no lock): telemetry asks it per request.
    pub fn knows_command(&self, command: &str) -> Option<bool> {
        self.shared.commands().map(|c| c.contains(command))
    }

    /// Run one command. Admission follows `when_full`: `Reject` fails at once with
    /// `QueueFull`, `Wait` waits for a slot.
    pub async fn execute(&self, req: Request) -> Result<Response, Error> {
        let permit = self.admit(&req).await?;
        call::unary(self.shared.clone(), Some(permit), req).await
    }

    /// Run a generator command; the stream yields each chunk as Python yields it.
    /// Returns once the first chunk (or the failure) is in.
    pub async fn execute_stream(&self, req: Request) -> Result<ResponseStream, Error> {
        let permit = self.admit(&req).await?;
        call::stream(self.shared.clone(), Some(permit), req).await
    }

    async fn admit(&self, req: &Request) -> Result<OwnedSemaphorePermit, Error> {
        match self.shared.config.when_full {
            WhenFull::Reject => call::try_admit(&self.shared, req),
            WhenFull::Wait => self
                .shared
                .admission
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::ShuttingDown {
                    pool: self.shared.name.to_string(),
                }),
        }
    }

    /// Create a session. Its requests (`Request::session`) go to one worker while it
    /// lives. No worker is called until the first request.
    pub fn create_session(&self, opts: SessionOptions) -> Result<SessionInfo, Error> {
        let started = Instant::now();
        let ttl = opts.ttl.unwrap_or(Duration::from_secs(
            self.shared.config.sessions.default_ttl_secs,
        ));
        let info = self.shared.sessions.create(&opts, ttl)?;
        emit_session_created(&self.shared, &info.id, ttl, started, None, false, || {
            opts.metadata.clone()
        });
        Ok(info)
    }

    /// The session `id`, if it exists.
    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.shared.sessions.get(id)
    }

    /// Close a session now; its worker drops the session's state.
    pub async fn close_session(&self, id: &str) -> Result<(), Error> {
        let ended = self
            .shared
            .sessions
            .remove(id)
            .ok_or_else(|| Error::SessionNotFound {
                session_id: id.to_string(),
            })?;
        end_session(&self.shared, ended, "closed").await;
        Ok(())
    }

    /// The Python stacks of every thread of worker `worker_id`, live: the worker's
    /// `faulthandler` dumps them from its signal handler, so this answers even while
    /// the worker is stuck in C code that holds the GIL. Waits at most `wait`.
    pub async fn python_stacks(
        &self,
        worker_id: &str,
        wait: Duration,
    ) -> Result<String, StackDumpError> {
        let stacks = self
            .shared
            .workers()
            .get(worker_id)
            .map(|w| w.stacks.clone())
            .ok_or_else(|| StackDumpError::UnknownWorker {
                worker_id: worker_id.to_string(),
                pool: self.shared.name.to_string(),
            })?;
        stacks
            .capture(wait)
            .await
            .ok_or_else(|| StackDumpError::NoAnswer {
                worker_id: worker_id.to_string(),
                wait,
            })
    }

    /// How many Python `logging` records this pool's workers sent, and dropped.
    pub fn python_log_counts(&self) -> PythonLogCounts {
        let (records, dropped) = self.shared.launch.observed.logs.snapshot();
        PythonLogCounts { records, dropped }
    }

    /// The user metrics its workers record with `snakepit_bridge.metrics`, summed over
    /// its workers past and present (gauges per live worker). Shared: an exporter may
    /// keep a `Weak` to it.
    pub fn user_metrics(&self) -> &Arc<UserMetrics> {
        &self.shared.launch.observed.metrics
    }

    /// A snapshot; reads counters only, never calls a worker.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let workers: Vec<_> = {
            let registry = s.workers();
            registry.values().map(|w| w.status.snapshot()).collect()
        };
        let busy = workers
            .iter()
            .filter(|w| w.state == WorkerState::Busy)
            .count();
        // A draining worker serves only its sessions: it is listed, not counted ready.
        let ready = workers
            .len()
            .saturating_sub(s.draining.load(Ordering::Relaxed));
        let python_logs = s.launch.observed.logs.snapshot();
        PoolStats {
            name: s.name.to_string(),
            adapter: s.config.adapter.clone(),
            total_workers: s.config.size,
            ready_workers: ready,
            available_workers: ready.saturating_sub(busy),
            busy_workers: busy,
            queue_size: s.queue_size(),
            max_queue_size: s.config.max_queue_size,
            in_flight: s.in_flight(),
            requests_total: s.requests_total.load(Ordering::Relaxed),
            failures_total: s.failures_total.load(Ordering::Relaxed),
            crashes_total: s.crashes_total.load(Ordering::Relaxed),
            recycles_total: s.recycles_total.load(Ordering::Relaxed),
            pipelined_total: s.pipelined_total.load(Ordering::Relaxed),
            taken_back_total: s.taken_back_total.load(Ordering::Relaxed),
            python_log_records_total: python_logs.0,
            python_log_records_dropped_total: python_logs.1,
            active_sessions: s.sessions.len(),
            uptime: s.started_at.elapsed(),
            accepting: s.accepting.load(Ordering::Relaxed),
            window: s.window.snapshot(),
            workers,
            start_method: s.config.start_method,
            template: s.launch.fork_server.as_ref().map(|f| f.template_stats()),
        }
    }

    /// Worker and queue counts only (no window, no per-worker list): for gauges.
    pub fn load(&self) -> PoolLoad {
        let s = &self.shared;
        let ready = s
            .workers()
            .len()
            .saturating_sub(s.draining.load(Ordering::Relaxed));
        let busy = s.busy.load(Ordering::Relaxed).min(ready);
        PoolLoad {
            total_workers: s.config.size,
            ready_workers: ready,
            available_workers: ready - busy,
            busy_workers: busy,
            queue_size: s.queue_size(),
            in_flight: s.in_flight(),
            active_sessions: s.sessions.len(),
        }
    }

    /// True once the pool's supervision has ended (shutdown finished, or the last
    /// handle was dropped): nothing will restart its workers any more.
    pub fn is_stopped(&self) -> bool {
        let t = &self.shared.tasks;
        self.shared.abort.is_cancelled() || (t.is_closed() && t.is_empty())
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        !self.shared.accepting.load(Ordering::Acquire)
    }

    /// Stop taking requests, let admitted ones finish for up to `drain`, then stop the
    /// workers (SIGTERM, SIGKILL after `stop_grace_ms`). Requests still unfinished after
    /// that fail with `ShuttingDown`. Calling it again waits for the first call.
    pub async fn shutdown(&self, drain: Duration) {
        let s = &self.shared;
        if !s.accepting.swap(false, Ordering::AcqRel) {
            s.tasks.close();
            s.tasks.wait().await;
            return;
        }
        let deadline = Instant::now() + drain;
        while s.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s.stop.cancel();
        for job in s.dispatch.drain() {
            job.fail(Error::ShuttingDown {
                pool: s.name.to_string(),
            });
        }
        s.admission.close();
        let ended = s.sessions.take_all();
        if !ended.is_empty() {
            s.events.emit_with(EventKind::SessionCleanup, None, || {
                data::SessionCleanup {
                    sessions_cleaned: ended.len() as u64,
                    cleanup_time_ms: 0.0,
                    pool_name: s.name.to_string(),
                    cleanup_reason: "shutdown".into(),
                }
                .into()
            });
        }
        s.tasks.close();
        // Slots finish their current request first; past the grace, workers are killed.
        let grace = Duration::from_millis(s.config.stop_grace_ms) + Duration::from_secs(1);
        if tokio::time::timeout(grace, s.tasks.wait()).await.is_err() {
            s.abort.cancel();
            s.tasks.wait().await;
        }
        // Jobs handed back by workers that were leaving.
        for job in s.dispatch.drain() {
            job.fail(Error::ShuttingDown {
                pool: s.name.to_string(),
            });
        }
        if let Some(server) = &s.launch.fork_server {
            server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&s.launch.run_dir);
        s.events.emit_with(EventKind::PoolStopped, None, || {
            data::PoolStopped {
                uptime_ms: ms(s.started_at.elapsed()),
                total_requests: s.requests_total.load(Ordering::Relaxed),
                pool_name: s.name.to_string(),
                reason: "shutdown".into(),
            }
            .into()
        });
        tracing::info!(pool = %s.name, "pool stopped");
    }
}

/// A short socket directory: Unix socket paths are limited to 107 bytes.
fn socket_dir(run_id: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let dir = tmp.join(format!("snakepit-{run_id}"));
    if dir.as_os_str().len() <= 80 {
        dir
    } else {
        PathBuf::from("/tmp").join(format!("snakepit-{run_id}"))
    }
}
