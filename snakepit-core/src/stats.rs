//! `pool.stats()`: a snapshot of a pool's workers, queue and recent performance.
//!
//! Time buckets over `stats_window_secs` (one per second, at most 60: longer windows
//! use wider buckets) hold counts and a latency histogram each, so rates (requests/s,
//! error rate, crash rate) *and* percentiles describe exactly the window: once a slow
//! burst is older than the window it is gone from p99 (readiness depends on that).
//! Histograms are log-linear (16 sub-bins per power of two of microseconds: a value
//! is reported within ±3.2 %), 464 bins up to 71 minutes, allocated only for buckets
//! that saw a request. Recording is one short mutex section per finished request;
//! snapshots never call a worker.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync;
use serde::Serialize;

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Most buckets a window is cut into.
const MAX_BUCKETS: u64 = 60;
/// Sub-bins per power of two (2^SUB_BITS).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Bins covering 0..=u32::MAX microseconds.
const BINS: usize = bin_of(u32::MAX as u64) + 1;

/// The histogram bin of `micros`: exact below 16 µs, then 16 bins per octave.
const fn bin_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64 + 1) * SUB + ((micros >> shift) - SUB)) as usize
}

/// The middle of bin `bin`, in microseconds.
fn bin_value(bin: usize) -> f64 {
    let bin = bin as u64;
    if bin < SUB {
        return bin as f64;
    }
    let shift = bin / SUB - 1;
    let lower = (SUB + bin % SUB) << shift;
    lower as f64 + ((1u64 << shift) - 1) as f64 / 2.0
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Its process is starting and has not handshaken yet.
    Starting,
    /// Ready, waiting for a request.
    Idle,
    /// Running a request.
    Busy,
    /// Being stopped (shutdown, recycle, or replacement).
    Stopping,
    /// Past a planned recycle, serving only the sessions it holds until they end (or
    /// the grace passes); a replacement serves everything else. Not counted as ready.
    Draining,
}

/// One worker in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStats {
    /// The worker's id (`{pool}-{n}`).
    pub id: String,
    /// What it is doing.
    pub state: WorkerState,
    /// Its Python process.
    pub pid: u32,
    /// Since its process started.
    #[serde(rename = "uptime_ms", serialize_with = "as_ms")]
    pub uptime: Duration,
    /// Requests it has run.
    pub requests: u64,
    /// Python process RSS as last measured from /proc.
    pub rss_bytes: u64,
    /// Its proportional set size: pages it shares (with the fork server's template
    /// and its sibling workers) divided among their sharers. Summed over a pool's
    /// processes, the memory the pool really holds. 0 until first measured.
    pub pss_bytes: u64,
    /// Its unique set size: the pages only it holds (what stopping it frees; what
    /// `max_memory_mb` recycles forked workers on).
    pub uss_bytes: u64,
}

/// The fork server's template (`start_method = "fork_server"`): the process workers
/// are forked from. It serves no request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateStats {
    /// Its pid (0 before the first one started).
    pub pid: u32,
    /// Whether it is ready to fork workers (false while it restarts).
    pub ready: bool,
    /// Times it was started again after it died (forked workers keep serving).
    pub restarts: u64,
    /// Its RSS.
    pub rss_bytes: u64,
    /// Its PSS (what it holds of the pages it shares with its workers).
    pub pss_bytes: u64,
    /// Its USS.
    pub uss_bytes: u64,
}

/// A pool at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// Its adapter (`module:Class`).
    pub adapter: String,
    /// Configured size.
    pub total_workers: usize,
    /// Workers that passed their handshake and are not stopping.
    pub ready_workers: usize,
    /// Ready workers not running a request.
    pub available_workers: usize,
    /// Workers running a request.
    pub busy_workers: usize,
    /// Requests admitted but not yet taken by a worker.
    pub queue_size: usize,
    /// Its `max_queue_size`.
    pub max_queue_size: usize,
    /// Requests admitted and not finished (queued + running).
    pub in_flight: usize,
    /// Requests finished since start, any outcome.
    pub requests_total: u64,
    /// Of those, the failed ones.
    pub failures_total: u64,
    /// Worker processes that died unexpectedly.
    pub crashes_total: u64,
    /// Workers replaced on purpose (limits, timeouts, health checks).
    pub recycles_total: u64,
    /// Requests written to a worker behind the one it was running (`pipeline`).
    pub pipelined_total: u64,
    /// Of those, requests taken back unrun because another worker went idle, or
    /// because the worker was replaced before it started them.
    pub taken_back_total: u64,
    /// Records of Python's `logging` from this pool's workers that reached the log.
    pub python_log_records_total: u64,
    /// Of their records, those the workers dropped because the log was read too slowly
    /// (each worker buffers a bounded number; see the README's logging section).
    pub python_log_records_dropped_total: u64,
    /// Sessions alive now.
    pub active_sessions: usize,
    /// Since the pool started.
    #[serde(rename = "uptime_ms", serialize_with = "as_ms")]
    pub uptime: Duration,
    /// False once shutdown began.
    pub accepting: bool,
    /// Rates and percentiles over the recent window.
    pub window: WindowStats,
    /// Every worker.
    pub workers: Vec<WorkerStats>,
    /// How its workers are started.
    pub start_method: crate::config::StartMethod,
    /// The fork server's template, with `start_method = "fork_server"`.
    pub template: Option<TemplateStats>,
}

