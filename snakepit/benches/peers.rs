//! Snakepit against what users would pick instead, side by side in one run: for a no-op
//! (`ping`) and a 1 ms CPU task (`spin`), at 1 and 16 calls in flight, with 1 and 4
//! workers:
//!
//! - **snakepit pipe** / **snakepit grpc**: the full service `snakepit serve` runs —
//!   `Pools` behind the correlation, trace and metrics layers, with observability on
//!   (every span sampled and exported over OTLP to a live rotel receiver, worker spans
//!   too; metrics for Prometheus and OTLP; JSON logs at info to /dev/null);
//! - **bare tonic**: a tonic client per worker to the same Python workers over gRPC, no
//!   pool, no observability (the floor for gRPC);
//! - **multiprocessing.Pool** and **ProcessPoolExecutor**: Python's own pools running the
//!   same adapter functions, driven by a Python client (`stdlib_pools.py`);
//! - **pipe echo floor**: see below.
//!
//! ```text
//! cargo bench -p snakepit --bench peers            # full run (~3 min)
//! cargo bench -p snakepit --bench peers -- --quick # smoke run
//! ```
//!
//! To investigate one cell (e.g. under `perf`): `-- --workers 4 --in-flight 16
//! --workload ping --system pipe --seconds 10` (each filter optional). Worker spans are
//! on (a second exported span per call, built by the pool from the worker's timing) and
//! the workers run Python's OTel SDK for adapter spans, as `serve` does with OTLP
//! traces on; `BENCH_WORKER_SPANS=0` turns both off. `BENCH_BUSY_POLL_US=0` runs the
//! pools without the pipe worker's busy poll (default 100 µs), `BENCH_PIPELINE=0`
//! without pipelining (the next queued request written behind the running one), each
//! for a before/after.
//!
//! **pipe echo floor** is a bare Rust→Python round trip over pipes (no pool, no
//! telemetry; `pipe_floor.rs`): the distance of the snakepit pipe row from it is what
//! the pool and its observability cost.
//!
//! Each cell runs every system in turn, `rounds` times, so machine noise spreads over
//! all of them. "machine CPU/call" is the busy time of all cores (from /proc/stat) over
//! the calls made: what a call costs the machine, client and workers included.

#[path = "../../snakepit-core/benches/support/bare_tonic.rs"]
mod bare_tonic;
mod pipe_floor;
// Shared with pool_overhead, which also reports the Rust process's own CPU per call.
#[allow(dead_code)]
#[path = "../../snakepit-core/benches/support/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bare_tonic::{spawn_bare, BoxError};
use measure::{drive, Sample};
use serde_json::Value;
use snakepit::otel::{LogFormat, Telemetry, TelemetryConfig};
use snakepit::{EventBus, PoolConfig, Pools, PythonConfig, Request, TransportKind};
use snakepit_e2e::Rotel;
use tower::{ServiceBuilder, ServiceExt};

const SYSTEMS: [&str; 6] = [
    "snakepit pipe",
    "snakepit grpc",
    "bare tonic",
    "multiprocessing.Pool",
    "ProcessPoolExecutor",
    "pipe echo floor",
];

struct Workload {
    label: &'static str,
    command: &'static str,
    args_json: &'static str,
    /// stdlib_pools.py arguments.
    python: &'static [&'static str],
}

static WORKLOADS: [Workload; 2] = [
    Workload {
        label: "no-op",
        command: "ping",
        args_json: "{}",
        python: &["--workload", "ping"],
    },
    Workload {
        label: "1 ms CPU",
        command: "spin",
        args_json: "{\"ms\": 1}",
        python: &["--workload", "spin", "--spin-ms", "1"],
    },
];

/// Busy CPU seconds of all cores since boot.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let busy = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    (busy(0) + busy(1) + busy(2) + busy(5) + busy(6)) / tck.max(1.0)
}

/// One system's figures in one cell, over all rounds.
#[derive(Default)]
struct Tally {
    sample: Sample,
    machine_cpu: f64,
}

