//! The pool's stream paths against a fake transport, with paused time and the shipped
//! `PoolConfig` (request timeout 30 s): a Python worker cannot be made to produce a
//! chunk exactly when a test wants, to fall silent part way, or to face a caller that
//! stops reading at a chosen chunk. Each test takes milliseconds; the 30 s deadlines
//! pass on tokio's paused clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::Instant as TokioInstant;

use super::*;
use crate::config::PoolConfig;
use crate::events::EventBus;
use crate::pool::ahead::AheadSlot;
use crate::pool::call;
use crate::request::Request;
use crate::transport::{BoxFuture, ChunkStream, WorkerTransport};
use crate::worker::LaunchSpec;

/// Chunks the worker "yields", each after its delay.
type Script = Vec<(Duration, proto::StreamChunk)>;

/// Answers one streaming call with a script; notes when the pool drops the call's
/// stream (how the pool cancels a call).
struct Scripted {
    script: Mutex<Option<Script>>,
    cancelled: Arc<AtomicBool>,
}

impl Scripted {
    fn new(script: Script) -> (Arc<Scripted>, Arc<AtomicBool>) {
        let cancelled = Arc::new(AtomicBool::new(false));
        let transport = Arc::new(Scripted {
            script: Mutex::new(Some(script)),
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

fn not_scripted<T: Send + 'static>() -> BoxFuture<'static, Result<T, TransportError>> {
    Box::pin(async { Err(TransportError::Disconnected("not scripted".into())) })
}

impl WorkerTransport for Scripted {
    fn execute<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<proto::ExecuteResponse, TransportError>> {
        not_scripted()
    }

    fn execute_stream<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, TransportError>> {
        let script = self.script.lock().unwrap().take().unwrap_or_default();
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

fn chunk(n: usize) -> proto::StreamChunk {
    proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::from(n.to_string()),
        r#final: false,
        error: None,
    }
}

fn last() -> proto::StreamChunk {
    proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::new(),
        r#final: true,
        error: None,
    }
}

/// The shipped configuration; no real worker ever starts.
fn pool() -> Arc<PoolShared> {
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

/// Take the next job as `worker` and run it, as the worker's driver does.
async fn serve_one(shared: &Arc<PoolShared>, worker: &Worker) -> Option<Exit> {
    let (_monitor, control) = watch::channel(Control::Run);
    serve_one_watched(shared, worker, &control).await
}

/// `serve_one` with the monitor's verdicts coming through `control`.
async fn serve_one_watched(
    shared: &Arc<PoolShared>,
    worker: &Worker,
    control: &watch::Receiver<Control>,
) -> Option<Exit> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = match shared.dispatch.next_or_idle(&worker.id, &tx) {
        Some(job) => job,
        None => rx.recv().await.expect("a job"),
    };
    let mut slot = AheadSlot::default();
    let pipeline = Pipeline {
        enabled: false,
        sent: None,
        slot: &mut slot,
    };
    run_job(shared, worker, job, pipeline, control).await
}

fn start_stream(
    shared: &Arc<PoolShared>,
) -> tokio::task::JoinHandle<Result<crate::pool::ResponseStream, Error>> {
    tokio::spawn(call::stream(
        shared.clone(),
        None,
        Request::new("stream", serde_json::json!({})),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_reading_is_cut_off_at_the_deadline_and_the_worker_kept() {
    let shared = pool();
    // Far more chunks than the stream's buffer holds, all ready at once.
    let mut script: Script = (0..200).map(|n| (Duration::ZERO, chunk(n))).collect();
    script.push((Duration::ZERO, last()));
    let (transport, cancelled) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream(&shared);
    let started = TokioInstant::now();
    let exit = serve_one(&shared, &worker).await;
    assert!(
        exit.is_none(),
        "a stalled caller is no reason to replace the worker"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(30),
        "the shipped deadline"
    );
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the worker's call was cancelled"
    );
    assert_eq!(worker.status.state(), WorkerState::Idle);
    // The caller comes back: what was buffered, then the reason it was cut off.
    let mut stream = caller.await.unwrap().expect("the first chunk arrived");
    let mut got = 0;
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => got += 1,
            Err(e) => end = Some(e),
        }
    }
    assert!(got < 200, "{got} chunks: the rest were never produced");
    assert!(
        matches!(
            end,
            Some(Error::Timeout {
                caller_stalled: true,
                ..
            })
        ),
        "{end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_part_way_ends_the_stream_with_the_python_error_and_keeps_the_worker() {
    let shared = pool();
    let failure = proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::new(),
        r#final: true,
        error: Some(proto::WorkerError {
            kind: proto::worker_error::Kind::Exception as i32,
            r#type: "ValueError".into(),
            message: "bad row 2".into(),
            traceback: "Traceback (most recent call last):\n  ...\nValueError: bad row 2".into(),
        }),
    };
    let script = vec![
        (Duration::ZERO, chunk(0)),
        (Duration::from_millis(5), chunk(1)),
        (Duration::from_millis(5), failure),
    ];
    let (transport, cancelled) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream(&shared);
    let exit = serve_one(&shared, &worker).await;
    assert!(
        exit.is_none(),
        "a Python exception does not cost the worker"
    );
    assert!(
        !cancelled.load(Ordering::SeqCst),
        "the stream ran to its end"
    );
    let items: Vec<_> = caller.await.unwrap().unwrap().collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    match &items[2] {
        Err(Error::Python(p)) => {
            assert_eq!(p.python_type, "ValueError");
            assert!(p.traceback.contains("bad row 2"));
        }
        other => panic!("expected the Python error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_part_way_cancels_the_call_at_once() {
    let shared = pool();
    let mut script: Script = (0..10)
        .map(|n| (Duration::from_secs(1), chunk(n)))
        .collect();
    script.push((Duration::from_secs(1), last()));
    let (transport, cancelled) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream(&shared);
    let serving = serve_one(&shared, &worker);
    tokio::pin!(serving);
    // Serve until the caller holds its stream (the first chunk is in), then drop it.
    let stream = tokio::select! {
        _ = &mut serving => panic!("the job ended before the caller left"),
        s = caller => s.unwrap().unwrap(),
    };
    let left_at = TokioInstant::now();
    drop(stream);
    let exit = serving.await;
    assert!(exit.is_none(), "the worker stays");
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the worker's call was cancelled"
    );
    assert!(
        left_at.elapsed() < Duration::from_secs(1),
        "the call ended {:?} after the caller left, not at the next chunk",
        left_at.elapsed()
    );
    assert_eq!(worker.status.state(), WorkerState::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_falls_silent_part_way_is_replaced_at_the_deadline() {
    let shared = pool();
    let script = vec![
        (Duration::ZERO, chunk(0)),
        (Duration::from_secs(3_600), chunk(1)),
    ];
    let (transport, cancelled) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream(&shared);
    let started = TokioInstant::now();
    let exit = serve_one(&shared, &worker).await;
    assert!(exit.is_some(), "a worker stuck in Python is replaced");
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert!(cancelled.load(Ordering::SeqCst));
    let items: Vec<_> = caller.await.unwrap().unwrap().collect().await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(
        matches!(
            items[1],
            Err(Error::Timeout {
                caller_stalled: false,
                ..
            })
        ),
        "{:?}",
        items[1]
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_found_unhealthy_mid_call_fails_it_at_once_with_the_stacks() {
    let shared = pool();
    let script = vec![
        (Duration::ZERO, chunk(0)),
        (Duration::from_secs(3_600), chunk(1)),
    ];
    let (transport, cancelled) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream(&shared);
    let (monitor, control) = watch::channel(Control::Run);
    // The monitor's verdict 2 s in, long before the 30 s request deadline.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = monitor.send(Control::Unhealthy {
            failures: 3,
            python_stack: Some(Arc::from("File \"adapter.py\", line 7 in stuck")),
        });
        // Kept open, as the slot keeps it, until the test ends.
        tokio::time::sleep(Duration::from_secs(3_600)).await;
    });
    let started = TokioInstant::now();
    let exit = serve_one_watched(&shared, &worker, &control).await;
    assert_eq!(
        exit,
        Some(Exit::Recycle {
            reason: "health_check_failed"
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(cancelled.load(Ordering::SeqCst), "the call was dropped");
    let items: Vec<_> = caller.await.unwrap().unwrap().collect().await;
    match &items[..] {
        [Ok(_), Err(Error::WorkerUnhealthy {
            failures: 3,
            python_stack: Some(stack),
            ..
        })] => assert!(stack.contains("line 7 in stuck")),
        other => panic!("{other:?}"),
    }
}
