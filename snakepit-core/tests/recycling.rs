//! Recycling by request count, by Python RSS and by lifetime, each with a
//! `worker.recycled` event naming the reason; requests keep succeeding throughout.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{EventBus, EventKind, PoolConfig, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycles_after_max_requests() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_requests: 3,
            ..test_config(1)
        },
        bus,
    )
    .await;
    let first = pids(&pool);
    for _ in 0..3 {
        pool.execute(Request::new("ping", json!({}))).await.unwrap();
    }
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("max_requests"));
    assert_eq!(ev.measurement("requests_handled"), Some(3.0));
    // The next request is served by the replacement.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    full_strength(&pool, LONG).await;
    assert_ne!(pids(&pool), first);
    assert_eq!(pool.stats().recycles_total, 1);
    assert_eq!(pool.stats().crashes_total, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycles_when_python_rss_exceeds_max_memory() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_memory_mb: 120,
            memory_check_interval_ms: 100,
            ..test_config(1)
        },
        bus,
    )
    .await;
    let first = pids(&pool)[0];
    let resp = pool
        .execute(Request::new("alloc", json!({"mb": 150})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap()["held_mb"], 150);
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("max_memory"));
    assert_eq!(ev.meta("pid").unwrap(), json!(first));
    let mb = ev.meta("memory_mb").unwrap().as_f64().unwrap();
    assert!(mb > 120.0, "memory_mb {mb}");
    full_strength(&pool, LONG).await;
    assert_ne!(pids(&pool)[0], first);
    eventually(LONG, "old worker gone", || !alive(first)).await;
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycles_after_max_lifetime() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_lifetime_secs: 1,
            ..test_config(1)
        },
        bus,
    )
    .await;
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("max_lifetime"));
    assert!(ev.measurement("uptime_ms").unwrap() >= 1000.0);
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}
