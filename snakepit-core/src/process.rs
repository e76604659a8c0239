//! One worker OS process: spawn, start-up handshake, output pumping, signals, exit.
//!
//! Each worker runs in its own process group, so stopping it also stops anything its
//! Python code spawned. When the pool process dies, even by SIGKILL, its workers go
//! too, two ways: the kernel sends each one SIGKILL (`PR_SET_PDEATHSIG`, set between
//! fork and exec, so it holds even for a worker stuck in C code that holds the GIL,
//! where no Python thread can run), and the kernel closes the worker's stdin, whose
//! write end only the pool held (the worker watches it and exits on EOF). stdout and stderr are pumped line by line into
//! `tracing` with the worker id; the last stderr lines are kept for crash reports.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::error::{ExitInfo, StartError};
use crate::sync;

/// The line a worker prints on stdout once it serves.
pub(crate) const READY_MARKER: &str = "SNAKEPIT_READY ";
const MAX_LINE_BYTES: usize = 64 * 1024;
const STDERR_TAIL_LINES: usize = 40;
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How to start one worker process.
pub(crate) struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub worker_id: String,
    pub pool_name: String,
    pub startup_timeout: Duration,
    /// Descriptors the child inherits, each at the given number (the pipe transport's
    /// pipes on 3..6). The pool's copies are closed once the child has started, so the
    /// pool sees EOF when the worker dies.
    pub pass_fds: Vec<(OwnedFd, RawFd)>,
    /// After the ready line, stdout lines go here instead of the log (the fork
    /// server's keeper reports on its stdout).
    pub stdout_to: Option<mpsc::UnboundedSender<String>>,
}

