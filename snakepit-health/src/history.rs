//! The dashboard's memory: one sampler task reads every pool's stats each interval,
//! keeps the last `history_minutes` of points per pool in a bounded ring, keeps the
//! most recent errors (request failures with their Python traceback, worker crashes)
//! from the event stream, and broadcasts one pre-serialized update to every open page.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use snakepit_core::events::Subscription;
use snakepit_core::{Event, EventData, Pool};
use tokio::sync::broadcast;

use crate::config::DashboardConfig;
use snakepit_core::sync;

/// One chart point of one pool.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// Requests per second over the last interval.
    pub throughput: f64,
    /// Median latency over the stats window, milliseconds.
    pub p50: f64,
    /// 99th percentile latency over the stats window, milliseconds.
    pub p99: f64,
    /// Failed requests per second.
    pub errors: f64,
    /// Requests waiting for a worker.
    pub queue: usize,
}

/// A failed request or a crash, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// `request` or `crash`.
    pub kind: &'static str,
    /// The pool it happened in.
    pub pool: String,
    /// The command (empty for a crash between requests).
    pub command: String,
    /// The error's type (`PythonError`, `Timeout`, `WorkerCrashed`...).
    pub error_type: String,
    /// What went wrong, sanitized.
    pub message: String,
    /// The Python exception's class, if it was one.
    pub python_type: Option<String>,
    /// The Python traceback, if there was one.
    pub traceback: Option<String>,
    /// For a request that timed out: where the worker's Python threads were stuck.
    pub python_stack: Option<String>,
    /// The worker that served (or crashed).
    pub worker_id: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// The request's correlation id, to find its logs and trace.
    pub correlation_id: Option<String>,
}

#[derive(Default)]
struct Inner {
    points: HashMap<String, VecDeque<Point>>,
    errors: VecDeque<RecentError>,
    /// Per pool: (requests_total, failures_total) at the last tick.
    last_totals: HashMap<String, (u64, u64)>,
    last: Value,
}

