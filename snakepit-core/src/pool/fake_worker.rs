//! A scripted stand-in for a worker's transport, for the tests of `run_job`
//! (`execute_tests.rs`, `deadline_tests.rs`): a Python worker cannot be made to
//! produce a chunk exactly when a test wants, to fall silent part way, or to answer a
//! deadline a chosen way at a chosen moment. Time is paused in those tests, so the
//! delays scripted here pass on tokio's clock in no real time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::*;
use crate::catalog::CommandSpec;
use crate::config::PoolConfig;
use crate::events::EventBus;
use crate::pool::ahead::AheadSlot;
use crate::pool::call;
use crate::request::Request;
use crate::transport::{BoxFuture, ChunkStream, Pipelined, WorkerTransport};
use crate::worker::LaunchSpec;

/// Chunks the worker "yields", each after its delay.
pub(super) type Script = Vec<(Duration, proto::StreamChunk)>;

/// Answers one streaming call with a script, and unary calls with `answer` after its
/// delay (none: never); notes when the pool drops the call (how it cancels one).
pub(super) struct Scripted {
    script: Mutex<Option<Script>>,
    answer: Option<(Duration, proto::ExecuteResponse)>,
    /// Offer the pipelining face (`Pipelined`), as the pipe transport does.
    pipelined: bool,
    cancelled: Arc<AtomicBool>,
}

impl Scripted {
    pub(super) fn new(script: Script) -> (Arc<Scripted>, Arc<AtomicBool>) {
        Self::with(Some(script), None)
    }

    /// A unary call answered `answer` after `delay`; `None`: never answered.
    pub(super) fn answering(
        answer: Option<(Duration, proto::ExecuteResponse)>,
    ) -> (Arc<Scripted>, Arc<AtomicBool>) {
        Self::with(None, answer)
    }

    /// `answering`, over the pipelining face.
    pub(super) fn pipelining(
        answer: Option<(Duration, proto::ExecuteResponse)>,
    ) -> (Arc<Scripted>, Arc<AtomicBool>) {
        let (transport, cancelled) = Self::with(None, answer);
        let transport = Arc::new(Scripted {
            script: Mutex::new(None),
            answer: transport.answer.clone(),
            pipelined: true,
            cancelled: cancelled.clone(),
        });
        (transport, cancelled)
    }

    /// The scripted answer, after its delay; never without one. Sets `cancelled` when
    /// the pool drops the wait first.
    fn answer(&self) -> BoxFuture<'static, Result<proto::ExecuteResponse, TransportError>> {
        let answer = self.answer.clone();
        let mut flag = DropFlag(Some(self.cancelled.clone()));
        Box::pin(async move {
            let Some((delay, resp)) = answer else {
                return std::future::pending().await;
            };
            tokio::time::sleep(delay).await;
            flag.disarm();
            Ok(resp)
        })
    }

    fn with(
        script: Option<Script>,
        answer: Option<(Duration, proto::ExecuteResponse)>,
    ) -> (Arc<Scripted>, Arc<AtomicBool>) {
        let cancelled = Arc::new(AtomicBool::new(false));
        let transport = Arc::new(Scripted {
            script: Mutex::new(script),
            answer,
            pipelined: false,
            cancelled: cancelled.clone(),
        });
        (transport, cancelled)
    }
}

/// The scripted chunks, flagging `cancelled` when dropped before the end.
struct Watched {
    chunks: std::vec::IntoIter<(Duration, proto::StreamChunk)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    next: Option<proto::StreamChunk>,
    finished: bool,
    cancelled: Arc<AtomicBool>,
}

impl Stream for Watched {
    type Item = Result<proto::StreamChunk, TransportError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.next.is_none() {
            let Some((delay, chunk)) = this.chunks.next() else {
                this.finished = true;
                return Poll::Ready(None);
            };
            this.sleep = Some(Box::pin(tokio::time::sleep(delay)));
            this.next = Some(chunk);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        this.sleep = None;
        let chunk = this.next.take().map(Ok);
        if chunk
            .as_ref()
            .is_some_and(|c| c.as_ref().is_ok_and(|c| c.r#final))
        {
            this.finished = true;
        }
        Poll::Ready(chunk)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// Sets its flag when dropped before it was disarmed: a unary call the pool gave up.
struct DropFlag(Option<Arc<AtomicBool>>);

impl DropFlag {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

fn not_scripted<T: Send + 'static>() -> BoxFuture<'static, Result<T, TransportError>> {
    Box::pin(async { Err(TransportError::Disconnected("not scripted".into())) })
}

impl WorkerTransport for Scripted {
    fn pipelined(&self) -> Option<&dyn Pipelined> {
        self.pipelined.then_some(self as &dyn Pipelined)
    }

    fn execute<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<proto::ExecuteResponse, TransportError>> {
        self.answer()
    }

    fn execute_stream<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, TransportError>> {
        let script = self
            .script
            .lock()
            .map(|mut s| s.take())
            .ok()
            .flatten()
            .unwrap_or_default();
        let cancelled = self.cancelled.clone();
        Box::pin(async move {
            let chunks: ChunkStream = Box::pin(Watched {
                chunks: script.into_iter(),
                sleep: None,
                next: None,
                finished: false,
                cancelled,
            });
            Ok(chunks)
        })
    }

    fn health(
        &self,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::HealthResponse, TransportError>> {
        not_scripted()
    }

    fn describe(
        &self,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::DescribeResponse, TransportError>> {
        not_scripted()
    }

    fn init_session<'a>(
        &'a self,
        _session_id: &'a str,
        _metadata_json: bytes::Bytes,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        not_scripted()
    }

    fn close_session<'a>(
        &'a self,
        _session_id: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        not_scripted()
    }
}

/// One call at a time: nothing is ever written ahead, and a take-back finds the call
/// started.
impl Pipelined for Scripted {
    fn send<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async { Ok(1) })
    }

    fn try_send_ahead<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        Box::pin(async { Ok(None) })
    }

    fn receive(
        &self,
        _call_id: u64,
    ) -> BoxFuture<'_, Result<proto::ExecuteResponse, TransportError>> {
        self.answer()
    }

    fn revoke(
        &self,
        _call_id: u64,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<bool, TransportError>> {
        Box::pin(async { Ok(false) })
    }
}

pub(super) fn chunk(n: usize) -> proto::StreamChunk {
    proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::from(n.to_string()),
        r#final: false,
        error: None,
    }
}

pub(super) fn last() -> proto::StreamChunk {
    proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::new(),
        r#final: true,
        error: None,
    }
}

