//! Crashes, external kills, hangs, a full queue and queue timeouts: every failure is
//! typed, evented, and the pool returns to full strength.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{Error, EventBus, EventKind, PoolConfig, Request, WhenFull};
use tower::{Service, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_worker_crashed_with_exit_status_and_the_worker_is_replaced() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    let before = pids(&pool);

    let err = pool
        .execute(Request::new("crash", json!({"code": 7})))
        .await
        .unwrap_err();
    let crashed_worker = match &err {
        Error::WorkerCrashed {
            exit,
            worker_id,
            command,
            ..
        } => {
            assert_eq!(exit.code, Some(7));
            assert_eq!(command, "crash");
            worker_id.clone()
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    };
    assert!(err.to_string().contains("exit code 7"), "{err}");
    let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    assert_eq!(ev.meta("worker_id").unwrap(), json!(crashed_worker));
    assert_eq!(ev.meta("exit_status").unwrap(), json!("exit code 7"));
    wait_event(&mut events, EventKind::WorkerStarted, LONG, |_| true).await;
    full_strength(&pool, LONG).await;
    let after = pids(&pool);
    assert_eq!(after.len(), 2);
    assert_ne!(before, after, "a new process replaced the crashed one");
    assert_eq!(pool.stats().crashes_total, 1);
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_sigkill_of_an_idle_worker_is_detected_and_replaced() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    let victim = pids(&pool)[0];
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let ev = wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    assert_eq!(ev.meta("pid").unwrap(), json!(victim));
    assert_eq!(
        ev.meta("exit_status").unwrap(),
        json!("killed by signal 9 (SIGKILL)")
    );
    full_strength(&pool, LONG).await;
    assert!(!pids(&pool).contains(&victim));
    for _ in 0..4 {
        pool.execute(Request::new("ping", json!({}))).await.unwrap();
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_request_fails_it_as_worker_crashed() {
    let pool = start(test_config(1)).await;
    let victim = pids(&pool)[0];
    let p = pool.clone();
    let call =
        tokio::spawn(async move { p.execute(Request::new("sleep", json!({"ms": 5000}))).await });
    eventually(LONG, "request running", || pool.stats().busy_workers == 1).await;
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    match call.await.unwrap() {
        Err(Error::WorkerCrashed { exit, .. }) => assert_eq!(exit.signal, Some(9)),
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    full_strength(&pool, LONG).await;
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_with_timeout_is_timeout_and_the_worker_is_replaced() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(1), bus).await;
    let hung_pid = pids(&pool)[0];
    let started = std::time::Instant::now();
    let err = pool
        .execute(Request::new("hang", json!({})).timeout(Duration::from_millis(400)))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(elapsed < Duration::from_secs(5), "timeout took {elapsed:?}");
    let ev = wait_event(&mut events, EventKind::RequestTimeout, LONG, |_| true).await;
    assert_eq!(ev.measurement("timeout_ms"), Some(400.0));
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("request_timeout"));
    full_strength(&pool, LONG).await;
    assert_ne!(pids(&pool), vec![hung_pid]);
    eventually(LONG, "hung process killed", || !alive(hung_pid)).await;
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_with_queue_full_and_emits_saturated() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_queue_size: 2,
            ..test_config(1)
        },
        bus,
    )
    .await;
    // One running + two queued fill the pool.
    let mut running = Vec::new();
    for _ in 0..3 {
        let p = pool.clone();
        running.push(tokio::spawn(async move {
            p.execute(Request::new("sleep", json!({"ms": 600}))).await
        }));
    }
    // Admitted is not yet running: wait until the worker has taken the first request,
    // so the saturation event sees it busy.
    eventually(LONG, "pool full", || {
        let s = pool.stats();
        s.in_flight == 3 && s.busy_workers == 1
    })
    .await;
    let err = pool
        .execute(Request::new("ping", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueFull {
                max_queue_size: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let ev = wait_event(&mut events, EventKind::PoolSaturated, LONG, |_| true).await;
    assert_eq!(ev.measurement("max_queue_size"), Some(2.0));
    assert_eq!(ev.meta("busy_workers").unwrap(), json!(1));
    for r in running {
        r.await.unwrap().unwrap();
    }
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_longer_than_the_queue_timeout_is_queue_timeout() {
    let pool = start(PoolConfig {
        queue_timeout_ms: 200,
        ..test_config(1)
    })
    .await;
    let p = pool.clone();
    let busy =
        tokio::spawn(async move { p.execute(Request::new("sleep", json!({"ms": 1000}))).await });
    eventually(LONG, "worker busy", || pool.stats().busy_workers == 1).await;
    let started = std::time::Instant::now();
    let err = pool
        .execute(Request::new("ping", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QueueTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    busy.await.unwrap().unwrap();
    // The abandoned request was never run: the worker is free for the next one.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    assert_eq!(pool.stats().queue_size, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_is_backpressure_in_poll_ready() {
    let pool = start(PoolConfig {
        max_queue_size: 1,
        when_full: WhenFull::Wait,
        ..test_config(1)
    })
    .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let p = pool.clone();
        holders.push(tokio::spawn(async move {
            p.execute(Request::new("sleep", json!({"ms": 400}))).await
        }));
    }
    eventually(LONG, "pool full", || pool.stats().in_flight == 2).await;
    let mut svc = pool.clone();
    let ready = tokio::time::timeout(Duration::from_millis(150), svc.ready()).await;
    assert!(ready.is_err(), "poll_ready must stay pending while full");
    // Once a slot frees up, the same service becomes ready and serves.
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new("ping", json!({})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), json!("pong"));
    for h in holders {
        h.await.unwrap().unwrap();
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_adapter_fails_start_with_the_python_error() {
    init_tracing();
    let err = snakepit_core::Pool::start(
        PoolConfig {
            adapter: "no_such_module:Adapter".into(),
            ..test_config(2)
        },
        EventBus::default(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    // A fork server's template fails once for the whole pool; spawned workers each.
    let whose = match test_start_method() {
        snakepit_core::StartMethod::Spawn => "no worker could start",
        snakepit_core::StartMethod::ForkServer => "fork server: cannot load adapter",
    };
    assert!(text.contains(whose), "{text}");
    assert!(text.contains("ModuleNotFoundError"), "{text}");
    assert!(text.contains("exit code 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_refuses() {
    let pool = start(test_config(1)).await;
    let p = pool.clone();
    let in_flight =
        tokio::spawn(async move { p.execute(Request::new("sleep", json!({"ms": 300}))).await });
    eventually(LONG, "running", || pool.stats().busy_workers == 1).await;
    let pids_before = pids(&pool);
    let shutdown = {
        let p = Arc::new(pool.clone());
        tokio::spawn(async move { p.shutdown(Duration::from_secs(5)).await })
    };
    eventually(LONG, "refusing", || pool.is_shutting_down()).await;
    let err = pool
        .execute(Request::new("ping", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShuttingDown { .. }), "{err:?}");
    in_flight
        .await
        .unwrap()
        .expect("accepted request completes during drain");
    shutdown.await.unwrap();
    for pid in pids_before {
        assert!(!alive(pid), "worker {pid} survived shutdown");
    }
}
