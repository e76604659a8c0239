//! Restarts with the shipped backoff settings: a worker that was serving is replaced at
//! once (so a storm of kills never empties the pool), a crash loop backs off
//! exponentially, and while every worker crash-loops requests end in `QueueTimeout`
//! within the queue timeout — never hang.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{Error, EventBus, EventKind, Pool, PoolConfig, PythonConfig, Request};

/// The delay the slot announced in a `worker.crashed` event.
fn restart_delay(ev: &snakepit_core::Event) -> f64 {
    ev.meta("restart_delay_ms")
        .and_then(|v| v.as_f64())
        .expect("restart_delay_ms")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_back_off_and_serving_workers_are_replaced_at_once() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let defaults = PoolConfig::default();
    let pool = start_with_events(test_config(1), bus).await;
    let crash = || pool.execute(Request::new("crash", json!({"code": 3})));

    // Each fresh worker dies on its first request: a crash loop, backing off
    // restart_backoff_initial_ms, then twice that, and so on.
    let mut delays = Vec::new();
    for _ in 0..3 {
        assert!(matches!(crash().await, Err(Error::WorkerCrashed { .. })));
        let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
        delays.push(restart_delay(&ev));
    }
    let initial = defaults.restart_backoff_initial_ms as f64;
    assert_eq!(delays, [initial, initial * 2.0, initial * 4.0]);

    // A worker that answered a request was serving: replaced at once, count reset.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    assert!(matches!(crash().await, Err(Error::WorkerCrashed { .. })));
    let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    assert_eq!(restart_delay(&ev), 0.0);
    assert!(matches!(crash().await, Err(Error::WorkerCrashed { .. })));
    let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    assert_eq!(restart_delay(&ev), initial, "the loop count started over");

    // An idle worker killed from outside after serving: also replaced at once.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    full_strength(&pool, LONG).await;
    let victim = pids(&pool)[0];
    // SAFETY: plain kill(2) of a worker process this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    assert_eq!(restart_delay(&ev), 0.0);
    eventually(LONG, "replacement ready", || {
        pool.stats().ready_workers == 1 && pids(&pool) != [victim]
    })
    .await;
    pool.shutdown(Duration::from_secs(5)).await;
}

/// An adapter that refuses to start while `flag` exists.
fn flaky_adapter(flag: &std::path::Path) -> (PathBuf, PythonConfig) {
    let dir = std::env::temp_dir().join(format!("snakepit-flaky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("flaky_adapter.py"),
        "import os\nfrom snakepit_bridge.example import ExampleAdapter\n\n\
         class Flaky(ExampleAdapter):\n    def __init__(self):\n        \
         if os.path.exists(os.environ['FLAKY_FLAG']):\n            os._exit(3)\n        \
         super().__init__()\n",
    )
    .unwrap();
    let python = PythonConfig {
        pythonpath: vec![dir.clone()],
        env: [("FLAKY_FLAG".to_string(), flag.display().to_string())].into(),
        ..PythonConfig::default()
    };
    (dir, python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_every_worker_crash_loops_requests_end_in_queue_timeout() {
    let flag = std::env::temp_dir().join(format!("snakepit-flaky-flag-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let (dir, python) = flaky_adapter(&flag);
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let defaults = PoolConfig::default();
    let pool = start_with_events(
        PoolConfig {
            adapter: "flaky_adapter:Flaky".into(),
            python,
            // The shipped queue timeout (test_config raises it).
            queue_timeout_ms: defaults.queue_timeout_ms,
            ..test_config(2)
        },
        bus,
    )
    .await;
    // From now on no worker can start; take the running ones away.
    std::fs::write(&flag, b"").unwrap();
    for pid in pids(&pool) {
        // SAFETY: plain kill(2) of a worker process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    eventually(LONG, "no worker left", || pool.stats().ready_workers == 0).await;

    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool: Pool = pool.clone();
            tokio::spawn(async move { pool.execute(Request::new("ping", json!({}))).await })
        })
        .collect();
    let limit = Duration::from_millis(defaults.queue_timeout_ms) + Duration::from_secs(3);
    for call in calls {
        let result = tokio::time::timeout(limit, call)
            .await
            .expect("a request hung while the pool crash-looped")
            .unwrap();
        assert!(
            matches!(result, Err(Error::QueueTimeout { .. })),
            "{result:?}"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(defaults.queue_timeout_ms));
    // The failed starts back off: the announced delays grow.
    let mut delays = Vec::new();
    while delays.len() < 3 {
        let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |e| {
            e.meta("error")
                .is_some_and(|m| m.to_string().contains("failed to start"))
        })
        .await;
        delays.push(restart_delay(&ev));
    }
    assert!(delays.iter().all(|d| *d > 0.0), "{delays:?}");
    // Once the cause is gone the pool recovers by itself.
    std::fs::remove_file(&flag).unwrap();
    full_strength(&pool, Duration::from_secs(40)).await;
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}