/// Shared between the sampler, the stream handlers and the snapshot.
pub struct History {
    cfg: DashboardConfig,
    inner: Mutex<Inner>,
    /// Each new point and error as a JSON message, for the dashboard's live stream.
    pub updates: broadcast::Sender<Arc<str>>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `Some` for a non-empty string (the dashboard shows nothing rather than "").
fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl History {
    /// An empty history kept as `cfg` says.
    pub fn new(cfg: DashboardConfig) -> Arc<History> {
        let (updates, _) = broadcast::channel(16);
        Arc::new(History {
            cfg,
            inner: Mutex::new(Inner::default()),
            updates,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        sync::lock(&self.inner)
    }

    fn capacity(&self) -> usize {
        let per_minute = 60_000 / self.cfg.update_interval_ms.max(1);
        (self.cfg.history_minutes * per_minute).max(1) as usize
    }

    /// The dashboard's view of a failure event.
    fn to_error(ev: &Event) -> Option<RecentError> {
        match &ev.data {
            EventData::RequestFailed(d) => Some(RecentError {
                t: now_secs(),
                kind: "request",
                pool: d.pool_name.clone(),
                command: d.command.clone(),
                error_type: d.error_type.clone(),
                message: d.error_message.clone(),
                python_type: d.python_type.as_deref().and_then(some),
                traceback: d.python_traceback.as_deref().and_then(some),
                python_stack: d.python_stack.as_deref().and_then(some),
                worker_id: d.worker_id.as_deref().and_then(some),
                request_id: some(&d.request_id),
                correlation_id: ev.correlation_id.clone(),
            }),
            EventData::WorkerCrashed(d) => Some(RecentError {
                t: now_secs(),
                kind: "crash",
                pool: d.pool_name.clone(),
                command: String::new(),
                error_type: "WorkerCrashed".into(),
                message: d.error.clone(),
                python_type: None,
                traceback: some(&d.stderr_tail),
                python_stack: None,
                worker_id: some(&d.worker_id),
                request_id: None,
                correlation_id: None,
            }),
            _ => None,
        }
    }

    /// Take one sample of every pool (and the events since the last one).
    pub fn tick(&self, pools: &[Pool], events: &mut Subscription) {
        let t = now_secs();
        let interval = self.cfg.update_interval_ms as f64 / 1000.0;
        let capacity = self.capacity();
        let mut new_errors = Vec::new();
        while let Some(ev) = events.try_recv() {
            new_errors.extend(Self::to_error(&ev));
        }
        // Only the newest `max_recent_errors` matter, to the page as to the ring.
        let skip = new_errors.len().saturating_sub(self.cfg.max_recent_errors);
        new_errors.drain(..skip);
        let mut inner = self.lock();
        for e in &new_errors {
            inner.errors.push_back(e.clone());
        }
        while inner.errors.len() > self.cfg.max_recent_errors {
            inner.errors.pop_front();
        }
        let mut cards = Vec::new();
        let mut workers = Vec::new();
        let mut points = serde_json::Map::new();
        for pool in pools {
            let s = pool.stats();
            let (req0, fail0) = inner
                .last_totals
                .get(&s.name)
                .copied()
                .unwrap_or((s.requests_total, s.failures_total));
            inner
                .last_totals
                .insert(s.name.clone(), (s.requests_total, s.failures_total));
            let point = Point {
                t,
                throughput: s.requests_total.saturating_sub(req0) as f64 / interval,
                p50: s.window.latency_p50_ms,
                p99: s.window.latency_p99_ms,
                errors: s.failures_total.saturating_sub(fail0) as f64 / interval,
                queue: s.queue_size,
            };
            let ring = inner.points.entry(s.name.clone()).or_default();
            ring.push_back(point.clone());
            while ring.len() > capacity {
                ring.pop_front();
            }
            points.insert(s.name.clone(), json!(point));
            cards.push(json!({
                "name": s.name, "adapter": s.adapter, "total": s.total_workers,
                "ready": s.ready_workers, "available": s.available_workers, "busy": s.busy_workers,
                "queue": s.queue_size, "max_queue": s.max_queue_size, "in_flight": s.in_flight,
                "rps": s.window.requests_per_second, "p50": s.window.latency_p50_ms,
                "p99": s.window.latency_p99_ms, "error_rate": s.window.error_rate,
                "requests": s.requests_total, "failures": s.failures_total,
                "crashes": s.crashes_total, "recycles": s.recycles_total,
                "sessions": s.active_sessions, "accepting": s.accepting,
                "pss_mb": s.total_pss_bytes() as f64 / 1048576.0,
                "template": s.template.as_ref().map(|t| json!({
                    "pid": t.pid, "ready": t.ready, "restarts": t.restarts,
                    "rss_mb": t.rss_bytes as f64 / 1048576.0, "pss_mb": t.pss_bytes as f64 / 1048576.0,
                })),
            }));
            for w in &s.workers {
                workers.push(json!({
                    "pool": s.name, "id": w.id, "state": w.state, "pid": w.pid,
                    "uptime_s": w.uptime.as_secs_f64(), "requests": w.requests,
                    "rss_mb": w.rss_bytes as f64 / 1048576.0,
                    "pss_mb": w.pss_bytes as f64 / 1048576.0,
                    "uss_mb": w.uss_bytes as f64 / 1048576.0,
                }));
            }
        }
        let update = json!({
            "t": t, "pools": cards, "workers": workers, "points": points, "errors": new_errors,
        });
        let text: Arc<str> = Arc::from(update.to_string());
        inner.last = update;
        drop(inner);
        let _ = self.updates.send(text);
    }

    /// Everything a page needs when it (re)connects: settings, full history, errors, and
    /// the latest state.
    pub fn snapshot(&self) -> String {
        let inner = self.lock();
        json!({
            "interval_ms": self.cfg.update_interval_ms,
            "history_minutes": self.cfg.history_minutes,
            "history": inner.points,
            "errors": inner.errors,
            "latest": inner.last,
        })
        .to_string()
    }
}

/// Sample until the `History` is dropped.
pub async fn run_sampler(
    history: Weak<History>,
    pools: Arc<std::sync::RwLock<Vec<Pool>>>,
    mut events: Subscription,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(h) = history.upgrade() else { return };
        let current: Vec<Pool> = sync::read(&pools).clone();
        h.tick(&current, &mut events);
    }
}
