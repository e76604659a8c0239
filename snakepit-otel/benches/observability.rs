//! Observability overhead, side by side in one run: the same load through the pool with
//! everything off (bare `Pool` service, no subscriber) and with everything on
//! (correlation + trace + metrics layers, 100% sampled spans exported over OTLP/gRPC to
//! a live rotel receiver, Prometheus + OTLP metrics, JSON logs at info; request
//! logging with `BENCH_REQUEST_LOGS=1`). Then throughput and RSS with the collector
//! down (refused, and black-holed) against up, the cost of rendering `/metrics` with
//! 1,000 series, and the RSS that observability adds.
//!
//!     cargo bench -p snakepit-otel --bench observability            # ~3 min
//!     cargo bench -p snakepit-otel --bench observability -- --quick # smoke run
//!
//! Knobs for taking the "on" side apart: `BENCH_NO_SPAN_EXPORT`, `BENCH_NO_LOGS`,
//! `BENCH_NO_SUBSCRIBER`, `BENCH_WORKER_SPANS=0`, `BENCH_SAMPLING=0.01`,
//! `BENCH_REQUEST_LOGS=1`; `BENCH_CELL=ping/1` runs one cell only (and skips the
//! collector-down and `/metrics` sections), `BENCH_ON_ONLY=1` with it nearly skips the
//! "off" side, for `perf record`.
//!
//! Runs on a current-thread runtime so the "on" phases can install the telemetry
//! subscriber for just their duration (`tracing::dispatcher::set_default`).

use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request};
use snakepit_otel::{LogFormat, Telemetry, TelemetryConfig};
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Sample {
    micros: Vec<u32>,
    elapsed: Duration,
    cpu: Duration,
}

/// CPU time of this process (user + system): where observability's own cost shows.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

impl Sample {
    fn pct(&mut self, p: f64) -> f64 {
        self.micros.sort_unstable();
        let i = ((self.micros.len().max(1) - 1) as f64 * p).round() as usize;
        self.micros.get(i).copied().unwrap_or(0) as f64
    }
    fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.micros.len().max(1) as f64
    }
}

async fn drive<S>(
    svc: S,
    command: &str,
    args: serde_json::Value,
    in_flight: usize,
    d: Duration,
) -> Sample
where
    S: Service<Request, Response = snakepit_core::Response, Error = snakepit_core::Error>
        + Clone
        + 'static,
    S::Future: 'static,
{
    let cpu = process_cpu();
    let start = Instant::now();
    let deadline = start + d;
    let mut tasks = Vec::new();
    let local = tokio::task::LocalSet::new();
    for _ in 0..in_flight {
        let svc = svc.clone();
        let (command, args) = (command.to_string(), args.clone());
        tasks.push(local.spawn_local(async move {
            let mut micros = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                if svc
                    .clone()
                    .oneshot(Request::new(command.clone(), args.clone()))
                    .await
                    .is_ok()
                {
                    micros.push(t.elapsed().as_micros() as u32);
                }
            }
            micros
        }));
    }
    let micros = local
        .run_until(async {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap_or_default());
            }
            all
        })
        .await;
    Sample {
        micros,
        elapsed: start.elapsed(),
        cpu: process_cpu().saturating_sub(cpu),
    }
}

