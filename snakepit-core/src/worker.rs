//! A started worker: its process, its transport, and the counters stats read.
//!
//! Start-up is: spawn `python -m snakepit_bridge ...` (with a socket path for gRPC, or
//! inheriting four pipes for the pipe transport) → wait for its ready line → connect
//! the transport → one health call as the handshake. Only then is the worker
//! registered with the pool and given requests.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{PoolConfig, StartMethod, TransportKind};
use crate::error::StartError;
use crate::fork_server::{ForkServer, BRIDGE_PREFIX};
use crate::observe::{self, PoolObserved, StackDumps};
use crate::process::{SpawnSpec, WorkerProcess};
use crate::stats::{WorkerState, WorkerStats};
#[cfg(feature = "grpc")]
use crate::transport::grpc::GrpcTransport;
use crate::transport::pipe::{self, PipeTransport};
use crate::transport::WorkerTransport;

/// Thread-pool variables of numeric libraries, pinned to 1 per worker by default.
const THREAD_LIMIT_VARS: [&str; 5] = [
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
];

/// Live counters of one worker, shared with stats and the registry.
pub(crate) struct WorkerStatus {
    pub id: Arc<str>,
    pub pid: u32,
    pub started_at: Instant,
    state: AtomicU8,
    pub requests: AtomicU64,
    /// Requests the worker answered (a result or a Python error): a worker that has
    /// answered one was serving, so its death is not a crash loop.
    pub completed: AtomicU64,
    pub rss_bytes: AtomicU64,
    pub pss_bytes: AtomicU64,
    pub uss_bytes: AtomicU64,
}

impl WorkerStatus {
    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> WorkerState {
        match self.state.load(Ordering::Relaxed) {
            0 => WorkerState::Starting,
            1 => WorkerState::Idle,
            2 => WorkerState::Busy,
            3 => WorkerState::Stopping,
            _ => WorkerState::Draining,
        }
    }

    /// A ready worker's counters: idle, nothing run yet, `rss` as it reported it.
    fn new(id: Arc<str>, pid: u32, started_at: Instant, rss: u64) -> Self {
        WorkerStatus {
            id,
            pid,
            started_at,
            state: AtomicU8::new(WorkerState::Idle as u8),
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rss_bytes: AtomicU64::new(rss),
            pss_bytes: AtomicU64::new(0),
            uss_bytes: AtomicU64::new(0),
        }
    }

    /// The memory `max_memory_mb` is checked against, and which measure it is: RSS
    /// for a spawned worker, USS for a forked one (the pages it shares with the
    /// template are not its own) — RSS again where USS is unknown (no smaps_rollup).
    pub fn held_memory(&self, method: StartMethod) -> (&'static str, u64) {
        let uss = self.uss_bytes.load(Ordering::Relaxed);
        match method {
            StartMethod::ForkServer if uss > 0 => ("uss", uss),
            _ => ("rss", self.rss_bytes.load(Ordering::Relaxed)),
        }
    }

