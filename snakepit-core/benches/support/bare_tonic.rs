//! A bare tonic client to Python workers started by hand: the baseline the benches
//! compare the pool against. Same bridge, adapter and flags as the pool's workers,
//! gRPC over a Unix socket, one call in flight per worker (the pool's execution model),
//! callers take workers round robin.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use snakepit_core::proto::worker_client::WorkerClient;
use snakepit_core::proto::ExecuteRequest;
use snakepit_core::PoolConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Bare {
    clients: BareClients,
    _children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn spawn_bare(python: &Path, n: usize) -> Result<Bare, BoxError> {
    let dir = std::env::temp_dir().join(format!("snakepit-bare-{}", std::process::id()));
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
        clients: BareClients(clients),
        _children: children,
        dir,
    })
}

impl Bare {
    /// Cheap handles on the workers' clients, for caller tasks.
    pub fn clients(&self) -> BareClients {
        self.clients.clone()
    }
}

/// One tonic client per bare worker.
#[derive(Clone)]
pub struct BareClients(Vec<Arc<Mutex<WorkerClient<Channel>>>>);

impl BareClients {
    /// One unary call on worker `i % n`; true when the worker answered.
    pub async fn call(&self, i: usize, command: &str, args_json: &'static str) -> bool {
        let client = self.0[i % self.0.len()].clone();
        let mut client = client.lock().await;
        let req = ExecuteRequest {
            command: command.into(),
            args_json: args_json.as_bytes().to_vec().into(),
            session_id: String::new(),
        };
        matches!(client.execute(req).await, Ok(r) if r.get_ref().outcome.is_some())
    }
}
