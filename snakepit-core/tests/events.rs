//! The event stream of a real pool: all 16 events at their moments with the SPEC's
//! measurements, pattern subscriptions, sampling, sanitization, and consumers that
//! panic or stall without touching requests.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{
    Event, EventBus, EventKind, EventsConfig, Pattern, PoolConfig, Request, SessionConfig,
    SessionOptions,
};

/// SPEC §3: the measurements each event carries.
fn spec_measurements(kind: EventKind) -> &'static [&'static str] {
    use EventKind::*;
    match kind {
        PoolStarted => &["pool_size", "startup_time_ms"],
        PoolStopped => &["uptime_ms", "total_requests"],
        PoolSaturated => &["queue_size", "max_queue_size"],
        PoolCapacityWarning => &["utilization_percent", "queue_depth"],
        WorkerStarted => &["startup_time_ms"],
        WorkerStopped | WorkerCrashed | WorkerRecycled => &["uptime_ms", "requests_handled"],
        WorkerHealthCheck => &["response_time_ms"],
        RequestStarted => &["queue_time_ms"],
        RequestCompleted | RequestFailed => &["duration_ms", "queue_time_ms"],
        RequestTimeout => &["timeout_ms", "queue_time_ms"],
        SessionCreated => &["creation_time_ms"],
        SessionExpired => &["lifetime_ms", "requests_handled"],
        SessionCleanup => &["sessions_cleaned", "cleanup_time_ms"],
    }
}

