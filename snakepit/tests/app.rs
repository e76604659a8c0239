//! `Snakepit::builder()` as an embedding application uses it, with real Python workers:
//! the router answers before the pools are up (probes "starting", the API 503), then
//! serves; calls through `service()` and `streaming()` are traced and measured under
//! the pool's own name; `shutdown` from a clone stops everything, and twice is fine.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit::otel::{LogFormat, TelemetryConfig};
use snakepit::{Request, Snakepit};
use snakepit_e2e::*;
use tower::ServiceExt;

async fn get(router: &axum::Router, path: &str) -> (StatusCode, String) {
    let req = HttpRequest::get(path).body(Body::empty()).expect("request");
    send(router, req).await
}

async fn send(router: &axum::Router, req: HttpRequest<Body>) -> (StatusCode, String) {
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn quiet_telemetry() -> TelemetryConfig {
    let mut cfg = TelemetryConfig::default();
    // Log lines off: this test reads metrics, and stdout is the test harness's.
    cfg.logs.format = LogFormat::Off;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_answers_while_starting_then_serves_under_the_pools_name() {
    let mut pool = pool_config();
    pool.name = "models".into();
    pool.size = 2;
    let starting = Snakepit::builder()
        .pool(pool)
        .telemetry(quiet_telemetry())
        // The test binary's subscriber is its own business.
        .install_subscriber(false)
        .build()
        .expect("build");
    let router = starting.router();
    let (status, body) = get(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("starting"), "{body}");
    let execute = || {
        HttpRequest::post("/v1/execute")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"command":"ping"}"#))
            .expect("request")
    };
    let (status, _) = send(&router, execute()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(starting.pool_configs()[0].name, "models");

    let pit = starting.start().await.expect("start");
    // The router handed out before the start serves now.
    let (status, body) = get(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(&router, execute()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A request naming no pool is labelled with the (only) pool's name.
    let resp = pit
        .service()
        .oneshot(Request::new("echo", json!({"x": 1})))
        .await
        .expect("echo");
    assert_eq!(resp.value().expect("json"), json!({"x": 1}));
    let mut chunks = pit
        .streaming()
        .oneshot(Request::new("stream", json!({"n": 3})))
        .await
        .expect("stream");
    let mut n = 0;
    while let Some(chunk) = chunks.next().await {
        chunk.expect("chunk");
        n += 1;
    }
    assert_eq!(n, 3);
    let text = pit
        .telemetry()
        .prometheus_text()
        .expect("prometheus on by default");
    for command in ["ping", "echo", "stream"] {
        let series = format!(
            r#"snakepit_requests_total{{command="{command}",pool_name="models",status="success"}} 1"#
        );
        assert!(
            wait_for_text(&pit, &series).await,
            "no {series} in:\n{text}"
        );
    }
    assert!(!text.contains(r#"pool_name="default""#), "{text}");
    let (status, metrics) = get(&router, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains(r#"pool_name="models""#), "{metrics}");

    // Shutdown through a clone; the original sees it, and a second shutdown is a no-op.
    let clone = pit.clone();
    clone.shutdown(Duration::from_secs(5)).await;
    let (status, body) = get(&router, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let err = pit
        .service()
        .oneshot(Request::new("ping", Value::Null))
        .await
        .expect_err("stopped pools refuse calls");
    assert!(!err.to_string().is_empty());
    pit.shutdown(Duration::from_secs(1)).await;
}

/// The stream's series is recorded when the stream ends, which the observer does on
/// the pool's side: poll for it rather than assume it is there already.
async fn wait_for_text(pit: &Snakepit, needle: &str) -> bool {
    for _ in 0..100 {
        if pit
            .telemetry()
            .prometheus_text()
            .is_some_and(|t| t.contains(needle))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_before_anything_starts() {
    let mut pool = pool_config();
    pool.size = 0;
    let err = Snakepit::builder()
        .pool(pool)
        .install_subscriber(false)
        .build()
        .err()
        .expect("size 0 is refused");
    assert!(err.to_string().contains("size"), "{err}");
    let err = Snakepit::builder()
        .max_payload_bytes(0)
        .install_subscriber(false)
        .build()
        .err()
        .expect("a 0-byte payload limit is refused");
    assert!(err.to_string().contains("max_payload_bytes"), "{err}");
    // The events and health sections too, before telemetry is set up.
    let mut events = snakepit::EventsConfig::default();
    events.sampling.insert("snakepit.no.such_event".into(), 0.5);
    let err = Snakepit::builder()
        .events(events)
        .install_subscriber(false)
        .build()
        .err()
        .expect("an unknown event name is refused");
    assert!(err.to_string().contains("snakepit.no.such_event"), "{err}");
    let mut health = snakepit::health::HealthConfig::default();
    health.criteria.max_error_rate = 7.0;
    let err = Snakepit::builder()
        .health(health)
        .install_subscriber(false)
        .build()
        .err()
        .expect("an error rate above 1 is refused");
    assert!(err.to_string().contains("max_error_rate"), "{err}");
}
