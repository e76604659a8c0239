//! Pool overhead against a bare tonic client driving identical Python workers, side by
//! side in one run, plus worker start-up time (1 vs 8 workers). The pool runs on the
//! gRPC transport here so both sides move the same bytes; the pipe transport and
//! Python's own pools are compared in `cargo bench -p snakepit --bench peers`.
//!
//!     cargo bench -p snakepit-core --bench pool_overhead            # full run (~1 min)
//!     cargo bench -p snakepit-core --bench pool_overhead -- --quick # smoke run
//!
//! "bare": N worker processes started by hand (see `support/bare_tonic.rs`). "pool": the same
//! load through `Pool` (admission, queue, driver, events with no consumers). Each cell
//! alternates bare and pool twice to spread machine noise over both.

#[path = "support/bare_tonic.rs"]
mod bare_tonic;
#[path = "support/measure.rs"]
mod measure;

use std::path::Path;
use std::time::{Duration, Instant};

use bare_tonic::{spawn_bare, Bare, BoxError};
use measure::{drive, Sample};
use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, PythonConfig, Request, TransportKind};

async fn run_bare(
    bare: &Bare,
    command: &'static str,
    args: &'static str,
    c: usize,
    d: Duration,
) -> Sample {
    let clients = bare.clients();
    drive(c, d, move |i| {
        let clients = clients.clone();
        async move { clients.call(i, command, args).await }
    })
    .await
}

async fn run_pool(
    pool: &Pool,
    command: &'static str,
    args: serde_json::Value,
    c: usize,
    d: Duration,
) -> Sample {
    let pool = pool.clone();
    drive(c, d, move |_| {
        let pool = pool.clone();
        let req = Request::new(command, args.clone());
        async move { pool.execute(req).await.is_ok() }
    })
    .await
}

async fn startup_ms(python: &Path, size: usize, runs: usize) -> Result<f64, BoxError> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let cfg = PoolConfig {
            size,
            python: PythonConfig {
                interpreter: Some(python.to_path_buf()),
                ..PythonConfig::default()
            },
            ..PoolConfig::default()
        };
        let t = Instant::now();
        let pool = Pool::start(cfg, EventBus::default()).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        pool.shutdown(Duration::from_secs(5)).await;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<(), BoxError> {
    // `--current-thread` runs everything on one thread: task hops cost no thread wake-ups.
    let rt = if std::env::args().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    // Each cell runs `rounds` alternations of bare then pool, `slice` each.
    let (rounds, slice) = if quick {
        (1, Duration::from_millis(200))
    } else {
        (4, Duration::from_millis(750))
    };
    let python = tokio::task::spawn_blocking(|| {
        snakepit_core::python_env::resolve_interpreter_for(
            &PythonConfig::default(),
            TransportKind::Grpc,
        )
    })
    .await??;

    println!(
        "pool overhead vs bare tonic client (same Python workers), {rounds} x {} ms per side per cell",
        slice.as_millis()
    );
    println!(
        "{:<10} {:>7} {:>9} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>7} {:>7} {:>6} | {:>13}",
        "workload",
        "workers",
        "in flight",
        "bare p50",
        "pool p50",
        "ratio",
        "bare p99",
        "pool p99",
        "ratio",
        "bare/s",
        "pool/s",
        "ratio",
        "rust cpu/call"
    );
    let workloads: [(&str, &str, &'static str, serde_json::Value); 2] = [
        ("ping", "ping", "{}", json!({})),
        ("sleep 1ms", "sleep", "{\"ms\": 1}", json!({"ms": 1})),
    ];
    for workers in [1usize, 4] {
        let bare = spawn_bare(&python, workers).await?;
        let pool = Pool::start(
            PoolConfig {
                size: workers,
                // The same transport as the bare client, so the difference is the pool.
                transport: TransportKind::Grpc,
                python: PythonConfig {
                    interpreter: Some(python.clone()),
                    ..PythonConfig::default()
                },
                ..PoolConfig::default()
            },
            EventBus::default(),
        )
        .await?;
        for (label, command, raw, args) in &workloads {
            for c in [1usize, 16] {
                // Warm both paths, then alternate: bare, pool, bare, pool.
                run_bare(&bare, command, raw, c, slice / 3).await;
                run_pool(&pool, command, args.clone(), c, slice / 3).await;
                let (mut b, mut p) = (Sample::default(), Sample::default());
                for _ in 0..rounds {
                    b.merge(run_bare(&bare, command, raw, c, slice).await);
                    p.merge(run_pool(&pool, command, args.clone(), c, slice).await);
                }
                let (b50, p50, b99, p99) = (b.pct(0.5), p.pct(0.5), b.pct(0.99), p.pct(0.99));
                println!(
                    "{label:<10} {workers:>7} {c:>9} | {b50:>7.0}µs {p50:>7.0}µs {:>6.3} | {b99:>7.0}µs {p99:>7.0}µs {:>6.3} | {:>7.0} {:>7.0} {:>6.3} | {:>4.0}µs {:>4.0}µs{}",
                    p50 / b50,
                    p99 / b99,
                    b.rps(),
                    p.rps(),
                    p.rps() / b.rps(),
                    b.cpu_per_call_us(),
                    p.cpu_per_call_us(),
                    if b.errors + p.errors > 0 { format!("  errors: bare {} pool {}", b.errors, p.errors) } else { String::new() }
                );
            }
        }
        pool.shutdown(Duration::from_secs(5)).await;
        drop(bare);
    }
    println!(
        "latency ratio = pool/bare (target ≤ 1.05); throughput ratio = pool/bare (target ≥ 0.95)"
    );

    let runs = if quick { 1 } else { 3 };
    let one = startup_ms(&python, 1, runs).await?;
    let eight = startup_ms(&python, 8, runs).await?;
    println!(
        "\nstart-up (median of {runs}): 1 worker {one:.0} ms, 8 workers {eight:.0} ms, ratio {:.2} (target ≤ 1.5)",
        eight / one
    );
    Ok(())
}
