//! A real Prometheus and promtool (Debian's package) for the tests.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// A real Prometheus (Debian's package) scraping `127.0.0.1:{target_port}` every second,
/// with its own data directory and API port; stopped on drop.
pub struct Prometheus {
    pub port: u16,
    _proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(target_port: u16, extra_args: &[&str]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        let yaml = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: snakepit\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        );
        if let Err(e) = std::fs::write(&config, yaml) {
            panic!("cannot write {}: {e}", config.display());
        }
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start prometheus (apt package prometheus; scripts/test installs it): {e}"
            ),
        };
        let proc = Proc {
            child,
            name: "prometheus",
        };
        assert!(
            wait_until(Duration::from_secs(20), || port_open(port)),
            "prometheus did not listen"
        );
        Prometheus {
            port,
            _proc: proc,
            _dir: dir,
        }
    }

    /// `GET /api/v1/{endpoint}?{query}` as JSON.
    pub fn api(&self, endpoint: &str, params: &[(&str, String)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        get_json(
            self.port,
            &format!("/api/v1/{endpoint}?{}", query.join("&")),
        )
    }
}

/// `promtool check metrics` of `text`: its exit code and what it printed.
pub fn promtool_check(text: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
