//! Every example command end to end against real Python workers, and bad input: each
//! a clear typed error, with the pool serving the next request.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_core::{Args, Error, PoolConfig, Request};

async fn ping_ok(pool: &snakepit_core::Pool) {
    let resp = pool.execute(Request::new("ping", json!({}))).await.unwrap();
    assert_eq!(resp.value().unwrap(), json!("pong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_command_works() {
    let pool = start(test_config(2)).await;

    ping_ok(&pool).await;
    let echo = json!({"text": "héllo ✓", "n": [1, 2.5, null], "nested": {"a": true}});
    let resp = pool
        .execute(Request::new("echo", echo.clone()))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), echo);
    assert!(resp.served.worker_id.starts_with("default-"));
    assert!(!resp.served.request_id.is_empty());

    let resp = pool
        .execute(Request::new("sleep", json!({"ms": 50})))
        .await
        .unwrap();
    // `ms: float` in the adapter: the integer 50 reaches it as 50.0.
    assert_eq!(resp.value().unwrap(), json!({"slept_ms": 50.0}));
    assert!(resp.served.duration >= Duration::from_millis(50));

    let resp = pool
        .execute(Request::new("spin", json!({"ms": 20})))
        .await
        .unwrap();
    assert!(resp.value().unwrap()["loops"].as_u64().unwrap() > 0);
    assert!(resp.served.duration >= Duration::from_millis(20));

    let resp = pool
        .execute(Request::new("alloc", json!({"mb": 8})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap()["held_mb"].as_u64().unwrap() % 8, 0);

    let described = pool
        .execute(Request::new("describe", json!({})))
        .await
        .unwrap();
    let names: Vec<String> = described
        .json::<Vec<Value>>()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for required in [
        "ping", "echo", "sleep", "spin", "fail", "crash", "hang", "stream", "alloc", "describe",
    ] {
        assert!(
            names.contains(&required.to_string()),
            "{required} missing in {names:?}"
        );
        assert!(pool.commands().contains(&required.to_string()));
    }

    let mut stream = pool
        .execute_stream(Request::new("stream", json!({"n": 5})))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.push(chunk.unwrap().json::<Value>().unwrap());
    }
    assert_eq!(got, (0..5).map(|i| json!({"i": i})).collect::<Vec<_>>());

    // A unary call of a generator returns all its chunks.
    let resp = pool
        .execute(Request::new("stream", json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), json!([{"i": 0}, {"i": 1}]));
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exceptions_keep_type_message_and_traceback() {
    let pool = start(test_config(1)).await;
    let err = pool
        .execute(Request::new(
            "fail",
            json!({"type": "ValueError", "message": "bad value 42"}),
        ))
        .await
        .unwrap_err();
    let py = err.python().expect("a Python error");
    assert_eq!(py.python_type, "ValueError");
    assert_eq!(py.message, "bad value 42");
    // The traceback names the raising line of the adapter, with its line number.
    assert!(
        py.traceback.contains("raise exc_type(message)"),
        "{}",
        py.traceback
    );
    assert!(
        py.traceback.contains("example.py\", line "),
        "{}",
        py.traceback
    );
    assert!(py
        .traceback
        .trim_end()
        .ends_with("ValueError: bad value 42"));
    assert_eq!(err.error_type(), "Python");

    let err = pool
        .execute(Request::new(
            "fail",
            json!({"type": "QuotaExceeded", "message": "m"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.python().unwrap().python_type,
        "snakepit_bridge.example.QuotaExceeded"
    );

    // A generator that fails before its first chunk fails the call itself.
    let err = pool
        .execute_stream(Request::new("stream", json!({"n": 3, "fail_after": 0})))
        .await
        .unwrap_err();
    assert_eq!(err.python().unwrap().python_type, "ValueError");
    // Arguments that do not fit its hints never reach it (`n: int`).
    let err = pool
        .execute_stream(Request::new("stream", json!({"n": "three"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgs { message } if message.contains("'n'")),
        "{err:?}"
    );
    ping_ok(&pool).await;
    assert_eq!(
        pool.stats().ready_workers,
        1,
        "an exception does not cost the worker"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_the_pool_keeps_serving() {
    let pool = start(PoolConfig {
        max_payload_bytes: 64 * 1024,
        ..test_config(1)
    })
    .await;

    let err = pool
        .execute(Request::new("nope", json!({})))
        .await
        .unwrap_err();
    match &err {
        Error::UnknownCommand { command, available } => {
            assert_eq!(command, "nope");
            assert!(available.contains(&"ping".to_string()));
        }
        other => panic!("expected UnknownCommand, got {other:?}"),
    }
    ping_ok(&pool).await;

    // Args that are not an object of keyword arguments.
    let err = pool
        .execute(Request::new("echo", json!([1, 2])))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
    assert!(err.to_string().contains("an array"), "{err}");
    ping_ok(&pool).await;

    // Arguments that do not fit the command's signature: reported by Python.
    let err = pool
        .execute(Request::new("sleep", json!({"seconds": 1})))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidArgs { message } => {
            assert!(
                message.contains("seconds") && message.contains("parameters: ms"),
                "{message}"
            )
        }
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    ping_ok(&pool).await;

    // Malformed JSON and non-UTF-8 bytes where text is expected.
    for raw in [&b"{\"text\": \"\xff\xfe\"}"[..], &b"{not json"[..]] {
        let err = pool
            .execute(Request::new("echo", Args::from_json_bytes(raw.to_vec())))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
        ping_ok(&pool).await;
    }

    // Oversized payload.
    let big = "x".repeat(100 * 1024);
    let err = pool
        .execute(Request::new("echo", json!({"blob": big})))
        .await
        .unwrap_err();
    match err {
        Error::PayloadTooLarge { size, limit } => {
            assert!(size > 100 * 1024);
            assert_eq!(limit, 64 * 1024);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    ping_ok(&pool).await;

    // A zero timeout is refused up front.
    let err = pool
        .execute(Request::new("echo", json!({"x": 1})).timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");

    // Empty command, and a session that does not exist.
    let err = pool.execute(Request::new("", json!({}))).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgs { .. }), "{err:?}");
    let err = pool
        .execute(Request::new("ping", json!({})).session("no-such-session"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionNotFound { .. }), "{err:?}");
    ping_ok(&pool).await;

    let stats = pool.stats();
    assert_eq!(stats.crashes_total, 0);
    assert_eq!(stats.ready_workers, 1);
    assert!(stats.failures_total >= 8, "{stats:?}");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_context_reaches_python() {
    let pool = start(test_config(1)).await;
    let resp = pool
        .execute(
            Request::new("whoami", json!({}))
                .correlation_id("corr-123")
                .request_id("req-9")
                .metadata(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    let who = resp.value().unwrap();
    assert_eq!(who["correlation_id"], "corr-123");
    assert_eq!(who["request_id"], "req-9");
    assert_eq!(
        who["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let deadline = who["deadline_seconds"].as_f64().unwrap();
    assert!(deadline > 0.0 && deadline <= 3.5, "{deadline}");
    assert_eq!(resp.served.request_id, "req-9");
    assert_eq!(who["pid"].as_u64().unwrap() as u32, pids(&pool)[0]);
    pool.shutdown(Duration::from_secs(5)).await;
}
