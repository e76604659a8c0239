//! Chaos (SPEC §8): under steady load, a worker is SIGKILLed every 500 ms for 60 s
//! (`CHAOS_SECONDS` shortens it), with the shipped restart backoff. No request may hang,
//! every failure must be a typed crash of the one request the killed worker was
//! running, the pool must be back at full size within 2 s of the last kill, and each
//! kill must yield exactly one `worker.crashed` event.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{EventBus, EventKind, Pattern, PoolConfig, Request, WorkerState};

const KILL_EVERY: Duration = Duration::from_millis(500);
/// Far above any legitimate call here (20 ms sleeps, a restart, a queue wait).
const HANG: Duration = Duration::from_secs(15);
const CLIENTS: usize = 8;

fn chaos_duration() -> Duration {
    let secs = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_every_500ms_under_load_lose_nothing_silently() {
    let bus = EventBus::default();
    let mut crashes = bus.subscribe_with_buffer(
        "chaos",
        Pattern::parse("snakepit.worker.crashed").expect("pattern"),
        10_000,
    );
    let pool = start_with_events(
        PoolConfig {
            max_queue_size: 1_000,
            ..test_config(4)
        },
        bus,
    )
    .await;
    let run_for = chaos_duration();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (pool, stop, outcomes) = (pool.clone(), stop.clone(), outcomes.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = if (i + c as u64).is_multiple_of(2) {
                    Request::new("sleep", json!({"ms": 20}))
                } else {
                    Request::new("ping", json!({}))
                };
                let started = Instant::now();
                let outcome = match tokio::time::timeout(HANG, pool.execute(req)).await {
                    Err(_) => panic!("a request hung for {:?}", started.elapsed()),
                    Ok(Ok(_)) => "ok",
                    Ok(Err(e)) => e.error_type(),
                };
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            }
        }));
    }

    let mut kills = 0u64;
    let mut killed = std::collections::BTreeSet::new();
    let mut min_ready = usize::MAX;
    let started = Instant::now();
    let mut tick = tokio::time::interval(KILL_EVERY);
    tick.tick().await;
    while started.elapsed() < run_for {
        tick.tick().await;
        // A worker that is up (idle or running a request), a different one each time.
        let stats = pool.stats();
        min_ready = min_ready.min(stats.ready_workers);
        let candidates: Vec<u32> = stats
            .workers
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy))
            .map(|w| w.pid)
            .filter(|pid| *pid > 0 && alive(*pid))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let victim = candidates[kills as usize % candidates.len()];
        // SAFETY: plain kill(2) of a worker process this test's pool started.
        if unsafe { libc::kill(victim as i32, libc::SIGKILL) } == 0 {
            kills += 1;
            killed.insert(victim);
        }
    }
    let storm_ended = Instant::now();
    // Killed workers that were serving are replaced at once: no backoff builds up.
    // Full means every slot has a worker that was not killed (a victim stays listed
    // until its death is noticed).
    eventually(
        Duration::from_secs(2),
        "full size with no killed worker",
        || {
            let stats = pool.stats();
            stats.ready_workers == 4 && stats.workers.iter().all(|w| !killed.contains(&w.pid))
        },
    )
    .await;
    let refilled = storm_ended.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    let mut crashed = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while crashed < kills {
        match tokio::time::timeout_at(deadline, crashes.recv()).await {
            Ok(Some(ev)) if ev.kind() == EventKind::WorkerCrashed => crashed += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Nothing more arrives: one event per kill, not more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, crashes.recv()).await {
        if ev.kind() == EventKind::WorkerCrashed {
            crashed += 1;
        }
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let ok = outcomes.get("ok").copied().unwrap_or(0);
    let failed: u64 = outcomes
        .iter()
        .filter(|(k, _)| **k != "ok")
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "chaos: {run_for:?}, {kills} kills, {crashed} crash events, full size {refilled:?} \
         after the last kill, min ready {min_ready}/4, outcomes {outcomes:?}"
    );
    assert!(
        kills as f64 >= run_for.as_secs_f64() * 1.5,
        "too few kills: {kills}"
    );
    assert!(ok > kills * 10, "the pool kept serving: {outcomes:?}");
    for kind in outcomes.keys() {
        assert!(
            matches!(*kind, "ok" | "WorkerCrashed"),
            "unexpected failure kind {kind}: {outcomes:?}"
        );
    }
    assert!(
        failed <= kills,
        "a kill fails at most the one request its worker ran: {failed} failures, {kills} kills"
    );
    assert_eq!(crashed, kills, "one worker.crashed event per kill");
    // Measured at each kill, half a second after the previous one: replacements are
    // in by then, so the pool never runs low.
    assert!(
        min_ready >= 2,
        "the pool ran down to {min_ready}/4 during the storm"
    );
    assert_eq!(pool.stats().total_workers, 4);
    pool.execute(Request::new("ping", json!({})))
        .await
        .expect("serving after the chaos");
    pool.shutdown(Duration::from_secs(5)).await;
}
