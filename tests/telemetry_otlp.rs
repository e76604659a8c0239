//! Traces, metrics and logs reach a real OTLP receiver (rotel) over gRPC and over
//! HTTP/protobuf; one request is one trace across Rust and Python; failures carry the
//! Python traceback; secrets never leave; a receiver that is down or black-holed costs
//! no request and bounded memory, and exports resume when it is back.

use std::time::Duration;

use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request, SessionOptions};
use snakepit_e2e::*;
use snakepit_otel::{OtlpProtocol, Telemetry, TelemetryConfig};
use tower::{ServiceBuilder, ServiceExt};

struct Setup {
    telemetry: Telemetry,
    pool: Pool,
    logs: Captured,
    events: EventBus,
    _dispatch: tracing::dispatcher::DefaultGuard,
}

fn config(endpoint: String, protocol: OtlpProtocol) -> TelemetryConfig {
    let mut cfg = TelemetryConfig::default();
    cfg.otlp.endpoint = Some(endpoint);
    cfg.otlp.protocol = protocol;
    cfg.otlp.timeout_ms = 1_000;
    cfg.otlp.breaker_failures = 2;
    cfg.otlp.breaker_cooldown_ms = 1_000;
    cfg.traces.otlp = Some(true);
    cfg.traces.worker_spans = Some(true);
    cfg.logs.otlp = Some(true);
    cfg.logs.requests = true;
    cfg.metrics.otlp = Some(true);
    cfg.metrics.export_interval_ms = 500;
    cfg.logs.filter = "info,snakepit=debug".into();
    cfg
}

async fn setup(cfg: TelemetryConfig, pool_size: usize) -> Setup {
    let logs = Captured::default();
    let telemetry = match Telemetry::build_with_log_writer(cfg, Box::new(logs.clone())) {
        Ok(t) => t,
        Err(e) => panic!("telemetry: {e}"),
    };
    let dispatch = telemetry.subscriber().expect("a subscriber");
    let guard = set_test_default(&dispatch);
    let events = EventBus::default();
    if let Err(e) = telemetry.attach(&events) {
        panic!("attach: {e}");
    }
    let mut pool_cfg = PoolConfig {
        size: pool_size,
        ..pool_config()
    };
    pool_cfg.python.env.extend(telemetry.worker_env());
    let pool = match Pool::start(pool_cfg, events.clone()).await {
        Ok(p) => p,
        Err(e) => panic!("pool: {e}"),
    };
    telemetry.watch_pools(std::slice::from_ref(&pool));
    Setup {
        telemetry,
        pool,
        logs,
        events,
        _dispatch: guard,
    }
}

fn service(
    s: &Setup,
) -> impl tower::Service<
    Request,
    Response = snakepit_core::Response,
    Error = snakepit_core::Error,
    Future: Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(s.telemetry.correlation_layer())
        .layer(s.telemetry.trace_layer())
        .layer(s.telemetry.metrics_layer())
        .service(s.pool.clone())
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

