//! `pool.stats()`: a snapshot of a pool's workers, queue and recent performance.
//!
//! Per-second buckets over `stats_window_secs` give rates (requests/s, error rate,
//! crash rate); a ring of the most recent latencies gives percentiles. Recording is
//! one short mutex section per finished request; snapshots never call a worker.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Latency samples kept for percentiles.
const SAMPLES: usize = 4096;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
    Stopping,
}

/// One worker in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStats {
    pub id: String,
    pub state: WorkerState,
    pub pid: u32,
    #[serde(rename = "uptime_ms", serialize_with = "as_ms")]
    pub uptime: Duration,
    pub requests: u64,
    /// Python process RSS as last measured from /proc.
    pub rss_bytes: u64,
}

/// A pool at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStats {
    pub name: String,
    pub adapter: String,
    /// Configured size.
    pub total_workers: usize,
    /// Workers that passed their handshake and are not stopping.
    pub ready_workers: usize,
    pub available_workers: usize,
    pub busy_workers: usize,
    /// Requests admitted but not yet taken by a worker.
    pub queue_size: usize,
    pub max_queue_size: usize,
    /// Requests admitted and not finished (queued + running).
    pub in_flight: usize,
    pub requests_total: u64,
    pub failures_total: u64,
    pub crashes_total: u64,
    pub recycles_total: u64,
    pub active_sessions: usize,
    #[serde(rename = "uptime_ms", serialize_with = "as_ms")]
    pub uptime: Duration,
    pub accepting: bool,
    pub window: WindowStats,
    pub workers: Vec<WorkerStats>,
}

/// The instantaneous load of a pool: cheap enough to read on every metrics scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PoolLoad {
    pub total_workers: usize,
    pub ready_workers: usize,
    pub available_workers: usize,
    pub busy_workers: usize,
    pub queue_size: usize,
    pub in_flight: usize,
    pub active_sessions: usize,
}

/// Rates and percentiles over the recent window.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct WindowStats {
    #[serde(rename = "window_ms", serialize_with = "as_ms")]
    pub window: Duration,
    pub requests: u64,
    pub errors: u64,
    pub crashes: u64,
    pub requests_per_second: f64,
    /// Failed share of requests in the window (0 when there were none).
    pub error_rate: f64,
    pub crashes_per_minute: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub queue_time_avg_ms: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    errors: u64,
    crashes: u64,
    queue_us: u64,
}

struct Inner {
    buckets: VecDeque<Bucket>,
    samples: Vec<u32>,
    next_sample: usize,
}

/// Sliding-window recorder.
pub(crate) struct Window {
    origin: Instant,
    secs: u64,
    inner: Mutex<Inner>,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Window {
            origin: Instant::now(),
            secs: window.as_secs().max(1),
            inner: Mutex::new(Inner {
                buckets: VecDeque::new(),
                samples: Vec::with_capacity(SAMPLES),
                next_sample: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn bucket<'a>(&self, inner: &'a mut Inner, now: Instant) -> &'a mut Bucket {
        let second = now.saturating_duration_since(self.origin).as_secs();
        if inner.buckets.back().map(|b| b.second) != Some(second) {
            inner.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
            while inner
                .buckets
                .front()
                .is_some_and(|b| b.second + self.secs <= second)
            {
                inner.buckets.pop_front();
            }
        }
        // Just pushed or matched above, so back() exists.
        let last = inner.buckets.len() - 1;
        &mut inner.buckets[last]
    }

    /// A request that reached a worker (or failed trying).
    pub fn record_request(&self, duration: Duration, queue_time: Duration, ok: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        let b = self.bucket(&mut inner, now);
        b.requests += 1;
        b.errors += u64::from(!ok);
        b.queue_us += queue_time.as_micros() as u64;
        let micros = duration.as_micros().min(u32::MAX as u128) as u32;
        if inner.samples.len() < SAMPLES {
            inner.samples.push(micros);
        } else {
            let i = inner.next_sample;
            inner.samples[i] = micros;
        }
        inner.next_sample = (inner.next_sample + 1) % SAMPLES;
    }

    /// A request refused before reaching a worker (counts toward the error rate).
    pub fn record_rejection(&self) {
        let mut inner = self.lock();
        let b = self.bucket(&mut inner, Instant::now());
        b.requests += 1;
        b.errors += 1;
    }

    pub fn record_crash(&self) {
        let mut inner = self.lock();
        self.bucket(&mut inner, Instant::now()).crashes += 1;
    }

    pub fn snapshot(&self) -> WindowStats {
        let now = Instant::now();
        let (totals, mut samples) = {
            let mut inner = self.lock();
            // Touch the current bucket so expired ones are pruned.
            self.bucket(&mut inner, now);
            let totals = inner
                .buckets
                .iter()
                .fold(Bucket::default(), |acc, b| Bucket {
                    second: 0,
                    requests: acc.requests + b.requests,
                    errors: acc.errors + b.errors,
                    crashes: acc.crashes + b.crashes,
                    queue_us: acc.queue_us + b.queue_us,
                });
            (totals, inner.samples.clone())
        };
        // Until the pool is `secs` old, rates are over its actual age.
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        let span = elapsed.clamp(1.0, self.secs as f64);
        samples.sort_unstable();
        let pct = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[idx.min(samples.len() - 1)] as f64 / 1000.0
        };
        WindowStats {
            window: Duration::from_secs(self.secs),
            requests: totals.requests,
            errors: totals.errors,
            crashes: totals.crashes,
            requests_per_second: totals.requests as f64 / span,
            error_rate: if totals.requests == 0 {
                0.0
            } else {
                totals.errors as f64 / totals.requests as f64
            },
            crashes_per_minute: totals.crashes as f64 * 60.0 / span,
            latency_p50_ms: pct(0.50),
            latency_p95_ms: pct(0.95),
            latency_p99_ms: pct(0.99),
            queue_time_avg_ms: if totals.requests == 0 {
                0.0
            } else {
                totals.queue_us as f64 / totals.requests as f64 / 1000.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_rates_and_error_rate() {
        let w = Window::new(Duration::from_secs(60));
        for i in 1..=100u64 {
            w.record_request(
                Duration::from_millis(i),
                Duration::from_millis(1),
                i % 10 != 0,
            );
        }
        w.record_rejection();
        w.record_crash();
        let s = w.snapshot();
        assert_eq!(s.requests, 101);
        assert_eq!(s.errors, 11);
        assert_eq!(s.crashes, 1);
        assert!((s.latency_p50_ms - 50.0).abs() <= 1.0, "{s:?}");
        assert!((s.latency_p99_ms - 99.0).abs() <= 1.0, "{s:?}");
        assert!((s.error_rate - 11.0 / 101.0).abs() < 1e-9);
        // Less than a second old: rates are per the one-second minimum span.
        assert!((s.requests_per_second - 101.0).abs() < 1e-9);
    }

    #[test]
    fn samples_are_bounded() {
        let w = Window::new(Duration::from_secs(60));
        for _ in 0..(SAMPLES * 3) {
            w.record_request(Duration::from_micros(5), Duration::ZERO, true);
        }
        assert_eq!(w.lock().samples.len(), SAMPLES);
    }
}
