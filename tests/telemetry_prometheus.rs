//! The Prometheus exposition: `promtool check metrics` accepts it with no lint warning,
//! and a real Prometheus scraping a running pool sees the request counter and the
//! duration histogram with the right labels after load.

use std::time::Duration;

use serde_json::json;
use snakepit_core::{EventBus, Pool, Request};
use snakepit_e2e::*;
use snakepit_otel::{LogFormat, Telemetry, TelemetryConfig};
use tower::{ServiceBuilder, ServiceExt};

async fn pool_with_metrics() -> (std::sync::Arc<Telemetry>, Pool) {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let pool = Pool::start(pool_config(), events.clone())
        .await
        .expect("pool");
    telemetry.watch_pools(std::slice::from_ref(&pool));
    (std::sync::Arc::new(telemetry), pool)
}

async fn load(telemetry: &Telemetry, pool: &Pool) {
    let svc = ServiceBuilder::new()
        .layer(telemetry.correlation_layer())
        .layer(telemetry.trace_layer())
        .layer(telemetry.metrics_layer())
        .service(pool.clone());
    for i in 0..50 {
        let cmd = if i % 10 == 0 { "fail" } else { "ping" };
        let _ = svc.clone().oneshot(Request::new(cmd, json!({}))).await;
    }
    let _ = svc
        .clone()
        .oneshot(Request::new("sleep", json!({"ms": 20})))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition_without_warnings() {
    let (telemetry, pool) = pool_with_metrics().await;
    load(&telemetry, &pool).await;
    let text = telemetry.prometheus_text().expect("prometheus text");
    for name in [
        "snakepit_requests_total",
        "snakepit_request_duration_seconds_bucket",
        "snakepit_request_queue_time_seconds_bucket",
        "snakepit_request_transport_duration_seconds_bucket",
        "snakepit_request_python_duration_seconds_bucket",
        "snakepit_python_log_records_total",
        "snakepit_python_log_records_dropped_total",
        "snakepit_workers_started_total",
        "snakepit_worker_startup_duration_seconds_bucket",
        "snakepit_pool_available_workers",
        "snakepit_pool_busy_workers",
        "snakepit_pool_queue_size",
        "snakepit_sessions_active",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    for le in [
        "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "10", "+Inf",
    ] {
        assert!(
            text.contains(&format!("snakepit_request_duration_seconds_bucket{{command=\"ping\",pool_name=\"default\",le=\"{le}\"}}")),
            "bucket {le} missing"
        );
    }
    for le in ["0.1", "0.5", "1", "2", "5", "10", "30"] {
        assert!(
            text.contains(&format!("le=\"{le}\"")),
            "startup bucket {le}"
        );
    }
    let (code, out) = promtool_check(&text);
    assert_eq!(
        code, 0,
        "promtool check metrics failed ({code}):\n{out}\n---\n{text}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_running_pool() {
    let (telemetry, pool) = pool_with_metrics().await;
    let t = telemetry.clone();
    let (port, server) = serve_text(move || t.prometheus_text().unwrap_or_default()).await;
    let prometheus = Prometheus::start(port, &[]);
    load(&telemetry, &pool).await;

    let query = |q: &str| -> Value { prometheus.api("query", &[("query", q.to_string())]) };
    let ok = wait_until(Duration::from_secs(30), || {
        let r = query(
            r#"snakepit_requests_total{pool_name="default",command="ping",status="success"}"#,
        );
        r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert!(ok, "Prometheus never saw snakepit_requests_total");
    let r = query(r#"snakepit_requests_total{command="ping",status="success"}"#);
    let value: f64 = r["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(value, 45.0);
    let r = query(r#"snakepit_requests_total{command="fail",status="error"}"#);
    assert_eq!(r["data"]["result"][0]["value"][1], "5");
    let r = query(r#"sum by (le) (snakepit_request_duration_seconds_bucket{pool_name="default"})"#);
    assert_eq!(
        r["data"]["result"].as_array().map(|a| a.len()),
        Some(10),
        "{r}"
    );
    let r = query(
        r#"histogram_quantile(0.5, sum by (le) (rate(snakepit_request_duration_seconds_bucket[1m])))"#,
    );
    assert_eq!(r["status"], "success", "{r}");
    server.abort();
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn exemplars_link_latency_buckets_to_traces_in_a_real_prometheus() {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    // Exemplars point at traces, so they exist only when traces are exported (nothing
    // listens on port 9: the export thread drops and counts; no exemplar needs it).
    cfg.traces.otlp = Some(true);
    cfg.otlp.endpoint = Some("http://127.0.0.1:9".into());
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let dispatch = telemetry.subscriber().expect("subscriber");
    let _guard = set_test_default(&dispatch);
    let pool = Pool::start(pool_config(), EventBus::default())
        .await
        .expect("pool");
    let telemetry = std::sync::Arc::new(telemetry);
    let t = telemetry.clone();
    let (port, server) = serve_negotiated(move |accept| {
        if accept.contains("application/openmetrics-text") {
            (
                snakepit_otel::openmetrics::CONTENT_TYPE.into(),
                t.openmetrics_text().unwrap_or_default(),
            )
        } else {
            (
                "text/plain; version=0.0.4".into(),
                t.prometheus_text().unwrap_or_default(),
            )
        }
    })
    .await;
    load(&telemetry, &pool).await;
    let om = telemetry.openmetrics_text().unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE snakepit_requests counter"), "{om}");
    let exemplar_line = om
        .lines()
        .find(|l| {
            l.starts_with("snakepit_request_duration_seconds_bucket")
                && l.contains("# {trace_id=\"")
        })
        .expect("a bucket line with an exemplar");
    let trace_id = exemplar_line.split("trace_id=\"").nth(1).unwrap()[..32].to_string();

    let prometheus = Prometheus::start(port, &["--enable-feature=exemplar-storage"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exemplars = || -> Value {
        prometheus.api(
            "query_exemplars",
            &[
                ("query", "snakepit_request_duration_seconds_bucket".into()),
                ("start", (now - 600).to_string()),
                ("end", (now + 600).to_string()),
            ],
        )
    };
    let found = wait_until_async(Duration::from_secs(30), || {
        exemplars()["data"].as_array().is_some_and(|series| {
            series
                .iter()
                .any(|s| s["exemplars"].to_string().contains(&trace_id))
        })
    })
    .await;
    assert!(
        found,
        "Prometheus has no exemplar with trace {trace_id}: {}",
        exemplars()
    );
    server.abort();
    pool.shutdown(Duration::from_secs(5)).await;
}
