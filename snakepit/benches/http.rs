//! `snakepit serve` over HTTP against the same commands behind FastAPI, one load
//! generator (Debian's `wrk`) for all, side by side in one run:
//!
//! - **serve**: the built `snakepit serve` with its shipped configuration (2 workers,
//!   Prometheus metrics, JSON logs at info; no OTLP collector configured);
//! - **serve, telemetry off**: the same with `SNAKEPIT_TELEMETRY__ENABLED=false`, so
//!   the default telemetry's cost shows as a ratio;
//! - **FastAPI ×4**: `fastapi_app.py` (the bundled adapter's commands in an `async def`
//!   endpoint) under uvicorn with 4 workers, uvloop and httptools, installed from PyPI
//!   into `target/bench-venv` on first run.
//!
//! For a no-op (`ping`) and a 1 ms CPU task (`spin`), with 1 and 16 connections; each
//! cell runs every system in turn, `rounds` times, and reports the median req/s and the
//! p50/p99 latency of the median round.
//!
//! ```text
//! cargo bench -p snakepit --bench http            # full run (~2 min)
//! cargo bench -p snakepit --bench http -- --quick # smoke run
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PORT_BASE: u16 = 4620;

struct Workload {
    label: &'static str,
    body: &'static str,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        label: "no-op",
        body: r#"{"command":"ping"}"#,
    },
    Workload {
        label: "1 ms CPU",
        body: r#"{"command":"spin","args":{"ms":1}}"#,
    },
];

/// A server under test, stopped (with its workers) when dropped.
struct Server {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM to the process group: serve stops its workers, uvicorn its own.
        // SAFETY: kill(2) of a process group this bench started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spawn_in_group(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn wait_ready(port: u16, path: &str, within: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 16];
            if s.read(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] != b"503" {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("nothing answered {path} on port {port} within {within:?}").into())
}

fn serve(
    name: &'static str,
    port: u16,
    python: &Path,
    env: &[(&str, &str)],
) -> Result<Server, BoxError> {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snakepit"));
    // The shipped configuration: nothing from the shell's environment changes it (an
    // OTEL_EXPORTER_OTLP_ENDPOINT alone would turn export on).
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key.starts_with("SNAKEPIT_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.arg("serve")
        .current_dir(&dir)
        .env("SNAKEPIT_PYTHON", python)
        .env("SNAKEPIT_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server {
        name,
        port,
        child: spawn_in_group(&mut cmd)?,
    };
    wait_ready(port, "/health/ready", Duration::from_secs(120))?;
    Ok(server)
}

/// A venv with FastAPI, uvicorn, uvloop and httptools (created once, then reused).
fn bench_venv() -> Result<PathBuf, BoxError> {
    let venv = repo().join("target/bench-venv");
    let python = venv.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", "import fastapi, uvicorn, uvloop, httptools"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(&python) {
        return Ok(python);
    }
    eprintln!(
        "http bench: installing FastAPI, uvicorn, uvloop, httptools into {}",
        venv.display()
    );
    let base = std::env::var("SNAKEPIT_BASE_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&base)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    if !status.success() {
        return Err(format!("{base} -m venv {} failed", venv.display()).into());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(["fastapi", "uvicorn[standard]"])
        .status()?;
    if !status.success() || !ok(&python) {
        return Err("pip install fastapi uvicorn[standard] failed".into());
    }
    Ok(python)
}

fn fastapi(port: u16, python: &Path) -> Result<Server, BoxError> {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "uvicorn", "fastapi_app:app", "--workers", "4"])
        .args(["--loop", "uvloop", "--http", "httptools"])
        .args(["--no-access-log", "--log-level", "warning"])
        .args(["--port", &port.to_string()])
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches"))
        // The app imports the bundled adapter.
        .env("PYTHONPATH", repo().join("snakepit-core/python"));
    let server = Server {
        name: "FastAPI x4",
        port,
        child: spawn_in_group(&mut cmd)?,
    };
    wait_ready(port, "/docs", Duration::from_secs(60))?;
    Ok(server)
}

struct Cell {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `wrk --latency` figures: "50%  1.23ms" lines and "Requests/sec:".
fn parse_wrk(out: &str) -> Option<Cell> {
    let ms = |v: &str| -> Option<f64> {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let pct = |p: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(ms)
    };
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Cell {
        rps,
        p50_ms: pct("50%")?,
        p99_ms: pct("99%")?,
    })
}

fn wrk(port: u16, script: &Path, conns: usize, secs: f64) -> Result<Cell, BoxError> {
    let out = Command::new("wrk")
        .args(["-t", if conns > 1 { "2" } else { "1" }])
        .args(["-c", &conns.to_string()])
        .arg(format!("-d{}s", secs.max(1.0).round() as u64))
        .args(["--latency", "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1/execute"))
        .output()
        .map_err(|e| {
            format!("cannot run wrk ({e}); scripts/test installs it (apt-get install wrk)")
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors on port {port}:\n{text}").into());
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}").into())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (rounds, secs) = if quick { (1, 1.0) } else { (3, 5.0) };
    let python = snakepit::python_env::resolve_interpreter(&snakepit::PythonConfig::default())?;
    let bench_python = bench_venv()?;
    let dir = std::env::temp_dir().join(format!("snakepit-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let servers = [
        serve("serve", PORT_BASE, &python, &[])?,
        serve(
            "serve, telemetry off",
            PORT_BASE + 1,
            &python,
            &[("SNAKEPIT_TELEMETRY__ENABLED", "false")],
        )?,
        fastapi(PORT_BASE + 2, &bench_python)?,
    ];
    // Warm up every server (first connections, Python's lazy imports, allocator).
    let warm = dir.join("warm.lua");
    std::fs::write(
        &warm,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            WORKLOADS[0].body
        ),
    )?;
    for s in &servers {
        wrk(s.port, &warm, 16, 2.0)?;
    }
    println!(
        "snakepit serve vs FastAPI/uvicorn over HTTP, wrk, {rounds} x {secs} s per system per cell"
    );
    println!(
        "{:<10} {:>5}  {:<22} {:>9} {:>9} {:>9}",
        "workload", "conns", "system", "req/s", "p50 ms", "p99 ms"
    );
    for w in &WORKLOADS {
        let script = dir.join(format!("{}.lua", w.label.replace(' ', "_")));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
                w.body
            ),
        )?;
        for conns in [1usize, 16] {
            let mut cells: Vec<Vec<Cell>> = servers.iter().map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (i, s) in servers.iter().enumerate() {
                    cells[i].push(wrk(s.port, &script, conns, secs)?);
                }
            }
            let mut medians = Vec::new();
            for (s, mut runs) in servers.iter().zip(cells) {
                runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
                let m = runs.swap_remove(runs.len() / 2);
                println!(
                    "{:<10} {:>5}  {:<22} {:>9.0} {:>9.3} {:>9.3}",
                    w.label, conns, s.name, m.rps, m.p50_ms, m.p99_ms
                );
                medians.push(m.rps);
            }
            println!(
                "{:<10} {:>5}  serve / FastAPI {:.2}x, serve / telemetry off {:.2}x",
                "",
                "",
                medians[0] / medians[2],
                medians[0] / medians[1]
            );
        }
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
