//! Pool overhead against a bare tonic client driving identical Python workers, side by
//! side in one run, plus worker start-up time (1 vs 8 workers).
//!
//!     cargo bench -p snakepit-core --bench pool_overhead            # full run (~1 min)
//!     cargo bench -p snakepit-core --bench pool_overhead -- --quick # smoke run
//!
//! "bare": N worker processes started by hand (same bridge, adapter and flags as the
//! pool's), one tonic client each over its Unix socket, one call in flight per worker
//! (the pool's execution model); callers take workers round robin. "pool": the same
//! load through `Pool` (admission, queue, driver, events with no consumers). Each cell
//! alternates bare and pool twice to spread machine noise over both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use serde_json::json;
use snakepit_core::proto::worker_client::WorkerClient;
use snakepit_core::proto::ExecuteRequest;
use snakepit_core::{EventBus, Pool, PoolConfig, PythonConfig, Request};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Bare {
    clients: Vec<Arc<Mutex<WorkerClient<Channel>>>>,
    _children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn_bare(python: &Path, n: usize) -> Result<Bare, BoxError> {
    let dir = std::env::temp_dir().join(format!("snakepit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut clients = Vec::new();
    let mut children = Vec::new();
    for i in 0..n {
        let socket = dir.join(format!("b{i}.sock"));
        let mut child = Command::new(python)
            .args(["-u", "-m", "snakepit_bridge", "--adapter"])
            .arg(PoolConfig::default().adapter)
            .arg("--socket")
            .arg(&socket)
            .args(["--threads", "4", "--watch-stdin"])
            .env("OMP_NUM_THREADS", "1")
            .env("OPENBLAS_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await? {
                Some(l) if l.starts_with("SNAKEPIT_READY") => break,
                Some(_) => continue,
                None => return Err("bare worker exited before ready".into()),
            }
        }
        let path = socket.clone();
        let channel =
            Endpoint::from_static("http://bare")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await?;
        clients.push(Arc::new(Mutex::new(WorkerClient::new(channel))));
        children.push(child);
    }
    Ok(Bare {
        clients,
        _children: children,
        dir,
    })
}

#[derive(Default)]
struct Sample {
    micros: Vec<u32>,
    elapsed: Duration,
    errors: usize,
    /// CPU time this (Rust) process spent, user + system: less noisy than wall time.
    cpu: Duration,
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; no other preconditions.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.micros.extend(other.micros);
        self.elapsed += other.elapsed;
        self.errors += other.errors;
        self.cpu += other.cpu;
    }
    fn cpu_per_call_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.micros.len().max(1) as f64
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        self.micros.sort_unstable();
        let i = ((self.micros.len() - 1) as f64 * p).round() as usize;
        self.micros[i] as f64
    }
    fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` callers loop for `duration`, each call timed.
async fn drive<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let cpu_start = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(i).await {
                    micros.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (micros, errors)
        }));
    }
    let mut sample = Sample::default();
    for t in tasks {
        if let Ok((m, e)) = t.await {
            sample.micros.extend(m);
            sample.errors += e;
        }
    }
    sample.elapsed = start.elapsed();
    sample.cpu = process_cpu().saturating_sub(cpu_start);
    sample
}

async fn run_bare(
    bare: &Bare,
    command: &'static str,
    args: &'static str,
    c: usize,
    d: Duration,
) -> Sample {
    let clients = bare.clients.clone();
    drive(c, d, move |i| {
        let client = clients[i % clients.len()].clone();
        async move {
            let mut client = client.lock().await;
            let req = ExecuteRequest {
                command: command.into(),
                args_json: args.as_bytes().to_vec().into(),
                session_id: String::new(),
            };
            matches!(client.execute(req).await, Ok(r) if r.get_ref().outcome.is_some())
        }
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
        snakepit_core::python_env::resolve_interpreter(&PythonConfig::default())
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
