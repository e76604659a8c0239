//! A build without optional features refuses what it cannot do, at configuration
//! time, naming the cargo feature to enable; and what it can do — a pool on the pipe
//! transport, traced and measured — works. Run alone (`cargo test -p
//! snakepit-minimal`) the features are off; in a whole-workspace run they are unified
//! on, and the same tests check that the built-in paths are accepted instead.

use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request, TransportKind};
use snakepit_otel::{OtlpProtocol, StatsdConfig, Telemetry, TelemetryConfig};

fn core_has(feature: &str) -> bool {
    snakepit_core::FEATURES.contains(&feature)
}

fn otel_has(feature: &str) -> bool {
    snakepit_otel::FEATURES.contains(&feature)
}

#[test]
fn the_grpc_transport_needs_its_feature() {
    let cfg = PoolConfig {
        transport: TransportKind::Grpc,
        ..PoolConfig::default()
    };
    match (core_has("grpc"), cfg.validate()) {
        (true, r) => assert!(r.is_ok(), "{r:?}"),
        (false, Ok(())) => panic!("a build without gRPC accepted transport = \"grpc\""),
        (false, Err(e)) => {
            let e = e.to_string();
            assert!(e.contains("pools.default.transport"), "{e}");
            assert!(e.contains("`grpc` feature"), "{e}");
        }
    }
}

#[tokio::test]
async fn otlp_export_needs_the_feature_of_its_protocol() {
    for (protocol, feature) in [
        (OtlpProtocol::Grpc, "otlp-grpc"),
        (OtlpProtocol::HttpProtobuf, "otlp-http"),
    ] {
        for signal in ["traces", "metrics", "logs"] {
            let mut cfg = TelemetryConfig::default();
            match signal {
                "traces" => cfg.traces.otlp = Some(true),
                "metrics" => cfg.metrics.otlp = Some(true),
                _ => cfg.logs.otlp = Some(true),
            }
            cfg.otlp.protocol = protocol;
            // Nothing listens there; nothing is sent before the telemetry is dropped.
            cfg.otlp.endpoint = Some("http://127.0.0.1:9".into());
            match (otel_has(feature), Telemetry::build(cfg)) {
                (true, r) => assert!(r.is_ok(), "{signal} over {feature}: {r:?}"),
                (false, Ok(_)) => panic!("a build without {feature} accepted {signal} export"),
                (false, Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(&format!("telemetry.{signal}.otlp")), "{e}");
                    assert!(e.contains(&format!("`{feature}` feature")), "{e}");
                }
            }
        }
    }
}

#[tokio::test]
async fn statsd_needs_its_feature() {
    let cfg = TelemetryConfig {
        statsd: Some(StatsdConfig::default()),
        ..TelemetryConfig::default()
    };
    match (otel_has("statsd"), Telemetry::build(cfg)) {
        (true, r) => assert!(r.is_ok(), "{r:?}"),
        (false, Ok(_)) => panic!("a build without StatsD accepted a statsd section"),
        (false, Err(e)) => assert!(e.to_string().contains("`statsd` feature"), "{e}"),
    }
}

/// The shipped telemetry config works in any build: `/metrics` is on exactly when the
/// Prometheus exposition is built in, and a real pool's calls go through the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_serves_a_real_pool_in_any_build() {
    use tower::ServiceExt;
    let mut tcfg = TelemetryConfig::default();
    // Log lines would go to the harness's stdout; this test reads metrics.
    tcfg.logs.format = snakepit_otel::LogFormat::Off;
    assert_eq!(tcfg.metrics.prometheus, otel_has("prometheus"));
    let telemetry = Telemetry::build(tcfg).expect("the default config is valid in every build");
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let pool_cfg = PoolConfig {
        size: 1,
        ..PoolConfig::default()
    };
    // The interpreter: SNAKEPIT_PYTHON (scripts/test sets it for this crate), else,
    // in a build with `bootstrap`, the bootstrapped environment.
    let pool = Pool::start(pool_cfg, events)
        .await
        .expect("a pipe-transport pool starts without optional features");
    telemetry.watch_pools(std::slice::from_ref(&pool));
    let svc = tower::ServiceBuilder::new()
        .layer(telemetry.layer())
        .service(pool.clone());
    let resp = svc
        .oneshot(Request::new("echo", json!({"minimal": true})))
        .await
        .expect("echo");
    assert_eq!(resp.value().expect("json"), json!({"minimal": true}));
    match telemetry.prometheus_text() {
        Some(text) => {
            assert!(otel_has("prometheus"));
            assert!(
                text.contains(r#"snakepit_requests_total{command="echo",pool_name="default",status="success"} 1"#),
                "{text}"
            );
        }
        None => assert!(
            !otel_has("prometheus"),
            "the exposition is built in but empty"
        ),
    }
    pool.shutdown(std::time::Duration::from_secs(5)).await;
    telemetry.shutdown(std::time::Duration::from_secs(2));
}
