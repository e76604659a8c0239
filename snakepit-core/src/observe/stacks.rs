//! Python stack dumps of a worker, on demand: where it is stuck, before it is killed.
//!
//! The bridge registers `faulthandler` on `SIGUSR1` with the stacks pipe as its file
//! (`--stacks-fd`). `faulthandler` writes from the C signal handler without taking the
//! GIL, so a worker stuck in `time.sleep`, in a blocking `select`, or in C code that
//! holds the GIL (a long regex) still dumps every thread. The dump has no end marker:
//! a capture sends the signal, then takes what arrives until the pipe has been quiet
//! for [`QUIET`] (bounded by the caller's wait). A task reads the pipe all the time,
//! so the worker never blocks on it; what arrives outside a capture is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::sync;

/// The longest the pool waits for a worker's stacks before killing it (a timeout, or
/// failed health checks): a live worker dumps them in a few milliseconds, plus
/// [`QUIET`].
pub(crate) const STACK_WAIT: Duration = Duration::from_secs(1);
/// A dump is complete once no byte arrived for this long.
pub(crate) const QUIET: Duration = Duration::from_millis(40);
/// The longest dump kept; the rest is cut (faulthandler prints at most 100 threads of
/// at most 100 frames each, so a real one is far below this).
const MAX_DUMP_BYTES: usize = 256 * 1024;

/// One worker's stack dumps.
pub(crate) struct StackDumps {
    pid: u32,
    state: Arc<std::sync::Mutex<Dump>>,
    /// Bytes received so far (ever): a capture waits on it.
    received: watch::Receiver<u64>,
    /// One capture at a time: two at once would split one dump between them.
    one_at_a_time: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Dump {
    capturing: bool,
    bytes: Vec<u8>,
}

impl StackDumps {
    /// Read `pipe` (the stacks pipe of worker `pid`) from now on.
    pub fn start(pid: u32, mut pipe: tokio::net::unix::pipe::Receiver) -> Arc<StackDumps> {
        let state = Arc::new(std::sync::Mutex::new(Dump::default()));
        let (tx, received) = watch::channel(0u64);
        let reading = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut total = 0u64;
            loop {
                let n = match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                {
                    let mut dump = sync::lock(&reading);
                    if dump.capturing {
                        let room = MAX_DUMP_BYTES.saturating_sub(dump.bytes.len());
                        dump.bytes.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
                total += n as u64;
                if tx.send(total).is_err() {
                    return;
                }
            }
        });
        Arc::new(StackDumps {
            pid,
            state,
            received,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// A handle for a worker that has no process (tests' stand-ins): never dumps.
    #[cfg(test)]
    pub fn none() -> Arc<StackDumps> {
        let (_tx, received) = watch::channel(0u64);
        Arc::new(StackDumps {
            pid: 0,
            state: Arc::default(),
            received,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// Ask the worker for the stacks of all its threads and wait up to `wait` for
    /// them; `None` when nothing came (the worker is gone, or did not answer in time).
    pub async fn capture(&self, wait: Duration) -> Option<String> {
        // pid 0 would signal our whole process group.
        let pid = i32::try_from(self.pid).ok().filter(|p| *p > 0)?;
        let _one = self.one_at_a_time.lock().await;
        {
            let mut dump = sync::lock(&self.state);
            dump.capturing = true;
            dump.bytes.clear();
        }
        let mut received = self.received.clone();
        received.borrow_and_update();
        // SAFETY: kill(2) with a positive pid of a process we started.
        let sent = unsafe { libc::kill(pid, libc::SIGUSR1) } == 0;
        if sent {
            let deadline = tokio::time::Instant::now() + wait;
            // The first bytes, within the wait; then until the pipe is quiet.
            let first = tokio::time::timeout_at(deadline, received.changed()).await;
            if matches!(first, Ok(Ok(()))) {
                loop {
                    let quiet = tokio::time::Instant::now() + QUIET;
                    match tokio::time::timeout_at(quiet.min(deadline), received.changed()).await {
                        Ok(Ok(())) if tokio::time::Instant::now() < deadline => continue,
                        _ => break,
                    }
                }
            }
        }
        let bytes = {
            let mut dump = sync::lock(&self.state);
            dump.capturing = false;
            std::mem::take(&mut dump.bytes)
        };
        let text = String::from_utf8_lossy(&bytes).trim_end().to_string();
        (!text.is_empty()).then_some(text)
    }
}
