//! Embed Snakepit in your own axum app: your route calls Python through the pools
//! behind the telemetry layer; the execute API, health probes, /metrics and the
//! dashboard mount next to it. The example then calls itself once per route (with
//! hyper's client) and exits.
//!
//!     cargo run -p snakepit-examples --example embed_axum

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use snakepit::otel::{LogFormat, TelemetryConfig};
use snakepit::{PoolConfig, Request, Snakepit};
use tower::ServiceExt;

/// Your own endpoint: shape the input, call Python, shape the output.
async fn shout(State(pit): State<Snakepit>, Json(body): Json<Value>) -> Json<Value> {
    let text = body["text"].as_str().unwrap_or_default().to_uppercase();
    match pit
        .service()
        .oneshot(Request::new("echo", json!({"text": text})))
        .await
    {
        Ok(resp) => {
            Json(json!({"shouted": resp.value().map(|v| v["text"].clone()).unwrap_or_default()}))
        }
        Err(e) => Json(json!({"error": e.to_string()})),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut telemetry = TelemetryConfig::default();
    telemetry.logs.format = LogFormat::Text;
    telemetry.logs.filter = "warn".into();
    let pit = Snakepit::builder()
        .pool(PoolConfig::default())
        .telemetry(telemetry)
        .start()
        .await?;
    let app = Router::new()
        .route("/shout", post(shout))
        .with_state(pit.clone())
        .merge(pit.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    println!("serving on http://127.0.0.1:{port}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let call = |method: &'static str, path: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let req = hyper::Request::builder()
                .method(method)
                .uri(format!("http://127.0.0.1:{port}{path}"))
                .header("content-type", "application/json")
                .body(Full::from(body))?;
            let resp = client.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error>>((
                status,
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
    };
    for (method, path, body) in [
        ("POST", "/shout", r#"{"text":"hello from axum"}"#),
        ("POST", "/v1/execute", r#"{"command":"ping"}"#),
        ("GET", "/health/ready", ""),
    ] {
        let (status, body) = call(method, path, body).await?;
        println!(
            "{method} {path} -> {status}\n  {}",
            &body[..body.len().min(160)]
        );
        if !status.is_success() {
            return Err(format!("{path} failed: {status}").into());
        }
    }
    let (_, metrics) = call("GET", "/metrics", "").await?;
    let requests = metrics
        .lines()
        .filter(|l| l.starts_with("snakepit_requests_total"))
        .count();
    println!("GET /metrics -> {requests} snakepit_requests_total series");
    pit.shutdown(Duration::from_secs(5)).await;
    server.abort();
    Ok(())
}
