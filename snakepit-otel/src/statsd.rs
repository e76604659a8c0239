//! StatsD over UDP: request counters and timers and worker lifecycle counters, taken from
//! the core's event stream (so nothing runs on the request path), aggregated in memory
//! and flushed every `flush_interval_ms` in packets that fit one UDP datagram.
//!
//! Names: `{prefix}.{pool}.requests.success|error` (c),
//! `{prefix}.{pool}.request.duration` and `.queue_time` (ms),
//! `{prefix}.{pool}.command.{command}.duration` (ms, command names capped),
//! `{prefix}.{pool}.workers.started|crashed|recycled` and `{prefix}.{pool}.pool.saturated` (c).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snakepit_core::events::ConsumerHandle;
use snakepit_core::{EventBus, EventData, Pattern};

use crate::config::StatsdConfig;
use crate::labels::{LabelCap, UNKNOWN_LABEL};
use snakepit_core::sync;

/// Payload budget per datagram (safe under common MTUs).
const MAX_PACKET: usize = 1_400;
/// Timer samples kept per name between flushes.
const MAX_SAMPLES: usize = 10_000;

#[derive(Default)]
struct Aggregate {
    counters: BTreeMap<String, u64>,
    timers: BTreeMap<String, Vec<f64>>,
}

/// Counters of the StatsD sink itself.
#[derive(Debug, Default)]
pub struct StatsdCounters {
    /// UDP packets sent.
    pub packets_sent: AtomicU64,
    /// Packets the socket refused.
    pub send_errors: AtomicU64,
    /// Timer samples dropped: more than `MAX_SAMPLES` (10,000) per name between flushes.
    pub samples_dropped: AtomicU64,
}

/// A running StatsD sink; dropping it stops the flush thread after a last flush.
pub struct StatsdSink {
    consumer: Option<ConsumerHandle>,
    stop: Arc<AtomicBool>,
    flusher: Option<std::thread::JoinHandle<()>>,
    /// What the sink has sent and lost.
    pub counters: Arc<StatsdCounters>,
}

fn clean(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl StatsdSink {
    /// Consume `bus` and send aggregates to `cfg.address` every `flush_interval_ms`.
    pub fn start(cfg: &StatsdConfig, bus: &EventBus) -> std::io::Result<StatsdSink> {
        let socket = UdpSocket::bind("127.0.0.1:0").or_else(|_| UdpSocket::bind("0.0.0.0:0"))?;
        socket.connect(&cfg.address)?;
        socket.set_nonblocking(true)?;
        let aggregate = Arc::new(Mutex::new(Aggregate::default()));
        let counters = Arc::new(StatsdCounters::default());
        let prefix = clean(&cfg.prefix);
        let commands = LabelCap::new(100);
        let agg = aggregate.clone();
        let drop_counter = counters.clone();
        let pattern = Pattern::any([
            "snakepit.request.completed",
            "snakepit.request.failed",
            "snakepit.worker.started",
            "snakepit.worker.crashed",
            "snakepit.worker.recycled",
            "snakepit.pool.saturated",
        ])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let consumer = bus.attach("statsd", pattern, move |ev| {
            let pool = clean(ev.data.pool_name());
            let base = format!("{prefix}.{pool}");
            let mut a = sync::lock(&agg);
            let mut count = |name: String| *a.counters.entry(name).or_default() += 1;
            match &ev.data {
                EventData::RequestFailed(d) if d.worker_id.is_none() => {
                    // Refused before reaching a worker: no completed event follows.
                    count(format!("{base}.requests.error"));
                }
                EventData::RequestCompleted(d) => {
                    count(format!(
                        "{base}.requests.{}",
                        if d.success { "success" } else { "error" }
                    ));
                    // Only a command that succeeded earns a label of its own: a made-up
                    // name can reach a worker (before the pool learned its commands)
                    // but never succeeds.
                    let label = if d.success {
                        commands.get(&d.command)
                    } else {
                        commands.seen(&d.command).unwrap_or(UNKNOWN_LABEL.into())
                    };
                    let command = clean(label.as_str());
                    for (name, v) in [
                        (format!("{base}.request.duration"), d.duration_ms),
                        (format!("{base}.request.queue_time"), d.queue_time_ms),
                        (format!("{base}.command.{command}.duration"), d.duration_ms),
                    ] {
                        let samples = a.timers.entry(name).or_default();
                        if samples.len() < MAX_SAMPLES {
                            samples.push(v);
                        } else {
                            drop_counter.samples_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                EventData::WorkerStarted(_) => count(format!("{base}.workers.started")),
                EventData::WorkerCrashed(_) => count(format!("{base}.workers.crashed")),
                EventData::WorkerRecycled(_) => count(format!("{base}.workers.recycled")),
                EventData::PoolSaturated(_) => count(format!("{base}.pool.saturated")),
                _ => {}
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let interval = Duration::from_millis(cfg.flush_interval_ms.max(10));
        let flusher = std::thread::Builder::new()
            .name("snakepit-statsd".into())
            .spawn(move || loop {
                let stopping = stop2.load(Ordering::Relaxed);
                if !stopping {
                    std::thread::sleep(interval);
                }
                let taken = std::mem::take(&mut *sync::lock(&aggregate));
                flush(&socket, taken, &counters2);
                if stopping {
                    return;
                }
            })?;
        Ok(StatsdSink {
            consumer: Some(consumer),
            stop,
            flusher: Some(flusher),
            counters,
        })
    }
}

fn flush(socket: &UdpSocket, agg: Aggregate, counters: &StatsdCounters) {
    let mut lines = Vec::new();
    for (name, n) in agg.counters {
        lines.push(format!("{name}:{n}|c"));
    }
    for (name, samples) in agg.timers {
        lines.extend(samples.into_iter().map(|v| format!("{name}:{v:.3}|ms")));
    }
    let mut packet = String::new();
    let send = |packet: &mut String| {
        if packet.is_empty() {
            return;
        }
        match socket.send(packet.as_bytes()) {
            Ok(_) => counters.packets_sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.send_errors.fetch_add(1, Ordering::Relaxed),
        };
        packet.clear();
    };
    for line in lines {
        if !packet.is_empty() && packet.len() + 1 + line.len() > MAX_PACKET {
            send(&mut packet);
        }
        if !packet.is_empty() {
            packet.push('\n');
        }
        packet.push_str(&line);
    }
    send(&mut packet);
}

impl Drop for StatsdSink {
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            c.detach();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
    }
}