impl Tally {
    fn add(&mut self, sample: Sample, machine_cpu: f64) {
        self.sample.merge(sample);
        self.machine_cpu += machine_cpu;
    }
    fn cpu_per_call_us(&self) -> f64 {
        self.machine_cpu * 1e6 / self.sample.micros.len().max(1) as f64
    }
}

/// Both stdlib pools on one cell, one slice each.
fn run_stdlib(
    python: &Path,
    script: &Path,
    workers: usize,
    in_flight: usize,
    slice: Duration,
    w: &Workload,
) -> Result<Vec<(Sample, f64)>, BoxError> {
    let out = Command::new(python)
        .arg(script)
        .args(["--workers", &workers.to_string()])
        .args(["--in-flight", &in_flight.to_string()])
        .args(["--seconds", &format!("{:.3}", slice.as_secs_f64())])
        .args(w.python)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "stdlib_pools.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut results = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line)?;
        let micros = v["micros"]
            .as_array()
            .ok_or("no micros in stdlib_pools.py output")?
            .iter()
            .filter_map(|m| m.as_u64().map(|m| m as u32))
            .collect();
        let sample = Sample {
            micros,
            elapsed: Duration::from_secs_f64(v["seconds"].as_f64().unwrap_or(1.0)),
            errors: v["errors"].as_u64().unwrap_or(0) as usize,
            cpu: Duration::ZERO,
        };
        results.push((sample, v["machine_cpu_s"].as_f64().unwrap_or(0.0)));
    }
    Ok(results)
}

fn fmt_ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// Command-line filters: which cells and systems to run.
struct Only {
    workers: Option<usize>,
    in_flight: Option<usize>,
    workload: Option<String>,
    system: Option<String>,
    seconds: Option<f64>,
}

impl Only {
    fn parse() -> Result<Only, BoxError> {
        let args: Vec<String> = std::env::args().collect();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1).cloned())
        };
        Ok(Only {
            workers: value("--workers").map(|v| v.parse()).transpose()?,
            in_flight: value("--in-flight").map(|v| v.parse()).transpose()?,
            workload: value("--workload"),
            system: value("--system"),
            seconds: value("--seconds").map(|v| v.parse()).transpose()?,
        })
    }
    fn cell(&self, workers: usize, in_flight: usize, w: &Workload) -> bool {
        self.workers.is_none_or(|n| n == workers)
            && self.in_flight.is_none_or(|n| n == in_flight)
            && self.workload.as_deref().is_none_or(|c| c == w.command)
    }
    fn system(&self, name: &str) -> bool {
        self.system.as_deref().is_none_or(|s| name.contains(s))
    }
}

