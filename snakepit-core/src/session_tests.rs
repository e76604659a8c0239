use super::*;
use serde_json::json;

fn store() -> SessionStore {
    SessionStore::new(10, OnWorkerLoss::Fail)
}

#[test]
fn create_route_claim_expire() {
    let store = store();
    let opts = SessionOptions {
        metadata: json!({"user": "u"}),
        ..Default::default()
    };
    let s = store.create(&opts, Duration::from_millis(50)).unwrap();
    assert_eq!(store.route(&s.id).unwrap(), None);
    let w1: Arc<str> = Arc::from("w1");
    assert_eq!(
        store.claim(&s.id, &w1, true, |_| false).0.unwrap(),
        Claim::Init(Bytes::from_static(b"{\"user\":\"u\"}"))
    );
    assert_eq!(
        store.claim(&s.id, &w1, true, |_| false).0.unwrap(),
        Claim::Held
    );
    assert_eq!(store.route(&s.id).unwrap().as_deref(), Some("w1"));
    assert_eq!(store.held_by("w1"), 1);
    assert!(store.take_expired(Instant::now()).is_empty());
    let ended = store.take_expired(Instant::now() + Duration::from_secs(1));
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].requests, 2);
    assert!(matches!(
        store.route(&s.id),
        Err(Error::SessionNotFound { .. })
    ));
}

#[test]
fn a_lost_worker_leaves_tombstones_that_answer_session_lost() {
    let store = store();
    let ttl = Duration::from_secs(60);
    let (a, b) = (
        store.create(&SessionOptions::default(), ttl).unwrap(),
        store.create(&SessionOptions::default(), ttl).unwrap(),
    );
    let w1: Arc<str> = Arc::from("w1");
    store.claim(&a.id, &w1, true, |_| false).0.unwrap();
    let lost = store.worker_lost("w1", "worker w1 crashed");
    assert_eq!(lost.len(), 1, "only the session w1 held");
    assert_eq!(lost[0].id, a.id);
    assert_eq!(store.len(), 1, "the tombstone is not an active session");
    assert_eq!(store.held_by("w1"), 0);
    for _ in 0..2 {
        match store.route(&a.id) {
            Err(Error::SessionLost { session_id, reason }) => {
                assert_eq!(session_id, a.id);
                assert_eq!(reason, "worker w1 crashed");
            }
            other => panic!("expected SessionLost, got {other:?}"),
        }
    }
    // A job already queued for it fails the same way on another worker.
    let w2: Arc<str> = Arc::from("w2");
    assert!(matches!(
        store.claim(&a.id, &w2, true, |_| false).0,
        Err(Error::SessionLost { .. })
    ));
    assert!(store.route(&b.id).is_ok(), "other sessions are untouched");
    assert!(store.remove(&a.id).is_some(), "a tombstone can be closed");
    assert_eq!(store.len(), 1);
    assert_eq!(store.lock().tombstones, 0);
}

#[test]
fn recreate_policy_moves_the_session_and_says_why() {
    let store = store();
    let opts = SessionOptions {
        on_worker_loss: Some(OnWorkerLoss::Recreate),
        metadata: json!({"m": 1}),
        ..Default::default()
    };
    let s = store.create(&opts, Duration::from_secs(60)).unwrap();
    let (w1, w2): (Arc<str>, Arc<str>) = (Arc::from("w1"), Arc::from("w2"));
    store.claim(&s.id, &w1, true, |_| false).0.unwrap();
    assert_eq!(store.worker_lost("w1", "recycled").len(), 1);
    assert_eq!(store.len(), 1, "still active");
    assert_eq!(store.route(&s.id).unwrap(), None, "goes to any worker");
    assert_eq!(
        store.claim(&s.id, &w2, true, |_| false).0.unwrap(),
        Claim::Recreate {
            metadata: Bytes::from_static(b"{\"m\":1}"),
            reason: "recycled".into()
        }
    );
    assert_eq!(
        store.claim(&s.id, &w2, true, |_| false).0.unwrap(),
        Claim::Held
    );
}

#[test]
fn a_session_held_by_a_live_worker_goes_to_it_and_draining_workers_take_none() {
    let store = store();
    let s = store
        .create(&SessionOptions::default(), Duration::from_secs(60))
        .unwrap();
    let (w1, w2): (Arc<str>, Arc<str>) = (Arc::from("w1"), Arc::from("w2"));
    // A draining worker does not take a session nobody holds yet.
    assert_eq!(
        store.claim(&s.id, &w2, false, |_| true).0.unwrap(),
        Claim::Elsewhere(None)
    );
    store.claim(&s.id, &w1, true, |_| true).0.unwrap();
    // Two first requests raced: the second, on w2, goes to w1 while w1 lives.
    let (claim, lost) = store.claim(&s.id, &w2, true, |w| w == "w1");
    assert_eq!(claim.unwrap(), Claim::Elsewhere(Some(w1.clone())));
    assert!(lost.is_none());
    assert_eq!(store.len(), 1);
    assert_eq!(store.held_by("w1"), 1);
}

#[test]
fn a_tombstone_expires_by_its_ttl_whatever_the_retries() {
    let store = store();
    let s = store
        .create(&SessionOptions::default(), Duration::from_millis(50))
        .unwrap();
    store
        .claim(&s.id, &Arc::from("w1"), true, |_| false)
        .0
        .unwrap();
    store.worker_lost("w1", "gone");
    std::thread::sleep(Duration::from_millis(60));
    assert!(store.route(&s.id).is_err(), "the retry does not refresh it");
    let swept = store.take_expired(Instant::now());
    assert!(swept.is_empty(), "its session.expired went out at the loss");
    assert!(store.get(&s.id).is_none(), "but it is gone");
}

#[test]
fn a_session_claimed_away_from_a_departed_worker_counts_as_lost() {
    let store = store();
    let s = store
        .create(&SessionOptions::default(), Duration::from_secs(60))
        .unwrap();
    let (w1, w2): (Arc<str>, Arc<str>) = (Arc::from("w1"), Arc::from("w2"));
    store.claim(&s.id, &w1, true, |_| false).0.unwrap();
    let (claim, lost) = store.claim(&s.id, &w2, true, |_| false);
    assert!(matches!(claim, Err(Error::SessionLost { .. })), "{claim:?}");
    assert_eq!(lost.map(|l| l.0.id), Some(s.id.clone()), "reported once");
    assert!(store.claim(&s.id, &w2, true, |_| false).1.is_none());
    assert!(matches!(
        store.claim("nope", &w2, true, |_| false).0,
        Err(Error::SessionNotFound { .. })
    ));
}

#[test]
fn limits_and_bad_input() {
    let store = SessionStore::new(1, OnWorkerLoss::Fail);
    let ttl = Duration::from_secs(1);
    let bad = SessionOptions {
        metadata: json!([1]),
        ..Default::default()
    };
    assert!(store.create(&bad, ttl).is_err());
    let err = store
        .create(&SessionOptions::default(), MAX_TTL + ttl)
        .unwrap_err();
    assert!(err.to_string().contains("ttl"), "{err}");
    store.create(&SessionOptions::default(), ttl).unwrap();
    let err = store.create(&SessionOptions::default(), ttl).unwrap_err();
    assert!(err.to_string().contains("max_sessions"), "{err}");
}
