//! The pipe transport's stream paths against a worker played by the test over real
//! pipes (a Python worker cannot be made to stop at a chosen chunk, or to die between
//! two chunks, on demand): a stream dropped part way is read out before the next call,
//! a failure part way ends the stream and leaves the pipe in step, a worker that dies
//! part way ends it at once, and a consumer that stops reading holds the worker back
//! through the pipe instead of buffering without bound. (Real pipes, so real time: each
//! test takes milliseconds.)

use super::super::frame::{write_frame, FrameReader};
use super::*;
use futures_util::StreamExt;

/// The worker's side of the four pipes, driven by the test.
struct FakeWorker {
    data_in: FrameReader,
    data_out: pipe::Sender,
    control_in: FrameReader,
    /// Held open so the transport's control reader does not see the worker go.
    _control_out: pipe::Sender,
}

impl FakeWorker {
    fn start() -> (PipeTransport, FakeWorker) {
        let (ends, [data_in, data_out, control_in, control_out]) = pipes().unwrap();
        let transport = PipeTransport::new(ends, 1 << 20).unwrap();
        let worker = FakeWorker {
            data_in: FrameReader::new(receiver(data_in).unwrap(), 1 << 20),
            data_out: sender(data_out).unwrap(),
            control_in: FrameReader::new(receiver(control_in).unwrap(), 1 << 20),
            _control_out: sender(control_out).unwrap(),
        };
        (transport, worker)
    }

