//! Getting telemetry out without ever slowing requests: bounded queues, a dedicated
//! export thread per signal, a circuit breaker, and counters for what was lost.
//!
//! `on_end` / `emit` on the request path is a `try_send` into a bounded channel (full →
//! dropped and counted). A thread with its own single-threaded Tokio runtime owns the
//! exporter (so its gRPC/HTTP connection never runs on the application's runtime),
//! batches items, and exports them with a timeout. After `breaker_failures` failed
//! exports in a row the breaker opens: batches are dropped (and counted) without a
//! network attempt for `breaker_cooldown`, then one export is tried again.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// What happened to the items of one signal. Read by the self-metrics.
#[derive(Debug, Default)]
pub struct SignalCounters {
    pub exported: AtomicU64,
    /// Lost because the queue was full (exporter slower than the load).
    pub dropped_queue_full: AtomicU64,
    /// Lost because the export failed or timed out.
    pub dropped_export_failed: AtomicU64,
    /// Lost because the breaker was open (backend known to be down).
    pub dropped_circuit_open: AtomicU64,
    /// Export attempts that failed.
    pub export_failures: AtomicU64,
}

impl SignalCounters {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_export_failed.load(Ordering::Relaxed)
            + self.dropped_circuit_open.load(Ordering::Relaxed)
    }
}

/// Batching and resilience settings.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// Something that exports a batch of `T` (adapters over the OTel exporters).
pub trait BatchExporter<T>: Send + 'static {
    fn export(&self, batch: Vec<T>) -> impl Future<Output = Result<(), String>>;
    fn shutdown(&self) {}
}

enum Msg<T> {
    Item(T),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// A bounded queue drained by an export thread.
pub struct Batcher<T> {
    tx: SyncSender<Msg<T>>,
    counters: Arc<SignalCounters>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    name: &'static str,
}

impl<T> fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("signal", &self.name)
            .finish()
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Start the export thread; `make` builds the exporter inside its runtime.
    pub fn start<E, F>(
        name: &'static str,
        settings: ExportSettings,
        counters: Arc<SignalCounters>,
        make: F,
    ) -> std::io::Result<Self>
    where
        E: BatchExporter<T>,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(settings.max_queue.max(1));
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("snakepit-export-{name}"))
            .spawn(move || run(name, settings, thread_counters, rx, make))?;
        Ok(Batcher {
            tx,
            counters,
            thread: Mutex::new(Some(thread)),
            name,
        })
    }

    /// Never blocks: a full queue drops the item and counts it.
    pub fn push(&self, item: T) {
        match self.tx.try_send(Msg::Item(item)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn roundtrip(&self, make: fn(SyncSender<()>) -> Msg<T>, timeout: Duration) -> OTelSdkResult {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.tx
            .send_timeout_compat(make(done_tx), timeout)
            .map_err(|_| {
                OTelSdkError::InternalFailure(format!("{} exporter is gone", self.name))
            })?;
        done_rx
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }

    pub fn flush(&self, timeout: Duration) -> OTelSdkResult {
        self.roundtrip(Msg::Flush, timeout)
    }

    pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.roundtrip(Msg::Shutdown, timeout);
        let handle = match self.thread.lock() {
            Ok(mut t) => t.take(),
            Err(p) => p.into_inner().take(),
        };
        if result.is_ok() {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        result
    }
}

/// `SyncSender::send` can block forever on a full queue; this bounds it.
trait SendTimeout<T> {
    fn send_timeout_compat(&self, msg: T, timeout: Duration) -> Result<(), ()>;
}

impl<T> SendTimeout<T> for SyncSender<T> {
    fn send_timeout_compat(&self, mut msg: T, timeout: Duration) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(()),
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return Err(());
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

struct Breaker {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
}

fn run<T, E, F>(
    name: &'static str,
    settings: ExportSettings,
    counters: Arc<SignalCounters>,
    rx: mpsc::Receiver<Msg<T>>,
    make: F,
) where
    E: BatchExporter<T>,
    F: FnOnce() -> Result<E, String>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snakepit: cannot start the {name} export runtime: {e}; {name} are dropped");
            return drain_forever(rx, &counters);
        }
    };
    let exporter = match rt.block_on(async { make() }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("snakepit: cannot build the {name} exporter: {e}; {name} are dropped");
            return drain_forever(rx, &counters);
        }
    };
    let mut breaker = Breaker {
        failures_in_a_row: 0,
        open_until: None,
    };
    let mut batch: Vec<T> = Vec::with_capacity(settings.max_batch);
    let mut deadline = Instant::now() + settings.delay;
    let export = |batch: Vec<T>, breaker: &mut Breaker| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        if breaker.open_until.is_some_and(|t| Instant::now() < t) {
            counters
                .dropped_circuit_open
                .fetch_add(n, Ordering::Relaxed);
            return;
        }
        let result = rt.block_on(async {
            tokio::time::timeout(settings.timeout, exporter.export(batch)).await
        });
        match result {
            Ok(Ok(())) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
                breaker.failures_in_a_row = 0;
                breaker.open_until = None;
            }
            Ok(Err(_)) | Err(_) => {
                counters.export_failures.fetch_add(1, Ordering::Relaxed);
                counters
                    .dropped_export_failed
                    .fetch_add(n, Ordering::Relaxed);
                breaker.failures_in_a_row += 1;
                if breaker.failures_in_a_row >= settings.breaker_failures {
                    breaker.open_until = Some(Instant::now() + settings.breaker_cooldown);
                }
            }
        }
    };
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Item(item)) => {
                batch.push(item);
                if batch.len() >= settings.max_batch {
                    export(std::mem::take(&mut batch), &mut breaker);
                    deadline = Instant::now() + settings.delay;
                }
            }
            Ok(Msg::Flush(done)) => {
                // A flush is an explicit request: try even through an open breaker.
                breaker.open_until = None;
                export(std::mem::take(&mut batch), &mut breaker);
                let _ = done.send(());
            }
            Ok(Msg::Shutdown(done)) => {
                breaker.open_until = None;
                export(std::mem::take(&mut batch), &mut breaker);
                exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(std::mem::take(&mut batch), &mut breaker);
                deadline = Instant::now() + settings.delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(std::mem::take(&mut batch), &mut breaker);
                exporter.shutdown();
                return;
            }
        }
    }
}

