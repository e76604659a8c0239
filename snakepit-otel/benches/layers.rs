//! What the telemetry layers alone cost per request: the correlation, trace and metrics
//! layers around a service that answers at once (no pool, no Python, no wake-ups), so
//! the figure is the layers' own CPU. Configurations side by side in one run:
//!
//! - **off**: `TelemetryConfig { enabled: false }` (the layers pass through);
//! - **defaults**: what `snakepit serve` ships with no collector (Prometheus metrics,
//!   JSON logs at info; spans not exported, so ids only and no exemplars);
//! - **full**: every span sampled and queued for OTLP export (to a port where nothing
//!   listens), metrics for Prometheus and OTLP with exemplars, JSON logs. The instant
//!   service reports no worker timing, so no worker span is built, and no log line is
//!   written per call (request logging is off, as shipped).
//!
//! Each of `defaults` and `full` runs twice: the three layers stacked by hand
//! (`correlation_layer`, `trace_layer`, `metrics_layer`), and `Telemetry::layer()`, the
//! one layer that does all three in one service with one boxed future (`…/one`).
//!
//! CPU is the whole process's (`getrusage`): the export threads' work on what the
//! calls queued is included, so it is an upper bound on the request path's share.
//!
//! ```text
//! cargo bench -p snakepit-otel --bench layers            # ~1 min
//! cargo bench -p snakepit-otel --bench layers -- --quick # smoke run
//! ```
//!
//! Under `valgrind --tool=callgrind` (with `-- --calls N --only NAME`) the instruction
//! count per call is repeatable whatever else the machine does.

use std::time::{Duration, Instant};

use snakepit_core::{Request, Response, Served};
use snakepit_otel::{LogFormat, Telemetry, TelemetryConfig};
use tower::{Service, ServiceBuilder, ServiceExt};

fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn answer() -> Response {
    Response {
        result: bytes::Bytes::from_static(b"\"pong\""),
        served: Served {
            request_id: "r".into(),
            worker_id: "default-1".into(),
            queue_time: Duration::from_micros(3),
            duration: Duration::from_micros(20),
            python_time: None,
            worker_span: None,
            session_recreated: None,
        },
    }
}

fn config(name: &str) -> TelemetryConfig {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Json;
    match name {
        "off" => cfg.enabled = false,
        "defaults" => {}
        "full" => {
            cfg.otlp.endpoint = Some("http://127.0.0.1:9".into());
            cfg.traces.otlp = Some(true);
            cfg.traces.worker_spans = Some(true);
            cfg.metrics.otlp = Some(true);
            cfg.logs.otlp = Some(true);
        }
        other => panic!("unknown configuration {other}"),
    }
    cfg
}

/// Nanoseconds of wall and CPU time per call over `calls` calls; `one`: through
/// `Telemetry::layer()` instead of the three layers stacked.
async fn measure(name: &str, one: bool, calls: u64) -> (f64, f64) {
    let telemetry = Telemetry::build_with_log_writer(config(name), Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("telemetry {name}: {e}"));
    let dispatch = telemetry.subscriber();
    let _guard = dispatch.as_ref().map(tracing::dispatcher::set_default);
    let inner =
        tower::service_fn(|_req: Request| async { Ok::<_, snakepit_core::Error>(answer()) });
    let result = if one {
        let svc = ServiceBuilder::new()
            .layer(telemetry.layer())
            .service(inner);
        drive(svc, calls).await
    } else {
        let svc = ServiceBuilder::new()
            .layer(telemetry.correlation_layer())
            .layer(telemetry.trace_layer())
            .layer(telemetry.metrics_layer())
            .service(inner);
        drive(svc, calls).await
    };
    drop(_guard);
    telemetry.shutdown(Duration::from_secs(2));
    result
}

async fn drive<S>(mut svc: S, calls: u64) -> (f64, f64)
where
    S: Service<Request, Response = Response>,
    S::Error: std::fmt::Debug,
{
    let req = Request::new("ping", serde_json::json!({}));
    // Warm up (first-use allocations, label maps, exemplar slots).
    for _ in 0..1_000 {
        let _ = svc.ready().await.unwrap().call(req.clone()).await;
    }
    let (wall, cpu) = (Instant::now(), process_cpu());
    for _ in 0..calls {
        let _ = svc.ready().await.unwrap().call(req.clone()).await;
    }
    let per = |d: Duration| d.as_nanos() as f64 / calls as f64;
    (per(wall.elapsed()), per(process_cpu() - cpu))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let quick = args.iter().any(|a| a == "--quick");
    let calls: u64 = flag("--calls")
        .and_then(|c| c.parse().ok())
        .unwrap_or(if quick { 5_000 } else { 200_000 });
    let only = flag("--only").cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cells: Vec<(&str, bool)> = [
        ("off", false),
        ("defaults", false),
        ("defaults", true),
        ("full", false),
        ("full", true),
    ]
    .into_iter()
    .filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n))
    .collect();
    let rounds = if quick || only.is_some() { 1 } else { 3 };
    println!("telemetry layers around an instant service, {calls} calls per cell, {rounds} rounds");
    println!(
        "{:<13} {:>11} {:>14} {:>16}",
        "config", "wall ns/call", "CPU ns/call", "CPU vs off (ns)"
    );
    let mut off_cpu = None;
    for round in 0..rounds {
        for &(name, one) in &cells {
            let (wall, cpu) = rt.block_on(measure(name, one, calls));
            if name == "off" {
                off_cpu = Some(cpu);
            }
            let extra = off_cpu
                .map(|o| format!("{:+.0}", cpu - o))
                .unwrap_or_default();
            let label = if one {
                format!("{name}/one")
            } else {
                name.to_string()
            };
            println!(
                "{label:<13} {wall:>11.0} {cpu:>14.0} {extra:>16}   (round {})",
                round + 1
            );
        }
    }
}
