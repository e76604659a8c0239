//! The take-back paths of pipelining, against a fake transport: a real worker cannot
//! be made to go idle within microseconds of another's job being written ahead, or
//! to answer a take-back a given way, on demand. Time is paused, so the patience path
//! and the idle-worker path are told apart by how much (virtual) time passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::*;
use crate::config::PoolConfig;
use crate::events::EventBus;
use crate::pool::job::JobState;
use crate::request::Response;
use crate::transport::BoxFuture;
use crate::worker::LaunchSpec;

/// Writes always succeed (or, `full`, the ahead write never fits); replies to calls up
/// to `answered` are ready; take-backs are answered `revoke_answer`.
struct FakePipe {
    next_id: AtomicU64,
    written: Mutex<Vec<u64>>,
    answered: watch::Sender<u64>,
    revokes: Mutex<Vec<u64>>,
    /// `None`: the take-back is never answered (the worker's control thread is stuck).
    revoke_answer: Option<bool>,
    full: bool,
}

impl FakePipe {
    fn new(revoke_answer: bool, full: bool) -> Arc<Self> {
        Self::answering(Some(revoke_answer), full)
    }

    fn answering(revoke_answer: Option<bool>, full: bool) -> Arc<Self> {
        Arc::new(FakePipe {
            next_id: AtomicU64::new(0),
            written: Mutex::new(Vec::new()),
            answered: watch::channel(0).0,
            revokes: Mutex::new(Vec::new()),
            revoke_answer,
            full,
        })
    }

    fn write(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        self.written.lock().unwrap().push(id);
        id
    }

    fn written(&self) -> usize {
        self.written.lock().unwrap().len()
    }

    fn revokes(&self) -> Vec<u64> {
        self.revokes.lock().unwrap().clone()
    }
}

impl Pipelined for FakePipe {
    fn send<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move { Ok(self.write()) })
    }

    fn try_send_ahead<'a>(
        &'a self,
        _req: proto::ExecuteRequest,
        _meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        Box::pin(async move { Ok((!self.full).then(|| self.write())) })
    }

    fn receive(
        &self,
        call_id: u64,
    ) -> BoxFuture<'_, Result<proto::ExecuteResponse, TransportError>> {
        let mut answered = self.answered.subscribe();
        Box::pin(async move {
            answered
                .wait_for(|&n| n >= call_id)
                .await
                .map_err(|_| TransportError::Disconnected("fake closed".into()))?;
            Ok(proto::ExecuteResponse {
                python_nanos: 0,
                outcome: Some(proto::execute_response::Outcome::ResultJson(
                    bytes::Bytes::from_static(b"null"),
                )),
                span: None,
            })
        })
    }

    fn revoke(
        &self,
        call_id: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<bool, TransportError>> {
        self.revokes.lock().unwrap().push(call_id);
        Box::pin(async move {
            match self.revoke_answer {
                Some(answer) => Ok(answer),
                None => {
                    tokio::time::sleep(timeout).await;
                    Err(TransportError::TimedOut)
                }
            }
        })
    }
}

fn bare_pool() -> Arc<PoolShared> {
    pool_with(PoolConfig::default())
}

fn pool_with(config: PoolConfig) -> Arc<PoolShared> {
    let launch = LaunchSpec {
        python: "/nonexistent/python".into(),
        run_id: "test".into(),
        run_dir: std::env::temp_dir(),
        observed: Arc::new(crate::observe::PoolObserved::new("test")),
        fork_server: None,
    };
    Arc::new(PoolShared::new(config, EventBus::default(), launch))
}

type ReplyRx = oneshot::Receiver<Result<Response, Error>>;

fn queued_job(shared: &PoolShared, state: JobState) -> ReplyRx {
    let (tx, rx) = oneshot::channel();
    shared.dispatch.submit(Job {
        command: "ping".into(),
        args: bytes::Bytes::from_static(b"{}"),
        session_id: None,
        timeout: None,
        request_id: "behind".into(),
        correlation_id: None,
        metadata: Vec::new(),
        admitted_at: std::time::Instant::now(),
        state,
        reply: Reply::Unary(tx),
    });
    rx
}

