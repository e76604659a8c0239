//! Python's own `logging` records, from real workers, come out as the pool's records
//! do — the JSON log line and OTLP log records at a real receiver (rotel) — with the
//! worker id and, inside a request, its request id, correlation id and trace context;
//! and a flood of them costs the request nothing and memory a bound, with every record
//! either logged or counted as dropped.

use std::time::Duration;

use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, PythonConfig, Request};
use snakepit_e2e::*;
use snakepit_otel::{OtlpProtocol, Telemetry, TelemetryConfig};
use tower::{ServiceBuilder, ServiceExt};

const ADAPTER: &str = r#"
import logging
from snakepit_bridge.example import ExampleAdapter
from snakepit_bridge import command

log = logging.getLogger("bars.user")
log.info("adapter module imported")
logging.getLogger("bars.quiet").setLevel(logging.ERROR)


class Talker(ExampleAdapter):
    @command
    def talk(self, x: str = "a"):
        log.warning("user log line %s", x)
        log.info("with extras", extra={"user_id": 7, "api_token": "s3cret-" + x})
        logging.getLogger("bars.quiet").warning("this one is below its logger's level")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("it failed with %s", x)
        log.critical("critical %s", x)
        return "ok"

    @command
    def flood(self, n: int = 100000):
        for i in range(n):
            log.info("flood line %d", i)
        return n
"#;

struct Setup {
    telemetry: Telemetry,
    pool: Pool,
    logs: Captured,
    _adapter_dir: TempDir,
    _dispatch: tracing::dispatcher::DefaultGuard,
}

async fn setup(rotel: &Rotel) -> Setup {
    let mut cfg = TelemetryConfig::default();
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    cfg.otlp.protocol = OtlpProtocol::Grpc;
    cfg.traces.otlp = Some(true);
    cfg.logs.otlp = Some(true);
    let logs = Captured::default();
    let telemetry = match Telemetry::build_with_log_writer(cfg, Box::new(logs.clone())) {
        Ok(t) => t,
        Err(e) => panic!("telemetry: {e}"),
    };
    let dispatch = telemetry.subscriber().expect("a subscriber");
    let guard = set_test_default(&dispatch);
    let dir = TempDir::new("pylogs");
    std::fs::write(dir.path().join("talker.py"), ADAPTER).unwrap();
    let mut pool_cfg = PoolConfig {
        size: 1,
        adapter: "talker:Talker".into(),
        python: PythonConfig {
            pythonpath: vec![dir.path().to_path_buf()],
            ..PythonConfig::default()
        },
        ..pool_config()
    };
    pool_cfg.python.env.extend(telemetry.worker_env());
    let pool = match Pool::start(pool_cfg, EventBus::default()).await {
        Ok(p) => p,
        Err(e) => panic!("pool: {e}"),
    };
    Setup {
        telemetry,
        pool,
        logs,
        _adapter_dir: dir,
        _dispatch: guard,
    }
}

fn python_lines(logs: &Captured) -> Vec<Value> {
    logs.json_lines()
        .into_iter()
        .filter(|l| l["target"] == "snakepit::python")
        .collect()
}

