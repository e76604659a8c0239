//! `snakepit exec` (one call, result on stdout) and `snakepit bench` (load, then a
//! latency/throughput table).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use snakepit_core::{Args, EventBus, Pool, PoolConfig, Request};

use crate::config::AppConfig;

/// The pool a one-shot command needs: the named (or first) configured pool.
fn pool_config(cfg: &AppConfig, name: Option<&str>) -> Result<PoolConfig, String> {
    match name {
        None => Ok(cfg.pools[0].clone()),
        Some(n) => cfg
            .pools
            .iter()
            .find(|p| p.name == n)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "no pool named '{n}'; configured pools: {}",
                    names.join(", ")
                )
            }),
    }
}

/// `snakepit exec`: one call on a pool of one worker.
pub struct ExecOptions {
    /// The adapter command to call.
    pub command: String,
    /// Its arguments as JSON (default `{}`).
    pub args: Option<String>,
    /// The pool from the configuration (default: the first).
    pub pool: Option<String>,
    /// Deadline of the call (default: the pool's `request_timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// Call it as a stream and print each chunk.
    pub stream: bool,
}

/// Run one command; the result JSON goes to stdout, errors to stderr (exit code 1).
pub async fn exec(cfg: AppConfig, opts: ExecOptions) -> Result<(), String> {
    let mut pool_cfg = pool_config(&cfg, opts.pool.as_deref())?;
    pool_cfg.size = 1; // one call needs one worker
    let args = match &opts.args {
        Some(raw) => {
            let args = Args::from_json_bytes(raw.clone().into_bytes());
            args.encoded().map_err(|e| format!("--args: {e}"))?;
            args
        }
        None => Args::empty(),
    };
    let pool = Pool::start(pool_cfg, EventBus::disabled())
        .await
        .map_err(|e| e.to_string())?;
    let mut req = Request::new(opts.command, args);
    req.timeout = opts.timeout_ms.map(Duration::from_millis);
    let outcome = if opts.stream {
        match pool.execute_stream(req).await {
            Ok(mut chunks) => {
                let mut failure = None;
                while let Some(chunk) = chunks.next().await {
                    match chunk {
                        Ok(c) => println!("{}", String::from_utf8_lossy(&c.data)),
                        Err(e) => failure = Some(e),
                    }
                }
                failure.map_or(Ok(()), Err)
            }
            Err(e) => Err(e),
        }
    } else {
        pool.execute(req)
            .await
            .map(|r| println!("{}", String::from_utf8_lossy(&r.result)))
    };
    pool.shutdown(Duration::from_secs(5)).await;
    outcome.map_err(|e| match e.python() {
        Some(py) => format!("{e}\n{}", py.traceback.trim_end()),
        None => e.to_string(),
    })
}

/// `snakepit bench`: load at each concurrency, then a table of throughput and latency.
pub struct BenchOptions {
    /// The adapter command to call.
    pub command: String,
    /// Its arguments as JSON (default `{}`).
    pub args: Option<String>,
    /// The pool from the configuration (default: the first).
    pub pool: Option<String>,
    /// Callers in flight, one row per value.
    pub concurrency: Vec<usize>,
    /// How long each row runs.
    pub seconds: f64,
}

/// Drive load through the pool at each concurrency and print a table.
pub async fn bench(cfg: AppConfig, opts: BenchOptions) -> Result<(), String> {
    let pool_cfg = pool_config(&cfg, opts.pool.as_deref())?;
    let args = match &opts.args {
        Some(raw) => {
            serde_json::from_str::<serde_json::Value>(raw).map_err(|e| format!("--args: {e}"))?
        }
        None => serde_json::json!({}),
    };
    eprintln!(
        "snakepit bench: starting pool '{}' ({} workers of {})",
        pool_cfg.name, pool_cfg.size, pool_cfg.adapter
    );
    let workers = pool_cfg.size;
    let pool = Pool::start(pool_cfg, EventBus::disabled())
        .await
        .map_err(|e| e.to_string())?;
    // Warm up every worker.
    for _ in 0..workers * 20 {
        let _ = pool
            .execute(Request::new(opts.command.clone(), args.clone()))
            .await;
    }
    println!(
        "{:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "in flight", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors"
    );
    for &c in &opts.concurrency {
        let deadline = Instant::now() + Duration::from_secs_f64(opts.seconds);
        let start = Instant::now();
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..c.max(1) {
            let (pool, command, args, errors) = (
                pool.clone(),
                opts.command.clone(),
                args.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut micros = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match pool
                        .execute(Request::new(command.clone(), args.clone()))
                        .await
                    {
                        Ok(_) => micros.push(t.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                micros
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        let elapsed = start.elapsed().as_secs_f64();
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0.0, |v| *v as f64 / 1000.0)
        };
        println!(
            "{:>9} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            c,
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            errors.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
