//! `snakepit serve` from the built binary, for the tests that drive it over HTTP as an
//! operator would: a config file of the test's own in a temp dir, JSON logs in
//! `serve.log` beside it, ready once `/health/ready` says 200; killed when dropped (its
//! workers die with it: `PR_SET_PDEATHSIG`).

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use snakepit_e2e::{free_port, http_request, try_http_get, wait_until, HttpResponse, TempDir};

/// A running `snakepit serve`.
pub struct Server {
    /// The `snakepit serve` process (a test may signal it).
    pub child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its temp dir: `snakepit.toml`, `serve.log`, and whatever the test put there.
    pub dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `snakepit serve --config <dir>/snakepit.toml`, the file being what `config`
    /// returns for the server's port and temp dir (`tag` names the dir; `config` may
    /// put files there too, an adapter say). Panics if it never gets ready.
    pub fn start(tag: &str, config: impl FnOnce(u16, &Path) -> String) -> Server {
        let dir = TempDir::new(tag);
        let port = free_port();
        let path = dir.path().join("snakepit.toml");
        std::fs::write(&path, config(port, dir.path())).expect("write config");
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_snakepit"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start snakepit serve");
        let mut server = Server { child, port, dir };
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(60), || {
            exited = server.child.try_wait().ok().flatten();
            // A refused connection is "not ready yet"; a dead server is caught by try_wait.
            exited.is_some()
                || try_http_get(port, "/health/ready", &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready && exited.is_none(),
            "snakepit serve never became ready (exit: {exited:?}; its stderr is above)"
        );
        server
    }

    /// Its JSON log (stdout).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// `POST path` with `body`.
    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
        match http_request(self.port, "POST", path, headers, Some(body)) {
            Ok(r) => r,
            Err(e) => panic!("POST 127.0.0.1:{}{path}: {e}", self.port),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        match http_request(self.port, "GET", path, &[], None) {
            Ok(r) => r,
            Err(e) => panic!("GET 127.0.0.1:{}{path}: {e}", self.port),
        }
    }
}
