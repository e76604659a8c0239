//! The event bus: pattern subscriptions, sampling, sanitization, bounded delivery.
//!
//! Cost model. `emit_with` first loads one atomic mask of the kinds anyone listens
//! to: with no consumers (or events disabled) that load is the whole cost and the
//! event is never built. Otherwise the event is sampled, built, sanitized once,
//! wrapped in an `Arc` and `try_send`-ed to each matching consumer's bounded buffer;
//! a full buffer drops the event for that consumer and counts it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::{Event, EventData, EventKind, EventsConfig, Pattern};
use crate::sanitize::Sanitizer;
use crate::sync;

/// Handle to the bus; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("enabled", &self.inner.enabled)
            .field("consumers", &self.consumer_stats().len())
            .finish()
    }
}

struct Inner {
    enabled: bool,
    /// Union of all consumers' patterns (0 when disabled).
    wanted: AtomicU32,
    /// Keep-probability per kind, indexed by `EventKind as usize`.
    sampling: Vec<f64>,
    sanitizer: Sanitizer,
    default_buffer: usize,
    consumers: RwLock<Vec<Arc<ConsumerShared>>>,
    next_id: AtomicU64,
    emitted: AtomicU64,
    sampled_out: AtomicU64,
}

struct ConsumerShared {
    id: u64,
    name: String,
    pattern: Pattern,
    tx: mpsc::Sender<Arc<Event>>,
    delivered: AtomicU64,
    dropped: AtomicU64,
    panicked: AtomicU64,
}

/// Counters of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The name the consumer was attached or subscribed with.
    pub name: String,
    /// Events handed to it.
    pub delivered: u64,
    /// Events lost because the consumer's buffer was full.
    pub dropped: u64,
    /// Handler calls that panicked (callback consumers only).
    pub panicked: u64,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(&EventsConfig::default())
    }
}

impl EventBus {
    /// A bus from validated config (see [`EventsConfig::validate`]); unknown sampling
    /// keys are ignored here.
    pub fn new(cfg: &EventsConfig) -> Self {
        let mut sampling = vec![1.0; EventKind::ALL.len()];
        for (name, rate) in &cfg.sampling {
            if let Some(kind) = EventKind::from_name(name) {
                sampling[kind as usize] = rate.clamp(0.0, 1.0);
            }
        }
        EventBus {
            inner: Arc::new(Inner {
                enabled: cfg.enabled,
                wanted: AtomicU32::new(0),
                sampling,
                sanitizer: Sanitizer::new(&cfg.sanitize),
                default_buffer: cfg.consumer_buffer.max(1),
                consumers: RwLock::new(Vec::new()),
                next_id: AtomicU64::new(1),
                emitted: AtomicU64::new(0),
                sampled_out: AtomicU64::new(0),
            }),
        }
    }

    /// A bus that never delivers anything.
    pub fn disabled() -> Self {
        EventBus::new(&EventsConfig {
            enabled: false,
            ..EventsConfig::default()
        })
    }

    /// The sanitizer this bus applies; telemetry layers reuse it.
    pub fn sanitizer(&self) -> &Sanitizer {
        &self.inner.sanitizer
    }

    /// True when some consumer would receive `kind` (before sampling).
    #[inline]
    pub fn is_wanted(&self, kind: EventKind) -> bool {
        self.inner.wanted.load(Ordering::Relaxed) & kind.bit() != 0
    }

    /// Emit the event that `build` makes, if anyone listens and sampling keeps it.
    #[inline]
    pub fn emit_with(
        &self,
        kind: EventKind,
        correlation_id: Option<&str>,
        build: impl FnOnce() -> EventData,
    ) {
        if !self.is_wanted(kind) {
            return;
        }
        self.deliver(kind, correlation_id, build);
    }

    /// Emit an already built event.
    pub fn emit(&self, correlation_id: Option<&str>, data: EventData) {
        self.emit_with(data.kind(), correlation_id, || data);
    }

