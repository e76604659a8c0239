//! Streaming calls end to end against real workers: how a stream ended (completed,
//! failed part way, cancelled) reaches its observers and the request events, and a
//! caller that stops reading cannot hold a worker past the request deadline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use snakepit_core::{Error, EventBus, EventKind, Pool, Request, ResponseStream};

/// What an observer saw: (status, chunks, worker id, had a first chunk).
type Seen = Arc<Mutex<Option<(&'static str, u64, Option<String>, bool)>>>;

fn observe(stream: &mut ResponseStream) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    stream.on_end(move |end| {
        *s.lock().unwrap() = Some((
            end.outcome.status(),
            end.chunks,
            end.served.map(|sv| sv.worker_id.clone()),
            end.first_chunk_at.is_some(),
        ));
    });
    seen
}

async fn open(pool: &Pool, args: serde_json::Value) -> ResponseStream {
    pool.execute_stream(Request::new("stream", args))
        .await
        .expect("stream starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reports_how_it_ended() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(1), bus).await;

    // Completed: every chunk, then the end.
    let mut stream = open(&pool, json!({"n": 3})).await;
    let seen = observe(&mut stream);
    let chunks: Vec<_> = (&mut stream).collect().await;
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(Result::is_ok));
    let (status, n, worker, first) = seen.lock().unwrap().clone().expect("observed");
    assert_eq!((status, n, first), ("success", 3, true));
    assert!(worker.is_some());
    let ev = wait_event(&mut events, EventKind::RequestCompleted, LONG, |_| true).await;
    assert_eq!(ev.meta("status").unwrap(), json!("success"));

    // Failed part way: two chunks, then the Python error as the last item.
    let mut stream = open(&pool, json!({"n": 5, "fail_after": 2})).await;
    let seen = observe(&mut stream);
    let items: Vec<_> = (&mut stream).collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    match &items[2] {
        Err(Error::Python(py)) => {
            assert_eq!(py.python_type, "ValueError");
            assert!(py.traceback.contains("fail_after"), "{}", py.traceback);
        }
        other => panic!("expected the Python error, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "nothing after the error");
    assert_eq!(seen.lock().unwrap().clone().unwrap().0, "error");
    let ev = wait_event(&mut events, EventKind::RequestFailed, LONG, |_| true).await;
    assert_eq!(ev.meta("python_type").unwrap(), json!("ValueError"));
    let ev = wait_event(&mut events, EventKind::RequestCompleted, LONG, |_| true).await;
    assert_eq!(ev.meta("status").unwrap(), json!("error"));

    // Cancelled: the caller drops it after one chunk.
    let mut stream = open(&pool, json!({"n": 1000, "delay_ms": 5})).await;
    let seen = observe(&mut stream);
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);
    let (status, n, worker, _) = seen.lock().unwrap().clone().expect("observed on drop");
    assert_eq!((status, n), ("cancelled", 1));
    assert!(
        worker.is_some(),
        "a cancelled stream still knows its worker"
    );
    let ev = wait_event(&mut events, EventKind::RequestCompleted, LONG, |_| true).await;
    assert_eq!(ev.meta("status").unwrap(), json!("cancelled"));
    // The worker is fine and serves the next call.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

async fn pid(pool: &Pool) -> u64 {
    pool.execute(Request::new("whoami", json!({})))
        .await
        .unwrap()
        .value()
        .unwrap()["pid"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_cannot_hold_the_worker_past_the_deadline() {
    let bus = EventBus::default();
    let mut events = subscribe_all(&bus);
    let pool = start_with_events(test_config(1), bus).await;
    let before = pid(&pool).await;
    let mut stream = pool
        .execute_stream(
            Request::new("stream", json!({"n": 100_000})).timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    // Stop reading, keep the stream. The only worker must be free again after the
    // deadline: this ping waits for it (well below the 10 s queue timeout).
    let ping = tokio::time::timeout(
        Duration::from_secs(8),
        pool.execute(Request::new("ping", json!({}))),
    )
    .await
    .expect("the stalled stream held the worker past its deadline");
    ping.unwrap();
    let ev = wait_event(&mut events, EventKind::RequestTimeout, LONG, |_| true).await;
    assert_eq!(ev.measurement("timeout_ms"), Some(1000.0));
    // The worker did nothing wrong: it was kept.
    assert_eq!(pid(&pool).await, before);
    assert_eq!(pool.stats().recycles_total, 0);
    // The caller, reading again, gets what was buffered and then the timeout.
    let rest: Vec<_> = stream.collect().await;
    match rest.last() {
        Some(Err(Error::Timeout { caller_stalled, .. })) => assert!(caller_stalled),
        other => panic!("expected the stalled-caller timeout last, got {other:?}"),
    }
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_stream_never_waits_for_the_caller() {
    let pool = start(test_config(1)).await;
    // One chunk more than the stream buffer holds once the first is read: the worker
    // has sent everything and only the end is left to deliver.
    let mut stream = open(&pool, json!({"n": 17})).await;
    assert!(stream.next().await.unwrap().is_ok());
    // The deadline is 20 s away (test_config); the worker must be free long before.
    let ping = tokio::time::timeout(
        Duration::from_secs(5),
        pool.execute(Request::new("ping", json!({}))),
    )
    .await
    .expect("the worker waited for the caller to take the end of its stream");
    ping.unwrap();
    let rest: Vec<_> = stream.collect().await;
    assert_eq!(rest.len(), 16);
    assert!(rest.iter().all(Result::is_ok));
    pool.shutdown(Duration::from_secs(5)).await;
}
