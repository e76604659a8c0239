//! Sessions against real workers: affinity, metadata, expiry, close; what happens when
//! the holder dies (`SessionLost`, or re-creation that says so); planned recycles that
//! wait for the sessions their worker holds.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{
    Error, EventBus, EventKind, OnWorkerLoss, PoolConfig, Request, SessionConfig, SessionOptions,
    WorkerState,
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
async fn explicit_close_and_duplicate_ids() {
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
    let got = pool
        .execute(Request::new("session_get", json!({})).session("my-session"))
        .await
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(got["metadata"], json!({"model": "m1"}));
    pool.close_session("my-session").await.unwrap();
    let ev = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("closed"));
    assert!(matches!(
        pool.close_session("my-session").await,
        Err(Error::SessionNotFound { .. })
    ));
    pool.shutdown(Duration::from_secs(5)).await;
}

/// Put `key` into the session and return the pid that served it.
async fn put(pool: &snakepit_core::Pool, session: &str, key: &str) -> u32 {
    let v = pool
        .execute(Request::new("session_put", json!({"key": key, "value": 1})).session(session))
        .await
        .unwrap()
        .value()
        .unwrap();
    v["pid"].as_u64().unwrap() as u32
}

fn kill(pid: u32) {
    // SAFETY: plain kill(2) of a worker process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_worker_dies_fails_with_session_lost_not_silently() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    let session = pool.create_session(SessionOptions::default()).unwrap();
    let holder = put(&pool, &session.id, "x").await;
    kill(holder);
    let ev = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("worker_lost"));
    assert_eq!(ev.meta("session_id").unwrap(), json!(session.id));
    let detail = ev.meta("detail").unwrap().to_string();
    assert!(detail.contains("crashed"), "{detail}");
    // Every later request says so (it is not re-created empty behind the caller's back).
    for _ in 0..2 {
        match pool
            .execute(Request::new("session_get", json!({})).session(&session.id))
            .await
        {
            Err(Error::SessionLost { session_id, reason }) => {
                assert_eq!(session_id, session.id);
                assert!(reason.contains("crashed"), "{reason}");
            }
            other => panic!("expected SessionLost, got {other:?}"),
        }
    }
    assert_eq!(pool.stats().active_sessions, 0);
    assert!(pool.session(&session.id).unwrap().lost.is_some());
    // Closing it is still possible (and then it is gone); its end was reported once.
    pool.close_session(&session.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Some(ev) = events.try_recv() {
        assert_ne!(
            ev.kind(),
            EventKind::SessionExpired,
            "the loss was reported already"
        );
    }
    assert!(matches!(
        pool.execute(Request::new("session_get", json!({})).session(&session.id))
            .await,
        Err(Error::SessionNotFound { .. })
    ));
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_policy_re_creates_the_session_and_the_response_says_so() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    let session = pool
        .create_session(SessionOptions {
            metadata: json!({"model": "m1"}),
            on_worker_loss: Some(OnWorkerLoss::Recreate),
            ..Default::default()
        })
        .unwrap();
    let holder = put(&pool, &session.id, "x").await;
    kill(holder);
    let ev = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("worker_lost"));
    let resp = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap();
    let reason = resp.served.session_recreated.clone().expect("flagged");
    assert!(reason.contains("crashed"), "{reason}");
    let got = resp.value().unwrap();
    assert_ne!(got["pid"].as_u64().unwrap() as u32, holder);
    assert_eq!(got["metadata"], json!({"model": "m1"}), "metadata kept");
    assert_eq!(
        got["state"],
        json!({}),
        "state is gone, and the caller was told"
    );
    let ev = wait_event(&mut events, EventKind::SessionCreated, LONG, |_| true).await;
    assert_eq!(ev.meta("session_id").unwrap(), json!(session.id));
    // Only the first request after the loss carries the flag.
    let again = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap();
    assert_eq!(again.served.session_recreated, None);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_recycle_waits_for_the_sessions_its_worker_holds() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    // The shipped session grace (300 s): the session ends well before it.
    let pool = start_with_events(
        PoolConfig {
            max_requests: 3,
            ..test_config(1)
        },
        bus,
    )
    .await;
    let session = pool.create_session(SessionOptions::default()).unwrap();
    let holder = put(&pool, &session.id, "k1").await;
    for key in ["k2", "k3", "k4", "k5"] {
        assert_eq!(
            put(&pool, &session.id, key).await,
            holder,
            "session stays put"
        );
    }
    let got = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
        .unwrap()
        .value()
        .unwrap();
    assert_eq!(got["state"].as_object().unwrap().len(), 5, "{got}");
    // Meanwhile a replacement serves everything else, and new sessions.
    let ping = pool
        .execute(Request::new("whoami", json!({})))
        .await
        .unwrap();
    let other = ping.value().unwrap()["pid"].as_u64().unwrap() as u32;
    assert_ne!(other, holder);
    let fresh = pool.create_session(SessionOptions::default()).unwrap();
    assert_eq!(put(&pool, &fresh.id, "a").await, other);
    let stats = pool.stats();
    assert_eq!(
        stats.ready_workers, 1,
        "the draining worker is not counted ready"
    );
    assert!(stats
        .workers
        .iter()
        .any(|w| w.pid == holder && w.state == WorkerState::Draining));
    // The session ends: now the old worker is recycled.
    pool.close_session(&session.id).await.unwrap();
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("max_requests"));
    assert_eq!(ev.meta("pid").unwrap(), json!(holder));
    eventually(LONG, "old worker gone", || !alive(holder)).await;
    assert_eq!(pool.stats().workers.len(), 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycle_past_its_grace_loses_the_sessions_and_says_so() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_requests: 2,
            sessions: SessionConfig {
                // 1 s instead of the default 300 s, so the grace runs out within the
                // test; the default is exercised by the deferral test above.
                recycle_grace_secs: 1,
                ..SessionConfig::default()
            },
            ..test_config(1)
        },
        bus,
    )
    .await;
    let session = pool.create_session(SessionOptions::default()).unwrap();
    let holder = put(&pool, &session.id, "k1").await;
    put(&pool, &session.id, "k2").await;
    let ev = wait_event(&mut events, EventKind::SessionExpired, LONG, |_| true).await;
    assert_eq!(ev.meta("reason").unwrap(), json!("worker_lost"));
    let ev = wait_event(&mut events, EventKind::WorkerRecycled, LONG, |_| true).await;
    assert_eq!(ev.meta("pid").unwrap(), json!(holder));
    match pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await
    {
        Err(Error::SessionLost { reason, .. }) => {
            assert!(reason.contains("recycle_grace_secs"), "{reason}")
        }
        other => panic!("expected SessionLost, got {other:?}"),
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_of_a_session_meet_on_one_worker() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(2), bus).await;
    // Both workers idle, no holder yet: the two first requests can reach two workers.
    for round in 0..10 {
        let session = pool.create_session(SessionOptions::default()).unwrap();
        let (a, b) = tokio::join!(put(&pool, &session.id, "a"), put(&pool, &session.id, "b"));
        assert_eq!(
            a, b,
            "round {round}: the session's requests ran on two workers"
        );
        let got = pool
            .execute(Request::new("session_get", json!({})).session(&session.id))
            .await
            .unwrap()
            .value()
            .unwrap();
        assert_eq!(got["state"].as_object().unwrap().len(), 2, "{got}");
    }
    while let Some(ev) = events.try_recv() {
        assert_ne!(
            ev.kind(),
            EventKind::SessionExpired,
            "a live session was reported lost"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_deferred_recycle_stops_the_draining_worker() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(
        PoolConfig {
            max_requests: 1,
            ..test_config(1)
        },
        bus,
    )
    .await;
    let session = pool.create_session(SessionOptions::default()).unwrap();
    let holder = put(&pool, &session.id, "k").await;
    eventually(LONG, "draining", || {
        pool.stats()
            .workers
            .iter()
            .any(|w| w.pid == holder && w.state == WorkerState::Draining)
    })
    .await;
    let started = std::time::Instant::now();
    pool.shutdown(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!alive(holder));
    let mut stopped = false;
    while let Some(ev) = events.try_recv() {
        if ev.meta("pid") == Some(json!(holder)) {
            assert_ne!(
                ev.kind(),
                EventKind::WorkerRecycled,
                "shutdown is no recycle"
            );
            stopped |= ev.kind() == EventKind::WorkerStopped;
        }
    }
    assert!(stopped, "no worker.stopped for the draining worker");
}
