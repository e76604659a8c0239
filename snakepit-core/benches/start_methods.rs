//! `start_method = "spawn"` against `"fork_server"`, side by side in one run: how long
//! 1 and 8 workers take from launch to all ready (with the example adapter and with a
//! heavy one: ≈ 300 ms of CPU at import, 200 MB built in `__init__`), how fast a
//! crashed worker is replaced and serving again, what 1 and 8 workers of the heavy
//! adapter hold in total (PSS: shared pages counted once), and the no-op call itself.
//!
//!     cargo bench -p snakepit-core --bench start_methods            # full run (~1 min)
//!     cargo bench -p snakepit-core --bench start_methods -- --quick # smoke run

// Shared with pool_overhead, which uses all of it.
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use measure::drive;
use serde_json::json;
use snakepit_core::{EventBus, ForkAfter, Pool, PoolConfig, PythonConfig, Request, StartMethod};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy)]
enum Adapter {
    Example,
    Heavy,
}

fn config(python: &Path, method: StartMethod, adapter: Adapter, size: usize) -> PoolConfig {
    let heavy_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/adapters");
    let mut cfg = PoolConfig {
        size,
        start_method: method,
        python: PythonConfig {
            interpreter: Some(python.to_path_buf()),
            ..PythonConfig::default()
        },
        ..PoolConfig::default()
    };
    if let Adapter::Heavy = adapter {
        cfg.adapter = "heavy_adapter:Heavy".into();
        cfg.python.pythonpath = vec![heavy_dir];
        // The model is loaded once, in the template (spawn ignores it).
        cfg.fork_after = ForkAfter::Init;
        // Eight spawned heavy workers import and build 200 MB each on two cores: room
        // beyond the default 30 s for a loaded machine (the bench measures, never
        // times out).
        cfg.startup_timeout_ms = 120_000;
    }
    cfg
}

fn name(method: StartMethod) -> &'static str {
    match method {
        StartMethod::Spawn => "spawn",
        StartMethod::ForkServer => "fork_server",
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `cfg` with `size` workers, started.
async fn start_sized(cfg: &PoolConfig, size: usize) -> Result<Pool, BoxError> {
    let cfg = PoolConfig {
        size,
        ..cfg.clone()
    };
    Ok(Pool::start(cfg, EventBus::default()).await?)
}

/// Launch to all ready (`Pool::start` returns once every worker passed its handshake).
async fn startup_ms(cfg: &PoolConfig, runs: usize) -> Result<f64, BoxError> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let pool = Pool::start(cfg.clone(), EventBus::default()).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        pool.shutdown(Duration::from_secs(5)).await;
    }
    Ok(median(times))
}