fn drain_forever<T>(rx: mpsc::Receiver<Msg<T>>, counters: &SignalCounters) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Item(_) => {
                counters
                    .dropped_export_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
            Msg::Flush(done) | Msg::Shutdown(done) => {
                let _ = done.send(());
            }
        }
    }
}

// --- spans ------------------------------------------------------------------------

pub(crate) struct OtelSpans<E>(pub E);

impl<E: SpanExporter + 'static> BatchExporter<SpanData> for OtelSpans<E> {
    async fn export(&self, batch: Vec<SpanData>) -> Result<(), String> {
        self.0.export(batch).await.map_err(|e| e.to_string())
    }
    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

/// A span processor that hands finished spans to a [`Batcher`].
#[derive(Debug)]
pub struct QueueSpanProcessor(pub std::sync::Arc<Batcher<SpanData>>);

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }

    fn set_resource(&mut self, _resource: &Resource) {
        // The exporter gets the resource when it is built, on the export thread.
    }
}

// --- logs ---------------------------------------------------------------------------

pub(crate) type LogItem = (SdkLogRecord, InstrumentationScope);

pub(crate) struct OtelLogs<E>(pub E);

impl<E: LogExporter + 'static> BatchExporter<LogItem> for OtelLogs<E> {
    async fn export(&self, batch: Vec<LogItem>) -> Result<(), String> {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|(r, s)| (r, s)).collect();
        self.0
            .export(LogBatch::new(&refs))
            .await
            .map_err(|e| e.to_string())
    }
    fn shutdown(&self) {
        let _ = self.0.shutdown();
    }
}

/// A log processor that hands records to a [`Batcher`].
#[derive(Debug)]
pub struct QueueLogProcessor(pub Batcher<LogItem>);

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        self.0.push((data.clone(), instrumentation.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }
}

#[cfg(test)]
mod tests {
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
        async fn export(&self, batch: Vec<u32>) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err("backend down".into());
            }
            self.got.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
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
    }
}
