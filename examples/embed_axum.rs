//! Embed a pool in your own axum app: your route calls Python through the pool wrapped
//! in the telemetry layers; the execute API, health probes, /metrics and the dashboard
//! mount next to it. The example then calls itself once per route and exits.
//!
//!     cargo run -p snakepit-examples --example embed_axum

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use snakepit::health::{Health, HealthConfig, MetricsFormat};
use snakepit::otel::{LogFormat, Telemetry, TelemetryConfig};
use snakepit::{EventBus, PoolConfig, Pools, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

#[derive(Clone)]
struct AppState {
    backend: snakepit::api::Backend,
}

/// Your own endpoint: shape the input, call Python, shape the output.
async fn shout(State(state): State<AppState>, Json(body): Json<Value>) -> Json<Value> {
    let text = body["text"].as_str().unwrap_or_default().to_string();
    let req = Request::new("echo", json!({"text": text.to_uppercase()}));
    match state.backend.unary.clone().oneshot(req).await {
        Ok(resp) => {
            Json(json!({"shouted": resp.value().map(|v| v["text"].clone()).unwrap_or_default()}))
        }
        Err(e) => Json(json!({"error": e.to_string()})),
    }
}

async fn call(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    sock.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Text;
    cfg.logs.filter = "warn".into();
    let mut telemetry = Telemetry::init(cfg)?;
    let events = EventBus::default();
    telemetry.attach(&events)?;
    let pools = Pools::start(vec![PoolConfig::default()], events.clone()).await?;
    let all: Vec<_> = pools.iter().cloned().collect();
    telemetry.watch_pools(&all);

    let health = Health::new(HealthConfig::default(), &events)?;
    if let Some(r) = telemetry.metrics_renderer() {
        health.set_metrics(Arc::new(move |f| match f {
            MetricsFormat::Prometheus => r.prometheus_text(),
            MetricsFormat::OpenMetrics => r.openmetrics_text(),
        }));
    }
    for p in &all {
        health.add_pool(p.clone());
    }
    health.mark_serving();

    let backend = snakepit::serve::layered(&telemetry, &pools);
    let api_state = snakepit::api::ApiState {
        backend: Arc::new(std::sync::OnceLock::from(backend.clone())),
        correlation_header: axum::http::HeaderName::from_static("x-correlation-id"),
        accepting: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let app = Router::new()
        .route("/shout", post(shout))
        .with_state(AppState { backend })
        .merge(snakepit::api::router(api_state, 4 * 1024 * 1024))
        .merge(health.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    println!("serving on http://127.0.0.1:{port}");

    for (method, path, body) in [
        ("POST", "/shout", r#"{"text":"hello from axum"}"#),
        ("POST", "/v1/execute", r#"{"command":"ping"}"#),
        ("GET", "/health/ready", ""),
    ] {
        let resp = call(port, method, path, body).await;
        let status = resp.lines().next().unwrap_or_default().to_string();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        println!(
            "{method} {path} -> {status}\n  {}",
            &body[..body.len().min(160)]
        );
        if !status.contains(" 200 ") {
            return Err(format!("{path} failed: {status}").into());
        }
    }
    let metrics = call(port, "GET", "/metrics", "").await;
    let requests = metrics
        .lines()
        .filter(|l| l.starts_with("snakepit_requests_total"))
        .count();
    println!("GET /metrics -> {requests} snakepit_requests_total series");
    pools.shutdown(Duration::from_secs(5)).await;
    telemetry.shutdown(Duration::from_secs(5));
    Ok(())
}