/// SIGKILL the only worker (after it served, so this is not a crash loop) and time
/// until a replacement is registered and has served a call.
async fn replace_ms(cfg: &PoolConfig, kills: usize) -> Result<(f64, f64), BoxError> {
    let pool = start_sized(cfg, 1).await?;
    let mut times = Vec::new();
    for _ in 0..kills {
        pool.execute(Request::new("ping", json!({}))).await?;
        let victim = pool.stats().workers.first().map(|w| w.pid).unwrap_or(0);
        let t = Instant::now();
        // SAFETY: kill(2) of a worker this bench's pool started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        loop {
            let s = pool.stats();
            if s.ready_workers == 1 && s.workers.iter().all(|w| w.pid != victim) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        pool.execute(Request::new("ping", json!({}))).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    pool.shutdown(Duration::from_secs(5)).await;
    let p50 = median(times.clone());
    Ok((p50, times.iter().cloned().fold(0.0, f64::max)))
}

/// Total PSS of the pool's Python processes (workers + template) once all are measured.
async fn total_pss_mib(cfg: &PoolConfig) -> Result<f64, BoxError> {
    let pool = Pool::start(cfg.clone(), EventBus::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut total = 0;
    while Instant::now() < deadline {
        let s = pool.stats();
        let measured = s.workers.iter().all(|w| w.pss_bytes > 0)
            && s.template.as_ref().is_none_or(|t| t.pss_bytes > 0);
        if measured && s.workers.len() == cfg.size {
            // Two readings a period apart, the second taken: pages settle after start.
            tokio::time::sleep(Duration::from_millis(cfg.memory_check_interval_ms + 100)).await;
            total = pool.stats().total_pss_bytes();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(total as f64 / (1024.0 * 1024.0))
}

/// No-op p50 at 1 in flight and throughput at 16 in flight, 4 workers.
async fn noop(cfg: &PoolConfig, slice: Duration) -> Result<(f64, f64), BoxError> {
    let pool = start_sized(cfg, 4).await?;
    let call = |pool: Pool| {
        move |_| {
            let pool = pool.clone();
            async move { pool.execute(Request::new("ping", json!({}))).await.is_ok() }
        }
    };
    drive(4, slice / 4, call(pool.clone())).await;
    let mut one = drive(1, slice, call(pool.clone())).await;
    let many = drive(16, slice, call(pool.clone())).await;
    pool.shutdown(Duration::from_secs(5)).await;
    Ok((one.pct(0.5), many.rps()))
}

fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, kills, slice) = if quick {
        (1, 3, Duration::from_millis(300))
    } else {
        (3, 21, Duration::from_secs(2))
    };
    let python = tokio::task::spawn_blocking(|| {
        snakepit_core::python_env::resolve_interpreter(&PythonConfig::default())
    })
    .await??;
    let methods = [StartMethod::Spawn, StartMethod::ForkServer];

    println!("start-up, launch to all ready (median of {runs})");
    println!(
        "{:<8} {:<12} {:>10} {:>10} {:>8}",
        "adapter", "method", "1 worker", "8 workers", "8/1"
    );
    for (label, adapter) in [("example", Adapter::Example), ("heavy", Adapter::Heavy)] {
        for method in methods {
            let one = startup_ms(&config(&python, method, adapter, 1), runs).await?;
            let eight = startup_ms(&config(&python, method, adapter, 8), runs).await?;
            println!(
                "{label:<8} {:<12} {one:>8.0}ms {eight:>8.0}ms {:>8.2}",
                name(method),
                eight / one
            );
        }
    }
    println!("target (fork_server): 8/1 ≤ 1.5");

    println!("\ncrashed worker replaced and serving again ({kills} SIGKILLs, example adapter)");
    println!(
        "{:<12} {:<22} {:>8} {:>8}",
        "method", "workers' OTel SDK", "p50", "max"
    );
    for method in methods {
        for otel in [false, true] {
            let mut cfg = config(&python, method, Adapter::Example, 1);
            if otel {
                // What a pool exporting spans sets (Telemetry::worker_env): each worker
                // sets up the OpenTelemetry SDK (nothing listens; no span is made).
                cfg.python.env.insert("SNAKEPIT_OTEL".into(), "1".into());
            }
            let (p50, max) = replace_ms(&cfg, kills).await?;
            let sdk = if otel { "on (SNAKEPIT_OTEL=1)" } else { "off" };
            println!("{:<12} {sdk:<22} {p50:>6.1}ms {max:>6.1}ms", name(method));
        }
    }
    println!("target (fork_server): p50 ≤ 30 ms");

    println!("\nmemory: total PSS of the pool's Python processes, heavy adapter (200 MB in __init__; fork_after = \"init\")");
    println!(
        "{:<12} {:>10} {:>10} {:>8}",
        "method", "1 worker", "8 workers", "8/1"
    );
    for method in methods {
        let one = total_pss_mib(&config(&python, method, Adapter::Heavy, 1)).await?;
        let eight = total_pss_mib(&config(&python, method, Adapter::Heavy, 8)).await?;
        println!(
            "{:<12} {one:>7.0}MiB {eight:>7.0}MiB {:>8.2}",
            name(method),
            eight / one
        );
    }
    println!("target (fork_server): 8/1 ≤ 1.3");

    println!(
        "\nno-op call, 4 workers, example adapter ({} ms per cell)",
        slice.as_millis()
    );
    println!(
        "{:<12} {:>12} {:>16}",
        "method", "p50 (1 in fl)", "req/s (16 in fl)"
    );
    let mut cells = Vec::new();
    for method in methods {
        let (p50, rps) = noop(&config(&python, method, Adapter::Example, 4), slice).await?;
        println!("{:<12} {p50:>10.0}µs {rps:>16.0}", name(method));
        cells.push((p50, rps));
    }
    if let [(s50, srps), (f50, frps)] = cells[..] {
        println!(
            "fork_server/spawn: p50 {:.2}, throughput {:.2} (target: unchanged within noise)",
            f50 / s50,
            frps / srps
        );
    }
    Ok(())
}
