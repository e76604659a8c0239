//! Getting telemetry out without ever slowing requests: bounded queues, a dedicated
//! export thread per signal, a circuit breaker, and counters for what was lost.
//!
//! `push` on the request path appends to a bounded buffer under a short lock (full →
//! dropped and counted) and wakes nobody: the export thread sleeps until its batch
//! delay passes, and is woken early only when a full batch is waiting (or for a flush).
//! So at any request rate the thread wakes a few times a second, not once per span — a
//! thread wake-up per request was the dearest thing on this path. The thread has its
//! own single-threaded Tokio runtime and owns the exporter (so its gRPC/HTTP connection
//! never runs on the application's runtime), and exports with a timeout. What it takes
//! at one wake is encoded batch by batch (each batch then leaves the queue's count) and
//! sent concurrently, so a backend that answers slowly costs one round trip per wake
//! and the queue keeps its room while the requests are on the wire. After
//! `breaker_failures` failed exports in a row the breaker opens: batches are dropped
//! (and counted) without a network attempt for `breaker_cooldown`, then one export is
//! tried again.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use snakepit_core::sync;

/// What happened to the items of one signal. Read by the self-metrics.
#[derive(Debug, Default)]
pub struct SignalCounters {
    /// Items the backend accepted.
    pub exported: AtomicU64,
    /// Lost because the queue was full (exporter slower than the load).
    pub dropped_queue_full: AtomicU64,
    /// Lost because the export failed or timed out.
    pub dropped_export_failed: AtomicU64,
    /// Lost because the breaker was open (backend known to be down).
    pub dropped_circuit_open: AtomicU64,
    /// Export attempts that failed.
    pub export_failures: AtomicU64,
    /// Why the latest failed export failed (the exporter's or the timeout's words).
    last_error: Mutex<Option<String>>,
}

impl SignalCounters {
    /// Why the latest failed export failed, if one did: what an operator needs to fix
    /// a collector that refuses or never answers.
    pub fn last_error(&self) -> Option<String> {
        snakepit_core::sync::lock(&self.last_error).clone()
    }

    /// Items lost, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_export_failed.load(Ordering::Relaxed)
            + self.dropped_circuit_open.load(Ordering::Relaxed)
    }
}

/// Batching and resilience settings.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Items buffered; beyond it new ones are dropped and counted.
    pub max_queue: usize,
    /// Items per export request.
    pub max_batch: usize,
    /// How long a partial batch waits for more.
    pub delay: Duration,
    /// How long one export may take.
    pub timeout: Duration,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open (items are dropped, not sent) before a retry.
    pub breaker_cooldown: Duration,
}

/// Something that exports a batch of `T`, in two steps: `encode` (synchronous, on the
/// export thread) and `export` (the network).
pub trait BatchExporter<T>: Send + 'static {
    /// What a batch becomes before it is sent: the wire form, or the items themselves.
    type Encoded;
    /// Turn a batch into what `export` sends. The batcher counts the items out of its
    /// queue as soon as this returns, so an exporter that encodes here (dropping the
    /// items) leaves the whole queue free for new items while a slow export is on the
    /// wire; memory stays bounded by the queue plus the one batch in flight.
    fn encode(&self, batch: Vec<T>) -> Self::Encoded;
    /// Send one encoded batch; `Err` says why it failed (counted, never retried).
    fn export(&self, encoded: Self::Encoded) -> impl Future<Output = Result<(), String>>;
    /// Release what the exporter holds (connections) when the batcher stops.
    fn shutdown(&self) {}
}

