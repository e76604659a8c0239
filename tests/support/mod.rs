//! Helpers for the end-to-end tests: real Python workers, and real external components
//! started on 127.0.0.1 and stopped again — the rotel OTLP receiver, Prometheus, the
//! StatsD daemon — plus a capture buffer for log lines.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod dispatch;
mod prometheus;
mod rotel;

pub use dispatch::set_test_default;
pub use prometheus::{promtool_check, Prometheus};
pub use rotel::{rotel_agent, Rotel, ROTEL_VERSION};
pub use serde_json::Value;
use snakepit_core::sync;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bootstrapped workers' Python (with the test extras when scripts/test ran).
pub fn python() -> PathBuf {
    match snakepit_core::python_env::resolve_interpreter(&Default::default()) {
        Ok(p) => p,
        Err(e) => panic!("no Python for workers: {e}"),
    }
}

/// The worker transport under test: `TRANSPORT_UNDER_TEST=grpc|pipe` (scripts/test
/// runs the suite once per transport); unset means the pool's default.
pub fn transport() -> snakepit_core::TransportKind {
    use snakepit_core::TransportKind;
    match std::env::var("TRANSPORT_UNDER_TEST").as_deref() {
        Ok("grpc") => TransportKind::Grpc,
        Ok("pipe") => TransportKind::Pipe,
        Ok(other) => panic!("TRANSPORT_UNDER_TEST={other:?}: expected grpc or pipe"),
        Err(_) => snakepit_core::PoolConfig::default().transport,
    }
}

/// How workers start under test: `START_METHOD_UNDER_TEST=spawn|fork_server`
/// (scripts/test runs the suite once more with the fork server); unset means the
/// pool's default.
pub fn start_method() -> snakepit_core::StartMethod {
    use snakepit_core::StartMethod;
    match std::env::var("START_METHOD_UNDER_TEST").as_deref() {
        Ok("spawn") => StartMethod::Spawn,
        Ok("fork_server") => StartMethod::ForkServer,
        Ok(other) => panic!("START_METHOD_UNDER_TEST={other:?}: expected spawn or fork_server"),
        Err(_) => snakepit_core::PoolConfig::default().start_method,
    }
}

/// The default pool config on the transport and start method under test.
pub fn pool_config() -> snakepit_core::PoolConfig {
    snakepit_core::PoolConfig {
        transport: transport(),
        start_method: start_method(),
        ..Default::default()
    }
}

/// `transport = "..."` and `start_method = "..."` (the ones under test) for a
/// `[[pools]]` table of `snakepit.toml`.
pub fn transport_toml() -> String {
    let transport = match transport() {
        snakepit_core::TransportKind::Grpc => "grpc",
        snakepit_core::TransportKind::Pipe => "pipe",
    };
    let start = match start_method() {
        snakepit_core::StartMethod::Spawn => "spawn",
        snakepit_core::StartMethod::ForkServer => "fork_server",
    };
    format!("transport = \"{transport}\"\nstart_method = \"{start}\"")
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free port: {e}"),
    }
}

/// Two different TCP ports free right now on 127.0.0.1 (two `free_port` calls can
/// return the same one: the first listener is gone before the second binds).
pub fn free_port_pair() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?.port(), l)));
    match (bind(), bind()) {
        (Ok((a, _first)), Ok((b, _second))) => (a, b),
        (Err(e), _) | (_, Err(e)) => panic!("no free port: {e}"),
    }
}

/// Poll `cond` every 50 ms for up to `within`.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Every JSON line of `path` (missing file: none).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-e2e-{tag}-{}-{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (std::ptr::addr_of!(tag) as u128)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on a child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Log lines captured in memory (a `Write` for `Telemetry::build_with_log_writer`).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sync::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        let v = sync::lock(&self.0).clone();
        String::from_utf8_lossy(&v).into_owned()
    }
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `wait_until` for async tests on a current-thread runtime (it yields to the runtime).
pub async fn wait_until_async(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// A minimal HTTP/1.1 server answering every request with `body()` as the classic
/// Prometheus text: the scrape target for the real Prometheus until the health crate
/// serves /metrics itself.
pub async fn serve_text(
    body: impl Fn() -> String + Send + Sync + 'static,
) -> (u16, tokio::task::JoinHandle<()>) {
    serve_negotiated(move |_| ("text/plain; version=0.0.4; charset=utf-8".into(), body())).await
}

/// Like [`serve_text`], but `respond(accept_header)` picks content type and body.
pub async fn serve_negotiated(
    respond: impl Fn(&str) -> (String, String) + Send + Sync + 'static,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let respond = Arc::new(respond);
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let accept = request
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Accept: ")
                            .or_else(|| l.strip_prefix("accept: "))
                    })
                    .unwrap_or("")
                    .to_string();
                let (content_type, text) = respond(&accept);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    text.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(text.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, task)
}

/// `GET http://127.0.0.1:{port}{path_and_query}`; the body as JSON (`Null` when
/// unreachable or not JSON).
pub fn get_json(port: u16, path_and_query: &str) -> Value {
    http_request(port, "GET", path_and_query, &[], None).map_or(Value::Null, |r| r.json())
}

/// Percent-encode a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `GET` with extra request headers.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    match try_http_get(port, path, headers) {
        Ok(r) => r,
        Err(e) => panic!("GET 127.0.0.1:{port}{path}: {e}"),
    }
}

/// `http_get` that reports a connection failure instead of panicking (for polling).
pub fn try_http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_request(port, "GET", path, headers, None)
}

/// One HTTP/1.1 request with hyper's client (on a thread of its own with its own
/// runtime, so sync and async tests alike can call it); a JSON `body` is sent with its
/// content type. The whole exchange is bounded by 60 s.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let method = method.to_string();
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.map(str::to_string);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let exchange = hyper_request(port, &method, &path, &headers, body);
            match tokio::time::timeout(Duration::from_secs(60), exchange).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{method} {path}: no complete answer within 60 s"),
                )),
            }
        })
    })
    .join()
    .map_err(|_| std::io::Error::other("the HTTP client thread panicked"))?
}

async fn hyper_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<String>,
) -> std::io::Result<HttpResponse> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))
        .map_err(std::io::Error::other)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