async fn one_trace_across_rust_and_python(protocol: OtlpProtocol) {
    let rotel = Rotel::start();
    let endpoint = match protocol {
        OtlpProtocol::Grpc => rotel.grpc_endpoint(),
        OtlpProtocol::HttpProtobuf => rotel.http_endpoint(),
    };
    let s = setup(config(endpoint, protocol), 1).await;
    // Keep the only worker busy so the ping queues (a wait ≥ 1 ms gets a queue span).
    let busy = tokio::spawn(
        s.pool
            .clone()
            .oneshot(Request::new("sleep", json!({"ms": 50}))),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let resp = service(&s)
        .oneshot(Request::new("ping", json!({})).correlation_id("corr-otlp-1"))
        .await
        .expect("ping");
    assert_eq!(resp.value().unwrap(), json!("pong"));
    busy.await.unwrap().unwrap();

    let found = wait_until(Duration::from_secs(20), || {
        rotel
            .spans()
            .iter()
            .any(|sp| sp["name"] == "snakepit.worker/ping")
            && rotel.spans().iter().any(|sp| sp["name"] == "default/ping")
    });
    let spans = rotel.spans();
    assert!(found, "spans received: {spans:#?}");
    let rust = spans
        .iter()
        .find(|sp| sp["name"] == "default/ping")
        .unwrap();
    let python = spans
        .iter()
        .find(|sp| sp["name"] == "snakepit.worker/ping")
        .unwrap();
    assert_eq!(rust["trace_id"], python["trace_id"], "one trace");
    assert_eq!(
        python["parent_span_id"], rust["span_id"],
        "Python span is the Rust span's child"
    );
    assert_eq!(attr(rust, "correlation_id"), "corr-otlp-1");
    assert_eq!(attr(python, "snakepit.correlation_id"), "corr-otlp-1");
    assert_eq!(attr(rust, "rpc.system"), "snakepit");
    assert_eq!(attr(rust, "rpc.method"), "ping");
    assert_eq!(rust["resource"]["service.name"], "snakepit");
    assert_eq!(python["resource"]["service.name"], "snakepit-worker");
    // The queue wait is visible as a child span of the request.
    let queue = spans
        .iter()
        .find(|sp| sp["name"] == "snakepit.queue")
        .expect("queue span");
    assert_eq!(queue["parent_span_id"], rust["span_id"]);

    // The worker span is emitted by the pool from the worker's timing; spans user code
    // opens in Python (the Python SDK exports them) are its children.
    let traced = service(&s)
        .oneshot(Request::new("traced", json!({"steps": 2})))
        .await
        .expect("traced");
    assert_eq!(traced.value().unwrap()["traced"], true);
    let named = |name: &str| rotel.spans().into_iter().find(|sp| sp["name"] == name);
    assert!(
        wait_until(Duration::from_secs(20), || named("example.step.1")
            .is_some()
            && named("snakepit.worker/traced").is_some()
            // The request span leaves through another export thread: wait for it too.
            && named("default/traced").is_some()),
        "spans received: {:#?}",
        rotel.spans()
    );
    let request = named("default/traced").expect("request span");
    let worker = named("snakepit.worker/traced").unwrap();
    assert_eq!(worker["parent_span_id"], request["span_id"]);
    assert_eq!(worker["trace_id"], request["trace_id"]);
    assert!(attr(&worker, "snakepit.worker_id")
        .as_str()
        .is_some_and(|w| w.starts_with("default")));
    for step in ["example.step.0", "example.step.1"] {
        let user = named(step).unwrap();
        assert_eq!(user["parent_span_id"], worker["span_id"], "{step}");
        assert_eq!(user["trace_id"], request["trace_id"], "{step}");
        assert_eq!(user["resource"]["service.name"], "snakepit-worker");
    }

    // Logs and metrics arrive too.
    assert!(
        wait_until(Duration::from_secs(20), || !rotel.logs().is_empty()
            && !rotel.metrics().is_empty()),
        "logs: {} metrics: {}",
        rotel.logs().len(),
        rotel.metrics().len()
    );
    assert!(wait_until(Duration::from_secs(10), || rotel
        .metrics()
        .iter()
        .any(|m| m["name"] == "snakepit.requests")));
    let request_log = rotel
        .logs()
        .into_iter()
        .find(|l| l["attributes"]["correlation_id"] == "corr-otlp-1");
    let request_log = request_log.expect("a log record of the request");
    assert_eq!(request_log["trace_id"], rust["trace_id"]);
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}

#[tokio::test]
async fn one_execute_is_one_trace_over_grpc() {
    one_trace_across_rust_and_python(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn one_execute_is_one_trace_over_http() {
    one_trace_across_rust_and_python(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn without_worker_spans_user_spans_join_the_request_span() {
    let rotel = Rotel::start();
    let mut cfg = config(rotel.grpc_endpoint(), OtlpProtocol::Grpc);
    cfg.traces.worker_spans = Some(false);
    let s = setup(cfg, 1).await;
    service(&s)
        .oneshot(Request::new("traced", json!({"steps": 1})))
        .await
        .expect("traced");
    let named = |name: &str| rotel.spans().into_iter().find(|sp| sp["name"] == name);
    assert!(
        wait_until(Duration::from_secs(20), || named("example.step.0")
            .is_some()
            && named("default/traced").is_some()),
        "spans received: {:#?}",
        rotel.spans()
    );
    let request = named("default/traced").unwrap();
    let user = named("example.step.0").unwrap();
    assert_eq!(user["parent_span_id"], request["span_id"]);
    s.telemetry.flush();
    assert!(
        !rotel.spans().iter().any(|sp| sp["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("snakepit.worker/"))),
        "no worker span was asked for"
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}

#[tokio::test]
async fn a_python_failure_is_an_error_span_a_log_line_and_a_metric() {
    let rotel = Rotel::start();
    let s = setup(config(rotel.grpc_endpoint(), OtlpProtocol::Grpc), 1).await;
    let err = service(&s)
        .oneshot(Request::new(
            "fail",
            json!({"type": "ValueError", "message": "bad input"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.python().unwrap().python_type, "ValueError");

    assert!(wait_until(Duration::from_secs(20), || rotel
        .spans()
        .iter()
        .any(|sp| sp["name"] == "default/fail")));
    let spans = rotel.spans();
    let span = spans
        .iter()
        .find(|sp| sp["name"] == "default/fail")
        .unwrap();
    assert_eq!(span["status_code"], "error", "{span}");
    assert_eq!(attr(span, "error.type"), "Python");
    let exception = span["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "exception")
        .expect("exception event");
    assert_eq!(exception["attributes"]["exception.type"], "ValueError");
    assert_eq!(exception["attributes"]["exception.message"], "bad input");
    let stack = exception["attributes"]["exception.stacktrace"]
        .as_str()
        .unwrap();
    assert!(
        stack.contains("raise exc_type(message)") && stack.contains("ValueError: bad input"),
        "{stack}"
    );

    // The worker span under it failed too, with the exception where it was raised.
    assert!(wait_until(Duration::from_secs(20), || rotel
        .spans()
        .iter()
        .any(|sp| sp["name"] == "snakepit.worker/fail")));
    let worker = rotel
        .spans()
        .into_iter()
        .find(|sp| sp["name"] == "snakepit.worker/fail")
        .unwrap();
    assert_eq!(worker["parent_span_id"], span["span_id"]);
    assert_eq!(worker["status_code"], "error", "{worker}");
    assert_eq!(attr(&worker, "error.type"), "ValueError");
    assert_eq!(worker["resource"]["service.name"], "snakepit-worker");
    let raised = worker["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["name"] == "exception"))
        .expect("exception event on the worker span");
    assert!(raised["attributes"]["exception.stacktrace"]
        .as_str()
        .is_some_and(|st| st.contains("raise exc_type(message)")));

    // A JSON log line with the same trace id and the traceback.
    let trace_id = span["trace_id"].as_str().unwrap().to_string();
    assert!(wait_until(Duration::from_secs(5), || s
        .logs
        .json_lines()
        .iter()
        .any(
            |l| l["trace_id"] == trace_id.as_str() && l.get("python_traceback").is_some()
        )));
    let line = s
        .logs
        .json_lines()
        .into_iter()
        .find(|l| l["trace_id"] == trace_id.as_str() && l.get("python_traceback").is_some())
        .unwrap();
    assert_eq!(line["level"], "ERROR");
    assert!(line["python_traceback"]
        .as_str()
        .unwrap()
        .contains("ValueError: bad input"));
    assert!(line["correlation_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    for key in [
        "timestamp",
        "level",
        "target",
        "message",
        "request_id",
        "span_id",
    ] {
        assert!(line.get(key).is_some(), "log line lacks {key}: {line}");
    }

    let text = s.telemetry.prometheus_text().unwrap();
    assert!(
        text.contains(
            r#"snakepit_requests_total{command="fail",pool_name="default",status="error"} 1"#
        ),
        "{text}"
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}

fn span_seconds(span: &Value) -> f64 {
    let (start, end) = (
        span["start_time_unix_nano"].as_u64().unwrap_or(0),
        span["end_time_unix_nano"].as_u64().unwrap_or(0),
    );
    end.saturating_sub(start) as f64 / 1e9
}

#[tokio::test]
async fn a_stream_is_traced_and_measured_to_its_end() {
    use futures_util::StreamExt;
    let rotel = Rotel::start();
    let s = setup(config(rotel.grpc_endpoint(), OtlpProtocol::Grpc), 1).await;
    let streaming = ServiceBuilder::new()
        .layer(s.telemetry.correlation_layer())
        .layer(s.telemetry.trace_layer())
        .layer(s.telemetry.metrics_layer())
        .service(s.pool.streaming());
    let open = |args: Value, corr: &str| {
        streaming
            .clone()
            .oneshot(Request::new("stream", args).correlation_id(corr))
    };
    // Four chunks 100 ms apart: the span covers all of them, not the first.
    let chunks: Vec<_> = open(json!({"n": 4, "delay_ms": 100}), "corr-stream-ok")
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(chunks.len(), 4);
    // Two chunks, then the generator raises.
    let items: Vec<_> = open(json!({"n": 5, "fail_after": 2}), "corr-stream-fail")
        .await
        .unwrap()
        .collect()
        .await;
    assert!(items.last().unwrap().is_err());
    // The caller walks away after one chunk.
    let mut stream = open(json!({"n": 1000, "delay_ms": 5}), "corr-stream-gone")
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream);

    // Callers that give up while their request still waits for the only worker: the
    // request future is dropped before any answer.
    let busy = tokio::spawn(
        s.pool
            .clone()
            .oneshot(Request::new("sleep", json!({"ms": 400}))),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued = open(json!({"n": 2}), "corr-stream-queued");
    assert!(tokio::time::timeout(Duration::from_millis(50), queued)
        .await
        .is_err());
    let unary =
        service(&s).oneshot(Request::new("ping", json!({})).correlation_id("corr-ping-gone"));
    assert!(tokio::time::timeout(Duration::from_millis(50), unary)
        .await
        .is_err());
    busy.await.unwrap().unwrap();

    let named = |name: &str, corr: &str| {
        rotel
            .spans()
            .into_iter()
            .find(|sp| sp["name"] == name && attr(sp, "correlation_id") == corr)
    };
    let by_corr = |corr: &str| named("default/stream", corr);
    assert!(
        wait_until(Duration::from_secs(20), || [
            "corr-stream-ok",
            "corr-stream-fail",
            "corr-stream-gone"
        ]
        .iter()
        .all(|c| by_corr(c).is_some())),
        "spans received: {:#?}",
        rotel.spans()
    );
    let ok = by_corr("corr-stream-ok").unwrap();
    assert_eq!(ok["status_code"], "unset", "{ok}");
    assert_eq!(attr(&ok, "snakepit.outcome"), "success");
    assert_eq!(attr(&ok, "snakepit.stream.chunks"), 4);
    assert!(
        span_seconds(&ok) >= 0.3,
        "span ends at the first chunk: {ok}"
    );

    let failed = by_corr("corr-stream-fail").unwrap();
    assert_eq!(failed["status_code"], "error", "{failed}");
    assert_eq!(attr(&failed, "error.type"), "Python");
    let exception = failed["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "exception"))
        .expect("exception event");
    assert_eq!(exception["attributes"]["exception.type"], "ValueError");
    assert!(exception["attributes"]["exception.stacktrace"]
        .as_str()
        .is_some_and(|st| st.contains("fail_after")));

    assert!(
        wait_until(Duration::from_secs(20), || by_corr("corr-stream-queued")
            .is_some()
            && named("default/ping", "corr-ping-gone").is_some()),
        "spans received: {:#?}",
        rotel.spans()
    );
    for span in [
        by_corr("corr-stream-queued").unwrap(),
        named("default/ping", "corr-ping-gone").unwrap(),
    ] {
        assert_eq!(attr(&span, "snakepit.outcome"), "cancelled", "{span}");
    }
    let gone = by_corr("corr-stream-gone").unwrap();
    assert_eq!(attr(&gone, "snakepit.outcome"), "cancelled");
    assert_eq!(attr(&gone, "snakepit.stream.chunks"), 1);
    assert!(attr(&gone, "snakepit.worker_id").as_str().is_some());

    let text = s.telemetry.prometheus_text().unwrap();
    for (status, n) in [("success", 1), ("error", 1), ("cancelled", 2)] {
        let series = format!(
            r#"snakepit_requests_total{{command="stream",pool_name="default",status="{status}"}} {n}"#
        );
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
    assert!(
        text.contains(
            r#"snakepit_requests_total{command="ping",pool_name="default",status="cancelled"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"snakepit_request_time_to_first_chunk_seconds_count{command="stream",pool_name="default"} 3"#
    ));
    assert!(
        text.contains(r#"snakepit_request_queue_time_seconds_count{pool_name="default"} 3"#),
        "streams record their queue time:\n{text}"
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}

#[tokio::test]
async fn a_secret_appears_in_no_span_log_metric_or_event() {
    let rotel = Rotel::start();
    let s = setup(config(rotel.grpc_endpoint(), OtlpProtocol::Grpc), 1).await;
    let mut sub = s.events.subscribe("all", snakepit_core::Pattern::all());
    let session = s
        .pool
        .create_session(SessionOptions {
            metadata: json!({"password": "hunter2", "user": "ann"}),
            ..Default::default()
        })
        .unwrap();
    let svc = service(&s);
    svc.clone()
        .oneshot(Request::new("echo", json!({"password": "hunter2", "x": 1})).session(&session.id))
        .await
        .unwrap();
    svc.clone()
        .oneshot(
            Request::new("fail", json!({"message": "boom"})).metadata("authorization", "hunter2"),
        )
        .await
        .unwrap_err();
    tracing::info!(password = "hunter2", "a careless log line");
    s.pool.shutdown(Duration::from_secs(5)).await;
    let prom = s.telemetry.prometheus_text().unwrap();
    s.telemetry.shutdown(Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(20), || rotel.spans().len()
        >= 2
        && !rotel.logs().is_empty()));
    std::thread::sleep(Duration::from_secs(1));

    let mut events = String::new();
    while let Some(ev) = sub.try_recv() {
        events.push_str(&ev.to_json().to_string());
    }
    let logs = s.logs.text();
    assert!(
        logs.contains("[REDACTED]"),
        "the careless line was redacted, not dropped"
    );
    assert!(
        rotel.all_text().contains("[REDACTED]"),
        "the request's arguments reached the receiver, redacted"
    );
    for (what, text) in [
        ("exported telemetry", rotel.all_text()),
        ("log lines", logs),
        ("metrics", prom),
        ("events", events),
    ] {
        assert!(!text.contains("hunter2"), "the secret leaked into {what}");
    }
}

/// RSS of this test process, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

#[tokio::test]
async fn a_down_or_black_holed_receiver_costs_no_request_and_exports_resume() {
    let mut rotel = Rotel::start();
    rotel.stop(); // down: nothing listens on its ports
                  // A black hole: accepts connections, never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    let _hole_thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming().flatten() {
            held.push(conn);
        }
    });
    for (label, endpoint) in [
        ("down", rotel.grpc_endpoint()),
        ("black-holed", format!("http://127.0.0.1:{hole_port}")),
    ] {
        let mut cfg = config(endpoint, OtlpProtocol::Grpc);
        cfg.logs.requests = false;
        let s = setup(cfg, 2).await;
        let svc = service(&s);
        let before = rss_mib();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..250 {
                    svc.clone().oneshot(Request::new("ping", json!({}))).await?;
                }
                Ok::<_, snakepit_core::Error>(())
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{label}: a request failed: {e}"));
        }
        let grown = rss_mib() - before;
        assert!(grown < 64.0, "{label}: RSS grew {grown:.1} MiB under load");
        let (spans_dropped, _, _) = s.telemetry.dropped();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            s.telemetry.dropped().0 > 0 || spans_dropped > 0,
            "{label}: lost spans are counted"
        );
        let prom = s.telemetry.prometheus_text().unwrap();
        assert!(prom.contains("snakepit_telemetry_dropped_total"), "{prom}");
        s.pool.shutdown(Duration::from_secs(5)).await;
        s.telemetry.shutdown(Duration::from_secs(3));
    }

    // The receiver comes back on its port: exports resume.
    let s = setup(config(rotel.grpc_endpoint(), OtlpProtocol::Grpc), 1).await;
    let svc = service(&s);
    svc.clone()
        .oneshot(Request::new("ping", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rotel.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the breaker's cooldown
    for _ in 0..5 {
        svc.clone()
            .oneshot(Request::new("ping", json!({})).correlation_id("after-restart"))
            .await
            .unwrap();
    }
    let resumed = wait_until(Duration::from_secs(20), || {
        rotel
            .spans()
            .iter()
            .any(|sp| sp["attributes"]["correlation_id"] == "after-restart")
    });
    assert!(resumed, "no span exported after the receiver came back");
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}