/// The last lines a worker wrote to stderr.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: &str) {
        let mut lines = sync::lock(&self.0);
        lines.push_back(line.to_string());
        let mut bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        while lines.len() > STDERR_TAIL_LINES || (bytes > STDERR_TAIL_BYTES && lines.len() > 1) {
            if let Some(old) = lines.pop_front() {
                bytes -= old.len() + 1;
            }
        }
    }

    pub fn text(&self) -> String {
        let lines = sync::lock(&self.0);
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running (or exited) worker process.
pub(crate) struct WorkerProcess {
    pid: u32,
    /// Held open for the worker's parent-death watch (EOF = the pool is gone).
    stdin: Option<std::fs::File>,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// Becomes true when stderr reached EOF (everything the process wrote is in the tail).
    stderr_done: watch::Receiver<bool>,
    tail: StderrTail,
    pub started_at: Instant,
}

impl WorkerProcess {
    /// Spawn the process and wait for its ready line (or its death, or the timeout).
    pub async fn spawn(mut spec: SpawnSpec) -> Result<WorkerProcess, StartError> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let pass_fds = std::mem::take(&mut spec.pass_fds);
        let moves: Vec<(RawFd, RawFd)> = pass_fds
            .iter()
            .map(|(fd, at)| (fd.as_raw_fd(), *at))
            .collect();
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), getppid(2), fcntl(2) and dup2(2), which are async-signal-safe; it
        // allocates nothing (`moves` was built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                die_with_parent(parent)?;
                place_fds(&moves)
            });
        }
        let spawned = cmd.spawn();
        // The child has its copies (or never started): close ours.
        drop(pass_fds);
        let mut child = spawned.map_err(|e| StartError::Spawn {
            program: spec.program.display().to_string(),
            message: e.to_string(),
        })?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().and_then(|s| s.into_owned_fd().ok());
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(StartError::Io(
                "worker stdout/stderr were not captured".into(),
            ));
        };
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => ExitInfo::from(status),
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                },
            };
            let _ = exit_tx.send(Some(info));
        });
        Self::attach(spec, pid, stdin, stdout, stderr, exit_rx).await
    }

    /// A process someone else started for us (the fork server's template forked it):
    /// `pid`, the pool's ends of its stdin, stdout and stderr pipes, and a watch its
    /// exit is reported on. Waits for its ready line as [`spawn`](Self::spawn) does.
    pub async fn adopt(
        spec: SpawnSpec,
        pid: u32,
        stdio: [OwnedFd; 3],
        exit: watch::Receiver<Option<ExitInfo>>,
    ) -> Result<WorkerProcess, StartError> {
        let [stdin, stdout, stderr] = stdio;
        let io =
            |e: std::io::Error| StartError::Io(format!("cannot read the worker's output: {e}"));
        let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(io)?;
        let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(io)?;
        Self::attach(spec, pid, Some(stdin), stdout, stderr, exit).await
    }

    /// Pump stderr into the log (keeping the tail), wait for the ready line on stdout,
    /// then pump stdout too.
    async fn attach(
        spec: SpawnSpec,
        pid: u32,
        stdin: Option<OwnedFd>,
        stdout: impl AsyncRead + Unpin + Send + 'static,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        exit: watch::Receiver<Option<ExitInfo>>,
    ) -> Result<WorkerProcess, StartError> {
        let tail = StderrTail::default();
        let (stderr_done_tx, stderr_done) = watch::channel(false);
        {
            let (tail, id, pool) = (tail.clone(), spec.worker_id.clone(), spec.pool_name.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr);
                while let Some(line) = read_line_capped(&mut reader).await {
                    tail.push(&line);
                    log_line(&id, &pool, "stderr", &line);
                }
                let _ = stderr_done_tx.send(true);
            });
        }

        let process = WorkerProcess {
            pid,
            stdin: stdin.map(std::fs::File::from),
            exit,
            stderr_done,
            tail,
            started_at: Instant::now(),
        };
        let mut reader = BufReader::new(stdout);
        let ready = tokio::time::timeout(spec.startup_timeout, async {
            while let Some(line) = read_line_capped(&mut reader).await {
                if line.starts_with(READY_MARKER) {
                    return true;
                }
                log_line(&spec.worker_id, &spec.pool_name, "stdout", &line);
            }
            false
        })
        .await;
        match ready {
            Ok(true) => {
                let (id, pool) = (spec.worker_id.clone(), spec.pool_name.clone());
                let lines_to = spec.stdout_to;
                tokio::spawn(async move {
                    while let Some(line) = read_line_capped(&mut reader).await {
                        match &lines_to {
                            Some(to) => {
                                let _ = to.send(line);
                            }
                            None => log_line(&id, &pool, "stdout", &line),
                        }
                    }
                });
                Ok(process)
            }
            Ok(false) => {
                let exit = process
                    .wait_exit(Duration::from_secs(2))
                    .await
                    .unwrap_or(ExitInfo {
                        code: None,
                        signal: None,
                    });
                Err(StartError::ExitedDuringStartup {
                    worker_id: spec.worker_id,
                    exit,
                    stderr_tail: process.stderr_tail().await,
                })
            }
            Err(_) => {
                process.kill();
                Err(StartError::StartupTimeout {
                    worker_id: spec.worker_id,
                    timeout: spec.startup_timeout,
                    stderr_tail: process.stderr_tail().await,
                })
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Write to the process's stdin (the fork server's keeper takes commands there).
    pub fn write_stdin(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match &self.stdin {
            Some(stdin) => {
                let mut stdin: &std::fs::File = stdin;
                stdin.write_all(bytes)
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        }
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// A receiver that changes when the process exits.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exit.clone()
    }

    /// Wait up to `timeout` for the process to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitInfo> {
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(status)) => *status,
            _ => self.exit_status(),
        }
    }

    /// The stderr tail; after an exit, waits briefly so the last lines are in it.
    pub async fn stderr_tail(&self) -> String {
        if self.exit_status().is_some() {
            let mut done = self.stderr_done.clone();
            let _ = tokio::time::timeout(Duration::from_millis(500), done.wait_for(|d| *d)).await;
        }
        self.tail.text()
    }

    /// Signal the worker's whole process group.
    pub fn signal_group(&self, signal: i32) {
        if self.pid == 0 {
            return;
        }
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no
        // memory of ours. The group is the worker's own (process_group(0) at spawn, or
        // setpgid in a forked worker, which may not have got that far: then the process
        // alone, while it is known to run, so a reused pid is never signalled).
        unsafe {
            if libc::kill(-(self.pid as i32), signal) != 0 && self.exit_status().is_none() {
                libc::kill(self.pid as i32, signal);
            }
        }
    }

    /// SIGKILL the worker and its group now.
    pub fn kill(&self) {
        self.signal_group(libc::SIGKILL);
    }

    /// Graceful stop: SIGTERM the group, SIGKILL after `grace`. stdin stays open: its
    /// EOF means "the pool died" and makes the worker exit at once, skipping the
    /// graceful path (finishing calls, flushing its telemetry).
    pub async fn stop(&self, grace: Duration) -> Option<ExitInfo> {
        if let Some(status) = self.exit_status() {
            self.kill(); // the leader is gone; make sure nothing it spawned lingers
            return Some(status);
        }
        self.signal_group(libc::SIGTERM);
        if let Some(status) = self.wait_exit(grace).await {
            self.kill();
            return Some(status);
        }
        self.kill();
        self.wait_exit(Duration::from_secs(5)).await
    }
}

