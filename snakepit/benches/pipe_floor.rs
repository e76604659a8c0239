//! The floor under the pipe transport: a bare Rust→Python round trip over a pair of
//! pipes, no pool and no telemetry. A minimal Python loop (`os.read` a length-prefixed
//! frame, `os.write` it back) per process, one call at a time per process, frames the
//! size of a pipe-transport `ping`. Whatever the pool adds shows as the distance from
//! this row.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ECHO: &str = r#"
import os
def read(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    return buf
while True:
    head = read(4)
    body = read(int.from_bytes(head, "big"))
    os.write(1, head + body)
"#;

/// About what a `ping` frame weighs on the pipe transport (ids, command, metadata).
const FRAME: usize = 96;

struct Echo {
    io: Mutex<(ChildStdin, ChildStdout)>,
    _child: Child,
}

/// One echo process per worker. Cheap to clone.
#[derive(Clone)]
pub struct Floor {
    echoes: Arc<Vec<Echo>>,
}

impl Floor {
    pub async fn spawn(python: &std::path::Path, workers: usize) -> Result<Floor, BoxError> {
        let mut echoes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut child = Command::new(python)
                .args(["-u", "-c", ECHO])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
                (Some(i), Some(o)) => (i, o),
                _ => return Err("echo process without pipes".into()),
            };
            echoes.push(Echo {
                io: Mutex::new((stdin, stdout)),
                _child: child,
            });
        }
        Ok(Floor {
            echoes: Arc::new(echoes),
        })
    }

    /// One round trip on process `i % workers`.
    pub async fn call(&self, i: usize) -> bool {
        let echo = &self.echoes[i % self.echoes.len()];
        let mut io = echo.io.lock().await;
        let (stdin, stdout) = &mut *io;
        let mut frame = [0u8; 4 + FRAME];
        frame[..4].copy_from_slice(&(FRAME as u32).to_be_bytes());
        if stdin.write_all(&frame).await.is_err() {
            return false;
        }
        let mut back = [0u8; 4 + FRAME];
        stdout.read_exact(&mut back).await.is_ok()
    }
}