#[tokio::test]
async fn user_log_records_carry_the_request_ids_into_json_lines_and_otlp() {
    let rotel = Rotel::start();
    let s = setup(&rotel).await;
    let service = ServiceBuilder::new()
        .layer(s.telemetry.layer())
        .service(s.pool.clone());
    let resp = service
        .oneshot(Request::new("talk", json!({"x": "beer"})).correlation_id("order-77"))
        .await
        .expect("talk");
    assert_eq!(resp.value().unwrap(), json!("ok"));

    assert!(
        wait_until_async(Duration::from_secs(10), || python_lines(&s.logs)
            .iter()
            .any(|l| l["message"] == "critical beer"))
        .await
    );
    let lines = python_lines(&s.logs);
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?} in {lines:#?}"))
    };
    // The record made at import: the worker id (with a fork server the template
    // imported the adapter, once, for every worker), no request.
    let start_up = find("adapter module imported");
    assert_eq!(start_up["level"], "INFO");
    assert_eq!(start_up["logger"], "bars.user");
    let importer = match start_method() {
        snakepit_core::StartMethod::Spawn => "default-1",
        snakepit_core::StartMethod::ForkServer => "default-template",
    };
    assert_eq!(start_up["worker_id"], importer);
    assert!(start_up.get("request_id").is_none(), "{start_up}");
    assert!(start_up.get("trace_id").is_none(), "{start_up}");

    // The record made inside the request: its ids, the logger and level on their own.
    let warn = find("user log line beer");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["logger"], "bars.user");
    assert_eq!(warn["worker_id"], "default-1");
    assert_eq!(warn["pool"], "default");
    assert_eq!(warn["correlation_id"], "order-77");
    assert_eq!(warn["request_id"], resp.served.request_id.as_str());
    assert_eq!(warn["code.function.name"], "talk");
    assert!(warn["code.file.path"]
        .as_str()
        .is_some_and(|f| f.ends_with("talker.py")));
    assert!(warn["code.line.number"].as_u64().is_some());
    let trace_id = warn["trace_id"].as_str().expect("a trace id").to_string();
    assert_eq!(trace_id.len(), 32);
    assert_eq!(warn["span_id"].as_str().map(str::len), Some(16));

    // `extra={...}`: one object, sanitized like every field.
    let extras = find("with extras");
    assert_eq!(extras["extra"]["user_id"], 7, "{extras}");
    assert_eq!(extras["extra"]["api_token"], "[REDACTED]", "{extras}");
    assert!(
        !s.logs.text().contains("s3cret-beer"),
        "the secret went nowhere"
    );

    // A logger's own level is respected.
    assert!(!lines
        .iter()
        .any(|l| l["message"] == "this one is below its logger's level"));

    // exc_info: the whole traceback in one field, not split over lines.
    let failed = find("it failed with beer");
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(failed["python_type"], "ZeroDivisionError");
    let traceback = failed["python_traceback"].as_str().unwrap();
    assert!(
        traceback.contains("1 / 0") && traceback.contains("ZeroDivisionError: division by zero"),
        "{traceback}"
    );
    assert_eq!(failed["trace_id"], trace_id.as_str());
    assert_eq!(find("critical beer")["python_level"], "CRITICAL");

    // The request span is in the same trace.
    assert!(
        wait_until_async(Duration::from_secs(20), || rotel
            .spans()
            .iter()
            .any(|sp| sp["name"] == "default/talk"))
        .await
    );
    let span = rotel
        .spans()
        .into_iter()
        .find(|sp| sp["name"] == "default/talk")
        .unwrap();
    assert_eq!(span["trace_id"], trace_id.as_str());

    // OTLP log records: the same record, with its trace context and attributes.
    assert!(
        wait_until_async(Duration::from_secs(20), || rotel
            .logs()
            .iter()
            .any(|l| l.to_string().contains("user log line beer")))
        .await
    );
    let record = rotel
        .logs()
        .into_iter()
        .find(|l| l.to_string().contains("user log line beer"))
        .unwrap();
    let text = record.to_string();
    assert!(text.contains(&trace_id), "{record}");
    assert!(
        !rotel.all_text().contains("s3cret-beer"),
        "redacted over OTLP too"
    );
    assert!(
        text.contains("bars.user") && text.contains("order-77"),
        "{record}"
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
}

fn worker_rss_mib(pool: &Pool) -> f64 {
    let pid = pool.stats().workers[0].pid;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1024.0 * 1024.0)
}

#[tokio::test]
async fn a_flood_of_log_records_completes_in_bounded_memory_and_counts_what_it_drops() {
    let rotel = Rotel::start();
    let s = setup(&rotel).await;
    let service = ServiceBuilder::new()
        .layer(s.telemetry.layer())
        .service(s.pool.clone());
    // Warm: the first call pays for imports.
    service
        .clone()
        .oneshot(Request::new("flood", json!({"n": 10})))
        .await
        .unwrap();
    // Its records (and the one from import) are in before the count starts.
    let seen = |st: &snakepit_core::PoolStats| {
        st.python_log_records_total + st.python_log_records_dropped_total
    };
    assert!(wait_until_async(Duration::from_secs(10), || seen(&s.pool.stats()) >= 11).await);
    let before = s.pool.stats();
    let rss_before = worker_rss_mib(&s.pool);
    let resp = service
        .oneshot(Request::new("flood", json!({"n": 100_000})))
        .await
        .expect("a flood of log records fails no request");
    assert_eq!(resp.value().unwrap(), json!(100_000));
    let rss_after = worker_rss_mib(&s.pool);
    // The worker keeps at most 4096 records queued (each well under 2 KiB here).
    assert!(
        rss_after - rss_before < 24.0,
        "worker RSS grew from {rss_before:.1} to {rss_after:.1} MiB"
    );
    // Every record is accounted for: logged or counted as dropped.
    let accounted = |st: &snakepit_core::PoolStats| {
        st.python_log_records_total + st.python_log_records_dropped_total
            - before.python_log_records_total
            - before.python_log_records_dropped_total
    };
    assert!(
        wait_until_async(Duration::from_secs(20), || accounted(&s.pool.stats())
            >= 100_000)
        .await,
        "records accounted for: {}",
        accounted(&s.pool.stats())
    );
    let after = s.pool.stats();
    assert_eq!(accounted(&after), 100_000, "{after:?}");
    eprintln!(
        "100,000 records: {} logged, {} dropped",
        after.python_log_records_total - before.python_log_records_total,
        after.python_log_records_dropped_total - before.python_log_records_dropped_total
    );
    // The worker still serves, and still logs.
    s.pool
        .execute(Request::new("talk", json!({"x": "after"})))
        .await
        .expect("serves after the flood");
    assert!(
        wait_until_async(Duration::from_secs(10), || python_lines(&s.logs)
            .iter()
            .any(|l| l["message"] == "user log line after"))
        .await
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
}
