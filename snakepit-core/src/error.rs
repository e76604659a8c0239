//! Typed errors. [`Error`] is what a request can fail with (SPEC §2); [`StartError`]
//! is what starting a pool or worker can fail with. Messages say what happened and,
//! where there is one, what to do about it.

use std::fmt;
use std::time::Duration;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code when the process exited by itself.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// A forked worker whose keeper died: it died too (SIGKILL, `PR_SET_PDEATHSIG`),
    /// and nobody is left to report its status.
    pub(crate) const LOST: ExitInfo = ExitInfo {
        code: None,
        signal: Some(libc::SIGKILL),
    };

    /// Exits that a stop we asked for produces: 0, SIGTERM, SIGKILL (137/143 in shells).
    pub fn is_expected_on_stop(&self) -> bool {
        matches!(self.code, Some(0)) || matches!(self.signal, Some(libc::SIGTERM | libc::SIGKILL))
    }
}

impl From<std::process::ExitStatus> for ExitInfo {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        _ => "other",
    }
}

/// A Python exception, exactly as the worker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonError {
    /// The exception type: `ValueError`, or `pkg.module.Error` for non-builtins.
    pub python_type: String,
    /// The exception's message (`str(exc)`).
    pub message: String,
    /// The full formatted traceback, most recent call last.
    pub traceback: String,
    /// The worker's timing of the failed call, when its trace context was sampled.
    pub worker_span: Option<crate::worker_span::WorkerSpan>,
    /// How long the command ran in Python before it raised, by the worker's clock
    /// (for a stream: all its steps), when the worker reported it.
    pub python_time: Option<std::time::Duration>,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every worker busy and `max_queue_size` requests already waiting (`when_full = "reject"`).
    #[error("pool '{pool}' is full: {max_queue_size} requests already wait for a worker; retry later, add workers, or raise max_queue_size")]
    QueueFull {
        /// The pool.
        pool: String,
        /// Its `max_queue_size`.
        max_queue_size: usize,
    },

    /// No worker became free within `queue_timeout_ms`.
    #[error("no worker of pool '{pool}' became free within the queue timeout of {} ms; the pool is overloaded or its workers are stuck", timeout.as_millis())]
    QueueTimeout {
        /// The pool.
        pool: String,
        /// Its `queue_timeout_ms`.
        timeout: Duration,
    },

    #[error("'{command}' did not finish within {} ms on worker {worker_id}; {}", timeout.as_millis(), timeout_outcome(*caller_stalled, *cancelled_in_python))]
    /// The call overran its deadline; the worker was replaced (or, for a stalled
    /// stream reader, the stream was cancelled; or, for an async command, the
    /// coroutine was cancelled inside Python and the worker kept).
    Timeout {
        /// The command.
        command: String,
        /// The worker it ran on.
        worker_id: String,
        /// The deadline it had.
        timeout: Duration,
        /// The deadline passed while the worker waited for the caller to read the next
        /// chunk of a stream, not while Python was working.
        caller_stalled: bool,
        /// An async command was still running at its deadline and the worker cancelled
        /// it inside Python (the coroutine got `CancelledError`): the worker was kept.
        cancelled_in_python: bool,
        /// Where the worker's Python threads were when the deadline passed, as
        /// `faulthandler` dumps them (most recent call first), taken just before the
        /// worker was killed; for a coroutine cancelled inside Python, the traceback of
        /// where it was awaiting. `None` for a stalled caller, or when the worker did
        /// not answer within the bounded wait.
        python_stack: Option<String>,
    },

    #[error(
        "worker {worker_id} crashed ({exit}) while running '{command}'{}",
        tail_suffix(stderr_tail)
    )]
    /// The worker process died during the call; a new one is started.
    WorkerCrashed {
        /// The command that was running.
        command: String,
        /// The worker that died.
        worker_id: String,
        /// How it died (exit code or signal).
        exit: ExitInfo,
        /// The last lines the worker wrote to stderr.
        stderr_tail: String,
    },

    #[error("worker {worker_id} stopped answering health checks ({failures} in a row) while running '{command}' and was replaced; python_stack says where it was stuck (a C call holding the GIL cannot answer: raise health_check_timeout_ms or health_check_failures if that is expected)")]
    /// The worker failed its health checks in a row during the call (it never
    /// answered while the command ran, typically C code holding the GIL); it was
    /// killed and replaced.
    WorkerUnhealthy {
        /// The command that was running.
        command: String,
        /// The worker.
        worker_id: String,
        /// Health checks failed in a row.
        failures: u32,
        /// Where its Python threads were, as `faulthandler` dumped them before the
        /// kill; `None` when the worker did not answer within the bounded wait.
        python_stack: Option<String>,
    },

    /// The adapter raised: the exception with its traceback.
    #[error("Python raised {}: {}", .0.python_type, .0.message)]
    Python(Box<PythonError>),

    /// The adapter has no such command.
    #[error("unknown command '{command}'; available: {}", if available.is_empty() { "(none reported)".to_string() } else { available.join(", ") })]
    UnknownCommand {
        /// The command asked for.
        command: String,
        /// The commands the adapter declares.
        available: Vec<String>,
    },

    /// The arguments are not a JSON object the command takes.
    #[error("invalid arguments: {message}")]
    InvalidArgs {
        /// What is wrong with them.
        message: String,
    },

    /// The arguments exceed `max_payload_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes (max_payload_bytes)")]
    PayloadTooLarge {
        /// The arguments' size, bytes.
        size: usize,
        /// `max_payload_bytes`.
        limit: usize,
    },

    /// No such session.
    #[error("no session '{session_id}': it was never created, was closed, or expired")]
    SessionNotFound {
        /// The session asked for.
        session_id: String,
    },

    /// The session's worker is gone and with it its state (`on_worker_loss = "fail"`).
    #[error("session '{session_id}' lost its state: {reason}; create a new session (or create sessions with on_worker_loss = \"recreate\" to have them re-created empty)")]
    SessionLost {
        /// The session.
        session_id: String,
        /// Why its state is gone (its worker crashed, was recycled...).
        reason: String,
    },

    /// The request names a pool that does not exist.
    #[error("no pool named '{name}'; configured pools: {}", available.join(", "))]
    UnknownPool {
        /// The pool asked for.
        name: String,
        /// The pools there are.
        available: Vec<String>,
    },

    /// The channel to the worker failed (not a crash or a timeout).
    #[error("transport to worker {worker_id} failed: {message}")]
    Transport {
        /// The worker.
        worker_id: String,
        /// What failed.
        message: String,
    },

    /// The pool is stopping and takes no new requests.
    #[error("pool '{pool}' is shutting down and takes no new requests")]
    ShuttingDown {
        /// The pool.
        pool: String,
    },
}