    #[cold]
    fn deliver(
        &self,
        kind: EventKind,
        correlation_id: Option<&str>,
        build: impl FnOnce() -> EventData,
    ) {
        let rate = self.inner.sampling[kind as usize];
        if rate < 1.0 && fastrand::f64() >= rate {
            self.inner.sampled_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut data = build();
        debug_assert_eq!(data.kind(), kind, "event built does not match its kind");
        data.sanitize(&self.inner.sanitizer);
        let correlation_id = correlation_id.map(|c| {
            let mut c = c.to_string();
            self.inner.sanitizer.truncate(&mut c);
            c
        });
        let event = Arc::new(Event {
            timestamp: SystemTime::now(),
            correlation_id,
            data,
        });
        self.inner.emitted.fetch_add(1, Ordering::Relaxed);
        let consumers = sync::read(&self.inner.consumers);
        for c in consumers.iter().filter(|c| c.pattern.matches(kind)) {
            match c.tx.try_send(event.clone()) {
                Ok(()) => c.delivered.fetch_add(1, Ordering::Relaxed),
                Err(_) => c.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Receive matching events through a bounded buffer you drain yourself (e.g. in a
    /// task: `while let Some(ev) = sub.recv().await`). Dropping the subscription
    /// unsubscribes.
    pub fn subscribe(&self, name: impl Into<String>, pattern: Pattern) -> Subscription {
        self.subscribe_with_buffer(name, pattern, self.inner.default_buffer)
    }

    /// [`EventBus::subscribe`] with room for `buffer` undelivered events (beyond it
    /// new ones are dropped and counted) instead of `consumer_buffer`.
    pub fn subscribe_with_buffer(
        &self,
        name: impl Into<String>,
        pattern: Pattern,
        buffer: usize,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let shared = Arc::new(ConsumerShared {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            pattern,
            tx,
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        self.register(shared.clone());
        Subscription {
            rx,
            shared,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Run `handler` for each matching event on a dedicated thread. A handler that
    /// panics is counted and keeps receiving; one that blocks only delays itself
    /// (its buffer fills and further events are dropped and counted).
    pub fn attach<F>(&self, name: impl Into<String>, pattern: Pattern, handler: F) -> ConsumerHandle
    where
        F: Fn(&Event) + Send + 'static,
    {
        let name = name.into();
        let mut sub = self.subscribe(name.clone(), pattern);
        let shared = sub.shared.clone();
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snakepit-events-{name}"))
            .spawn(move || {
                while let Some(event) = sub.rx.blocking_recv() {
                    if catch_unwind(AssertUnwindSafe(|| handler(&event))).is_err() {
                        thread_shared.panicked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        if let Err(err) = spawned {
            // No thread, no consumer: say so instead of silently dropping everything.
            tracing::error!(consumer = %name, error = %err, "cannot start event consumer thread");
        }
        ConsumerHandle {
            shared,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Counters of every current consumer.
    pub fn consumer_stats(&self) -> Vec<ConsumerStats> {
        let consumers = sync::read(&self.inner.consumers);
        consumers.iter().map(|c| stats_of(c)).collect()
    }

    /// Events built and delivered to at least the matching consumers' buffers.
    pub fn emitted(&self) -> u64 {
        self.inner.emitted.load(Ordering::Relaxed)
    }

    /// Events skipped by sampling.
    pub fn sampled_out(&self) -> u64 {
        self.inner.sampled_out.load(Ordering::Relaxed)
    }

    fn register(&self, consumer: Arc<ConsumerShared>) {
        let mut consumers = sync::write(&self.inner.consumers);
        consumers.push(consumer);
        recompute_mask(&self.inner, &consumers);
    }
}

fn stats_of(c: &ConsumerShared) -> ConsumerStats {
    ConsumerStats {
        name: c.name.clone(),
        delivered: c.delivered.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        panicked: c.panicked.load(Ordering::Relaxed),
    }
}

fn recompute_mask(inner: &Inner, consumers: &[Arc<ConsumerShared>]) {
    let mask = if inner.enabled {
        consumers.iter().fold(0, |m, c| m | c.pattern.mask())
    } else {
        0
    };
    inner.wanted.store(mask, Ordering::Relaxed);
}

fn unregister(bus: &Weak<Inner>, id: u64) {
    let Some(inner) = bus.upgrade() else { return };
    let mut consumers = sync::write(&inner.consumers);
    consumers.retain(|c| c.id != id);
    recompute_mask(&inner, &consumers);
}

/// A pull-based consumer. Dropping it unsubscribes.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Event>>,
    shared: Arc<ConsumerShared>,
    bus: Weak<Inner>,
}

impl Subscription {
    /// The next matching event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.rx.recv().await
    }

    /// The next matching event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        self.rx.try_recv().ok()
    }

    /// What this subscription received and lost.
    pub fn stats(&self) -> ConsumerStats {
        stats_of(&self.shared)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        unregister(&self.bus, self.shared.id);
    }
}

/// A callback consumer started by [`EventBus::attach`]. Dropping the handle leaves the
/// consumer running; call [`ConsumerHandle::detach`] to stop it.
pub struct ConsumerHandle {
    shared: Arc<ConsumerShared>,
    bus: Weak<Inner>,
}

impl ConsumerHandle {
    /// What this consumer received, lost, and how often its handler panicked.
    pub fn stats(&self) -> ConsumerStats {
        stats_of(&self.shared)
    }

    /// Unsubscribe; the thread ends once it has handled what is buffered.
    pub fn detach(self) {
        unregister(&self.bus, self.shared.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::data;
    use std::time::Duration;

    fn saturated() -> EventData {
        data::PoolSaturated {
            queue_size: 1,
            max_queue_size: 1,
            pool_name: "p".into(),
            available_workers: 0,
            busy_workers: 1,
        }
        .into()
    }

    fn session_created(meta: serde_json::Value) -> EventData {
        data::SessionCreated {
            creation_time_ms: 0.1,
            session_id: "s".into(),
            pool_name: "p".into(),
            ttl_seconds: 60,
            metadata: meta,
            recreated: false,
        }
        .into()
    }

    #[test]
    fn nothing_is_built_without_consumers() {
        let bus = EventBus::default();
        bus.emit_with(EventKind::PoolSaturated, None, || {
            panic!("built an event nobody wants")
        });
        assert_eq!(bus.emitted(), 0);
    }

    #[test]
    fn patterns_route_events() {
        let bus = EventBus::default();
        let mut pool = bus.subscribe("pool", Pattern::parse("snakepit.pool.*").unwrap());
        let mut sessions = bus.subscribe("s", Pattern::parse("snakepit.session.*").unwrap());
        bus.emit(Some("corr-1"), saturated());
        let ev = pool.try_recv().expect("pool consumer gets pool events");
        assert_eq!(ev.name(), "snakepit.pool.saturated");
        assert_eq!(ev.correlation_id.as_deref(), Some("corr-1"));
        assert!(sessions.try_recv().is_none());
        drop(pool);
        // After the only pool consumer left, pool events are not even built.
        bus.emit_with(EventKind::PoolSaturated, None, || panic!("unwanted"));
    }

    #[test]
    fn sanitizes_before_any_consumer_sees_it() {
        let bus = EventBus::default();
        let mut sub = bus.subscribe("all", Pattern::all());
        bus.emit(
            None,
            session_created(serde_json::json!({"user": "ann", "password": "hunter2", "db": {"auth_token": "t"}})),
        );
        let ev = sub.try_recv().unwrap();
        let text = ev.to_json().to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("\"t\""),
            "{text}"
        );
        assert!(text.contains("[REDACTED]") && text.contains("ann"));
    }

    #[test]
    fn sampling_keeps_about_the_configured_share() {
        let mut cfg = EventsConfig::default();
        cfg.sampling.insert("snakepit.pool.saturated".into(), 0.25);
        let bus = EventBus::new(&cfg);
        let sub = bus.subscribe_with_buffer("all", Pattern::all(), 100_000);
        for _ in 0..20_000 {
            bus.emit(None, saturated());
        }
        let delivered = sub.stats().delivered;
        assert!((4_000..6_000).contains(&delivered), "{delivered}");
        assert_eq!(bus.sampled_out() + delivered, 20_000);
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let bus = EventBus::default();
        let sub = bus.subscribe_with_buffer("slow", Pattern::all(), 4);
        for _ in 0..10 {
            bus.emit(None, saturated());
        }
        let stats = sub.stats();
        assert_eq!((stats.delivered, stats.dropped), (4, 6));
    }

    #[test]
    fn panicking_and_stalled_handlers_do_not_affect_emitters() {
        let bus = EventBus::new(&EventsConfig {
            consumer_buffer: 16,
            ..EventsConfig::default()
        });
        let panicky = bus.attach("panicky", Pattern::all(), |_| panic!("consumer bug"));
        let stalled = bus.attach("stalled", Pattern::all(), |_| {
            std::thread::sleep(Duration::from_secs(3600))
        });
        let start = std::time::Instant::now();
        for _ in 0..5_000 {
            bus.emit(None, saturated());
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "emitters were slowed"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let settled = |s: &ConsumerStats| s.panicked + s.dropped == 5_000;
        while !settled(&panicky.stats()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let p = panicky.stats();
        assert_eq!(p.panicked + p.dropped, 5_000, "{p:?}");
        assert!(p.panicked > 0);
        let s = stalled.stats();
        assert!(s.dropped >= 5_000 - 1 - 16, "{s:?}");
    }

    #[test]
    fn disabled_bus_delivers_nothing() {
        let bus = EventBus::disabled();
        let mut sub = bus.subscribe("all", Pattern::all());
        bus.emit(None, saturated());
        assert!(sub.try_recv().is_none());
    }
}
