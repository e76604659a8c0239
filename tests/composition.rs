//! `Telemetry::layer()` composed the way tower users compose: one layer over `Pools`
//! (unary and streaming), and tower's own `timeout`, `load_shed`, `buffer` and
//! `limit` stacked inside and outside it — against real workers, with spans read back
//! from a real OTLP receiver (rotel) and metrics from the Prometheus exposition.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_core::{EventBus, PoolConfig, Pools, Request};
use snakepit_e2e::*;
use snakepit_otel::{ClassifyError, LogFormat, Telemetry, TelemetryConfig};
use tower::{BoxError, ServiceBuilder, ServiceExt};

struct Setup {
    rotel: Rotel,
    telemetry: Telemetry,
    pools: Pools,
}

/// Two workers in a pool named "models" (not "default": the label must come from the
/// pools), spans exported to rotel (exemplars exist only when spans are exported).
async fn setup() -> Setup {
    let rotel = Rotel::start();
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    cfg.traces.otlp = Some(true);
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let mut pool = PoolConfig {
        name: "models".into(),
        size: 2,
        ..pool_config()
    };
    pool.python.env.extend(telemetry.worker_env());
    let pools = Pools::start(vec![pool], events).await.expect("pools");
    Setup {
        rotel,
        telemetry,
        pools,
    }
}

