//! The batcher against stand-in backends (the real OTLP receiver is exercised in the
//! integration tests).

use super::*;
use std::sync::atomic::AtomicBool;

/// A stand-in backend (the real OTLP receiver is exercised in the integration tests):
/// it fails while `down` is set and records what it got.
struct Flaky {
    down: Arc<AtomicBool>,
    got: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl BatchExporter<u32> for Flaky {
    type Encoded = Vec<u32>;
    fn encode(&self, batch: Vec<u32>) -> Vec<u32> {
        batch
    }
    async fn export(&self, batch: Vec<u32>) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err("backend down".into());
        }
        self.got.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Each export waits until `parties` exports are in flight together: a batcher that
/// sent its batches one after another would time every one of them out.
struct Together {
    barrier: Arc<tokio::sync::Barrier>,
    got: Arc<AtomicU64>,
}

impl BatchExporter<u32> for Together {
    /// Encoding frees the items: the queue's count drops before the network.
    type Encoded = usize;
    fn encode(&self, batch: Vec<u32>) -> usize {
        batch.len()
    }
    async fn export(&self, n: usize) -> Result<(), String> {
        self.barrier.wait().await;
        self.got.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn the_batches_of_one_wake_are_exported_together() {
    let got = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(SignalCounters::default());
    let g = got.clone();
    // The exporter is made (and the thread starts taking items) only once all 30
    // are queued, so the first take holds three full batches (max_batch is 10).
    let (queued, wait_queued) = mpsc::channel::<()>();
    let batcher = Batcher::start("test", settings(), counters.clone(), move || {
        let _ = wait_queued.recv();
        Ok(Together {
            barrier: Arc::new(tokio::sync::Barrier::new(3)),
            got: g,
        })
    })
    .unwrap();
    for i in 0..30 {
        batcher.push(i);
    }
    queued.send(()).unwrap();
    batcher.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(got.load(Ordering::Relaxed), 30);
    assert_eq!(counters.exported.load(Ordering::Relaxed), 30);
    assert_eq!(counters.export_failures.load(Ordering::Relaxed), 0);
    assert_eq!(batcher.buffer.exporting.load(Ordering::Relaxed), 0);
}

fn settings() -> ExportSettings {
    ExportSettings {
        max_queue: 100,
        max_batch: 10,
        delay: Duration::from_millis(20),
        timeout: Duration::from_secs(1),
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(1500),
    }
}

#[test]
fn counts_exported_failed_breaker_and_queue_drops() {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(SignalCounters::default());
    let (d, g, c) = (down.clone(), got.clone(), calls.clone());
    let batcher = Batcher::start("test", settings(), counters.clone(), move || {
        Ok(Flaky {
            down: d,
            got: g,
            calls: c,
        })
    })
    .unwrap();
    // Backend down: two failures open the breaker; later batches skip the network.
    for round in 0..5u32 {
        for i in 0..10 {
            batcher.push(round * 10 + i);
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(counters.export_failures.load(Ordering::Relaxed), 2);
    assert_eq!(counters.dropped_export_failed.load(Ordering::Relaxed), 20);
    assert_eq!(counters.dropped_circuit_open.load(Ordering::Relaxed), 30);
    assert_eq!(counters.last_error().as_deref(), Some("backend down"));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "breaker spared the backend"
    );
    // Back up: after the cooldown exports resume.
    down.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1600));
    for i in 0..10 {
        batcher.push(i);
    }
    batcher.flush(Duration::from_secs(2)).unwrap();
    assert_eq!(got.load(Ordering::Relaxed), 10);
    assert_eq!(counters.exported.load(Ordering::Relaxed), 10);
    // A full queue drops without blocking.
    let start = Instant::now();
    for i in 0..100_000 {
        batcher.push(i);
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(counters.dropped_queue_full.load(Ordering::Relaxed) > 0);
    batcher.shutdown(Duration::from_secs(5)).unwrap();
    // After shutdown nothing is kept: pushes are counted as lost.
    let before = counters.dropped_export_failed.load(Ordering::Relaxed);
    batcher.push(7);
    assert_eq!(
        counters.dropped_export_failed.load(Ordering::Relaxed),
        before + 1
    );
}

fn slow_settings() -> ExportSettings {
    ExportSettings {
        max_queue: 10_000,
        max_batch: 1_000,
        delay: Duration::from_secs(30),
        timeout: Duration::from_secs(1),
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(1),
    }
}

fn flaky(got: &Arc<AtomicU64>) -> impl FnOnce() -> Result<Flaky, String> + Send + 'static {
    let got = got.clone();
    move || {
        Ok(Flaky {
            down: Arc::new(AtomicBool::new(false)),
            got,
            calls: Arc::new(AtomicU64::new(0)),
        })
    }
}

#[test]
fn pushes_below_a_batch_wake_nobody_and_a_full_batch_goes_at_once() {
    let got = Arc::new(AtomicU64::new(0));
    let batcher = Batcher::start("test", slow_settings(), Arc::default(), flaky(&got)).unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the thread is parked
    let woke = batcher.buffer.wakes.load(Ordering::Relaxed);
    for i in 0..999 {
        batcher.push(i);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        batcher.buffer.wakes.load(Ordering::Relaxed) <= woke + 1,
        "the export thread woke per item"
    );
    assert_eq!(
        got.load(Ordering::Relaxed),
        0,
        "no export before a full batch"
    );
    batcher.push(999);
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.load(Ordering::Relaxed) < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        got.load(Ordering::Relaxed),
        1000,
        "a full batch is exported at once"
    );
}

#[test]
fn dropping_the_batcher_exports_what_is_left_at_once() {
    let got = Arc::new(AtomicU64::new(0));
    let batcher = Batcher::start("test", slow_settings(), Arc::default(), flaky(&got)).unwrap();
    for i in 0..5 {
        batcher.push(i);
    }
    let thread = batcher.thread.lock().unwrap().take().unwrap();
    let started = Instant::now();
    drop(batcher);
    thread.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the batch delay"
    );
    assert_eq!(got.load(Ordering::Relaxed), 5);
}
