//! `start_method = "fork_server"`: workers forked from a template that has imported the
//! adapter once.
//!
//! ```text
//! pool ──spawn──► keeper (python -m snakepit_bridge.fork_server; PDEATHSIG = pool)
//!  │  stdin: {"op":"template"}   │ fork
//!  │  stdout ◄── exit reports ───┤
//!  │                             ▼
//!  │                      template (imports preload + adapter; PDEATHSIG = keeper)
//!  └── fork socket (SEQPACKET) ──► {"id","argv","fds"} + SCM_RIGHTS
//!                                 │ fork ─► middle ─ fork ─► worker; middle exits
//!                                 ▼
//!                worker: re-parented to the keeper (PDEATHSIG = keeper), own group,
//!                the pool's pipes on 0..8, then worker.main with what the template loaded
//! ```
//!
//! Why a keeper: a template that dies must take no worker with it, so workers cannot be
//! its children (their parent-death signal would fire). The pool's own process cannot
//! adopt them either without becoming a child subreaper, which would leave every
//! orphan of every worker's subprocesses a zombie of the user's process. The keeper is
//! the subreaper instead (`PR_SET_CHILD_SUBREAPER`): a small Python process that
//! imports nothing of the adapter, reaps everything that is orphaned below it and
//! reports each exit by pid ([`ExitBoard`]). No orphans,
//! as for spawned workers: the pool's death kills the keeper (PDEATHSIG), whose death
//! kills the template and every worker (PDEATHSIG), and each worker also watches its
//! stdin, whose write end only the pool holds. (Between its fork and its re-parenting
//! — microseconds, bounded at 5 s — a worker has only the stdin watch. As for spawned
//! workers, the keeper's parent-death signal follows the pool thread that spawned it:
//! a runtime worker thread, which lives as long as the runtime.)
//!
//! The fork path is serialised by one lock (the template forks one at a time); the
//! worker then starts on its own, so N workers are forked in N × (two forks) and get
//! ready concurrently. A template that dies is restarted by [`supervise`] (workers
//! already forked keep serving); a keeper that dies (and its workers with it) is
//! spawned again by the next fork.

mod exits;
mod socket;
mod supervise;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{ForkAfter, PoolConfig};
use crate::error::{ExitInfo, StartError};
use crate::memory;
use crate::observe::{self, PoolObserved, StackDumps};
use crate::process::{SpawnSpec, WorkerProcess};
use crate::stats::TemplateStats;
pub(crate) use exits::ExitBoard;
use socket::ForkSocket;
use supervise::{read_reports, supervise};

/// Where the template's end of the fork socket sits in the keeper (and the template).
const FORK_FD: RawFd = 3;
/// The bridge's arguments start after these in a worker's command line.
pub(crate) const BRIDGE_PREFIX: [&str; 3] = ["-u", "-m", "snakepit_bridge"];

/// The template's live state, read by `stats()`.
#[derive(Default)]
struct TemplateStatus {
    /// A keeper was started once (a later one is a restart).
    started: AtomicBool,
    pid: AtomicU32,
    ready: AtomicBool,
    restarts: AtomicU64,
    rss: AtomicU64,
    pss: AtomicU64,
    uss: AtomicU64,
}

/// How the keeper's template has fared (written by the report reader).
#[derive(Clone, Copy, Default)]
struct TemplateExits {
    /// Template exits so far.
    count: u64,
    last: Option<ExitInfo>,
    /// The keeper's stdout closed: it is gone, with every worker.
    keeper_gone: bool,
}

struct Keeper {
    process: WorkerProcess,
    /// Keeps the reader of the template's telemetry pipe (its import-time log records).
    _telemetry: Arc<StackDumps>,
    socket: ForkSocket,
    exits: watch::Receiver<TemplateExits>,
    /// `exits.count` when the live template said it was ready; `None`: no live
    /// template has.
    ready_at: Option<u64>,
}

/// One pool's fork server. See the [module docs](self).
pub(crate) struct ForkServer {
    pool: Arc<str>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    observed: Arc<PoolObserved>,
    startup_timeout: Duration,
    backoff: (Duration, Duration),
    keeper: AsyncMutex<Option<Keeper>>,
    board: Arc<ExitBoard>,
    status: Arc<TemplateStatus>,
    /// Pinged when the template or the keeper dies.
    changed: Arc<Notify>,
    next_request: AtomicU64,
    stop: CancellationToken,
}