impl Setup {
    fn requests_total(&self, command: &str, status: &str) -> u64 {
        let text = self.telemetry.prometheus_text().unwrap_or_default();
        let series = format!(
            "snakepit_requests_total{{command=\"{command}\",pool_name=\"models\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The request span named `name` once rotel has it.
    fn span(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let find = || {
            self.rotel
                .spans()
                .into_iter()
                .find(|s| s["name"] == name && pred(s))
        };
        assert!(
            wait_until(Duration::from_secs(20), || find().is_some()),
            "no span {name}: {:#?}",
            self.rotel.spans()
        );
        find().unwrap_or_default()
    }

    async fn stop(self) {
        self.pools.shutdown(Duration::from_secs(5)).await;
        self.telemetry.shutdown(Duration::from_secs(5));
    }
}

#[tokio::test]
async fn one_layer_covers_unary_and_streaming_calls_of_pools() {
    let s = setup().await;
    // Layers made before the pools are watched: the default pool's name still arrives.
    let layer = s.telemetry.layer();
    s.telemetry.watch(&s.pools);
    let unary = ServiceBuilder::new()
        .layer(layer.clone())
        .service(s.pools.clone());
    let streaming = ServiceBuilder::new()
        .layer(layer)
        .service(s.pools.streaming());

    let resp = unary
        .clone()
        .oneshot(Request::new("ping", json!({})).correlation_id("corr-one-layer"))
        .await
        .expect("ping");
    assert_eq!(resp.value().unwrap(), json!("pong"));
    let mut stream = streaming
        .oneshot(Request::new("stream", json!({"n": 3})))
        .await
        .expect("stream");
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        chunk.expect("chunk");
        chunks += 1;
    }
    assert_eq!(chunks, 3);

    assert_eq!(s.requests_total("ping", "success"), 1);
    assert_eq!(s.requests_total("stream", "success"), 1);
    let text = s.telemetry.prometheus_text().unwrap_or_default();
    assert!(
        text.contains(
            "snakepit_request_time_to_first_chunk_seconds_count{command=\"stream\",pool_name=\"models\"} 1"
        ),
        "{text}"
    );
    // Spans: the correlation id is on the request span, the stream's span covers
    // its chunks.
    let ping = s.span("models/ping", |_| true);
    assert_eq!(ping["attributes"]["correlation_id"], "corr-one-layer");
    let stream_span = s.span("models/stream", |_| true);
    assert_eq!(stream_span["attributes"]["snakepit.stream.chunks"], 3);
    assert_eq!(stream_span["attributes"]["snakepit.outcome"], "success");
    // The exemplar is the request's own span.
    let om = s.telemetry.openmetrics_text().unwrap_or_default();
    let exemplar = om
        .lines()
        .find(|l| l.contains("command=\"ping\"") && l.contains("trace_id="))
        .unwrap_or_else(|| panic!("an exemplar on ping's buckets: {om}"));
    let trace_id = ping["trace_id"].as_str().unwrap_or("none");
    assert!(exemplar.contains(trace_id), "{exemplar} vs {trace_id}");
    s.stop().await;
}

#[tokio::test]
async fn tower_middleware_inside_the_layer_is_seen_through() {
    let s = setup().await;
    s.telemetry.watch(&s.pools);

    // A tower timeout inside: the layer sees an Elapsed error, and calls it a Timeout.
    let timed = ServiceBuilder::new()
        .layer(s.telemetry.layer())
        .timeout(Duration::from_millis(100))
        .service(s.pools.clone());
    let err = timed
        .oneshot(Request::new("sleep", json!({"ms": 1000})))
        .await
        .expect_err("timed out");
    assert_eq!(err.classify().error_type, "Timeout");
    assert_eq!(s.requests_total("sleep", "error"), 1);
    let span = s.span("models/sleep", |_| true);
    assert_eq!(span["attributes"]["error.type"], "Timeout");

    // Load shedding inside, over a limit of one: the second call is refused at once
    // while the first holds the only permit.
    let shedding = ServiceBuilder::new()
        .layer(s.telemetry.layer())
        .load_shed()
        .concurrency_limit(1)
        .service(s.pools.clone());
    let err = shed_while_busy(&s.pools, shedding, "ping").await;
    assert_eq!(err.classify().error_type, "Overloaded");
    assert_eq!(s.requests_total("ping", "error"), 1);
    assert_eq!(s.requests_total("sleep", "success"), 1);
    let shed = s.span("models/ping", |_| true);
    assert_eq!(shed["attributes"]["error.type"], "Overloaded");

    // A buffer inside: the pool's own error comes through boxed, and is recognised.
    let buffered = ServiceBuilder::new()
        .layer(s.telemetry.layer())
        .buffer(8)
        .service(s.pools.clone());
    let ok = buffered
        .clone()
        .oneshot(Request::new("echo", json!({"x": 1})))
        .await
        .expect("echo through a buffer");
    assert_eq!(ok.value().unwrap()["x"], 1);
    let err: BoxError = buffered
        .oneshot(Request::new("no_such_command", json!({})))
        .await
        .expect_err("unknown");
    assert_eq!(err.classify().error_type, "UnknownCommand");
    let unknown = s.span("models/no_such_command", |_| true);
    assert_eq!(unknown["attributes"]["error.type"], "UnknownCommand");
    // An unknown command never gets a series of its own.
    assert_eq!(s.requests_total("__unknown__", "error"), 1);
    assert_eq!(s.requests_total("echo", "success"), 1);
    s.stop().await;
}

#[tokio::test]
async fn tower_middleware_outside_the_layer_is_accounted_for() {
    let s = setup().await;
    s.telemetry.watch(&s.pools);

    // A timeout outside drops the layer's future: the request is counted and traced
    // as cancelled, not as a success or an error it never had.
    let timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .layer(s.telemetry.layer())
        .service(s.pools.clone());
    let err = timed
        .oneshot(Request::new("sleep", json!({"ms": 1000})))
        .await
        .expect_err("timed out");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(s.requests_total("sleep", "cancelled"), 1);
    assert_eq!(s.requests_total("sleep", "error"), 0);
    let span = s.span("models/sleep", |_| true);
    assert_eq!(span["attributes"]["snakepit.outcome"], "cancelled");

    // A buffer and a concurrency limit outside: every call reaches the layer once.
    let limited = ServiceBuilder::new()
        .buffer(8)
        .concurrency_limit(2)
        .layer(s.telemetry.layer())
        .service(s.pools.clone());
    let calls = (0..5).map(|_| limited.clone().oneshot(Request::new("ping", json!({}))));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.expect("ping").value().unwrap(), json!("pong"));
    }
    assert_eq!(s.requests_total("ping", "success"), 5);

    // Load shedding outside: what is shed never reached the layer, so it is not
    // counted as a request of the pool.
    let shedding = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .layer(s.telemetry.layer())
        .service(s.pools.clone());
    let err = shed_while_busy(&s.pools, shedding, "echo").await;
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    assert_eq!(s.requests_total("echo", "error"), 0);
    assert_eq!(s.requests_total("sleep", "success"), 1);
    s.stop().await;
}

/// Through `shedding` (a load shedder over a limit of one): a 300 ms sleep takes the
/// only permit, then a `command` call is shed; returns its error once the sleep is done.
async fn shed_while_busy<S>(pools: &Pools, shedding: S, command: &str) -> BoxError
where
    S: tower::Service<Request, Response = snakepit_core::Response, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let busy = pools.default_pool().clone();
    // A timed-out sleep of an earlier step may still run on its worker; wait for it to
    // finish, so a busy worker means the first call holds the permit.
    assert!(wait_until_async(Duration::from_secs(10), || busy.load().busy_workers == 0).await);
    let first = tokio::spawn(
        shedding
            .clone()
            .oneshot(Request::new("sleep", json!({"ms": 300}))),
    );
    assert!(wait_until_async(Duration::from_secs(10), || busy.load().busy_workers == 1).await);
    let err = shedding
        .oneshot(Request::new(command, json!({})))
        .await
        .expect_err("shed");
    first.await.expect("join").expect("the first call ran");
    err
}