/// Why [`crate::Pool::python_stacks`] has no stacks to show.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StackDumpError {
    /// No ready worker of that id in the pool.
    #[error("pool '{pool}' has no worker '{worker_id}' (see /health/detailed for its workers)")]
    UnknownWorker {
        /// The id asked for.
        worker_id: String,
        /// The pool asked.
        pool: String,
    },
    /// The worker wrote no stacks within the wait (it is exiting, or its process is
    /// stopped).
    #[error("worker {worker_id} did not dump its stacks within {} ms; it may be exiting", wait.as_millis())]
    NoAnswer {
        /// The worker.
        worker_id: String,
        /// How long the pool waited.
        wait: Duration,
    },
}

/// What became of the call and its worker, for `Error::Timeout`'s message.
fn timeout_outcome(caller_stalled: bool, cancelled_in_python: bool) -> &'static str {
    if caller_stalled {
        "the caller stopped reading its stream, so the stream was cancelled (the worker was kept)"
    } else if cancelled_in_python {
        "the coroutine was cancelled inside Python at its deadline (the worker was kept)"
    } else {
        "the worker was replaced (raise timeout_ms if the command is legitimately slow)"
    }
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last stderr:\n{tail}")
    }
}

impl Error {
    /// A stable name for the variant, used as `error_type` in events, spans and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::QueueFull { .. } => "QueueFull",
            Error::QueueTimeout { .. } => "QueueTimeout",
            Error::Timeout { .. } => "Timeout",
            Error::WorkerCrashed { .. } => "WorkerCrashed",
            Error::WorkerUnhealthy { .. } => "WorkerUnhealthy",
            Error::Python(_) => "Python",
            Error::UnknownCommand { .. } => "UnknownCommand",
            Error::InvalidArgs { .. } => "InvalidArgs",
            Error::PayloadTooLarge { .. } => "PayloadTooLarge",
            Error::SessionNotFound { .. } => "SessionNotFound",
            Error::SessionLost { .. } => "SessionLost",
            Error::UnknownPool { .. } => "UnknownPool",
            Error::Transport { .. } => "Transport",
            Error::ShuttingDown { .. } => "ShuttingDown",
        }
    }

    /// The caller's own doing (a command, pool or session that does not exist, arguments
    /// that do not fit, a stream it stopped reading): says nothing about the pool's
    /// health, so readiness and the stats window's error rate leave it out.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::UnknownCommand { .. }
                | Error::UnknownPool { .. }
                | Error::InvalidArgs { .. }
                | Error::PayloadTooLarge { .. }
                | Error::SessionNotFound { .. }
                | Error::SessionLost { .. }
                | Error::Timeout {
                    caller_stalled: true,
                    ..
                }
        )
    }

    /// The Python stacks taken from a worker that timed out, before it was replaced.
    pub fn python_stack(&self) -> Option<&str> {
        match self {
            Error::Timeout { python_stack, .. } | Error::WorkerUnhealthy { python_stack, .. } => {
                python_stack.as_deref()
            }
            _ => None,
        }
    }

    /// The Python exception behind this error, if there is one.
    pub fn python(&self) -> Option<&PythonError> {
        match self {
            Error::Python(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn invalid_args(message: impl Into<String>) -> Self {
        Error::InvalidArgs {
            message: message.into(),
        }
    }
}

/// Why a pool or one of its workers could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configuration value is not allowed.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),

    /// The Python interpreter could not be started.
    #[error("cannot start Python '{program}': {message}; set python.interpreter to a Python 3.9+ with snakepit_bridge installed")]
    Spawn {
        /// The interpreter.
        program: String,
        /// What the OS said.
        message: String,
    },

    #[error(
        "worker {worker_id} exited during start-up ({exit}){}",
        tail_suffix(stderr_tail)
    )]
    /// A worker exited before it was ready.
    ExitedDuringStartup {
        /// The worker.
        worker_id: String,
        /// How it exited.
        exit: ExitInfo,
        /// The last lines it wrote to stderr (often the Python traceback).
        stderr_tail: String,
    },

    /// A worker was not ready within `startup_timeout_ms`.
    #[error("worker {worker_id} was not ready within {} ms (startup_timeout_ms){}", timeout.as_millis(), tail_suffix(stderr_tail))]
    StartupTimeout {
        /// The worker.
        worker_id: String,
        /// `startup_timeout_ms`.
        timeout: Duration,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },

    /// A worker started but its channel did not answer as it should.
    #[error("worker {worker_id} started but its handshake failed: {message}")]
    Handshake {
        /// The worker.
        worker_id: String,
        /// What failed.
        message: String,
    },

    /// The fork server (`start_method = "fork_server"`) could not give a worker: its
    /// template could not load the adapter, was not single-threaded, or died.
    #[error("pool '{pool}': fork server: {message}{}", tail_suffix(stderr_tail))]
    ForkServer {
        /// The pool.
        pool: String,
        /// What went wrong and what to do.
        message: String,
        /// The last lines the fork server's processes wrote to stderr.
        stderr_tail: String,
    },

    /// The Python environment could not be found or made (venv, pip).
    #[error("Python environment: {0}")]
    Environment(String),

    /// No worker of the pool could be started.
    #[error("pool '{pool}': no worker could start; first failure: {first}")]
    NoWorkers {
        /// The pool.
        pool: String,
        /// Why the first worker failed.
        first: Box<StartError>,
    },

    /// The pool was stopped while it started.
    #[error("pool '{pool}' is shutting down")]
    ShuttingDown {
        /// The pool.
        pool: String,
    },

    /// A file or pipe could not be made.
    #[error("I/O while starting: {0}")]
    Io(String),
}