async fn run() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let only = Only::parse()?;
    let (rounds, mut slice) = if quick {
        (1, Duration::from_millis(200))
    } else {
        (3, Duration::from_millis(1000))
    };
    if let Some(s) = only.seconds {
        slice = Duration::from_secs_f64(s);
    }
    let python = tokio::task::spawn_blocking(|| {
        // The gRPC extra too: pipe and gRPC pools share the environment.
        snakepit::python_env::resolve_interpreter_for(&PythonConfig::default(), TransportKind::Grpc)
    })
    .await??;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/stdlib_pools.py");
    let rotel = tokio::task::spawn_blocking(Rotel::start_blackhole).await?;
    // Worker spans and the workers' OTel SDK are on with exported traces, as `serve`
    // runs them; BENCH_WORKER_SPANS=0 turns both off.
    let worker_spans = std::env::var("BENCH_WORKER_SPANS").map_or(true, |v| v != "0");
    // For before/after runs of the pipe worker's busy poll (`busy_poll_us`).
    let busy_poll_us: Option<u64> = std::env::var("BENCH_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok());
    // For before/after runs of pipelining (`pipeline`).
    let pipeline =
        std::env::var("BENCH_PIPELINE").map_or(PoolConfig::default().pipeline, |v| v != "0");

    // Observability fully on, as `snakepit serve` runs it with OTLP export configured.
    let mut cfg = TelemetryConfig::default();
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    cfg.traces.otlp = Some(true);
    cfg.traces.sampling_ratio = 1.0;
    cfg.traces.worker_spans = Some(worker_spans);
    cfg.metrics.prometheus = true;
    cfg.metrics.otlp = Some(true);
    cfg.logs.format = LogFormat::Json;
    let sink: Box<dyn std::io::Write + Send> =
        Box::new(std::fs::OpenOptions::new().write(true).open("/dev/null")?);
    let telemetry = Telemetry::build_with_log_writer(cfg, sink)?.with_default_pool("pipe");
    if let Some(dispatch) = telemetry.subscriber() {
        tracing::dispatcher::set_global_default(dispatch)?;
    }
    let events = EventBus::default();
    telemetry.attach(&events)?;

    println!(
        "Snakepit vs Python's own pools, same adapter functions, {rounds} x {} ms per system per cell",
        slice.as_millis()
    );
    println!(
        "snakepit rows: full Pools service, observability on (spans 100% sampled to OTLP{}, metrics, JSON logs); Rust client",
        if worker_spans {
            ", worker spans on; Python OTel SDK on in workers"
        } else {
            ", worker spans off; Python OTel SDK off in workers"
        }
    );
    println!(
        "pipe workers' busy poll: {} µs; pipelining {}",
        busy_poll_us.unwrap_or(PoolConfig::default().busy_poll_us),
        if pipeline { "on" } else { "off" }
    );
    println!("bare tonic: no pool, no observability; stdlib pools: Python client, the faster of callback-chained and sequential calls\n");
    println!("| workload | workers | in flight | system | p50 µs | p99 µs | req/s | req/s vs mp.Pool | machine CPU/call |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");

    let mut verdicts = Vec::new();
    for workers in [1usize, 4] {
        if only.workers.is_some_and(|n| n != workers) {
            continue;
        }
        let pool_cfg = |name: &str, transport| {
            let mut p = PoolConfig {
                name: name.into(),
                size: workers,
                transport,
                python: PythonConfig {
                    interpreter: Some(python.clone()),
                    ..PythonConfig::default()
                },
                ..PoolConfig::default()
            };
            p.python.env.extend(telemetry.worker_env());
            if let Some(us) = busy_poll_us {
                p.busy_poll_us = us;
            }
            p.pipeline = pipeline;
            if !worker_spans {
                p.python.env.insert("SNAKEPIT_OTEL".into(), "0".into());
            }
            p
        };
        let pools = Pools::start(
            vec![
                pool_cfg("pipe", TransportKind::Pipe),
                pool_cfg("grpc", TransportKind::Grpc),
            ],
            events.clone(),
        )
        .await?;
        let all: Vec<_> = pools.iter().cloned().collect();
        telemetry.watch_pools(&all);
        let service = ServiceBuilder::new()
            .layer(telemetry.correlation_layer())
            .layer(telemetry.trace_layer())
            .layer(telemetry.metrics_layer())
            .service(pools.clone());
        let bare = spawn_bare(&python, workers).await?;
        let floor = pipe_floor::Floor::spawn(&python, workers).await?;

        for w in &WORKLOADS {
            for in_flight in [1usize, 16] {
                if !only.cell(workers, in_flight, w) {
                    continue;
                }
                let mut tallies: Vec<Tally> = SYSTEMS.iter().map(|_| Tally::default()).collect();
                for round in 0..=rounds {
                    // Round 0 warms every system up and is not counted.
                    let d = if round == 0 { slice / 4 } else { slice };
                    for (i, pool_name) in ["pipe", "grpc"].into_iter().enumerate() {
                        if !only.system(SYSTEMS[i]) {
                            continue;
                        }
                        let svc = service.clone();
                        let args: Value = serde_json::from_str(w.args_json)?;
                        let command = w.command;
                        let cpu = machine_busy();
                        let s = drive(in_flight, d, move |_| {
                            let req = Request::new(command, args.clone()).pool(pool_name);
                            let svc = svc.clone();
                            async move { svc.oneshot(req).await.is_ok() }
                        })
                        .await;
                        if round > 0 {
                            tallies[i].add(s, machine_busy() - cpu);
                        }
                    }
                    if only.system(SYSTEMS[2]) {
                        let clients = bare.clients();
                        let (command, args_json) = (w.command, w.args_json);
                        let cpu = machine_busy();
                        let s = drive(in_flight, d, move |i| {
                            let clients = clients.clone();
                            async move { clients.call(i, command, args_json).await }
                        })
                        .await;
                        if round > 0 {
                            tallies[2].add(s, machine_busy() - cpu);
                        }
                    }
                    // The floor is an echo: only next to the no-op does it mean anything.
                    if only.system(SYSTEMS[5]) && w.command == "ping" {
                        let floor = floor.clone();
                        let cpu = machine_busy();
                        let s = drive(in_flight, d, move |i| {
                            let floor = floor.clone();
                            async move { floor.call(i).await }
                        })
                        .await;
                        if round > 0 {
                            tallies[5].add(s, machine_busy() - cpu);
                        }
                    }
                    if only.system(SYSTEMS[3]) || only.system(SYSTEMS[4]) {
                        let (py, sc) = (python.clone(), script.clone());
                        let stdlib = tokio::task::spawn_blocking(move || {
                            run_stdlib(&py, &sc, workers, in_flight, d, w)
                        })
                        .await??;
                        if round > 0 {
                            for (j, (s, cpu)) in stdlib.into_iter().enumerate() {
                                tallies[3 + j].add(s, cpu);
                            }
                        }
                    }
                }
                let mp_rps = tallies[3].sample.rps();
                for (name, t) in SYSTEMS.iter().zip(tallies.iter_mut()) {
                    if t.sample.micros.is_empty() && t.sample.errors == 0 {
                        continue; // filtered out
                    }
                    let (p50, p99, rps) = (t.sample.pct(0.5), t.sample.pct(0.99), t.sample.rps());
                    let errors = if t.sample.errors > 0 {
                        format!(" ({} errors)", t.sample.errors)
                    } else {
                        String::new()
                    };
                    println!(
                        "| {} | {workers} | {in_flight} | {name}{errors} | {p50:.0} | {p99:.0} | {rps:.0} | {} | {:.0} µs |",
                        w.label,
                        fmt_ratio(rps, mp_rps),
                        t.cpu_per_call_us()
                    );
                }
                if tallies[0].sample.micros.is_empty() {
                    continue;
                }
                let pipe_p50 = tallies[0].sample.pct(0.5);
                let pipe_rps = tallies[0].sample.rps();
                if w.command == "ping" && in_flight == 1 {
                    let floor_p50 = tallies[5].sample.pct(0.5);
                    verdicts.push(format!(
                        "pipe no-op p50 at 1 in flight, {workers} worker(s): {pipe_p50:.0} µs, floor {floor_p50:.0} µs, +{:.0} (target ≤ floor + 15, and ≤ 80 on a quiet machine): {}",
                        pipe_p50 - floor_p50,
                        if pipe_p50 <= floor_p50 + 15.0 { "met" } else { "MISSED" }
                    ));
                }
                if in_flight == 16 && mp_rps > 0.0 {
                    verdicts.push(format!(
                        "pipe {} req/s at 16 in flight, {workers} worker(s): {pipe_rps:.0} vs multiprocessing.Pool {mp_rps:.0}, ratio {} (target ≥ 1): {}",
                        w.label,
                        fmt_ratio(pipe_rps, mp_rps),
                        if pipe_rps >= mp_rps { "met" } else { "MISSED" }
                    ));
                }
            }
        }
        pools.shutdown(Duration::from_secs(5)).await;
        drop(bare);
        drop(floor);
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    let (spans_dropped, logs_dropped, lines_dropped) = telemetry.dropped();
    let spans_exported = telemetry
        .span_counters()
        .exported
        .load(std::sync::atomic::Ordering::Relaxed);
    let offered = (spans_exported + spans_dropped).max(1);
    // The issue's bar: a run that drops more than 1 % of spans did not export them.
    println!(
        "telemetry: spans exported {spans_exported}, dropped {spans_dropped} ({:.2} %{}); \
         log records dropped {logs_dropped}, log lines dropped {lines_dropped}",
        100.0 * spans_dropped as f64 / offered as f64,
        if spans_dropped * 100 > offered {
            ", over 1 %: the pipe rows did not export every span"
        } else {
            ""
        }
    );
    telemetry.shutdown(Duration::from_secs(5));
    drop(rotel);
    Ok(())
}
