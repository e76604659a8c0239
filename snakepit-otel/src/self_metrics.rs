//! Telemetry about telemetry: what each signal lost on the way out and how many
//! exports failed, as observable counters read from the export threads' counters at
//! collection time (nothing on the request path).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use crate::export::SignalCounters;

/// `snakepit.telemetry.dropped{signal, reason}` and
/// `snakepit.telemetry.export_failures{signal}` for each `(signal, counters)`.
pub(crate) fn register(meter: &Meter, signals: [(&'static str, Arc<SignalCounters>); 3]) {
    let dropped = signals.clone();
    meter
        .u64_observable_counter("snakepit.telemetry.dropped")
        .with_description("Telemetry items lost on the way out (the pool never waits for exports)")
        .with_callback(move |o| {
            for (signal, c) in &dropped {
                for (reason, v) in [
                    ("queue_full", &c.dropped_queue_full),
                    ("export_failed", &c.dropped_export_failed),
                    ("circuit_open", &c.dropped_circuit_open),
                ] {
                    o.observe(
                        v.load(Ordering::Relaxed),
                        &[
                            KeyValue::new("signal", *signal),
                            KeyValue::new("reason", reason),
                        ],
                    );
                }
            }
        })
        .build();
    meter
        .u64_observable_counter("snakepit.telemetry.export_failures")
        .with_description("Export attempts that failed or timed out")
        .with_callback(move |o| {
            for (signal, c) in &signals {
                o.observe(
                    c.export_failures.load(Ordering::Relaxed),
                    &[KeyValue::new("signal", *signal)],
                );
            }
        })
        .build();
}
