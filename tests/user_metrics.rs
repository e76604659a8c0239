//! User metrics from `snakepit_bridge.metrics`, recorded in four real workers, come out
//! summed per pool in the Prometheus exposition (promtool clean) and over OTLP at a
//! real receiver (rotel); gauges per worker; and a worker killed with SIGKILL takes
//! nothing back: counters and histograms keep its part, its replacement adds to them.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_core::{EventBus, Pool, PoolConfig, PythonConfig, Request};
use snakepit_e2e::*;
use snakepit_otel::{LogFormat, OtlpProtocol, Telemetry, TelemetryConfig};

const ADAPTER: &str = r#"
import os
import time
from snakepit_bridge import Adapter, command, metrics

TOKENS = metrics.counter("tokens_generated", "Tokens produced")
BATCH = metrics.histogram("batch_size", "Items per batch", buckets=(1, 2, 4, 8))
CACHE = metrics.gauge("cache_entries", "Entries in this worker's cache")


class Counting(Adapter):
    @command
    def work(self, n: int, model: str = "small", ms: int = 0):
        time.sleep(ms / 1000)
        TOKENS.add(n, model=model)
        BATCH.record(n, model=model)
        CACHE.set(n)
        return os.getpid()

    @command
    def bad_label(self):
        TOKENS.add(1, worker_id="mine")
        return "unreachable"
"#;

struct Setup {
    telemetry: Telemetry,
    pool: Pool,
    _adapter_dir: TempDir,
}

async fn setup(rotel: &Rotel) -> Setup {
    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    cfg.otlp.endpoint = Some(rotel.grpc_endpoint());
    cfg.otlp.protocol = OtlpProtocol::Grpc;
    cfg.metrics.otlp = Some(true);
    // Pushed every half second instead of every 10 s (the default), so the test reads
    // the receiver's latest values without waiting out a long interval; what is pushed
    // does not depend on the interval.
    cfg.metrics.export_interval_ms = 500;
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let dir = TempDir::new("usermetrics");
    std::fs::write(dir.path().join("counting.py"), ADAPTER).unwrap();
    let mut pool_cfg = PoolConfig {
        size: 4,
        adapter: "counting:Counting".into(),
        python: PythonConfig {
            pythonpath: vec![dir.path().to_path_buf()],
            ..PythonConfig::default()
        },
        ..pool_config()
    };
    pool_cfg.python.env.extend(telemetry.worker_env());
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let pool = Pool::start(pool_cfg, events).await.expect("pool");
    telemetry.watch_pools(std::slice::from_ref(&pool));
    Setup {
        telemetry,
        pool,
        _adapter_dir: dir,
    }
}

