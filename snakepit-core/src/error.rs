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
    pub message: String,
    /// The full formatted traceback, most recent call last.
    pub traceback: String,
    /// The worker's timing of the failed call, when its trace context was sampled.
    pub worker_span: Option<crate::worker_span::WorkerSpan>,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("pool '{pool}' is full: {max_queue_size} requests already wait for a worker; retry later, add workers, or raise max_queue_size")]
    QueueFull { pool: String, max_queue_size: usize },

    #[error("no worker of pool '{pool}' became free within the queue timeout of {} ms; the pool is overloaded or its workers are stuck", timeout.as_millis())]
    QueueTimeout { pool: String, timeout: Duration },

    #[error("'{command}' did not finish within {} ms on worker {worker_id}; {}", timeout.as_millis(), if *caller_stalled {
        "the caller stopped reading its stream, so the stream was cancelled (the worker was kept)"
    } else {
        "the worker was replaced (raise timeout_ms if the command is legitimately slow)"
    })]
    Timeout {
        command: String,
        worker_id: String,
        timeout: Duration,
        /// The deadline passed while the worker waited for the caller to read the next
        /// chunk of a stream, not while Python was working.
        caller_stalled: bool,
    },

    #[error(
        "worker {worker_id} crashed ({exit}) while running '{command}'{}",
        tail_suffix(stderr_tail)
    )]
    WorkerCrashed {
        command: String,
        worker_id: String,
        exit: ExitInfo,
        /// The last lines the worker wrote to stderr.
        stderr_tail: String,
    },

    #[error("Python raised {}: {}", .0.python_type, .0.message)]
    Python(Box<PythonError>),

    #[error("unknown command '{command}'; available: {}", if available.is_empty() { "(none reported)".to_string() } else { available.join(", ") })]
    UnknownCommand {
        command: String,
        available: Vec<String>,
    },

    #[error("invalid arguments: {message}")]
    InvalidArgs { message: String },

    #[error("payload of {size} bytes exceeds the limit of {limit} bytes (max_payload_bytes)")]
    PayloadTooLarge { size: usize, limit: usize },

    #[error("no session '{session_id}': it was never created, was closed, or expired")]
    SessionNotFound { session_id: String },

    #[error("session '{session_id}' lost its state: {reason}; create a new session (or create sessions with on_worker_loss = \"recreate\" to have them re-created empty)")]
    SessionLost { session_id: String, reason: String },

    #[error("no pool named '{name}'; configured pools: {}", available.join(", "))]
    UnknownPool {
        name: String,
        available: Vec<String>,
    },

    #[error("transport to worker {worker_id} failed: {message}")]
    Transport { worker_id: String, message: String },

    #[error("pool '{pool}' is shutting down and takes no new requests")]
    ShuttingDown { pool: String },
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
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),

    #[error("cannot start Python '{program}': {message}; set python.interpreter to a Python 3.9+ with snakepit_bridge installed")]
    Spawn { program: String, message: String },

    #[error(
        "worker {worker_id} exited during start-up ({exit}){}",
        tail_suffix(stderr_tail)
    )]
    ExitedDuringStartup {
        worker_id: String,
        exit: ExitInfo,
        stderr_tail: String,
    },

    #[error("worker {worker_id} was not ready within {} ms (startup_timeout_ms){}", timeout.as_millis(), tail_suffix(stderr_tail))]
    StartupTimeout {
        worker_id: String,
        timeout: Duration,
        stderr_tail: String,
    },

    #[error("worker {worker_id} started but its handshake failed: {message}")]
    Handshake { worker_id: String, message: String },

    #[error("Python environment: {0}")]
    Environment(String),

    #[error("pool '{pool}': no worker could start; first failure: {first}")]
    NoWorkers {
        pool: String,
        first: Box<StartError>,
    },

    #[error("pool '{pool}' is shutting down")]
    ShuttingDown { pool: String },

    #[error("I/O while starting: {0}")]
    Io(String),
}