    pub fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            id: self.id.to_string(),
            state: self.state(),
            pid: self.pid,
            uptime: self.started_at.elapsed(),
            requests: self.requests.load(Ordering::Relaxed),
            rss_bytes: self.rss_bytes.load(Ordering::Relaxed),
            pss_bytes: self.pss_bytes.load(Ordering::Relaxed),
            uss_bytes: self.uss_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where and how to start workers of one pool.
pub(crate) struct LaunchSpec {
    pub python: PathBuf,
    pub run_id: String,
    pub run_dir: PathBuf,
    /// What the pool keeps of its workers' log records and user metrics.
    pub observed: Arc<PoolObserved>,
    /// With `start_method = "fork_server"`: where workers are forked from.
    pub fork_server: Option<Arc<ForkServer>>,
}

pub(crate) struct Worker {
    pub id: Arc<str>,
    /// When it passed its handshake (became routable).
    pub ready_at: Instant,
    pub process: WorkerProcess,
    pub transport: Arc<dyn WorkerTransport>,
    pub status: Arc<WorkerStatus>,
    /// Its Python stacks, on demand.
    pub stacks: Arc<StackDumps>,
    /// The gRPC socket file, removed with the worker.
    socket: Option<PathBuf>,
}

/// How the pool reaches a worker it is starting.
enum Channel {
    #[cfg(feature = "grpc")]
    Socket(PathBuf),
    Pipes(pipe::PipeEnds),
}

impl Worker {
    pub async fn start(
        id: Arc<str>,
        cfg: &PoolConfig,
        launch: &LaunchSpec,
    ) -> Result<Worker, StartError> {
        let started = Instant::now();
        let mut spec = spawn_spec(&id, cfg, launch);
        let channel = match cfg.transport {
            #[cfg(feature = "grpc")]
            TransportKind::Grpc => {
                let socket = launch.run_dir.join(format!("{}.sock", id));
                let _ = std::fs::remove_file(&socket);
                spec.args.push("--socket".into());
                spec.args.push(socket.as_os_str().to_owned());
                Channel::Socket(socket)
            }
            // PoolConfig::validate refuses it first; this keeps a hand-built config honest.
            #[cfg(not(feature = "grpc"))]
            TransportKind::Grpc => {
                return Err(StartError::Config(crate::config::grpc_not_built(&cfg.name)))
            }
            TransportKind::Pipe => {
                let (ours, theirs) = pipe::pipes()
                    .map_err(|e| StartError::Io(format!("cannot create pipes: {e}")))?;
                spec.args.push("--pipe-fds".into());
                let numbers: Vec<String> = pipe::CHILD_FDS.iter().map(i32::to_string).collect();
                spec.args.push(numbers.join(",").into());
                spec.args.push("--busy-poll-us".into());
                spec.args.push(cfg.busy_poll_us.to_string().into());
                spec.pass_fds = theirs.into_iter().zip(pipe::CHILD_FDS).collect();
                Channel::Pipes(ours)
            }
        };
        // Its log records and stack dumps come on two pipes of their own, whatever
        // the transport.
        let (observed, theirs) =
            observe::pipes().map_err(|e| StartError::Io(format!("cannot create pipes: {e}")))?;
        for (flag, fd) in [
            ("--telemetry-fd", observe::CHILD_FDS[0]),
            ("--stacks-fd", observe::CHILD_FDS[1]),
        ] {
            spec.args.push(flag.into());
            spec.args.push(fd.to_string().into());
        }
        spec.pass_fds
            .extend(theirs.into_iter().zip(observe::CHILD_FDS));
        let process = match &launch.fork_server {
            Some(server) => server.fork(spec).await?,
            None => WorkerProcess::spawn(spec).await?,
        };
        let stacks = observe::start(
            observed,
            process.pid(),
            id.clone(),
            Arc::from(cfg.name.as_str()),
            launch.observed.clone(),
        )
        .map_err(|e| StartError::Io(format!("cannot read the worker's telemetry pipes: {e}")))?;
        let remaining = cfg.startup_timeout().saturating_sub(started.elapsed());
        let handshake_timeout = remaining.max(Duration::from_secs(1));
        let handshake_err = |message: String| StartError::Handshake {
            worker_id: id.to_string(),
            message,
        };
        let (transport, socket): (Arc<dyn WorkerTransport>, _) = match channel {
            #[cfg(feature = "grpc")]
            Channel::Socket(socket) => {
                let transport =
                    GrpcTransport::connect(&socket, cfg.max_response_bytes, handshake_timeout)
                        .await
                        .map_err(|e| handshake_err(e.to_string()))?;
                (Arc::new(transport), Some(socket))
            }
            Channel::Pipes(ends) => {
                let transport = PipeTransport::new(ends, cfg.max_response_bytes)
                    .map_err(|e| handshake_err(format!("cannot use the pipes: {e}")))?;
                (Arc::new(transport), None)
            }
        };
        let health = transport
            .health(handshake_timeout)
            .await
            .map_err(|e| handshake_err(format!("health check failed: {e}")))?;
        if health.pid != process.pid() {
            return Err(handshake_err(format!(
                "the worker channel answered for pid {} but the worker is pid {}",
                health.pid,
                process.pid()
            )));
        }
        let status = Arc::new(WorkerStatus::new(
            id.clone(),
            process.pid(),
            process.started_at,
            health.rss_bytes,
        ));
        Ok(Worker {
            id,
            ready_at: Instant::now(),
            process,
            transport,
            status,
            stacks,
            socket,
        })
    }

    pub fn uptime(&self) -> Duration {
        self.process.started_at.elapsed()
    }

    pub fn requests(&self) -> u64 {
        self.status.requests.load(Ordering::Relaxed)
    }

    pub fn completed(&self) -> u64 {
        self.status.completed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
impl Worker {
    /// A worker whose calls go to `transport` and whose process is a stand-in: the
    /// pool's paths a real worker cannot be made to hit on demand, tested with it.
    pub(crate) fn fake(id: &str, transport: Arc<dyn WorkerTransport>) -> Worker {
        let process = WorkerProcess::stand_in();
        let id: Arc<str> = Arc::from(id);
        let status = Arc::new(WorkerStatus::new(id.clone(), 0, process.started_at, 0));
        Worker {
            id,
            ready_at: Instant::now(),
            process,
            transport,
            status,
            stacks: StackDumps::none(),
            socket: None,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The worker command line and environment, without its channel (socket or pipes).
fn spawn_spec(id: &str, cfg: &PoolConfig, launch: &LaunchSpec) -> SpawnSpec {
    let mut args: Vec<OsString> = BRIDGE_PREFIX.into_iter().map(OsString::from).collect();
    args.push("--adapter".into());
    args.push(cfg.adapter.clone().into());
    for (flag, value) in [
        ("--worker-id", id.to_string()),
        ("--pool", cfg.name.clone()),
        // The run id on the command line lets leftovers of a crashed run be found.
        ("--run-id", launch.run_id.clone()),
        ("--max-message-bytes", cfg.max_response_bytes.to_string()),
        ("--threads", cfg.python.rpc_threads.to_string()),
        (
            "--stop-grace",
            format!("{:.3}", cfg.stop_grace_ms as f64 / 2000.0),
        ),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--watch-stdin".into());
    SpawnSpec {
        program: launch.python.clone(),
        args,
        env: worker_env(cfg),
        worker_id: id.to_string(),
        pool_name: cfg.name.clone(),
        startup_timeout: cfg.startup_timeout(),
        pass_fds: Vec::new(),
        stdout_to: None,
    }
}

/// The environment of a pool's workers (and of its fork server, whose workers inherit
/// it): the same for every worker of the pool.
pub(crate) fn worker_env(cfg: &PoolConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![("PYTHONUNBUFFERED".into(), "1".into())];
    if cfg.python.limit_threads {
        env.extend(
            THREAD_LIMIT_VARS
                .iter()
                .map(|v| (v.to_string(), "1".to_string())),
        );
    }
    if !cfg.python.pythonpath.is_empty() {
        let mut parts: Vec<String> = cfg
            .python
            .pythonpath
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if let Ok(existing) = std::env::var("PYTHONPATH") {
            parts.push(existing);
        }
        env.push(("PYTHONPATH".into(), parts.join(":")));
    }
    // User settings win over our defaults.
    env.extend(cfg.python.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}