impl PoolStats {
    /// The memory the pool's Python processes really hold: the PSS of every worker
    /// and of the template (shared pages counted once in total).
    pub fn total_pss_bytes(&self) -> u64 {
        let workers: u64 = self.workers.iter().map(|w| w.pss_bytes).sum();
        workers + self.template.as_ref().map_or(0, |t| t.pss_bytes)
    }
}

/// The instantaneous load of a pool: cheap enough to read on every metrics scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PoolLoad {
    /// Configured size.
    pub total_workers: usize,
    /// Workers that passed their handshake and are not stopping.
    pub ready_workers: usize,
    /// Ready workers not running a request.
    pub available_workers: usize,
    /// Workers running a request.
    pub busy_workers: usize,
    /// Requests admitted but not yet taken by a worker.
    pub queue_size: usize,
    /// Requests admitted and not finished (queued + running).
    pub in_flight: usize,
    /// Sessions alive now.
    pub active_sessions: usize,
}

/// Counts of a pool's Python `logging` records, over all its workers past and present:
/// cheap to read on every scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PythonLogCounts {
    /// Records that reached the pool's log.
    pub records: u64,
    /// Records its workers dropped because the log was read too slowly.
    pub dropped: u64,
}

/// Rates and percentiles over the recent window (`stats_window_secs`).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct WindowStats {
    /// How far back the window reaches (`stats_window_secs`, less just after start).
    #[serde(rename = "window_ms", serialize_with = "as_ms")]
    pub window: Duration,
    /// Requests finished in the window.
    pub requests: u64,
    /// Of those, the failed ones.
    pub errors: u64,
    /// Worker crashes in the window.
    pub crashes: u64,
    /// Requests the latency percentiles are computed from (those that reached a worker).
    pub latency_samples: u64,
    /// Finished requests per second.
    pub requests_per_second: f64,
    /// Failed share of requests in the window (0 when there were none).
    pub error_rate: f64,
    /// Worker crashes per minute.
    pub crashes_per_minute: f64,
    /// Median time on a worker, milliseconds.
    pub latency_p50_ms: f64,
    /// 95th percentile time on a worker, milliseconds.
    pub latency_p95_ms: f64,
    /// 99th percentile time on a worker, milliseconds.
    pub latency_p99_ms: f64,
    /// Mean wait for a worker, milliseconds.
    pub queue_time_avg_ms: f64,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Index of the bucket's time slice since the window's origin.
    slice: u64,
    requests: u64,
    errors: u64,
    crashes: u64,
    queue_us: u64,
    /// Latencies of the requests that reached a worker (allocated on the first one).
    latency: Option<Box<[u32; BINS]>>,
}

#[derive(Clone)]
struct Buckets {
    buckets: VecDeque<Bucket>,
    /// The sum of the buckets' latency histograms, kept as they come and go, so a
    /// snapshot copies one histogram instead of adding up sixty.
    latency: Box<[u64; BINS]>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            buckets: VecDeque::new(),
            latency: Box::new([0; BINS]),
        }
    }
}

