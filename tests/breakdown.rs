//! Where a request's time went, from real workers: queue wait, transport (out and
//! back, serialization included) and Python's own run, measured by the worker's clock.
//! The parts add up to what the caller waited, Python's part matches what the command
//! did, and they reach the span (at a real OTLP receiver) and the Prometheus histograms.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request};
use snakepit_e2e::*;
use snakepit_otel::{LogFormat, OtlpProtocol, Telemetry, TelemetryConfig};
use tower::{ServiceBuilder, ServiceExt};

async fn setup(rotel: &Rotel) -> (Telemetry, Pool) {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    cfg.otlp.protocol = OtlpProtocol::Grpc;
    cfg.traces.otlp = Some(true);
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let mut pool_cfg = PoolConfig {
        size: 1,
        ..pool_config()
    };
    pool_cfg.python.env.extend(telemetry.worker_env());
    let pool = Pool::start(pool_cfg, events).await.expect("pool");
    telemetry.watch_pools(std::slice::from_ref(&pool));
    (telemetry, pool)
}

/// `name{labels...}` value from a Prometheus exposition.
fn sample(text: &str, name: &str, command: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("command=\"{command}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {command} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parts_add_up_and_reach_the_span_and_the_histograms() {
    let rotel = Rotel::start();
    let (telemetry, pool) = setup(&rotel).await;
    let service = ServiceBuilder::new()
        .layer(telemetry.layer())
        .service(pool.clone());
    // Warm: the first call pays for imports.
    pool.execute(Request::new("ping", json!({}))).await.unwrap();

    for ms in [30u64, 80] {
        let started = Instant::now();
        let resp = service
            .clone()
            .oneshot(Request::new("sleep", json!({"ms": ms})))
            .await
            .expect("sleep");
        let waited = started.elapsed();
        let b = resp
            .served
            .breakdown()
            .expect("a unary call reports its Python time");
        let slept = Duration::from_millis(ms);
        // Python's part is the sleep (and a little interpreter time), by its own clock.
        assert!(
            b.python >= slept && b.python < slept + Duration::from_millis(15),
            "python {:?} for a {ms} ms sleep",
            b.python
        );
        // The parts are the pool's view of the call, exactly...
        assert_eq!(
            b.queue + b.transport + b.python,
            resp.served.queue_time + resp.served.duration
        );
        // ...and what the caller waited, within what the layers and the runtime add.
        let parts = b.queue + b.transport + b.python;
        assert!(
            parts <= waited && waited - parts < Duration::from_millis(20),
            "parts {parts:?} against {waited:?} waited"
        );
        // A pipe or socket round trip with tiny payloads: well under the sleep.
        assert!(b.transport < Duration::from_millis(20), "{b:?}");
    }

    // A stream: the generator's own time, not the caller's pace.
    let mut stream = pool
        .execute_stream(Request::new("stream", json!({"n": 3, "delay_ms": 25})))
        .await
        .expect("stream");
    let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = ended.clone();
    stream.on_end(move |end| *slot.lock().unwrap() = end.served.cloned());
    while let Some(chunk) = stream.next().await {
        chunk.expect("chunk");
        tokio::time::sleep(Duration::from_millis(40)).await; // a slow reader
    }
    let served = ended
        .lock()
        .unwrap()
        .clone()
        .expect("the stream's end was reported");
    let b = served
        .breakdown()
        .expect("a finished stream reports its Python time");
    assert!(
        b.python >= Duration::from_millis(75) && b.python < Duration::from_millis(110),
        "python {:?} for three 25 ms steps",
        b.python
    );
    // The reader's pace is not Python's: the chunks were buffered while it slept.
    assert_eq!(
        b.queue + b.transport + b.python,
        served.queue_time + served.duration
    );

    // A command that raises: its Python time is still measured (the error says it).
    let err = service
        .clone()
        .oneshot(Request::new("fail", json!({})))
        .await
        .expect_err("fail raises");
    let raised_after = err
        .python()
        .and_then(|p| p.python_time)
        .expect("a Python error carries its Python time");
    assert!(raised_after < Duration::from_millis(20), "{raised_after:?}");

    // The histograms: two sleeps of 30 + 80 ms; the failed call counts for `fail`.
    let text = telemetry.prometheus_text().expect("prometheus text");
    assert_eq!(
        sample(
            &text,
            "snakepit_request_python_duration_seconds_count",
            "fail"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "snakepit_request_python_duration_seconds_count",
            "sleep"
        ),
        2.0
    );
    let python_sum = sample(
        &text,
        "snakepit_request_python_duration_seconds_sum",
        "sleep",
    );
    assert!(
        (0.11..0.14).contains(&python_sum),
        "python sum {python_sum}"
    );
    assert_eq!(
        sample(
            &text,
            "snakepit_request_transport_duration_seconds_count",
            "sleep"
        ),
        2.0
    );
    assert!(
        sample(
            &text,
            "snakepit_request_transport_duration_seconds_sum",
            "sleep"
        ) < 0.04
    );

    // The span.
    assert!(wait_until(Duration::from_secs(20), || rotel
        .spans()
        .iter()
        .filter(|sp| sp["name"] == "default/sleep")
        .count()
        == 2));
    for span in rotel
        .spans()
        .iter()
        .filter(|sp| sp["name"] == "default/sleep")
    {
        let python = span["attributes"]["snakepit.python_time_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no python_time_ms on {span}"));
        let transport = span["attributes"]["snakepit.transport_time_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no transport_time_ms on {span}"));
        assert!(python >= 30.0 && transport < 20.0, "{span}");
    }
    assert!(wait_until(Duration::from_secs(20), || rotel
        .spans()
        .iter()
        .any(|sp| sp["name"] == "default/fail"
            && sp["attributes"]["snakepit.python_time_ms"]
                .as_f64()
                .is_some())));
    pool.shutdown(Duration::from_secs(5)).await;
}