/// Requests to the export thread besides items.
enum Control {
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// The items waiting for the export thread.
struct Buffer<T> {
    items: Mutex<Vec<T>>,
    /// Items the export thread took and has not yet encoded (`BatchExporter::encode`):
    /// they count against `max_queue` too, so memory stays bounded.
    exporting: AtomicUsize,
    /// The export thread is gone: pushes are dropped (and counted) at once.
    closed: AtomicBool,
    /// Times the export thread woke up (tests check it does not wake per item).
    wakes: AtomicU64,
    max_queue: usize,
    max_batch: usize,
}

impl<T> Buffer<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        sync::lock(&self.items)
    }

    /// Everything waiting, counted as being exported until `exported` says otherwise.
    fn take(&self) -> Vec<T> {
        let mut items = self.lock();
        let taken = std::mem::replace(&mut *items, Vec::with_capacity(self.max_batch));
        self.exporting.fetch_add(taken.len(), Ordering::Relaxed);
        taken
    }

    fn exported(&self, n: usize) {
        self.exporting.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A bounded buffer drained by an export thread.
pub struct Batcher<T> {
    buffer: Arc<Buffer<T>>,
    /// Taken on drop, so the thread sees the channel closed when it wakes.
    control: Option<mpsc::Sender<Control>>,
    /// The export thread, to wake it.
    waker: std::thread::Thread,
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
        let buffer = Arc::new(Buffer {
            items: Mutex::new(Vec::new()),
            exporting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wakes: AtomicU64::new(0),
            max_queue: settings.max_queue.max(1),
            max_batch: settings.max_batch.max(1),
        });
        let (control, control_rx) = mpsc::channel();
        let thread_counters = counters.clone();
        let thread_buffer = buffer.clone();
        let thread = std::thread::Builder::new()
            .name(format!("snakepit-export-{name}"))
            .spawn(move || {
                run(
                    name,
                    settings,
                    thread_counters.clone(),
                    &thread_buffer,
                    control_rx,
                    make,
                );
                thread_buffer.closed.store(true, Ordering::Release);
                // Whatever arrived since the last export will never go out.
                let left = thread_buffer.take().len();
                thread_buffer.exported(left);
                thread_counters
                    .dropped_export_failed
                    .fetch_add(left as u64, Ordering::Relaxed);
            })?;
        Ok(Batcher {
            buffer,
            control: Some(control),
            waker: thread.thread().clone(),
            counters,
            thread: Mutex::new(Some(thread)),
            name,
        })
    }

    /// Never blocks and never wakes the export thread, unless a full batch is waiting.
    /// A full buffer drops the item and counts it.
    pub fn push(&self, item: T) {
        if self.buffer.closed.load(Ordering::Acquire) {
            self.counters
                .dropped_export_failed
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let full_batch = {
            let mut items = self.buffer.lock();
            let held = items.len() + self.buffer.exporting.load(Ordering::Relaxed);
            if held >= self.buffer.max_queue {
                drop(items);
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            items.push(item);
            items.len() == self.buffer.max_batch
        };
        if full_batch {
            self.waker.unpark();
        }
    }

    fn roundtrip(&self, make: fn(SyncSender<()>) -> Control, timeout: Duration) -> OTelSdkResult {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let gone = || OTelSdkError::InternalFailure(format!("{} exporter is gone", self.name));
        let control = self.control.as_ref().ok_or_else(gone)?;
        control.send(make(done_tx)).map_err(|_| gone())?;
        self.waker.unpark();
        done_rx
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }

    /// Export what is queued now; waits at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> OTelSdkResult {
        self.roundtrip(Control::Flush, timeout)
    }

    /// Export what is queued, then stop the thread; waits at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.roundtrip(Control::Shutdown, timeout);
        let handle = sync::lock(&self.thread).take();
        if result.is_ok() {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        result
    }
}

impl<T> Drop for Batcher<T> {
    fn drop(&mut self) {
        // Close the control channel first, then wake the thread: it exports what is
        // left and ends.
        self.control = None;
        self.waker.unpark();
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
    buffer: &Buffer<T>,
    control: mpsc::Receiver<Control>,
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
            return drain_forever(buffer, control, &counters);
        }
    };
    let exporter = match rt.block_on(async { make() }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("snakepit: cannot build the {name} exporter: {e}; {name} are dropped");
            return drain_forever(buffer, control, &counters);
        }
    };
    let mut breaker = Breaker {
        failures_in_a_row: 0,
        open_until: None,
    };
    let max_batch = settings.max_batch.max(1);
    let exporter = &exporter;
    let timeout = settings.timeout;
    // Everything taken at one wake goes out at once, its batches concurrently (on one
    // connection): a backend that answers slowly then costs one round trip per wake,
    // not one per batch, and the queue keeps its whole room while they are on the wire
    // (each batch leaves the queue's count once encoded).
    let export_all = |breaker: &mut Breaker| {
        let mut items = buffer.take().into_iter();
        let mut sends = Vec::new();
        loop {
            let batch: Vec<T> = items.by_ref().take(max_batch).collect();
            if batch.is_empty() {
                break;
            }
            let len = batch.len();
            if breaker.open_until.is_some_and(|t| Instant::now() < t) {
                drop(batch);
                buffer.exported(len);
                counters
                    .dropped_circuit_open
                    .fetch_add(len as u64, Ordering::Relaxed);
                continue;
            }
            let encoded = exporter.encode(batch);
            buffer.exported(len);
            sends.push(async move {
                let result = match tokio::time::timeout(timeout, exporter.export(encoded)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (len as u64, result)
            });
        }
        if sends.is_empty() {
            return;
        }
        for (n, result) in rt.block_on(futures_util::future::join_all(sends)) {
            match result {
                Ok(()) => {
                    counters.exported.fetch_add(n, Ordering::Relaxed);
                    breaker.failures_in_a_row = 0;
                    breaker.open_until = None;
                }
                Err(error) => {
                    counters.export_failures.fetch_add(1, Ordering::Relaxed);
                    counters
                        .dropped_export_failed
                        .fetch_add(n, Ordering::Relaxed);
                    breaker.failures_in_a_row += 1;
                    if breaker.failures_in_a_row == settings.breaker_failures {
                        // Said once per outage (the counters keep counting): the
                        // drops are counted, but only this says why.
                        eprintln!(
                            "snakepit: {name} export failed {} times in a row ({error}); \
                             dropping {name} for {:?}, then trying again",
                            breaker.failures_in_a_row, settings.breaker_cooldown
                        );
                    }
                    if breaker.failures_in_a_row >= settings.breaker_failures {
                        breaker.open_until = Some(Instant::now() + settings.breaker_cooldown);
                    }
                    *snakepit_core::sync::lock(&counters.last_error) = Some(error);
                }
            }
        }
    };
    let mut deadline = Instant::now() + settings.delay;
    loop {
        let now = Instant::now();
        if now >= deadline || buffer.lock().len() >= max_batch {
            export_all(&mut breaker);
            deadline = Instant::now() + settings.delay;
        }
        loop {
            match control.try_recv() {
                Ok(Control::Flush(done)) => {
                    // A flush is an explicit request: try even through an open breaker.
                    breaker.open_until = None;
                    export_all(&mut breaker);
                    let _ = done.send(());
                }
                Ok(Control::Shutdown(done)) => {
                    breaker.open_until = None;
                    export_all(&mut breaker);
                    exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    export_all(&mut breaker);
                    exporter.shutdown();
                    return;
                }
            }
        }
        std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
        buffer.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

fn drain_forever<T>(
    buffer: &Buffer<T>,
    control: mpsc::Receiver<Control>,
    counters: &SignalCounters,
) {
    loop {
        let taken = buffer.take();
        let dropped = taken.len() as u64;
        buffer.exported(taken.len());
        counters
            .dropped_export_failed
            .fetch_add(dropped, Ordering::Relaxed);
        match control.recv_timeout(Duration::from_secs(1)) {
            Ok(Control::Flush(done)) => {
                let _ = done.send(());
            }
            Ok(Control::Shutdown(done)) => {
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

// --- logs ---------------------------------------------------------------------------

pub(crate) type LogItem = (SdkLogRecord, InstrumentationScope);

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub(crate) struct OtelLogs<E>(pub E);

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl<E: LogExporter + 'static> BatchExporter<LogItem> for OtelLogs<E> {
    type Encoded = Vec<LogItem>;
    fn encode(&self, batch: Vec<LogItem>) -> Vec<LogItem> {
        batch
    }
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
#[path = "export_tests.rs"]
mod tests;
