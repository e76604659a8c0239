//! Sessions against real workers: affinity, metadata, expiry, close, and re-creation
//! on another worker after the holder dies.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{
    Error, EventBus, EventKind, PoolConfig, Request, SessionConfig, SessionOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_a_session_stick_to_one_worker() {
    let pool = start(test_config(3)).await;
    let session = pool
        .create_session(SessionOptions {
            metadata: json!({"user": "ann"}),
            ..Default::default()
        })
        .unwrap();
    let mut seen_pids = std::collections::BTreeSet::new();
    for i in 0..12 {
        let resp = pool
            .execute(
                Request::new("session_put", json!({"key": format!("k{i}"), "value": i}))
                    .session(&session.id),
            )
            .await
            .unwrap();
        seen_pids.insert(resp.value().unwrap()["pid"].as_u64().unwrap());
    }
    assert_eq!(seen_pids.len(), 1, "all session requests on one worker");
    let got = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(got["state"].as_object().unwrap().len(), 12);
    assert_eq!(got["metadata"], json!({"user": "ann"}));
    let info = pool.session(&session.id).unwrap();
    assert_eq!(info.requests, 13);
    assert!(info.worker_id.is_some());
    assert_eq!(pool.stats().active_sessions, 1);

    // Many concurrent session requests, and requests without a session alongside.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (p, id) = (pool.clone(), session.id.clone());
        tasks.push(tokio::spawn(async move {
            let req = if i % 2 == 0 {
                Request::new("session_get", json!({})).session(id)
            } else {
                Request::new("ping", json!({}))
            };
            p.execute(req).await
        }));
    }
    for t in tasks {
        let v = t.await.unwrap().unwrap().value().unwrap();
        if let Some(pid) = v.get("pid") {
            assert!(seen_pids.contains(&pid.as_u64().unwrap()));
        }
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_fires_session_expired_and_cleanup() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            sessions: SessionConfig {
                cleanup_interval_ms: 100,
                ..SessionConfig::default()
            },
            ..test_config(1)
        },
        bus,
    )
    .await;
    let session = pool
        .create_session(SessionOptions {
            ttl: Some(Duration::from_millis(300)),
            metadata: json!({"password": "hunter2", "team": "ml"}),
            ..Default::default()
        })
        .unwrap();
    let created = wait_event(&mut events, EventKind::SessionCreated, LONG, |_| true).await;
    assert_eq!(created.meta("ttl_seconds").unwrap(), json!(0));
    let shown = created.meta("metadata").unwrap();
    assert_eq!(shown["team"], "ml");
    assert_eq!(shown["password"], "[REDACTED]");

    pool.execute(Request::new("session_put", json!({"key": "a", "value": 1})).session(&session.id))
        .await
        .unwrap();
    let expired = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(expired.meta("session_id").unwrap(), json!(session.id));
    assert_eq!(expired.meta("reason").unwrap(), json!("ttl"));
    assert_eq!(expired.measurement("requests_handled"), Some(1.0));
    assert!(expired.measurement("lifetime_ms").unwrap() >= 300.0);
    let cleanup = wait_event(&mut events, EventKind::SessionCleanup, LONG, |_| true).await;
    assert_eq!(cleanup.measurement("sessions_cleaned"), Some(1.0));
    let err = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionNotFound { .. }), "{err:?}");
    assert_eq!(pool.stats().active_sessions, 0);
    // The worker dropped the session's state too: a new session under the same id
    // starts empty on the same (only) worker.
    pool.create_session(SessionOptions {
        id: Some(session.id.clone()),
        ..Default::default()
    })
    .unwrap();
    let got = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(
        got["state"],
        json!({}),
        "stale state survived expiry: {got}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_close_and_recreation_after_the_holder_dies() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    let session = pool
        .create_session(SessionOptions {
            id: Some("my-session".into()),
            metadata: json!({"model": "m1"}),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(session.id, "my-session");
    assert!(pool
        .create_session(SessionOptions {
            id: Some("my-session".into()),
            ..Default::default()
        })
        .is_err());
    let put = pool
        .execute(Request::new("session_put", json!({"key": "x", "value": 1})).session("my-session"))
        .await
        .unwrap()
        .value()
        .unwrap();
    let holder = put["pid"].as_u64().unwrap() as u32;

    // Kill the holder: the next request goes elsewhere, session re-created with its
    // metadata but without the lost Python state.
    // SAFETY: plain kill(2) of a process this test started.
    unsafe { libc::kill(holder as i32, libc::SIGKILL) };
    wait_event(&mut events, EventKind::WorkerCrashed, LONG, |_| true).await;
    let got: Value = pool
        .execute(Request::new("session_get", json!({})).session("my-session"))
        .await
        .unwrap()
        .value()
        .unwrap();
    assert_ne!(got["pid"].as_u64().unwrap() as u32, holder);
    assert_eq!(got["metadata"], json!({"model": "m1"}));
    assert_eq!(got["state"], json!({}));

    pool.close_session("my-session").await.unwrap();
    let ev = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("closed"));
    assert!(matches!(
        pool.close_session("my-session").await,
        Err(Error::SessionNotFound { .. })
    ));
    pool.shutdown(Duration::from_secs(5)).await;
}
