//! The pool's stream paths against a fake transport (`fake_worker.rs`), with paused
//! time and the shipped `PoolConfig` (request timeout 30 s): a Python worker cannot be
//! made to produce a chunk exactly when a test wants, to fall silent part way, or to
//! face a caller that stops reading at a chosen chunk. Each test takes milliseconds;
//! the 30 s deadlines pass on tokio's paused clock.

use tokio::time::Instant as TokioInstant;

use super::fake::*;
use super::*;

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