#[cfg(test)]
impl WorkerProcess {
    /// No process at all (pid 0, so it is never signalled) that never exits: for
    /// tests that play the worker through a fake transport.
    pub(crate) fn stand_in() -> WorkerProcess {
        let (exit_tx, exit) = watch::channel(None);
        // Never sent, never dropped: waiting for this process's exit waits (bounded by
        // the caller's timeout), as it would for a live process.
        std::mem::forget(exit_tx);
        let (_, stderr_done) = watch::channel(true);
        WorkerProcess {
            pid: 0,
            stdin: None,
            exit,
            stderr_done,
            tail: StderrTail::default(),
            started_at: Instant::now(),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Whatever path dropped us, no worker outlives its handle.
        self.kill();
    }
}

/// In the forked child: put each `(source, target)` descriptor at `target`, without
/// clobbering a source that sits on another's target. Sources are close-on-exec; the
/// placed copies are not, so exactly the targets survive exec.
/// In the forked child: SIGKILL when the pool dies. The kernel sends it when the
/// thread that forked exits; a runtime's threads live as long as its pools can run.
/// A pool that died between the fork and here is caught by the parent check.
fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process's own setting.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

fn place_fds(moves: &[(RawFd, RawFd)]) -> std::io::Result<()> {
    /// Above every target, so the parking copies collide with none of them.
    const PARK_FLOOR: RawFd = 64;
    let mut parked = [0 as RawFd; 16];
    if moves.len() > parked.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (i, (source, _)) in moves.iter().enumerate() {
        // SAFETY: fcntl on a descriptor we own; F_DUPFD_CLOEXEC creates a new one.
        let fd = unsafe { libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, PARK_FLOOR) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        parked[i] = fd;
    }
    for (i, (_, target)) in moves.iter().enumerate() {
        // SAFETY: dup2 onto a number of our choosing; the old descriptor there (if
        // any) is one the child must not keep anyway.
        if unsafe { libc::dup2(parked[i], *target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Read one line (without the newline), lossily decoded, at most MAX_LINE_BYTES; the
/// rest of an over-long line is discarded. None at EOF.
pub(crate) async fn read_line_capped<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<String> {
    let mut line = Vec::new();
    let mut saw_any = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(_) => return None,
        };
        if buf.is_empty() {
            return saw_any.then(|| String::from_utf8_lossy(&line).into_owned());
        }
        saw_any = true;
        let (chunk, found, used) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true, i + 1),
            None => (buf, false, buf.len()),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if found {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// Worker output into the log. Lines the bridge formats as `LEVEL name [...]: msg`
/// keep their level; other stderr lines are warnings, other stdout lines info.
fn log_line(worker_id: &str, pool: &str, stream: &'static str, line: &str) {
    let level = line.split_once(' ').map(|(l, _)| l).unwrap_or("");
    match (level, stream) {
        ("DEBUG", _) => {
            tracing::debug!(target: "snakepit::worker", worker_id, pool, stream, "{line}")
        }
        ("INFO", _) => {
            tracing::info!(target: "snakepit::worker", worker_id, pool, stream, "{line}")
        }
        ("ERROR" | "CRITICAL", _) => {
            tracing::error!(target: "snakepit::worker", worker_id, pool, stream, "{line}")
        }
        ("WARNING", _) | (_, "stderr") => {
            tracing::warn!(target: "snakepit::worker", worker_id, pool, stream, "{line}")
        }
        _ => tracing::info!(target: "snakepit::worker", worker_id, pool, stream, "{line}"),
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