/// The shipped configuration; no real worker ever starts.
pub(super) fn pool() -> Arc<PoolShared> {
    let launch = LaunchSpec {
        python: "/nonexistent/python".into(),
        run_id: "test".into(),
        run_dir: std::env::temp_dir(),
        observed: Arc::new(crate::observe::PoolObserved::new("test")),
        fork_server: None,
    };
    Arc::new(PoolShared::new(
        PoolConfig::default(),
        EventBus::default(),
        launch,
    ))
}

/// The pool as if its first worker had described `commands` (name, async).
pub(super) fn described(shared: &PoolShared, commands: &[(&str, bool)]) {
    let specs = commands
        .iter()
        .map(|&(name, is_async)| CommandSpec {
            name: name.into(),
            streaming: false,
            is_async,
            doc: String::new(),
            params: Vec::new(),
            args_schema: None,
            returns_schema: None,
        })
        .collect::<Vec<_>>();
    let names = specs.iter().map(|s| s.name.clone()).collect();
    let _ = shared.specs.set(specs);
    let _ = shared.commands.set(names);
}

/// Take the next job as `worker` and run it, as the worker's driver does.
pub(super) async fn serve_one(shared: &Arc<PoolShared>, worker: &Worker) -> Option<Exit> {
    let (_monitor, control) = watch::channel(Control::Run);
    serve_one_watched(shared, worker, &control).await
}

/// `serve_one` with pipelining on (`pipeline = true`, the default).
pub(super) async fn serve_one_pipelined(shared: &Arc<PoolShared>, worker: &Worker) -> Option<Exit> {
    let (_monitor, control) = watch::channel(Control::Run);
    let job = next_job(shared, worker).await;
    let mut slot = AheadSlot::default();
    let pipeline = Pipeline {
        enabled: true,
        sent: None,
        slot: &mut slot,
    };
    run_job(shared, worker, job, pipeline, &control).await
}

async fn next_job(shared: &PoolShared, worker: &Worker) -> Job {
    let (tx, mut rx) = mpsc::unbounded_channel();
    match shared.dispatch.next_or_idle(&worker.id, &tx) {
        Some(job) => job,
        None => rx.recv().await.expect("a job"),
    }
}

/// `serve_one` with the monitor's verdicts coming through `control`.
pub(super) async fn serve_one_watched(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    control: &watch::Receiver<Control>,
) -> Option<Exit> {
    let job = next_job(shared, worker).await;
    let mut slot = AheadSlot::default();
    let pipeline = Pipeline {
        enabled: false,
        sent: None,
        slot: &mut slot,
    };
    run_job(shared, worker, job, pipeline, control).await
}

/// A streaming call of `stream` from a caller, waiting in the queue.
pub(super) fn start_stream(
    shared: &Arc<PoolShared>,
) -> tokio::task::JoinHandle<Result<crate::pool::ResponseStream, Error>> {
    start_stream_of(shared, Request::new("stream", serde_json::json!({})))
}

/// A streaming call of `req` from a caller, waiting in the queue.
pub(super) fn start_stream_of(
    shared: &Arc<PoolShared>,
    req: Request,
) -> tokio::task::JoinHandle<Result<crate::pool::ResponseStream, Error>> {
    tokio::spawn(call::stream(shared.clone(), None, req))
}

/// A unary call of `req` from a caller, waiting in the queue.
pub(super) fn start_unary(
    shared: &Arc<PoolShared>,
    req: Request,
) -> tokio::task::JoinHandle<Result<crate::request::Response, Error>> {
    tokio::spawn(call::unary(shared.clone(), None, req))
}