/// SPEC §3: metadata each event must carry (events may carry more).
fn spec_metadata(kind: EventKind) -> &'static [&'static str] {
    use EventKind::*;
    match kind {
        PoolStarted => &["pool_name", "adapter"],
        PoolStopped => &["pool_name", "reason"],
        PoolSaturated => &["pool_name", "available_workers", "busy_workers"],
        PoolCapacityWarning => &["pool_name", "threshold_percent"],
        WorkerStarted => &["worker_id", "pool_name", "adapter", "pid"],
        WorkerStopped => &["worker_id", "pool_name", "reason"],
        WorkerCrashed => &[
            "worker_id",
            "pool_name",
            "error",
            "exit_status",
            "stderr_tail",
        ],
        WorkerRecycled => &["worker_id", "pool_name", "reason", "memory_mb"],
        WorkerHealthCheck => &["worker_id", "pool_name", "status", "details"],
        RequestStarted => &[
            "request_id",
            "command",
            "pool_name",
            "worker_id",
            "session_id",
            "correlation_id",
        ],
        RequestCompleted => &["request_id", "command", "pool_name", "worker_id", "success"],
        RequestFailed => &[
            "request_id",
            "command",
            "error_type",
            "error_message",
            "python_traceback",
        ],
        RequestTimeout => &["request_id", "command", "pool_name", "worker_id"],
        SessionCreated => &["session_id", "ttl_seconds", "metadata"],
        SessionExpired => &["session_id", "reason"],
        SessionCleanup => &["cleanup_reason"],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sixteen_events_fire_at_their_moments() {
    let bus = EventBus::default();
    let mut sub = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_queue_size: 1,
            capacity_warning_percent: 50.0,
            health_check_interval_ms: 100,
            sessions: SessionConfig {
                cleanup_interval_ms: 100,
                ..SessionConfig::default()
            },
            ..test_config(2)
        },
        bus,
    )
    .await;

    let session = pool
        .create_session(SessionOptions {
            ttl: Some(Duration::from_millis(200)),
            ..Default::default()
        })
        .unwrap();
    pool.execute(
        Request::new("ping", json!({}))
            .session(&session.id)
            .correlation_id("corr-events"),
    )
    .await
    .unwrap();
    pool.execute(Request::new("fail", json!({"message": "boom"})))
        .await
        .unwrap_err();

    // Fill both workers and the one queue slot, then overflow.
    let mut holders = Vec::new();
    for _ in 0..3 {
        let p = pool.clone();
        holders.push(tokio::spawn(async move {
            p.execute(Request::new("sleep", json!({"ms": 400}))).await
        }));
    }
    eventually(LONG, "pool full", || pool.stats().in_flight == 3).await;
    pool.execute(Request::new("ping", json!({})))
        .await
        .unwrap_err();
    for h in holders {
        h.await.unwrap().unwrap();
    }

    pool.execute(Request::new("hang", json!({})).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    pool.execute(Request::new("crash", json!({"code": 2})))
        .await
        .unwrap_err();
    full_strength(&pool, LONG).await;
    eventually(LONG, "session swept", || {
        pool.session(&session.id).is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await; // a health check round
    pool.shutdown(Duration::from_secs(5)).await;

    let mut seen: BTreeMap<EventKind, Vec<Arc<Event>>> = BTreeMap::new();
    while let Some(ev) = sub.try_recv() {
        seen.entry(ev.kind()).or_default().push(ev);
    }
    let missing: Vec<_> = EventKind::ALL
        .iter()
        .filter(|k| !seen.contains_key(k))
        .map(|k| k.name())
        .collect();
    assert!(missing.is_empty(), "never emitted: {missing:?}");
    for (kind, events) in &seen {
        for ev in events {
            let names: Vec<&str> = ev.data.measurements().iter().map(|(k, _)| *k).collect();
            assert_eq!(names, spec_measurements(*kind), "{}", kind.name());
            let meta: Vec<&str> = ev.data.metadata().iter().map(|(k, _)| *k).collect();
            for key in spec_metadata(*kind) {
                assert!(meta.contains(key), "{} lacks {key}", kind.name());
            }
        }
    }
    // Request events carry the correlation id of their request.
    let started = &seen[&EventKind::RequestStarted];
    assert!(started
        .iter()
        .any(|e| e.correlation_id.as_deref() == Some("corr-events")
            && e.meta("session_id") == Some(json!(session.id))));
    let failed = &seen[&EventKind::RequestFailed];
    let python_failure = failed
        .iter()
        .find(|e| e.meta("error_type") == Some(json!("Python")))
        .expect("the fail request");
    let tb = python_failure.meta("python_traceback").unwrap();
    assert!(tb.as_str().unwrap().contains("RuntimeError: boom"), "{tb}");
    assert!(failed
        .iter()
        .any(|e| e.meta("error_type") == Some(json!("QueueFull"))));
    assert_eq!(seen[&EventKind::WorkerStopped].len(), 2);
    assert_eq!(
        seen[&EventKind::PoolStarted][0].measurement("pool_size"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_sampling_and_sanitization_on_a_live_pool() {
    let mut cfg = EventsConfig::default();
    cfg.sampling
        .insert("snakepit.request.completed".into(), 0.0);
    cfg.sanitize.max_string_length = 100;
    let bus = EventBus::new(&cfg);
    let mut requests = bus.subscribe("requests", Pattern::parse("snakepit.request.*").unwrap());
    let mut workers = bus.subscribe("workers", Pattern::parse("snakepit.worker.*").unwrap());
    let pool = start_with_events(test_config(1), bus).await;
    while workers.try_recv().is_some() {}

    let long = "x".repeat(5000);
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.execute(Request::new("fail", json!({"message": long})))
        .await
        .unwrap_err();
    let mut kinds = Vec::new();
    let mut failed = None;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await
    {
        kinds.push(ev.kind());
        if ev.kind() == EventKind::RequestFailed {
            failed = Some(ev);
        }
    }
    assert!(kinds.contains(&EventKind::RequestStarted));
    assert!(
        !kinds.contains(&EventKind::RequestCompleted),
        "sampled out at rate 0"
    );
    let failed = failed.expect("request.failed");
    let msg = failed.meta("error_message").unwrap();
    assert!(msg.as_str().unwrap().chars().count() < 200, "{msg}");
    assert!(msg.as_str().unwrap().contains("[truncated"), "{msg}");
    assert!(
        workers.try_recv().is_none(),
        "worker consumer saw no request events"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_stalled_consumers_do_not_affect_requests() {
    let bus = EventBus::new(&EventsConfig {
        consumer_buffer: 8,
        ..EventsConfig::default()
    });
    let panicky = bus.attach("panicky", Pattern::all(), |ev| {
        if ev.kind() == EventKind::RequestCompleted {
            panic!("consumer bug on purpose");
        }
    });
    let stalled = bus.attach("stalled", Pattern::all(), |_| {
        std::thread::sleep(Duration::from_secs(3600))
    });
    let pool = start_with_events(test_config(2), bus).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                p.execute(Request::new("ping", json!({}))).await?;
            }
            Ok::<_, snakepit_core::Error>(())
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("requests hung behind a consumer");
    assert_eq!(pool.stats().failures_total, 0);
    assert!(stalled.stats().dropped > 0, "{:?}", stalled.stats());
    eventually(LONG, "panics counted", || panicky.stats().panicked > 0).await;
    pool.shutdown(Duration::from_secs(5)).await;
}