/// SPEC §8: with the collector down, throughput stays within 5 % and memory bounded.
/// The same fully-on service, exporting to the live receiver, to a port where nothing
/// listens (refused at once), and to a black hole (accepts, never answers: every
/// export waits for its timeout), in alternating rounds; 30 s of load per side.
async fn collector_down<S>(
    pool: &Pool,
    up: &S,
    up_dispatch: &tracing::Dispatch,
    cfg: TelemetryConfig,
    quick: bool,
) -> Result<(), BoxError>
where
    S: Service<Request, Response = snakepit_core::Response, Error = snakepit_core::Error>
        + Clone
        + 'static,
    S::Future: 'static,
{
    let (rounds, slice) = if quick {
        (1, Duration::from_millis(300))
    } else {
        (10, Duration::from_millis(3000))
    };
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    // Accepted by the kernel into the backlog, never read.
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hole_port = hole.local_addr()?.port();
    let mut sides = Vec::new();
    for (name, port) in [("refused", refused_port), ("black hole", hole_port)] {
        let mut c = cfg.clone();
        c.otlp.endpoint = Some(format!("http://127.0.0.1:{port}"));
        let sink: Box<dyn std::io::Write + Send> =
            Box::new(std::fs::OpenOptions::new().write(true).open("/dev/null")?);
        let t = Telemetry::build_with_log_writer(c, sink)?;
        t.watch_pools(std::slice::from_ref(pool));
        let dispatch = t.subscriber().ok_or("no subscriber")?;
        let svc = ServiceBuilder::new()
            .layer(t.correlation_layer())
            .layer(t.trace_layer())
            .layer(t.metrics_layer())
            .service(pool.clone());
        sides.push((name, t, dispatch, svc, 0usize, Duration::ZERO));
    }
    let (mut up_calls, mut up_time) = (0usize, Duration::ZERO);
    let rss_before = rss_mib();
    let mut rss_peak: f64 = rss_before;
    for _ in 0..rounds {
        let guard = tracing::dispatcher::set_default(up_dispatch);
        let s = drive(up.clone(), "ping", json!({}), 8, slice).await;
        drop(guard);
        up_calls += s.micros.len();
        up_time += s.elapsed;
        for (_, _, dispatch, svc, calls, time) in sides.iter_mut() {
            let guard = tracing::dispatcher::set_default(dispatch);
            let s = drive(svc.clone(), "ping", json!({}), 8, slice).await;
            drop(guard);
            *calls += s.micros.len();
            *time += s.elapsed;
            rss_peak = rss_peak.max(rss_mib());
        }
    }
    let up_rps = up_calls as f64 / up_time.as_secs_f64();
    println!(
        "collector down, ping at 8 in flight, {:.1} s of load per side: up {up_rps:.0}/s",
        (slice * rounds).as_secs_f64()
    );
    for (name, t, _, _, calls, time) in sides {
        let rps = calls as f64 / time.as_secs_f64();
        let (spans, logs, _) = t.dropped();
        println!(
            "  {name:<10} {rps:>8.0}/s  ratio {:.3} (target ≥ 0.95)  spans/log records dropped and counted: {spans}/{logs}",
            rps / up_rps
        );
        t.shutdown(Duration::from_secs(1));
    }
    println!(
        "  RSS while down: {rss_before:.1} MiB before, peak {rss_peak:.1} MiB (bounded queues)"
    );
    drop(hole);
    Ok(())
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, slice) = if quick {
        (1, Duration::from_millis(300))
    } else {
        (4, Duration::from_millis(1500))
    };
    // tests/support's receiver: it installs rotel into the workers' venv on first use.
    let rotel = snakepit_e2e::Rotel::start_blackhole();

    let pool = Pool::start(
        PoolConfig {
            size: 2,
            ..PoolConfig::default()
        },
        EventBus::default(),
    )
    .await?;
    // Warm up, then the baseline RSS with observability off.
    drive(
        pool.clone(),
        "ping",
        json!({}),
        2,
        Duration::from_millis(500),
    )
    .await;
    let rss_off = rss_mib();

    let mut cfg = TelemetryConfig::default();
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    cfg.traces.otlp = Some(true);
    // BENCH_SAMPLING=0.01 shows what a production sampling ratio costs instead.
    cfg.traces.sampling_ratio = std::env::var("BENCH_SAMPLING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    cfg.metrics.otlp = Some(true);
    cfg.metrics.prometheus = true;
    cfg.logs.format = LogFormat::Json;
    cfg.logs.filter = "info".into();
    // Per-request log lines are optional (off by default); BENCH_REQUEST_LOGS=1 adds them.
    cfg.logs.requests = std::env::var_os("BENCH_REQUEST_LOGS").is_some();
    // Knobs to take the "on" side apart when investigating a regression.
    if std::env::var_os("BENCH_NO_SPAN_EXPORT").is_some() {
        cfg.traces.otlp = Some(false);
    }
    if std::env::var("BENCH_WORKER_SPANS").is_ok_and(|v| v == "0") {
        cfg.traces.worker_spans = Some(false);
    }
    if std::env::var_os("BENCH_NO_LOGS").is_some() {
        cfg.logs.format = LogFormat::Off;
    }
    let sink: Box<dyn std::io::Write + Send> =
        Box::new(std::fs::OpenOptions::new().write(true).open("/dev/null")?);
    let down_cfg = cfg.clone();
    let telemetry = Telemetry::build_with_log_writer(cfg, sink)?;
    telemetry.watch_pools(std::slice::from_ref(&pool));
    let dispatch = telemetry.subscriber().ok_or("no subscriber")?;
    let on = ServiceBuilder::new()
        .layer(telemetry.correlation_layer())
        .layer(telemetry.trace_layer())
        .layer(telemetry.metrics_layer())
        .service(pool.clone());

    println!(
        "observability off vs fully on (spans {}% sampled to OTLP, metrics, JSON logs at info{}), {rounds} x {} ms per side",
        telemetry.config().traces.sampling_ratio * 100.0,
        if std::env::var_os("BENCH_REQUEST_LOGS").is_some() { " + request logging" } else { "" },
        slice.as_millis()
    );
    println!(
        "{:<10} {:>9} | {:>9} {:>9} {:>7} | {:>8} {:>8} {:>7} | {:>17}",
        "workload",
        "in flight",
        "off p50",
        "on p50",
        "ratio",
        "off/s",
        "on/s",
        "ratio",
        "rust cpu/req off/on"
    );
    for (label, command, args) in [
        ("ping", "ping", json!({})),
        ("sleep 1ms", "sleep", json!({"ms": 1})),
    ] {
        for in_flight in [1usize, 8] {
            // BENCH_CELL=ping/1 measures one cell (for profiling or taking the "on" side
            // apart with the knobs above).
            if std::env::var("BENCH_CELL").is_ok_and(|c| c != format!("{label}/{in_flight}")) {
                continue;
            }
            let mut a = Sample {
                micros: Vec::new(),
                elapsed: Duration::ZERO,
                cpu: Duration::ZERO,
            };
            let mut b = Sample {
                micros: Vec::new(),
                elapsed: Duration::ZERO,
                cpu: Duration::ZERO,
            };
            for _ in 0..rounds {
                // BENCH_ON_ONLY=1 (with BENCH_CELL) profiles just the "on" side.
                let off_slice = if std::env::var_os("BENCH_ON_ONLY").is_some() {
                    Duration::from_millis(1)
                } else {
                    slice
                };
                let s = drive(pool.clone(), command, args.clone(), in_flight, off_slice).await;
                a.micros.extend(s.micros);
                a.elapsed += s.elapsed;
                a.cpu += s.cpu;
                let guard = (std::env::var_os("BENCH_NO_SUBSCRIBER").is_none())
                    .then(|| tracing::dispatcher::set_default(&dispatch));
                let s = drive(on.clone(), command, args.clone(), in_flight, slice).await;
                drop(guard);
                b.micros.extend(s.micros);
                b.elapsed += s.elapsed;
                b.cpu += s.cpu;
            }
            let (a50, b50) = (a.pct(0.5), b.pct(0.5));
            println!(
                "{label:<10} {in_flight:>9} | {a50:>7.0}µs {b50:>7.0}µs {:>7.3} | {:>8.0} {:>8.0} {:>7.3} | {:>7.0}µs {:>6.0}µs",
                b50 / a50,
                a.rps(),
                b.rps(),
                b.rps() / a.rps(),
                a.cpu_us(),
                b.cpu_us()
            );
        }
    }
    let rss_on = rss_mib();
    println!("latency ratio on/off (target < 1.01); throughput ratio on/off (target > 0.99)");
    let (spans_dropped, logs_dropped, lines_dropped) = telemetry.dropped();
    println!(
        "exported spans: {}, dropped spans/log records/log lines: {spans_dropped}/{logs_dropped}/{lines_dropped}",
        telemetry.span_counters().exported.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "RSS: off {rss_off:.1} MiB, on {rss_on:.1} MiB, observability adds {:.1} MiB (target ≤ 10)",
        rss_on - rss_off
    );

    // One cell asked for: the collector, Python-side and /metrics sections are skipped.
    if std::env::var_os("BENCH_CELL").is_none() {
        python_side(&on, &dispatch, slice).await;
        collector_down(&pool, &on, &dispatch, down_cfg, quick).await?;
        render_metrics(quick)?;
    }
    pool.shutdown(Duration::from_secs(5)).await;
    telemetry.shutdown(Duration::from_secs(5));
    drop(rotel);
    Ok(())
}

