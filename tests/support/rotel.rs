//! The rotel OTLP receiver, started on 127.0.0.1 for a test and stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// The rotel OTLP receiver (from PyPI, in the workers' venv), dumping what it receives
/// as JSONL through `support/rotel_processor.py`.
pub struct Rotel {
    pub grpc_port: u16,
    pub http_port: u16,
    pub dump: TempDir,
    /// Dump what arrives (tests) or drop it unread (benchmarks: no Python per span).
    dumping: bool,
    proc: Option<Proc>,
}

/// The version scripts/test installs too.
pub const ROTEL_VERSION: &str = "0.0.1a15";

/// The rotel agent binary of the workers' venv, installing rotel there on first use
/// (benchmarks run without scripts/test).
pub fn rotel_agent() -> PathBuf {
    let locate = || {
        Command::new(python())
            .args([
                "-c",
                "import os, rotel; print(os.path.dirname(rotel.__file__))",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("rotel-agent"))
    };
    if let Some(agent) = locate() {
        return agent;
    }
    eprintln!("installing rotel {ROTEL_VERSION} (the OTLP receiver) into the workers' venv");
    let installed = Command::new(python())
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .arg(format!("rotel=={ROTEL_VERSION}"))
        .status()
        .is_ok_and(|s| s.success());
    match locate() {
        Some(agent) if installed => agent,
        _ => panic!(
            "cannot install rotel {ROTEL_VERSION} into {} (pip failed); it also needs \
             libpython3.11 (apt-get install libpython3.11)",
            python().display()
        ),
    }
}

impl Rotel {
    pub fn start() -> Rotel {
        Rotel::start_with(true)
    }

    /// A receiver that accepts everything and keeps nothing (for benchmarks).
    pub fn start_blackhole() -> Rotel {
        Rotel::start_with(false)
    }

    fn start_with(dumping: bool) -> Rotel {
        let (grpc_port, http_port) = free_port_pair();
        let mut rotel = Rotel {
            grpc_port,
            http_port,
            dump: TempDir::new("rotel"),
            dumping,
            proc: None,
        };
        rotel.restart();
        rotel
    }

    /// Start (again) on the same ports.
    pub fn restart(&mut self) {
        let dir = self.dump.path().to_path_buf();
        let processor = repo().join("tests/support/rotel_processor.py");
        let mut cmd = Command::new(rotel_agent());
        cmd.arg("start")
            .args([
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .args([
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", self.http_port),
            ])
            .args(["--exporter", "blackhole"]);
        if self.dumping {
            for kind in ["trace", "logs", "metrics"] {
                cmd.arg(format!("--otlp-with-{kind}-processor"))
                    .arg(&processor);
            }
        }
        let child = cmd
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .env("SNAKEPIT_ROTEL_DUMP", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot start rotel: {e}"),
        };
        self.proc = Some(Proc {
            child,
            name: "rotel",
        });
        let (g, h) = (self.grpc_port, self.http_port);
        assert!(
            wait_until(Duration::from_secs(15), || port_open(g) && port_open(h)),
            "rotel did not listen on {g}/{h}"
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn spans(&self) -> Vec<Value> {
        read_jsonl(&self.dump.path().join("spans.jsonl"))
    }
    pub fn logs(&self) -> Vec<Value> {
        read_jsonl(&self.dump.path().join("logs.jsonl"))
    }
    pub fn metrics(&self) -> Vec<Value> {
        read_jsonl(&self.dump.path().join("metrics.jsonl"))
    }

    /// Everything received, as text (for "this value appears nowhere" checks).
    pub fn all_text(&self) -> String {
        ["spans.jsonl", "logs.jsonl", "metrics.jsonl"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dump.path().join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        self.stop();
    }
}
