//! OTLP metric push on a dedicated thread, like spans and logs (see [`crate::export`]):
//! a shared `ManualReader` is collected every interval on the export thread, whose own
//! runtime owns the exporter's connection; failures count and trip the same kind of
//! circuit breaker. (The SDK's `PeriodicReader` would poll the exporter from a thread
//! without a Tokio runtime, which the HTTP exporter cannot run on.)

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};

use crate::export::{ExportSettings, SignalCounters};
use snakepit_core::sync;

/// A reader the provider owns while the export thread collects through the same `Arc`.
#[derive(Debug, Clone)]
pub struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The export thread; dropping or `stop`ping it does one last push.
pub struct MetricPusher {
    stop: Mutex<Option<(SyncSender<()>, std::thread::JoinHandle<()>)>>,
}

impl MetricPusher {
    /// Returns the reader to register with the meter provider.
    pub fn start<E, F>(
        interval: Duration,
        settings: ExportSettings,
        counters: Arc<SignalCounters>,
        make: F,
    ) -> std::io::Result<(SharedReader, MetricPusher)>
    where
        E: PushMetricExporter,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let thread_reader = reader.clone();
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("snakepit-export-metrics".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    eprintln!("snakepit: cannot start the metrics export runtime; OTLP metrics are off");
                    return;
                };
                let exporter = match rt.block_on(async { make() }) {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("snakepit: cannot build the OTLP metric exporter: {e}; OTLP metrics are off");
                        return;
                    }
                };
                let mut failures = 0u32;
                let mut open_until: Option<Instant> = None;
                loop {
                    let last = match rx.recv_timeout(interval) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                    };
                    let mut rm = ResourceMetrics::default();
                    if thread_reader.collect(&mut rm).is_ok() {
                        if open_until.is_some_and(|t| Instant::now() < t) && !last {
                            counters.dropped_circuit_open.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let result = rt.block_on(async {
                                tokio::time::timeout(settings.timeout, exporter.export(&rm)).await
                            });
                            if matches!(result, Ok(Ok(()))) {
                                counters.exported.fetch_add(1, Ordering::Relaxed);
                                failures = 0;
                                open_until = None;
                            } else {
                                counters.export_failures.fetch_add(1, Ordering::Relaxed);
                                counters.dropped_export_failed.fetch_add(1, Ordering::Relaxed);
                                failures += 1;
                                if failures >= settings.breaker_failures {
                                    open_until = Some(Instant::now() + settings.breaker_cooldown);
                                }
                            }
                        }
                    }
                    if last {
                        let _ = exporter.shutdown();
                        return;
                    }
                }
            })?;
        Ok((
            reader,
            MetricPusher {
                stop: Mutex::new(Some((tx, handle))),
            },
        ))
    }

    /// Push once more and stop the thread.
    pub fn stop(&self) {
        let taken = sync::lock(&self.stop).take();
        if let Some((tx, handle)) = taken {
            let _ = tx.send(());
            let _ = handle.join();
        }
    }
}

impl Drop for MetricPusher {
    fn drop(&mut self) {
        self.stop();
    }
}