/// Four concurrent calls, each held long enough that every worker takes one; the
/// pids that answered.
async fn round(pool: &Pool, ns: [u64; 4], model: &str) -> HashSet<u64> {
    let calls = ns.map(|n| {
        let pool = pool.clone();
        let model = model.to_string();
        async move {
            pool.execute(Request::new(
                "work",
                json!({"n": n, "model": model, "ms": 300}),
            ))
            .await
            .expect("work")
            .value()
            .ok()
            .and_then(|v| v.as_u64())
            .expect("a pid")
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

/// The value of the exposition's sample `name{labels}` (labels as they are printed,
/// sorted by name).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn prom(s: &Setup) -> String {
    s.telemetry
        .prometheus_text()
        .expect("the Prometheus exposition")
}

/// The latest OTLP data points of metric `name` the receiver got.
fn otlp_points(rotel: &Rotel, name: &str) -> Vec<Value> {
    rotel
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m["name"] == name)
        .and_then(|m| m["points"].as_array().cloned())
        .unwrap_or_default()
}

fn otlp_value(rotel: &Rotel, name: &str, model: &str) -> Option<f64> {
    otlp_points(rotel, name)
        .iter()
        .find(|p| p["attributes"]["model"] == model && p["attributes"]["pool_name"] == "default")
        .and_then(|p| p["value"].as_f64())
}

const TOKENS: &str = r#"snakepit_user_tokens_generated_total{model="small",pool_name="default"}"#;
const BATCH_COUNT: &str = r#"snakepit_user_batch_size_count{model="small",pool_name="default"}"#;
const BATCH_SUM: &str = r#"snakepit_user_batch_size_sum{model="small",pool_name="default"}"#;
const BATCH_LE_2: &str =
    r#"snakepit_user_batch_size_bucket{model="small",pool_name="default",le="2"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_are_summed_in_prometheus_and_otlp_and_a_killed_worker_takes_nothing_back() {
    let rotel = Rotel::start();
    let s = setup(&rotel).await;
    let pids = round(&s.pool, [1, 2, 3, 5], "small").await;
    assert_eq!(pids.len(), 4, "every worker took one call: {pids:?}");
    let pids2 = round(&s.pool, [2, 2, 2, 2], "small").await;
    assert_eq!(pids2.len(), 4);
    // 1+2+3+5 + 4*2 tokens; batch sizes 1,2,3,5,2,2,2,2 (le=2: six of them).
    assert!(
        wait_until_async(Duration::from_secs(10), || sample(&prom(&s), TOKENS)
            == Some(19.0))
        .await,
        "{}",
        prom(&s)
    );
    let text = prom(&s);
    assert_eq!(sample(&text, BATCH_COUNT), Some(8.0), "{text}");
    assert_eq!(sample(&text, BATCH_SUM), Some(19.0));
    assert_eq!(sample(&text, BATCH_LE_2), Some(6.0));
    let gauges: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("snakepit_user_cache_entries{"))
        .collect();
    assert_eq!(gauges.len(), 4, "one gauge per worker: {gauges:?}");
    assert!(gauges.iter().all(|g| g.contains("worker_id=\"default-")));
    let (code, out) = promtool_check(&text);
    assert_eq!(code, 0, "promtool check metrics: {out}");
    assert!(
        !out.contains("snakepit_user"),
        "no lint warning on user metrics: {out}"
    );
    // The same totals over OTLP.
    assert!(
        wait_until_async(Duration::from_secs(15), || otlp_value(
            &rotel,
            "snakepit.user.tokens_generated",
            "small"
        ) == Some(19.0))
        .await,
        "{:?}",
        rotel
            .metrics()
            .iter()
            .rev()
            .find(|m| m["name"] == "snakepit.user.tokens_generated")
    );
    let batch = otlp_points(&rotel, "snakepit.user.batch_size");
    let batch = batch
        .iter()
        .find(|p| p["attributes"]["model"] == "small")
        .expect("the histogram over OTLP");
    assert_eq!(batch["count"], 8, "{batch}");
    assert_eq!(batch["bucket_counts"], json!([1, 5, 1, 1, 0]), "{batch}");
    assert_eq!(
        (batch["min"].as_f64(), batch["max"].as_f64()),
        (Some(1.0), Some(5.0))
    );
    assert!(
        (batch["sum"].as_f64().unwrap() - 19.0).abs() < 1e-9,
        "{batch}"
    );

    // SIGKILL one worker: its totals stay, its gauge leaves, the replacement adds.
    let victim = s.pool.stats().workers[0].clone();
    // SAFETY: kill(2) of a worker this test started.
    unsafe { libc::kill(victim.pid as i32, libc::SIGKILL) };
    assert!(
        wait_until_async(Duration::from_secs(20), || {
            let st = s.pool.stats();
            st.workers.len() == 4
                && st.workers.iter().all(|w| w.pid != victim.pid)
                && st.ready_workers == 4
        })
        .await,
        "the killed worker was replaced: {:?}",
        s.pool.stats()
    );
    assert!(
        wait_until_async(Duration::from_secs(10), || !s
            .pool
            .user_metrics()
            .series()
            .iter()
            .any(|x| x.worker_id.as_deref() == Some(victim.id.as_str())))
        .await,
        "the pool forgets the dead worker's gauges"
    );
    let text = prom(&s);
    assert_eq!(sample(&text, TOKENS), Some(19.0), "not a step back: {text}");
    // Gone from the exposition within a scrape or two: with two readers (Prometheus
    // and OTLP) the SDK reports a gauge observed by the other reader's collection
    // once more at the next scrape.
    let victim_gauge = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("snakepit_user_cache_entries{")
                && l.contains(&format!("worker_id=\"{}\"", victim.id))
        })
    };
    assert!(
        wait_until_async(Duration::from_secs(5), || !victim_gauge(&prom(&s))).await,
        "the dead worker's gauge left with it: {}",
        prom(&s)
    );
    let pids3 = round(&s.pool, [10, 10, 10, 10], "small").await;
    assert_eq!(pids3.len(), 4);
    assert!(
        wait_until_async(Duration::from_secs(10), || sample(&prom(&s), TOKENS)
            == Some(59.0))
        .await,
        "{}",
        prom(&s)
    );
    assert_eq!(sample(&prom(&s), BATCH_COUNT), Some(12.0));
    assert!(
        wait_until_async(Duration::from_secs(15), || otlp_value(
            &rotel,
            "snakepit.user.tokens_generated",
            "small"
        ) == Some(59.0))
        .await,
        "{:?}",
        otlp_points(&rotel, "snakepit.user.tokens_generated")
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_the_pool_sets_itself_is_a_python_error_that_says_so() {
    let rotel = Rotel::start();
    let s = setup(&rotel).await;
    let err = s
        .pool
        .execute(Request::new("bad_label", json!({})))
        .await
        .expect_err("refused in Python");
    let msg = err.to_string();
    assert!(
        msg.contains("worker_id") && msg.contains("reserved"),
        "{msg}"
    );
    // The worker is fine and its metrics still flow.
    s.pool
        .execute(Request::new("work", json!({"n": 3})))
        .await
        .expect("work");
    assert!(
        wait_until_async(Duration::from_secs(10), || sample(&prom(&s), TOKENS)
            == Some(3.0))
        .await
    );
    s.pool.shutdown(Duration::from_secs(5)).await;
    s.telemetry.shutdown(Duration::from_secs(5));
}