/// Run the current call (id 1) on `pipe` in a task; it reports whether it succeeded
/// and whether a job is still held behind it.
fn run_current(
    shared: &Arc<PoolShared>,
    pipe: &Arc<FakePipe>,
) -> tokio::task::JoinHandle<(bool, bool)> {
    run_current_within(shared, pipe, None)
}

/// `run_current` with the current call's own deadline.
fn run_current_within(
    shared: &Arc<PoolShared>,
    pipe: &Arc<FakePipe>,
    timeout: Option<Duration>,
) -> tokio::task::JoinHandle<(bool, bool)> {
    let (shared, pipe) = (shared.clone(), pipe.clone());
    tokio::spawn(async move {
        let mut slot = AheadSlot::default();
        let pipeline = Pipeline {
            enabled: true,
            sent: None,
            slot: &mut slot,
        };
        let request = proto::ExecuteRequest::default();
        let meta = CallMeta {
            request_id: "current",
            correlation_id: None,
            extra: &[],
            timeout: None,
        };
        let result = call(&shared, 0, &*pipe, request, meta, timeout, pipeline).await;
        if let Err(e) = &result {
            assert_eq!(*e, TransportError::TimedOut);
        }
        let held = slot.take_to_run(&shared).is_some();
        (result.is_ok(), held)
    })
}