    /// The next request on the data pipe: its frame id and whether it is a stream.
    async fn request(&mut self) -> (u64, bool) {
        let frame = self.data_in.read().await.unwrap();
        match frame.body {
            Some(Body::ExecuteStream(_)) => (frame.id, true),
            Some(Body::Execute(_)) => (frame.id, false),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    async fn chunk(&mut self, id: u64, n: usize, last: bool) {
        let chunk = proto::StreamChunk {
            python_nanos: 0,
            data_json: Bytes::from(n.to_string()),
            r#final: last,
            error: None,
        };
        self.send(id, Body::Chunk(chunk)).await;
    }

    async fn failure(&mut self, id: u64) {
        let chunk = proto::StreamChunk {
            python_nanos: 0,
            data_json: Bytes::new(),
            r#final: true,
            error: Some(proto::WorkerError {
                r#type: "ValueError".into(),
                message: "bad row 3".into(),
                ..Default::default()
            }),
        };
        self.send(id, Body::Chunk(chunk)).await;
    }

    async fn reply(&mut self, id: u64, json: &'static [u8]) {
        let reply = proto::ExecuteResponse {
            python_nanos: 0,
            outcome: Some(proto::execute_response::Outcome::ResultJson(
                Bytes::from_static(json),
            )),
            span: None,
        };
        self.send(id, Body::ExecuteResult(reply)).await;
    }

    async fn send(&mut self, id: u64, body: Body) {
        let frame = Frame {
            id,
            body: Some(body),
            ..Frame::default()
        };
        write_frame(&mut self.data_out, &frame).await.unwrap();
    }
}

fn meta() -> CallMeta<'static> {
    CallMeta {
        request_id: "r",
        correlation_id: None,
        extra: &[],
        timeout: None,
    }
}

fn request(command: &str) -> proto::ExecuteRequest {
    proto::ExecuteRequest {
        command: command.into(),
        ..Default::default()
    }
}

/// A unary call after the stream: the worker sees it (not a leftover of the stream)
/// and its answer reaches the caller. Returns the call's frame id.
async fn next_call_is_served(
    transport: &PipeTransport,
    worker: &mut FakeWorker,
    json: &'static [u8],
) -> u64 {
    let (seen, answer) = tokio::join!(
        async {
            let (next, is_stream) = worker.request().await;
            assert!(!is_stream, "the worker was handed a stream, not the call");
            worker.reply(next, json).await;
            next
        },
        transport.execute(request("ping"), meta())
    );
    assert_eq!(result_json(&answer.unwrap()), json);
    seen
}

fn result_json(resp: &proto::ExecuteResponse) -> &[u8] {
    match &resp.outcome {
        Some(proto::execute_response::Outcome::ResultJson(b)) => b,
        other => panic!("expected a result, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_dropped_part_way_is_cancelled_and_read_out_before_the_next_call() {
    let (transport, mut worker) = FakeWorker::start();
    let mut chunks = transport
        .execute_stream(request("stream"), meta())
        .await
        .unwrap();
    let (id, is_stream) = worker.request().await;
    assert!(is_stream);
    worker.chunk(id, 0, false).await;
    worker.chunk(id, 1, false).await;
    let first = chunks.next().await.unwrap().unwrap();
    assert_eq!(&first.data_json[..], b"0");
    drop(chunks); // the consumer leaves with chunk 1 unread and more to come
                  // The worker is told to stop; it still had two chunks on their way.
    let cancel = worker.control_in.read().await.unwrap();
    assert!(matches!(cancel.body, Some(Body::Cancel(_))), "{cancel:?}");
    assert_eq!(cancel.id, id);
    worker.chunk(id, 2, false).await;
    worker.chunk(id, 3, true).await;
    // The next call gets its own answer, not the abandoned stream's leftovers.
    let next = next_call_is_served(&transport, &mut worker, b"\"pong\"").await;
    assert_ne!(next, id);
}

#[tokio::test]
async fn a_failure_part_way_ends_the_stream_and_leaves_the_pipe_in_step() {
    let (transport, mut worker) = FakeWorker::start();
    let chunks = transport
        .execute_stream(request("stream"), meta())
        .await
        .unwrap();
    let (id, _) = worker.request().await;
    worker.chunk(id, 0, false).await;
    worker.chunk(id, 1, false).await;
    worker.failure(id).await;
    let got: Vec<_> = chunks.collect().await;
    assert_eq!(
        got.len(),
        3,
        "two chunks, then the failure, then the end: {got:?}"
    );
    let last = got[2].as_ref().unwrap();
    assert!(last.r#final);
    assert_eq!(last.error.as_ref().unwrap().message, "bad row 3");
    // Nothing was cancelled (the stream ended by itself) and the next call is served.
    next_call_is_served(&transport, &mut worker, b"1").await;
}

#[tokio::test]
async fn a_worker_that_dies_part_way_ends_the_stream_with_an_error_at_once() {
    let (transport, mut worker) = FakeWorker::start();
    let mut chunks = transport
        .execute_stream(request("stream"), meta())
        .await
        .unwrap();
    let (id, _) = worker.request().await;
    worker.chunk(id, 0, false).await;
    assert!(chunks.next().await.unwrap().is_ok());
    drop(worker); // the process is gone: every pipe closes
    let end = tokio::time::timeout(Duration::from_secs(5), chunks.next())
        .await
        .expect("the stream must not wait for a dead worker");
    assert!(
        matches!(end, Some(Err(TransportError::Disconnected(_)))),
        "{end:?}"
    );
    assert!(
        chunks.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn a_consumer_that_stops_reading_holds_the_worker_back_through_the_pipe() {
    let (transport, mut worker) = FakeWorker::start();
    let mut chunks = transport
        .execute_stream(request("stream"), meta())
        .await
        .unwrap();
    let (id, _) = worker.request().await;
    const TOTAL: usize = 2_000; // ~2 MB of chunks, far more than a pipe holds
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let producer = tokio::spawn(async move {
        let padding = "x".repeat(1_000);
        for n in 0..TOTAL {
            let chunk = proto::StreamChunk {
                python_nanos: 0,
                data_json: Bytes::from(format!("\"{n}{padding}\"")),
                r#final: n + 1 == TOTAL,
                error: None,
            };
            worker.send(id, Body::Chunk(chunk)).await;
            counter.fetch_add(1, Ordering::SeqCst);
        }
        worker
    });
    // Nobody reads: the producer runs until the pipe is full, then waits. Poll for the
    // count to stop moving rather than sleeping a guessed time.
    let mut last = u64::MAX;
    let mut unchanged = 0;
    while unchanged < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = written.load(Ordering::SeqCst);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    assert!(
        !producer.is_finished(),
        "the producer must be blocked, not done"
    );
    assert!(last > 0, "the producer never ran");
    assert!(
        last < 200,
        "{last} chunks of ~1 KB went out with no reader: something buffers them"
    );
    // The consumer comes back: every chunk arrives, in order, and then the end.
    let mut n = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.data_json.starts_with(format!("\"{n}x").as_bytes()));
        n += 1;
    }
    assert_eq!(n, TOTAL);
    let mut worker = producer.await.unwrap();
    next_call_is_served(&transport, &mut worker, b"2").await;
}