/// Sliding-window recorder.
pub(crate) struct Window {
    origin: Instant,
    secs: u64,
    /// Seconds per bucket.
    width: u64,
    /// Buckets the window spans.
    slices: u64,
    inner: Mutex<Buckets>,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        let secs = window.as_secs().max(1);
        let width = secs.div_ceil(MAX_BUCKETS);
        Window {
            origin: Instant::now(),
            secs,
            width,
            slices: secs.div_ceil(width),
            inner: Mutex::new(Buckets::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        sync::lock(&self.inner)
    }

    /// The current bucket, after dropping those that left the window.
    fn bucket<'a>(&self, inner: &'a mut Buckets, now: Instant) -> &'a mut Bucket {
        let slice = now.saturating_duration_since(self.origin).as_secs() / self.width;
        let Buckets { buckets, latency } = inner;
        while buckets
            .front()
            .is_some_and(|b| b.slice + self.slices <= slice)
        {
            if let Some(old) = buckets.pop_front().and_then(|b| b.latency) {
                for (total, n) in latency.iter_mut().zip(old.iter()) {
                    *total -= u64::from(*n);
                }
            }
        }
        if buckets.back().map(|b| b.slice) != Some(slice) {
            buckets.push_back(Bucket {
                slice,
                ..Bucket::default()
            });
        }
        // Just pushed or matched above, so back() exists.
        let last = buckets.len() - 1;
        &mut buckets[last]
    }

    /// A request that reached a worker (or failed trying). `latency` is None for a
    /// stream: its duration is how long its caller read, not how fast the pool answered.
    pub fn record_request(&self, latency: Option<Duration>, queue_time: Duration, ok: bool) {
        let now = Instant::now();
        let mut inner = self.lock();
        let b = self.bucket(&mut inner, now);
        b.requests += 1;
        b.errors += u64::from(!ok);
        b.queue_us += queue_time.as_micros() as u64;
        if let Some(d) = latency {
            let bin = bin_of(d.as_micros().min(u32::MAX as u128) as u64);
            b.latency.get_or_insert_with(|| Box::new([0; BINS]))[bin] += 1;
            inner.latency[bin] += 1;
        }
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
        let (mut requests, mut errors, mut crashes, mut queue_us) = (0, 0, 0, 0);
        let latency = {
            let mut inner = self.lock();
            // Touch the current bucket so expired ones are pruned.
            self.bucket(&mut inner, now);
            for b in inner.buckets.iter() {
                requests += b.requests;
                errors += b.errors;
                crashes += b.crashes;
                queue_us += b.queue_us;
            }
            inner.latency.clone()
        };
        let samples: u64 = latency.iter().sum();
        // Nearest rank over the histogram.
        let pct = |p: f64| -> f64 {
            if samples == 0 {
                return 0.0;
            }
            let rank = ((p * samples as f64).ceil() as u64).clamp(1, samples);
            let mut seen = 0;
            for (bin, n) in latency.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bin_value(bin) / 1000.0;
                }
            }
            0.0
        };
        // Until the pool is `secs` old, rates are over its actual age.
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        let span = elapsed.clamp(1.0, self.secs as f64);
        WindowStats {
            window: Duration::from_secs(self.secs),
            requests,
            errors,
            crashes,
            latency_samples: samples,
            requests_per_second: requests as f64 / span,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            crashes_per_minute: crashes as f64 * 60.0 / span,
            latency_p50_ms: pct(0.50),
            latency_p95_ms: pct(0.95),
            latency_p99_ms: pct(0.99),
            queue_time_avg_ms: if requests == 0 {
                0.0
            } else {
                queue_us as f64 / requests as f64 / 1000.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 0.04
    }

    #[test]
    fn percentiles_rates_and_error_rate() {
        let w = Window::new(Duration::from_secs(60));
        for i in 1..=100u64 {
            w.record_request(
                Some(Duration::from_millis(i)),
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
        assert_eq!(s.latency_samples, 100);
        assert!(close(s.latency_p50_ms, 50.0), "{s:?}");
        assert!(close(s.latency_p95_ms, 95.0), "{s:?}");
        assert!(close(s.latency_p99_ms, 99.0), "{s:?}");
        assert!((s.error_rate - 11.0 / 101.0).abs() < 1e-9);
        // Less than a second old: rates are per the one-second minimum span.
        assert!((s.requests_per_second - 101.0).abs() < 1e-9);
    }

    #[test]
    fn bins_are_contiguous_and_their_values_within_a_few_percent() {
        let mut last = 0;
        for micros in 0..200_000u64 {
            let bin = bin_of(micros);
            assert!(bin == last || bin == last + 1, "gap at {micros}");
            last = bin;
            let v = bin_value(bin);
            assert!(
                (v - micros as f64).abs() <= (micros as f64 * 0.033).max(0.5),
                "{micros}: {v}"
            );
        }
        assert_eq!(bin_of(u32::MAX as u64), BINS - 1);
        let top = bin_value(BINS - 1);
        assert!(close(top, u32::MAX as f64), "{top}");
    }

    #[test]
    fn old_requests_leave_the_percentiles_with_the_window() {
        let w = Window::new(Duration::from_secs(2));
        for _ in 0..50 {
            w.record_request(Some(Duration::from_millis(600)), Duration::ZERO, true);
        }
        assert!(close(w.snapshot().latency_p99_ms, 600.0));
        // Age the window by moving its origin back, as if three seconds had passed.
        let aged = Window {
            origin: w.origin - Duration::from_secs(3),
            secs: w.secs,
            width: w.width,
            slices: w.slices,
            inner: Mutex::new(w.lock().clone()),
        };
        let s = aged.snapshot();
        assert_eq!((s.requests, s.latency_samples), (0, 0), "{s:?}");
        assert_eq!(s.latency_p99_ms, 0.0);
        aged.record_request(Some(Duration::from_millis(2)), Duration::ZERO, true);
        aged.record_request(None, Duration::ZERO, true);
        let s = aged.snapshot();
        assert!(close(s.latency_p99_ms, 2.0), "only the new request: {s:?}");
        assert_eq!(
            (s.requests, s.latency_samples),
            (2, 1),
            "a stream adds no latency"
        );
        let running: u64 = aged.lock().latency.iter().sum();
        assert_eq!(running, 1, "the running histogram dropped the old bucket");
    }

    #[test]
    fn long_windows_use_at_most_sixty_buckets() {
        let w = Window::new(Duration::from_secs(3600));
        assert_eq!((w.width, w.slices), (60, 60));
        let w = Window::new(Duration::from_secs(5));
        assert_eq!((w.width, w.slices), (1, 5));
    }
}
