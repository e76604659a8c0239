//! Deadlines of async commands against the fake transport (`fake_worker.rs`), paused
//! time: the worker cancels a coroutine still running at its deadline and answers
//! `DEADLINE_EXCEEDED` a little after the pool's own clock says the deadline passed
//! (it counts from when the request reached it). That answer is a `Timeout` saying so,
//! and the worker stays; a worker that does not answer within the grace is replaced
//! as before, and a sync command gets no grace at all.

use tokio::time::Instant as TokioInstant;

use super::fake::*;
use super::*;
use crate::request::Request;

const DEADLINE: Duration = Duration::from_millis(300);

const AWAITING: &str = "Traceback (most recent call last):\n  File \"example.py\", line 40, in async_sleep\n    await asyncio.sleep(ms / 1000)\nasyncio.exceptions.CancelledError";

fn cancelled_in_python() -> proto::WorkerError {
    proto::WorkerError {
        kind: proto::worker_error::Kind::DeadlineExceeded as i32,
        r#type: "CancelledError".into(),
        message: "deadline of 300 ms exceeded".into(),
        traceback: AWAITING.into(),
    }
}

/// The worker's answer to a coroutine it cancelled, `late` after the pool's deadline.
fn answer_after(late: Duration) -> Option<(Duration, proto::ExecuteResponse)> {
    let resp = proto::ExecuteResponse {
        python_nanos: DEADLINE.as_nanos() as u64,
        outcome: Some(proto::execute_response::Outcome::Error(
            cancelled_in_python(),
        )),
        span: None,
    };
    Some((DEADLINE + late, resp))
}

fn sleep_request(command: &str) -> Request {
    Request::new(command, serde_json::json!({"ms": 5000})).timeout(DEADLINE)
}