impl ForkServer {
    /// Start the keeper and wait for its template to be ready: an adapter that fails
    /// to import fails here, once, with its traceback.
    pub async fn start(
        cfg: &PoolConfig,
        program: PathBuf,
        env: Vec<(String, String)>,
        run_id: &str,
        observed: Arc<PoolObserved>,
    ) -> Result<Arc<ForkServer>, StartError> {
        let mut args: Vec<String> = ["-u", "-m", "snakepit_bridge.fork_server", "--adapter"]
            .into_iter()
            .map(String::from)
            .collect();
        args.push(cfg.adapter.clone());
        args.extend(["--fork-fd".into(), FORK_FD.to_string()]);
        args.extend(["--preload".into(), cfg.preload.join(",")]);
        let fork_after = match cfg.fork_after {
            ForkAfter::Import => "import",
            ForkAfter::Init => "init",
        };
        args.extend(["--fork-after".into(), fork_after.into()]);
        args.extend(["--pool".into(), cfg.name.clone()]);
        // The run id on the command line lets leftovers of a crashed run be found.
        args.extend(["--run-id".into(), run_id.to_string()]);
        args.extend(["--telemetry-fd".into(), observe::CHILD_FDS[0].to_string()]);
        let server = Arc::new(ForkServer {
            pool: Arc::from(cfg.name.as_str()),
            program,
            args,
            env,
            observed,
            startup_timeout: cfg.startup_timeout(),
            backoff: (
                Duration::from_millis(cfg.restart_backoff_initial_ms),
                Duration::from_millis(cfg.restart_backoff_max_ms),
            ),
            keeper: AsyncMutex::new(None),
            board: Arc::new(ExitBoard::default()),
            status: Arc::new(TemplateStatus::default()),
            changed: Arc::new(Notify::new()),
            next_request: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        {
            let mut keeper = server.keeper.lock().await;
            server.ensure(&mut keeper).await?;
        }
        tokio::spawn(supervise(
            Arc::downgrade(&server),
            server.changed.clone(),
            server.stop.clone(),
            Duration::from_millis(cfg.memory_check_interval_ms),
        ));
        Ok(server)
    }

    /// Fork one worker: `spec` as for a spawned one (its bridge arguments, the
    /// descriptors it gets, its start-up timeout). Returns once it printed its ready
    /// line, as [`WorkerProcess::spawn`] does.
    pub async fn fork(&self, mut spec: SpawnSpec) -> Result<WorkerProcess, StartError> {
        let io = |what: &str, e: std::io::Error| StartError::Io(format!("{what}: {e}"));
        let pass_fds = std::mem::take(&mut spec.pass_fds);
        let (stdin_child, stdin_ours) =
            std::io::pipe().map_err(|e| io("cannot create pipes", e))?;
        let (stdout_ours, stdout_child) =
            std::io::pipe().map_err(|e| io("cannot create pipes", e))?;
        let (stderr_ours, stderr_child) =
            std::io::pipe().map_err(|e| io("cannot create pipes", e))?;
        let child_stdio: [OwnedFd; 3] =
            [stdin_child.into(), stdout_child.into(), stderr_child.into()];
        let mut fds: Vec<RawFd> = child_stdio.iter().map(AsRawFd::as_raw_fd).collect();
        let mut targets: Vec<RawFd> = vec![0, 1, 2];
        for (fd, at) in &pass_fds {
            fds.push(fd.as_raw_fd());
            targets.push(*at);
        }
        let argv: Vec<String> = spec
            .args
            .iter()
            .skip(BRIDGE_PREFIX.len())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let request = serde_json::json!({ "id": id, "argv": argv, "fds": targets }).to_string();
        let pid = {
            let mut keeper = self.keeper.lock().await;
            self.ensure(&mut keeper).await?;
            let Some(keeper) = keeper.as_mut() else {
                return Err(self.error("the fork server is not running", String::new()));
            };
            keeper
                .socket
                .send(request.as_bytes(), &fds)
                .await
                .map_err(|e| io("cannot send the fork request", e))?;
            // The template has its copies now; the worker's ends close with ours.
            drop(child_stdio);
            drop(pass_fds);
            self.await_reply(keeper, id).await?
        };
        let exit = self.board.watch(pid);
        WorkerProcess::adopt(
            spec,
            pid,
            [stdin_ours.into(), stdout_ours.into(), stderr_ours.into()],
            exit,
        )
        .await
    }

    /// The template, for `stats()`.
    pub fn template_stats(&self) -> TemplateStats {
        let s = &self.status;
        TemplateStats {
            pid: s.pid.load(Ordering::Relaxed),
            ready: s.ready.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            rss_bytes: s.rss.load(Ordering::Relaxed),
            pss_bytes: s.pss.load(Ordering::Relaxed),
            uss_bytes: s.uss.load(Ordering::Relaxed),
        }
    }

    /// Stop the keeper, and with it the template (workers should be stopped first:
    /// any still running die with the keeper).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let keeper = self.keeper.lock().await.take();
        if let Some(keeper) = keeper {
            keeper.process.stop(Duration::from_secs(1)).await;
            // The template dies with the keeper (SIGTERM to their group, and its
            // parent-death signal) but is not ours to wait for: watch it go, so
            // nothing of the pool runs once shutdown returns.
            let template = self.status.pid.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(2);
            while template != 0 && memory::running(template) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.status.ready.store(false, Ordering::Relaxed);
    }

    fn error(&self, message: impl Into<String>, stderr_tail: String) -> StartError {
        StartError::ForkServer {
            pool: self.pool.to_string(),
            message: message.into(),
            stderr_tail,
        }
    }

    /// A keeper with a ready template, started (or its template restarted) if needed.
    async fn ensure(&self, slot: &mut Option<Keeper>) -> Result<(), StartError> {
        if self.stop.is_cancelled() {
            return Err(StartError::ShuttingDown {
                pool: self.pool.to_string(),
            });
        }
        if let Some(keeper) = slot {
            if keeper.process.exit_status().is_some() || keeper.exits.borrow().keeper_gone {
                tracing::warn!(pool = %self.pool, "fork server keeper died (its workers with it); starting a new one");
                *slot = None;
            }
        }
        match slot {
            None => {
                let first = !self.status.started.swap(true, Ordering::Relaxed);
                let mut keeper = self.spawn_keeper().await?;
                self.await_template(&mut keeper).await?;
                *slot = Some(keeper);
                if !first {
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(keeper) => {
                let exits = keeper.exits.borrow().count;
                if keeper.ready_at != Some(exits) {
                    keeper
                        .process
                        .write_stdin(b"{\"op\": \"template\"}\n")
                        .map_err(|e| {
                            StartError::Io(format!(
                                "cannot ask the fork server for a new template: {e}"
                            ))
                        })?;
                    self.await_template(keeper).await?;
                    self.status.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    async fn spawn_keeper(&self) -> Result<Keeper, StartError> {
        let (socket, theirs) = socket::pair()
            .map_err(|e| StartError::Io(format!("cannot create the fork socket: {e}")))?;
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        // What the adapter logs while the template imports it comes structured, as
        // a worker's records do.
        let (observe_ends, theirs_observe) =
            observe::pipes().map_err(|e| StartError::Io(format!("cannot create pipes: {e}")))?;
        let mut pass_fds = vec![(theirs, FORK_FD)];
        pass_fds.extend(theirs_observe.into_iter().zip(observe::CHILD_FDS));
        let spec = SpawnSpec {
            program: self.program.clone(),
            args: self.args.iter().map(Into::into).collect(),
            env: self.env.clone(),
            worker_id: format!("{}-fork-server", self.pool),
            pool_name: self.pool.to_string(),
            startup_timeout: self.startup_timeout,
            pass_fds,
            stdout_to: Some(lines_tx),
        };
        let process = WorkerProcess::spawn(spec).await?;
        let observed = observe::start(
            observe_ends,
            process.pid(),
            Arc::from(format!("{}-template", self.pool)),
            self.pool.clone(),
            self.observed.clone(),
        )
        .map_err(|e| StartError::Io(format!("cannot read the template's telemetry pipe: {e}")))?;
        let (exits_tx, exits) = watch::channel(TemplateExits::default());
        tokio::spawn(read_reports(
            lines_rx,
            self.board.clone(),
            exits_tx,
            self.status.clone(),
            self.changed.clone(),
        ));
        Ok(Keeper {
            process,
            _telemetry: observed,
            socket,
            exits,
            ready_at: None,
        })
    }

    /// Wait for the template the keeper just forked to say it is ready.
    async fn await_template(&self, keeper: &mut Keeper) -> Result<(), StartError> {
        let seen = keeper.exits.borrow().count;
        let mut exits = keeper.exits.clone();
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        loop {
            let message = tokio::select! {
                biased;
                m = keeper.socket.recv() => m,
                last = template_gone(&mut exits, seen) => match keeper.socket.try_recv() {
                    // A template that refuses to serve sends why, then exits: the exit
                    // report can come in before the reactor saw the message, which is
                    // in the socket all the same and says more.
                    Ok(Some(message)) => Ok(message),
                    _ => {
                        let how = last.map(|e| e.to_string()).unwrap_or_else(|| "the keeper died".into());
                        return Err(self.error(
                            format!("the template exited before it was ready ({how})"),
                            keeper.process.stderr_tail().await,
                        ));
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    self.kill_template();
                    return Err(self.error(
                        format!("the template was not ready within {} ms (startup_timeout_ms): is the adapter's import stuck?",
                            self.startup_timeout.as_millis()),
                        keeper.process.stderr_tail().await,
                    ));
                }
            };
            let value = self.decode(message, keeper).await?;
            if value.get("id").is_some() {
                continue; // a late answer to a fork request that gave up
            }
            if let Some(ready) = value.get("ready") {
                // Its own word for its pid: the keeper's report of the fork travels
                // on another pipe and may come later.
                if let Some(pid) = ready.get("pid").and_then(Value::as_u64) {
                    self.status.pid.store(pid as u32, Ordering::Relaxed);
                }
                keeper.ready_at = Some(seen);
                self.status.ready.store(true, Ordering::Relaxed);
                tracing::info!(pool = %self.pool, pid = self.status.pid.load(Ordering::Relaxed), "fork server template ready");
                return Ok(());
            }
            if let Some(error) = value.get("error").and_then(Value::as_str) {
                // It exits next; its traceback is on stderr.
                let exited =
                    tokio::time::timeout(Duration::from_secs(2), template_gone(&mut exits, seen))
                        .await;
                let message = match exited {
                    Ok(Some(exit)) => format!("{error} (the template exited: {exit})"),
                    _ => error.to_string(),
                };
                // The traceback it sent, else what of its stderr has reached us.
                let tail = match value.get("traceback").and_then(Value::as_str) {
                    Some(traceback) => traceback.trim_end().to_string(),
                    None => keeper.process.stderr_tail().await,
                };
                return Err(self.error(message, tail));
            }
        }
    }

    /// One message from the template's socket, decoded (a message that is not JSON
    /// decodes to `Null`, which no caller waits for); an empty one means the fork
    /// server is gone.
    async fn decode(
        &self,
        message: std::io::Result<Vec<u8>>,
        keeper: &Keeper,
    ) -> Result<Value, StartError> {
        let message = message.map_err(|e| StartError::Io(format!("fork socket: {e}")))?;
        if message.is_empty() {
            return Err(self.error(
                "the fork server closed its socket (it died)",
                keeper.process.stderr_tail().await,
            ));
        }
        Ok(serde_json::from_slice(&message).unwrap_or(Value::Null))
    }

    /// The template's answer to fork request `id`: the worker's pid.
    async fn await_reply(&self, keeper: &mut Keeper, id: u64) -> Result<u32, StartError> {
        let seen = keeper.exits.borrow().count;
        let mut exits = keeper.exits.clone();
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        loop {
            let message = tokio::select! {
                m = keeper.socket.recv() => m,
                _ = template_gone(&mut exits, seen) => {
                    return Err(self.error("the template died while forking a worker", keeper.process.stderr_tail().await));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(self.error(format!("the template did not fork within {} ms (startup_timeout_ms)",
                        self.startup_timeout.as_millis()), keeper.process.stderr_tail().await));
                }
            };
            let value = self.decode(message, keeper).await?;
            if value.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // an answer to an earlier request that gave up
            }
            if let Some(pid) = value.get("pid").and_then(Value::as_u64) {
                return u32::try_from(pid)
                    .map_err(|_| self.error(format!("bad pid {pid}"), String::new()));
            }
            let error = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("malformed reply");
            return Err(self.error(error, String::new()));
        }
    }

    /// A template stuck before it was ready (the keeper reaps it and reports).
    fn kill_template(&self) {
        let pid = self.status.pid.load(Ordering::Relaxed);
        if pid != 0 {
            // SAFETY: kill(2) of the template, a child of our keeper, not yet reaped
            // (the keeper reports it when it is).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    fn template_dead(&self, keeper: &Keeper) -> bool {
        let e = keeper.exits.borrow();
        e.keeper_gone || keeper.ready_at != Some(e.count)
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wait until the template seen as exit number `seen` is gone (or the keeper is);
/// how it exited, if known. (The watch's guard stays inside: it must not live across
/// an await of the caller.)
async fn template_gone(exits: &mut watch::Receiver<TemplateExits>, seen: u64) -> Option<ExitInfo> {
    let gone = exits.wait_for(|e| e.count > seen || e.keeper_gone).await;
    gone.ok().and_then(|e| e.last)
}
