//! Shared helpers for the integration tests: every test runs real Python worker
//! processes (the bundled example adapter) in the project's bootstrapped venv.
#![allow(dead_code)]

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use snakepit_core::config::{StartMethod, TransportKind};
use snakepit_core::events::Subscription;
use snakepit_core::{Event, EventBus, EventKind, Pattern, Pool, PoolConfig};

static TRACING: Once = Once::new();

/// Route the pool's logs to the test harness (shown for failing tests).
pub fn init_tracing() {
    TRACING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "snakepit_core=debug,snakepit::worker=info".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// The transport the suite runs on: `TRANSPORT_UNDER_TEST=grpc|pipe` (the test script
/// runs the whole suite once per transport); unset means the pool's default.
pub fn test_transport() -> TransportKind {
    match std::env::var("TRANSPORT_UNDER_TEST").as_deref() {
        Ok("grpc") => TransportKind::Grpc,
        Ok("pipe") => TransportKind::Pipe,
        Ok(other) => panic!("TRANSPORT_UNDER_TEST={other:?}: expected grpc or pipe"),
        Err(_) => PoolConfig::default().transport,
    }
}

/// How the suite's workers start: `START_METHOD_UNDER_TEST=spawn|fork_server` (the
/// test script runs the core, end-to-end and serve suites once with the fork server);
/// unset means the pool's default.
pub fn test_start_method() -> StartMethod {
    match std::env::var("START_METHOD_UNDER_TEST").as_deref() {
        Ok("spawn") => StartMethod::Spawn,
        Ok("fork_server") => StartMethod::ForkServer,
        Ok(other) => panic!("START_METHOD_UNDER_TEST={other:?}: expected spawn or fork_server"),
        Err(_) => PoolConfig::default().start_method,
    }
}

/// A config for tests: the shipped defaults (restart backoff included: what users get
/// is what the suite checks) except where noted.
pub fn test_config(size: usize) -> PoolConfig {
    PoolConfig {
        size,
        transport: test_transport(),
        start_method: test_start_method(),
        // Longer than the default 5 s: two cores running several test binaries at once
        // can hold a request that long without anything being wrong.
        queue_timeout_ms: 10_000,
        // Shorter than the default 30 s: a test that hangs fails in reasonable time.
        request_timeout_ms: 20_000,
        // Shorter than the default 10 s, so health-check events show up within a test.
        health_check_interval_ms: 2_000,
        // Shorter than the default 5 s: shutdowns of misbehaving workers end sooner.
        stop_grace_ms: 2_000,
        ..PoolConfig::default()
    }
}

pub async fn start(cfg: PoolConfig) -> Pool {
    start_with_events(cfg, EventBus::default()).await
}

pub async fn start_with_events(cfg: PoolConfig, events: EventBus) -> Pool {
    init_tracing();
    match Pool::start(cfg, events).await {
        Ok(pool) => pool,
        Err(e) => panic!("pool failed to start: {e}"),
    }
}

/// Subscribe to everything.
pub fn subscribe_all(bus: &EventBus) -> Subscription {
    bus.subscribe_with_buffer("test", Pattern::all(), 100_000)
}

/// Wait (up to `within`) for the next event of `kind` matching `pred`.
pub async fn wait_event(
    sub: &mut Subscription,
    kind: EventKind,
    within: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Arc<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(ev)) if ev.kind() == kind && pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event bus closed while waiting for {}", kind.name()),
            Err(_) => panic!("no {} event within {within:?}", kind.name()),
        }
    }
}

/// Wait until `cond` holds, polling every 20 ms; panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pool back at full strength: every slot has a ready worker.
pub async fn full_strength(pool: &Pool, within: Duration) {
    let size = pool.config().size;
    eventually(within, "pool back to full size", || {
        pool.stats().ready_workers == size
    })
    .await;
}

pub fn pids(pool: &Pool) -> Vec<u32> {
    let mut p: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
    p.sort_unstable();
    p
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub const LONG: Duration = Duration::from_secs(20);
