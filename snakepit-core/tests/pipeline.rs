//! Pipelining (pipe transport, on by default): a queued request is written behind the
//! running one, and never waits there while another worker could run it, nor is lost
//! or run twice when the worker goes. Every test here runs with the shipped defaults
//! except `test_config`'s noted timeouts; on the gRPC transport (which never
//! pipelines) the same traffic must show nothing pipelined.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{Error, Pool, PoolConfig, Request, TransportKind};

fn pipelines() -> bool {
    test_transport() == TransportKind::Pipe
}

/// Wait until the pool shows `busy` busy workers and `queued` queued requests.
async fn settle_at(pool: &Pool, busy: usize, queued: usize) {
    eventually(Duration::from_secs(20), "busy and queued counts", || {
        let s = pool.stats();
        s.busy_workers == busy && s.queue_size == queued
    })
    .await;
}

fn sleep_ms(ms: u64) -> Request {
    Request::new("sleep", json!({ "ms": ms }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_written_behind_the_running_one_by_default_and_taken_back_from_a_long_one(
) {
    assert!(PoolConfig::default().pipeline, "the shipped default");
    let pool = start(test_config(1)).await;
    let first = tokio::spawn({
        let pool = pool.clone();
        // Long enough for the test to queue two more behind it on a loaded machine.
        async move { pool.execute(sleep_ms(1000)).await }
    });
    settle_at(&pool, 1, 0).await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(sleep_ms(100)).await }
    });
    settle_at(&pool, 1, 1).await;
    let third = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(Request::new("echo", json!({"n": 3}))).await }
    });
    settle_at(&pool, 1, 2).await;
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let third = third.await.unwrap().unwrap();
    assert_eq!(third.value().unwrap(), json!({"n": 3}));
    let stats = pool.stats();
    // When the first call ended the second was sent and the third written behind it,
    // and ran next from the worker's pipe: with one worker there is nowhere better for
    // it, so it is never taken back however long the call before it. (The second may
    // also have been written behind the first, if it was queued before the first's
    // frame went out.)
    if pipelines() {
        assert!(stats.pipelined_total >= 1, "{stats:?}");
    } else {
        assert_eq!(stats.pipelined_total, 0, "{stats:?}");
    }
    assert_eq!(stats.taken_back_total, 0, "{stats:?}");
    // It waited behind the second call, and that time counts as queue time.
    assert!(
        third.served.queue_time >= Duration::from_millis(100),
        "{:?}",
        third.served
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_reaches_its_own_caller_under_load() {
    for size in [1, 2] {
        let pool = start(test_config(size)).await;
        let calls: Vec<_> = (0..16)
            .map(|task| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for i in 0..150 {
                        let args = json!({ "task": task, "i": i });
                        let resp = pool.execute(Request::new("echo", args.clone())).await?;
                        assert_eq!(resp.value()?, args);
                    }
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.requests_total, 16 * 150);
        assert_eq!(stats.failures_total, 0);
        if pipelines() {
            assert!(
                stats.pipelined_total > 0,
                "16 in flight pipelines: {stats:?}"
            );
        } else {
            assert_eq!(stats.pipelined_total, 0);
        }
        pool.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_a_slow_call_moves_to_a_worker_that_goes_idle() {
    let pool = start(test_config(2)).await;
    full_strength(&pool, Duration::from_secs(20)).await;
    let short = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(sleep_ms(800)).await }
    });
    let long = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(sleep_ms(2500)).await }
    });
    settle_at(&pool, 2, 0).await;
    // Queued: a slow call, then a quick one. The worker that ends first takes the slow
    // call and writes the quick one behind it; the slow call outlasts the patience, so
    // the quick one goes back to the head of the queue, and the other worker takes it
    // when it ends. (Handing it at once to a worker that goes idle within the patience
    // is timing no real worker can hit on demand: `pool/ahead_tests.rs` covers it.)
    let slow = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(sleep_ms(8000)).await }
    });
    settle_at(&pool, 2, 1).await;
    let started = Instant::now();
    let quick = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(Request::new("echo", json!({"q": 1}))).await }
    });
    settle_at(&pool, 2, 2).await;
    let quick = quick.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        !slow.is_finished(),
        "the quick call did not wait for the slow one"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    let long = long.await.unwrap().unwrap();
    assert_eq!(
        quick.served.worker_id, long.served.worker_id,
        "ran on the worker that went idle"
    );
    let stats = pool.stats();
    if pipelines() {
        assert_eq!(stats.pipelined_total, 1, "{stats:?}");
        assert_eq!(stats.taken_back_total, 1, "{stats:?}");
    }
    short.await.unwrap().unwrap();
    slow.await.unwrap().unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_loaded_pool_a_request_behind_a_long_call_is_served_before_newer_ones() {
    let pool = start(test_config(2)).await;
    full_strength(&pool, Duration::from_secs(20)).await;
    let spawn = |req: Request| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute(req).await })
    };
    let first = spawn(sleep_ms(800));
    let second = spawn(sleep_ms(1600));
    settle_at(&pool, 2, 0).await;
    // Behind them: a long call, the request that gets written behind it, then newer
    // work that keeps the queue from ever emptying (so no worker goes idle).
    let long = spawn(sleep_ms(6000));
    settle_at(&pool, 2, 1).await;
    let behind = spawn(Request::new("echo", json!({"behind": true})));
    settle_at(&pool, 2, 2).await;
    let newer: Vec<_> = (0..3).map(|_| spawn(sleep_ms(400))).collect();
    settle_at(&pool, 2, 5).await;
    let behind = behind.await.unwrap().unwrap();
    assert!(
        newer.iter().all(|n| !n.is_finished()),
        "a newer request finished before the one written behind the long call"
    );
    assert!(!long.is_finished());
    if pipelines() {
        // Taken back once (from behind the long call); the newer ones may be written
        // behind the quick one meanwhile, and run on from there.
        let stats = pool.stats();
        assert_eq!(stats.taken_back_total, 1, "{stats:?}");
        assert!(stats.pipelined_total >= 1, "{stats:?}");
    }
    let second = second.await.unwrap().unwrap();
    assert_eq!(behind.served.worker_id, second.served.worker_id);
    for n in newer {
        n.await.unwrap().unwrap();
    }
    first.await.unwrap().unwrap();
    long.await.unwrap().unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
}