#[tokio::test(start_paused = true)]
async fn a_coroutine_cancelled_inside_python_is_a_timeout_and_the_worker_is_kept() {
    let shared = pool();
    described(&shared, &[("async_sleep", true)]);
    let (transport, dropped) = Scripted::answering(answer_after(Duration::from_millis(5)));
    let worker = Worker::fake("fake-1", transport);
    let caller = start_unary(&shared, sleep_request("async_sleep"));
    let exit = serve_one(&shared, &worker).await;
    assert_eq!(exit, None, "the worker is fine: it stays");
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the pool waited for the answer"
    );
    let err = caller.await.unwrap().unwrap_err();
    match &err {
        Error::Timeout {
            command,
            worker_id,
            timeout,
            caller_stalled: false,
            cancelled_in_python: true,
            python_stack: Some(stack),
        } => {
            assert_eq!(
                (command.as_str(), worker_id.as_str()),
                ("async_sleep", "fake-1")
            );
            assert_eq!(*timeout, DEADLINE);
            assert!(stack.contains("await asyncio.sleep"), "{stack}");
        }
        other => panic!("expected a Timeout cancelled in Python, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "'async_sleep' did not finish within 300 ms on worker fake-1; the coroutine was \
         cancelled inside Python at its deadline (the worker was kept)"
    );
    assert_eq!(err.error_type(), "Timeout");
    assert_eq!(err.python_stack(), Some(AWAITING));
    assert!(!err.is_caller_error(), "a slow command is the server's");
    assert_eq!(worker.status.state(), WorkerState::Idle);
    assert_eq!(worker.completed(), 1, "served, not lost");
    assert_eq!(shared.crashes_total.load(Ordering::Relaxed), 0);
    assert_eq!(shared.recycles_total.load(Ordering::Relaxed), 0);
    assert_eq!(shared.failures_total.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn the_pipelined_path_waits_for_the_cancelled_answer_too() {
    let shared = pool();
    described(&shared, &[("async_sleep", true)]);
    let (transport, dropped) = Scripted::pipelining(answer_after(Duration::from_millis(5)));
    let worker = Worker::fake("fake-1", transport);
    assert!(worker.transport.pipelined().is_some());
    let caller = start_unary(&shared, sleep_request("async_sleep"));
    assert_eq!(serve_one_pipelined(&shared, &worker).await, None);
    assert!(!dropped.load(Ordering::SeqCst));
    let err = caller.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                cancelled_in_python: true,
                python_stack: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_traceback_leaves_no_stack() {
    let shared = pool();
    described(&shared, &[("async_sleep", true)]);
    let mut answer = answer_after(Duration::ZERO);
    if let Some((_, resp)) = answer.as_mut() {
        resp.outcome = Some(proto::execute_response::Outcome::Error(
            proto::WorkerError {
                traceback: String::new(),
                ..cancelled_in_python()
            },
        ));
    }
    let (transport, _) = Scripted::answering(answer);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_unary(&shared, sleep_request("async_sleep"));
    assert_eq!(serve_one(&shared, &worker).await, None);
    let err = caller.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                cancelled_in_python: true,
                python_stack: None,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_async_command_not_answered_within_the_grace_costs_the_worker() {
    let shared = pool();
    described(&shared, &[("async_sleep", true)]);
    let (transport, dropped) = Scripted::answering(None);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_unary(&shared, sleep_request("async_sleep"));
    let started = TokioInstant::now();
    let exit = serve_one(&shared, &worker).await;
    assert_eq!(
        exit,
        Some(Exit::Recycle {
            reason: "request_timeout"
        })
    );
    let waited = started.elapsed();
    assert!(
        waited >= DEADLINE + CANCEL_GRACE && waited < DEADLINE + CANCEL_GRACE * 2,
        "{waited:?}: the deadline, then the grace"
    );
    assert!(dropped.load(Ordering::SeqCst), "the call was abandoned");
    let err = caller.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                cancelled_in_python: false,
                caller_stalled: false,
                timeout: DEADLINE,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("the worker was replaced"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_sync_command_gets_no_grace() {
    let shared = pool();
    described(&shared, &[("sleep", false)]);
    let (transport, dropped) = Scripted::answering(answer_after(Duration::from_millis(5)));
    let worker = Worker::fake("fake-1", transport);
    let caller = start_unary(&shared, sleep_request("sleep"));
    let started = TokioInstant::now();
    let exit = serve_one(&shared, &worker).await;
    assert!(
        exit.is_some(),
        "Python cannot interrupt sync code: replaced"
    );
    assert!(started.elapsed() < DEADLINE + Duration::from_millis(5));
    assert!(dropped.load(Ordering::SeqCst));
    let err = caller.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                cancelled_in_python: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_async_generator_cancelled_at_its_deadline_ends_its_stream_and_keeps_the_worker() {
    let shared = pool();
    described(&shared, &[("async_stream", true)]);
    let cancelled = proto::StreamChunk {
        python_nanos: 0,
        data_json: bytes::Bytes::new(),
        r#final: true,
        error: Some(cancelled_in_python()),
    };
    let script = vec![
        (Duration::ZERO, chunk(0)),
        (DEADLINE + Duration::from_millis(5), cancelled),
    ];
    let (transport, dropped) = Scripted::new(script);
    let worker = Worker::fake("fake-1", transport);
    let caller = start_stream_of(
        &shared,
        Request::new("async_stream", serde_json::json!({})).timeout(DEADLINE),
    );
    let exit = serve_one(&shared, &worker).await;
    assert_eq!(exit, None);
    assert!(!dropped.load(Ordering::SeqCst), "the stream ran to its end");
    let items: Vec<_> = caller.await.unwrap().unwrap().collect().await;
    match &items[..] {
        [Ok(_), Err(Error::Timeout {
            cancelled_in_python: true,
            caller_stalled: false,
            python_stack: Some(stack),
            ..
        })] => assert!(stack.contains("await asyncio.sleep")),
        other => panic!("{other:?}"),
    }
    assert_eq!(shared.recycles_total.load(Ordering::Relaxed), 0);
}
