//! Unit tests of `Telemetry` (the real receivers are exercised in tests/).
use super::*;
use crate::config::LogFormat;
use snakepit_core::{Request, Response, Served};
use tower::{ServiceBuilder, ServiceExt};

/// Stands in for the pool (the layers' effect on the request is what is checked;
/// the real pool runs in tests/).
fn capture() -> (
    Arc<std::sync::Mutex<Option<Request>>>,
    impl tower::Service<Request, Response = Response, Error = snakepit_core::Error, Future: Send>
        + Clone,
) {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    let svc = tower::service_fn(move |req: Request| {
        *s.lock().unwrap() = Some(req);
        async {
            Ok(Response {
                result: bytes::Bytes::from_static(b"1"),
                served: Served {
                    request_id: "r".into(),
                    worker_id: "w".into(),
                    queue_time: Duration::ZERO,
                    duration: Duration::ZERO,
                    worker_span: None,
                    session_recreated: None,
                },
            })
        }
    });
    (seen, svc)
}

#[tokio::test]
async fn disabled_installs_nothing_and_layers_pass_through() {
    let t = Telemetry::build(TelemetryConfig {
        enabled: false,
        ..TelemetryConfig::default()
    })
    .unwrap();
    assert!(t.subscriber().is_none());
    assert!(t.prometheus_text().is_none());
    let (seen, inner) = capture();
    let svc = ServiceBuilder::new()
        .layer(t.trace_layer())
        .layer(t.metrics_layer())
        .service(inner);
    svc.oneshot(Request::new("ping", serde_json::json!({})))
        .await
        .unwrap();
    let req = seen.lock().unwrap().take().unwrap();
    assert!(req.metadata.is_empty(), "no traceparent injected");
    assert!(req.request_id.is_none(), "nothing added to the request");
    t.shutdown(Duration::from_secs(1));
}

/// One request through the layers of `cfg`; what reached the inner service.
async fn one_request(cfg: TelemetryConfig) -> (Request, Telemetry) {
    let t = Telemetry::build(cfg).unwrap();
    let dispatch = t.subscriber().unwrap();
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let (seen, inner) = capture();
    let svc = ServiceBuilder::new()
        .layer(t.correlation_layer())
        .layer(t.trace_layer())
        .layer(t.metrics_layer())
        .service(inner);
    svc.oneshot(Request::new("ping", serde_json::json!({})))
        .await
        .unwrap();
    let req = seen.lock().unwrap().take().unwrap();
    (req, t)
}

#[tokio::test]
async fn enabled_layers_count_and_inject_traceparent_only_when_spans_are_exported() {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    cfg.traces.otlp = Some(false);
    let (req, t) = one_request(cfg.clone()).await;
    assert!(
        req.metadata.iter().all(|(k, _)| k != "traceparent"),
        "spans go nowhere: the worker has no trace to continue"
    );
    assert!(req.correlation_id.is_some() && req.request_id.is_some());
    let text = t.prometheus_text().unwrap();
    assert!(
        text.contains(
            r#"snakepit_requests_total{command="ping",pool_name="default",status="success"} 1"#
        ),
        "{text}"
    );
    t.shutdown(Duration::from_secs(1));

    // Exported (nothing listens on port 9: the export thread drops and counts).
    cfg.traces.otlp = Some(true);
    cfg.otlp.endpoint = Some("http://127.0.0.1:9".into());
    let (req, t) = one_request(cfg.clone()).await;
    let traceparent = req.metadata.iter().find(|(k, _)| k == "traceparent");
    let (_, tp) = traceparent.expect("traceparent injected");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    t.shutdown(Duration::from_secs(1));

    // Exported but not sampled: the worker still learns the decision (flags 00).
    cfg.traces.sampling_ratio = 0.0;
    let (req, t) = one_request(cfg).await;
    let (_, tp) = req
        .metadata
        .iter()
        .find(|(k, _)| k == "traceparent")
        .expect("traceparent injected");
    assert!(tp.ends_with("-00"), "{tp}");
    t.shutdown(Duration::from_secs(1));
}

#[test]
fn worker_env_says_whether_workers_time_requests_for_worker_spans() {
    let get = |env: &[(String, String)], key: &str| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = crate::LogFormat::Off;
    // Set, so an OTEL_EXPORTER_OTLP_ENDPOINT in the test's environment changes nothing.
    cfg.traces.otlp = Some(false);
    let off = Telemetry::build(cfg.clone()).unwrap();
    assert_eq!(
        get(&off.worker_env(), "SNAKEPIT_WORKER_SPANS").as_deref(),
        Some("0")
    );
    assert_eq!(
        get(&off.worker_env(), "SNAKEPIT_OTEL").as_deref(),
        Some("0")
    );

    // OTLP on (nothing listens on port 9: the export thread drops and counts).
    cfg.traces.otlp = Some(true);
    cfg.traces.worker_spans = Some(true);
    cfg.otlp.endpoint = Some("http://127.0.0.1:9".into());
    let on = Telemetry::build(cfg.clone()).unwrap();
    assert_eq!(
        get(&on.worker_env(), "SNAKEPIT_WORKER_SPANS").as_deref(),
        Some("1")
    );
    assert_eq!(get(&on.worker_env(), "SNAKEPIT_OTEL").as_deref(), Some("1"));

    cfg.traces.worker_spans = Some(false);
    let without = Telemetry::build(cfg).unwrap();
    assert_eq!(
        get(&without.worker_env(), "SNAKEPIT_WORKER_SPANS").as_deref(),
        Some("0")
    );
}