/// Queue `doomed` then an echo behind a running 1 s call on one worker; the echo is
/// written behind `doomed`, which ends the worker. The echo must run exactly once on
/// the replacement.
async fn behind_a_call_that_ends_the_worker(doomed: Request) -> (Result<(), Error>, Pool) {
    let pool = start(test_config(1)).await;
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(sleep_ms(1000)).await }
    });
    settle_at(&pool, 1, 0).await;
    let doomed = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(doomed).await }
    });
    settle_at(&pool, 1, 1).await;
    let echo = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.execute(Request::new("echo", json!({"after": true})))
                .await
        }
    });
    settle_at(&pool, 1, 2).await;
    let first = first.await.unwrap().unwrap();
    let echo = echo.await.unwrap().unwrap();
    assert_eq!(echo.value().unwrap(), json!({"after": true}));
    assert_ne!(
        echo.served.worker_id, first.served.worker_id,
        "ran on the replacement"
    );
    let stats = pool.stats();
    // Written ahead and given back when the worker went. (A worker that dies fast
    // enough closes its pipe before the echo is written: then it was never written,
    // and simply stayed first in the queue.)
    assert_eq!(stats.taken_back_total, stats.pipelined_total, "{stats:?}");
    (doomed.await.unwrap().map(|_| ()), pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_a_timed_out_call_runs_on_the_replacement() {
    // A 1 s deadline on that one call (the default is 30 s) so the test is short.
    let doomed = sleep_ms(10_000).timeout(Duration::from_secs(1));
    let (result, pool) = behind_a_call_that_ends_the_worker(doomed).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    // The sleeping worker reads on, so the echo was surely written behind the call.
    let expected = if pipelines() { 1 } else { 0 };
    assert_eq!(pool.stats().pipelined_total, expected);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_a_crash_runs_on_the_replacement() {
    let (result, pool) = behind_a_call_that_ends_the_worker(Request::new("crash", json!({}))).await;
    assert!(
        matches!(result, Err(Error::WorkerCrashed { .. })),
        "{result:?}"
    );
    assert_eq!(pool.stats().crashes_total, 1);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_never_runs_a_worker_past_max_requests() {
    let pool = start(PoolConfig {
        max_requests: 3,
        ..test_config(1)
    })
    .await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute(Request::new("echo", json!({ "i": i }))).await })
        })
        .collect();
    let mut per_worker = std::collections::HashMap::<String, usize>::new();
    for call in calls {
        let resp = call.await.unwrap().unwrap();
        *per_worker.entry(resp.served.worker_id).or_default() += 1;
    }
    assert!(per_worker.values().all(|&n| n <= 3), "{per_worker:?}");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_false_writes_nothing_ahead() {
    let pool = start(PoolConfig {
        pipeline: false,
        ..test_config(1)
    })
    .await;
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute(Request::new("echo", json!({ "i": i }))).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(pool.stats().pipelined_total, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}