/// What Python code's own observation costs a request, end to end with everything on:
/// the example's `observe` command making 0 or 100 `logging` records (each to the
/// pool's JSON log and OTLP) or user-metric additions per call; the difference in
/// p50, per record.
async fn python_side<S>(on: &S, dispatch: &tracing::Dispatch, slice: Duration)
where
    S: Service<Request, Response = snakepit_core::Response, Error = snakepit_core::Error>
        + Clone
        + 'static,
    S::Future: 'static,
{
    let _guard = tracing::dispatcher::set_default(dispatch);
    let p50 = |args: serde_json::Value| {
        let on = on.clone();
        async move {
            let mut s = drive(on, "observe", args, 1, slice).await;
            s.pct(0.5)
        }
    };
    let none = p50(json!({})).await;
    let logs = p50(json!({"logs": 100})).await;
    let records = p50(json!({"records": 100})).await;
    println!(
        "Python side, per call of 100 (p50, on): nothing {none:.0}µs; logging records {logs:.0}µs ({:.2} µs/record); user-metric additions {records:.0}µs ({:.2} µs/record, target ≤ 1)",
        (logs - none) / 100.0,
        (records - none) / 100.0
    );
}

/// `/metrics` with 1,000 series: a provider with one counter of 1,000 label sets.
fn render_metrics(quick: bool) -> Result<(), BoxError> {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(exporter)
        .build();
    let counter = provider.meter("bench").u64_counter("bench.series").build();
    for i in 0..1_000 {
        counter.add(1, &[opentelemetry::KeyValue::new("series", i.to_string())]);
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..if quick { 5 } else { 50 } {
        let t = Instant::now();
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = out.len();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "/metrics render, 1,000 series ({} KiB): median {:.2} ms, max {:.2} ms (target ≤ 5 ms)",
        bytes / 1024,
        times[times.len() / 2],
        times[times.len() - 1]
    );
    Ok(())
}
