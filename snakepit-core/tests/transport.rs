//! What either transport must guarantee beyond the command suite: user output never
//! corrupts the channel, an oversized reply is refused without losing the worker, and
//! (pipe) a worker that breaks the frame protocol is replaced, never waited on.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{Error, EventBus, EventKind, PoolConfig, PythonConfig, Request, TransportKind};

/// An adapter that misbehaves on the wire, written to a temporary directory.
fn rogue_adapter_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snakepit-rogue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rogue_adapter.py"),
        r#"import os, sys
from snakepit_bridge import Adapter, command

class Rogue(Adapter):
    @command
    def chatty(self, n: int = 200) -> int:
        # Everything user code can print, on both standard streams and raw descriptors.
        for i in range(n):
            print(f"chatty line {i}")
            print(f"chatty err {i}", file=sys.stderr)
        sys.stdout.flush()
        os.write(1, b"\x00\x00\x00\x05raw-bytes-on-stdout\n")
        return n

    @command
    def echo(self, text: str = "") -> dict:
        return {"text": text}

    @command
    def pid(self) -> int:
        return os.getpid()

    @command
    def big_chunks(self, n: int = 100, size: int = 200_000):
        # Each chunk is larger than a pipe's buffer: writing one needs the pool to read.
        for i in range(n):
            yield "x" * size

    @command
    def garbage(self) -> str:
        # A frame that does not decode, written on the data pipe before the real reply.
        os.write(4, b"\x00\x00\x00\x03\xff\xff\xff")
        return "unreachable"

    @command
    def huge_header(self) -> str:
        # A length prefix far over any limit.
        os.write(4, b"\xff\xff\xff\xff")
        return "unreachable"
"#,
    )
    .unwrap();
    dir
}

fn rogue_config(transport: TransportKind) -> PoolConfig {
    PoolConfig {
        adapter: "rogue_adapter:Rogue".into(),
        transport,
        python: PythonConfig {
            pythonpath: vec![rogue_adapter_dir()],
            ..PythonConfig::default()
        },
        ..test_config(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_user_code_does_not_corrupt_the_channel() {
    let pool = start(rogue_config(test_transport())).await;
    for _ in 0..3 {
        let resp = pool
            .execute(Request::new("chatty", json!({"n": 200})))
            .await
            .unwrap();
        assert_eq!(resp.value().unwrap(), json!(200));
    }
    assert_eq!(pool.stats().crashes_total, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reply_is_refused_and_the_worker_keeps_serving() {
    let pool = start(PoolConfig {
        max_payload_bytes: 16 * 1024,
        max_response_bytes: 64 * 1024,
        ..test_config(1)
    })
    .await;
    let before = pids(&pool);
    let err = pool
        .execute(Request::new("blob", json!({"kib": 256})))
        .await
        .unwrap_err();
    match &err {
        Error::Transport { message, .. } => {
            assert!(message.contains("max_response_bytes"), "{message}")
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    // Just under the limit still passes, on the same worker.
    let resp = pool
        .execute(Request::new("blob", json!({"kib": 60})))
        .await
        .unwrap();
    assert_eq!(
        resp.value().unwrap().as_str().map(str::len),
        Some(60 * 1024)
    );
    assert_eq!(pids(&pool), before, "the worker was replaced");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_from_the_worker_replaces_it() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(rogue_config(TransportKind::Pipe), bus).await;
    for (command, says) in [
        ("garbage", "does not decode"),
        ("huge_header", "over the limit"),
    ] {
        let before = pids(&pool);
        let err = tokio::time::timeout(LONG, pool.execute(Request::new(command, json!({}))))
            .await
            .unwrap_or_else(|_| panic!("{command}: the call hung"))
            .unwrap_err();
        match &err {
            Error::Transport { message, .. } => {
                assert!(message.contains(says), "{command}: {message}");
                assert!(message.contains("replaced"), "{command}: {message}");
            }
            other => panic!("{command}: expected Transport, got {other:?}"),
        }
        let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
        assert_eq!(ev.meta("reason").unwrap(), json!("transport_broken"));
        full_strength(&pool, LONG).await;
        assert_ne!(pids(&pool), before, "{command}: the worker was kept");
    }
    // The replacement serves normally.
    let resp = pool
        .execute(Request::new("chatty", json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), json!(1));
    pool.shutdown(Duration::from_secs(5)).await;
}

/// CPU time (user + system, in clock ticks) a process has used, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The shipped busy poll (pipe transport): the default reaches the worker, calls
/// answered back to back work, and a worker with nothing to do sleeps — the poll is
/// bounded, it never turns into a spinning idle worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_busy_poll_reaches_the_worker_and_an_idle_worker_sleeps() {
    if test_transport() != TransportKind::Pipe {
        return; // gRPC workers serve from grpcio's threads; there is no pipe to poll
    }
    let cfg = test_config(1);
    assert_eq!(cfg.busy_poll_us, PoolConfig::default().busy_poll_us);
    let pool = start(cfg).await;
    for i in 0..500 {
        let out = pool
            .execute(Request::new("echo", json!({ "i": i })))
            .await
            .unwrap();
        assert_eq!(out.value().unwrap(), json!({ "i": i }));
    }
    let pid = pool.stats().workers[0].pid;
    // A forked worker shows its template's command line (its own arguments travel in
    // the fork request): the flag is checked where it is visible.
    if test_start_method() == snakepit_core::StartMethod::Spawn {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let flag = args.iter().position(|a| *a == b"--busy-poll-us").unwrap();
        assert_eq!(
            args[flag + 1],
            PoolConfig::default().busy_poll_us.to_string().as_bytes()
        );
    }
    // Idle for two seconds: a worker that kept polling would burn ~200 ticks. This
    // measures idleness over a fixed interval, so it is a wait by nature, not a
    // synchronisation sleep. Health checks (every 2 s here) cost a tick at most.
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    assert!(used <= 10, "an idle worker used {used} ticks of CPU in 2 s");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_after_an_abandoned_stream_is_served_by_the_same_worker() {
    use futures_util::StreamExt;
    let pool = start(rogue_config(test_transport())).await;
    let pid = |resp: snakepit_core::Response| resp.value().unwrap().as_u64();
    let before = pid(pool.execute(Request::new("pid", json!({}))).await.unwrap());
    // Dropped after one chunk: the worker is then blocked writing the next one (larger
    // than the pipe's buffer) and sees the cancel only when the pool reads on.
    let mut stream = pool
        .execute_stream(Request::new("big_chunks", json!({})))
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    // Also larger than a pipe's buffer: writing it needs the worker to read meanwhile.
    // The 10 s deadline (the suite's is 20 s) only bounds how long a regression takes.
    let text = "y".repeat(512 * 1024);
    let resp = pool
        .execute(Request::new("echo", json!({ "text": text })).timeout(Duration::from_secs(10)))
        .await
        .expect("served after the abandoned stream");
    assert_eq!(
        resp.value().unwrap()["text"].as_str().map(str::len),
        Some(512 * 1024)
    );
    let after = pid(pool.execute(Request::new("pid", json!({}))).await.unwrap());
    assert_eq!(after, before, "the worker was kept");
    pool.shutdown(Duration::from_secs(5)).await;
}