async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_job_goes_at_once_to_a_worker_that_goes_idle() {
    let shared = bare_pool();
    let pipe = FakePipe::new(true, false);
    let _reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 2).await;
    let t0 = Instant::now();
    // Another worker finds nothing queued and goes idle.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let idle: Arc<str> = Arc::from("idle-1");
    assert!(shared.dispatch.next_or_idle(&idle, &tx).is_none());
    let handed = rx
        .recv()
        .await
        .expect("the held job reaches the idle worker");
    assert_eq!(handed.request_id, "behind");
    assert!(
        t0.elapsed() < AHEAD_PATIENCE,
        "handed over at once, not after the patience ({:?})",
        t0.elapsed()
    );
    assert!(
        handed.state.take(),
        "released back to queued, takeable once"
    );
    assert_eq!(pipe.revokes(), vec![2]);
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, false));
    assert_eq!(shared.taken_back_total.load(Ordering::Relaxed), 1);
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_job_goes_back_to_the_head_of_the_queue_when_the_call_outlasts_the_patience() {
    let shared = bare_pool();
    let pipe = FakePipe::new(true, false);
    let _reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 2).await;
    let held_at = Instant::now();
    tokio::time::sleep(AHEAD_PATIENCE / 2).await;
    assert!(pipe.revokes().is_empty(), "kept while the call is short");
    tokio::time::sleep(AHEAD_PATIENCE).await;
    assert_eq!(pipe.revokes(), vec![2]);
    assert!(held_at.elapsed() >= AHEAD_PATIENCE);
    // Queued again, first in line, for whichever worker looks next.
    let (tx, _rx) = mpsc::unbounded_channel();
    let next = shared.dispatch.next_or_idle(&Arc::from("w2"), &tx);
    assert_eq!(next.map(|j| j.request_id), Some("behind".to_string()));
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, false));
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_job_the_worker_already_started_stays_and_runs_next() {
    let shared = bare_pool();
    let pipe = FakePipe::new(false, false);
    let _reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 2).await;
    tokio::time::sleep(AHEAD_PATIENCE * 3).await;
    assert_eq!(pipe.revokes(), vec![2], "asked once, then left alone");
    pipe.answered.send_replace(1);
    assert_eq!(
        current.await.unwrap(),
        (true, true),
        "still held: it runs next"
    );
    assert_eq!(shared.taken_back_total.load(Ordering::Relaxed), 0);
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_job_the_pipe_cannot_take_whole_stays_first_in_the_queue() {
    let shared = bare_pool();
    let pipe = FakePipe::new(true, true);
    let _reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 1).await;
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, false));
    let (tx, _rx) = mpsc::unbounded_channel();
    let next = shared.dispatch.next_or_idle(&Arc::from("w2"), &tx);
    assert_eq!(next.map(|j| j.request_id), Some("behind".to_string()));
    assert_eq!(shared.pipelined_total.load(Ordering::Relaxed), 0);
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_caller_gave_up_is_not_written_ahead() {
    let shared = bare_pool();
    let pipe = FakePipe::new(true, false);
    let abandoned = JobState::default();
    assert!(abandoned.abandon());
    let _reply = queued_job(&shared, abandoned);
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 1).await;
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, false));
    assert_eq!(pipe.written(), 1);
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn one_idle_worker_takes_back_one_held_job_not_every_holders() {
    let shared = bare_pool();
    let (a, b) = (FakePipe::new(true, false), FakePipe::new(true, false));
    let _r1 = queued_job(&shared, JobState::default());
    let first = run_current(&shared, &a);
    until(|| a.written() == 2).await;
    let _r2 = queued_job(&shared, JobState::default());
    let second = run_current(&shared, &b);
    until(|| b.written() == 2).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert!(shared
        .dispatch
        .next_or_idle(&Arc::from("idle-1"), &tx)
        .is_none());
    rx.recv()
        .await
        .expect("one held job reaches the idle worker");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        a.revokes().len() + b.revokes().len(),
        1,
        "only one holder took its job back"
    );
    a.answered.send_replace(1);
    b.answered.send_replace(1);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(first.0 && second.0);
    assert_eq!(
        u8::from(first.1) + u8::from(second.1),
        1,
        "the other holder kept its job (it would run next)"
    );
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_take_back_waits_no_longer_than_the_running_calls_deadline() {
    let shared = bare_pool();
    let pipe = FakePipe::answering(None, false);
    let _reply = queued_job(&shared, JobState::default());
    let started = Instant::now();
    let current = run_current_within(&shared, &pipe, Some(Duration::from_secs(1)));
    until(|| pipe.written() == 2).await;
    // The patience passes, the take-back is never answered: the call times out at its
    // own deadline (not the health-check timeout), the job still held, fate unknown.
    assert_eq!(current.await.unwrap(), (false, true));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(pipe.revokes(), vec![2]);
    assert_eq!(shared.dispatch.held_ahead(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_job_past_its_queue_deadline_fails_with_queue_timeout_when_taken_back() {
    // A 5 ms queue timeout (default 5 s), shorter than the patience, so the job is past
    // it when it comes back.
    let shared = pool_with(PoolConfig {
        queue_timeout_ms: 5,
        ..PoolConfig::default()
    });
    let pipe = FakePipe::new(true, false);
    let reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 2).await;
    // The queue deadline is wall-clock time (`admitted_at` is a std Instant), which a
    // paused Tokio clock does not move: let 5 ms of it pass.
    std::thread::sleep(Duration::from_millis(6));
    tokio::time::sleep(AHEAD_PATIENCE * 2).await;
    assert!(matches!(reply.await, Ok(Err(Error::QueueTimeout { .. }))));
    let (tx, _rx) = mpsc::unbounded_channel();
    assert!(
        shared
            .dispatch
            .next_or_idle(&Arc::from("w2"), &tx)
            .is_none(),
        "not requeued"
    );
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, false));
    assert_eq!(shared.taken_back_total.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pool_of_one_keeps_its_held_job_however_long_the_call() {
    let shared = pool_with(PoolConfig {
        size: 1,
        ..PoolConfig::default()
    });
    let pipe = FakePipe::new(true, false);
    let _reply = queued_job(&shared, JobState::default());
    let current = run_current(&shared, &pipe);
    until(|| pipe.written() == 2).await;
    tokio::time::sleep(AHEAD_PATIENCE * 10).await;
    assert!(pipe.revokes().is_empty(), "no other worker could take it");
    pipe.answered.send_replace(1);
    assert_eq!(current.await.unwrap(), (true, true));
}
