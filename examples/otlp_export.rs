//! Send traces, metrics and logs to an OTLP collector, with the worker's spans joining
//! the same traces. Point it at your collector:
//!
//!     OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run -p snakepit-examples --example otlp_export
//!
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` with port 4318 for OTLP/HTTP.) With no
//! collector listening it still runs: exports fail, are counted, and never slow a request.

use std::time::Duration;

use serde_json::json;
use snakepit::otel::{LogFormat, Telemetry, TelemetryConfig};
use snakepit::{EventBus, PoolConfig, Pools, Request};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = TelemetryConfig::default();
    cfg.traces.otlp = Some(true);
    // A span per request inside the worker too, parent of the adapter's own spans.
    cfg.traces.worker_spans = Some(true);
    cfg.metrics.otlp = Some(true);
    cfg.metrics.export_interval_ms = 1_000;
    cfg.logs.otlp = Some(true);
    cfg.logs.format = LogFormat::Off;
    cfg.service_name = "snakepit-example".into();
    let telemetry = Telemetry::init(cfg)?; // OTEL_* variables apply
    let events = EventBus::default();
    telemetry.attach(&events)?;
    let mut pool_cfg = PoolConfig::default();
    pool_cfg.python.env.extend(telemetry.worker_env());
    let pools = Pools::start(vec![pool_cfg], events).await?;
    telemetry.watch(&pools); // pool gauges and the default `pool_name` label
                             // Correlation id, request span (joined by the worker's) and metrics, in one layer.
    let svc = ServiceBuilder::new()
        .layer(telemetry.layer())
        .service(pools.clone());

    for i in 0..10 {
        let req =
            Request::new("sleep", json!({"ms": 5})).correlation_id(format!("otlp-example-{i}"));
        svc.clone().oneshot(req).await?;
    }
    let _ = svc
        .clone()
        .oneshot(Request::new(
            "fail",
            json!({"message": "an exception for the trace"}),
        ))
        .await;
    tracing::info!(example = "otlp_export", "requests done");
    pools.shutdown(Duration::from_secs(5)).await;
    telemetry.flush();
    println!(
        "endpoint {}: spans exported {}, dropped {} (export failures {})",
        telemetry.config().otlp.endpoint_or_default(),
        telemetry
            .span_counters()
            .exported
            .load(std::sync::atomic::Ordering::Relaxed),
        telemetry.span_counters().dropped(),
        telemetry
            .span_counters()
            .export_failures
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    telemetry.shutdown(Duration::from_secs(5));
    Ok(())
}
