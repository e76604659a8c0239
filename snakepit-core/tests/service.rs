//! The pool as a tower::Service: composed with tower layers, cloned across many tasks,
//! and several named pools (each with its own adapter) behind one `Pools` router.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use snakepit_core::{Error, EventBus, PoolConfig, Pools, PythonConfig, Request};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composes_with_tower_layers_and_serves_many_tasks() {
    let pool = start(test_config(2)).await;
    let svc = ServiceBuilder::new()
        .concurrency_limit(8)
        .service(pool.clone());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let resp = svc
                    .ready()
                    .await?
                    .call(Request::new("echo", json!({"t": t, "i": i})))
                    .await?;
                assert_eq!(resp.value()?, json!({"t": t, "i": i}));
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.requests_total, 320);
    assert_eq!(stats.failures_total, 0);
    assert_eq!(stats.in_flight, 0);
    assert!(
        stats.workers.iter().all(|w| w.requests > 0),
        "both workers served"
    );
    assert!(stats.window.latency_p50_ms > 0.0);
    assert!(stats.window.requests_per_second > 0.0);

    // The streaming service.
    let mut stream = pool
        .streaming()
        .oneshot(Request::new("stream", json!({"n": 3})))
        .await
        .unwrap();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_pools_each_with_their_own_adapter() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("snakepit-adapter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("custom_adapter.py"),
        "from snakepit_bridge import Adapter, command\n\n\
         class Upper(Adapter):\n    @command\n    def upper(self, text: str) -> str:\n        \
         return text.upper()\n",
    )
    .unwrap();
    let pools = Pools::start(
        vec![
            test_config(1),
            PoolConfig {
                name: "text".into(),
                adapter: "custom_adapter:Upper".into(),
                python: PythonConfig {
                    pythonpath: vec![dir.clone()],
                    ..PythonConfig::default()
                },
                ..test_config(1)
            },
        ],
        EventBus::default(),
    )
    .await
    .unwrap();

    let resp = pools
        .execute(Request::new("upper", json!({"text": "snake"})).pool("text"))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), json!("SNAKE"));
    // The default pool is the first; it does not know `upper`.
    let err = pools
        .execute(Request::new("upper", json!({"text": "x"})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownCommand { .. }), "{err:?}");
    let mut svc = pools.clone();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new("ping", json!({})))
        .await
        .unwrap();
    assert_eq!(resp.value().unwrap(), json!("pong"));
    let err = pools
        .execute(Request::new("ping", json!({})).pool("nope"))
        .await
        .unwrap_err();
    match err {
        Error::UnknownPool { name, available } => {
            assert_eq!(name, "nope");
            assert_eq!(available, vec!["default".to_string(), "text".to_string()]);
        }
        other => panic!("expected UnknownPool, got {other:?}"),
    }
    pools.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_workers() {
    let pool = start(test_config(2)).await;
    let worker_pids = pids(&pool);
    drop(pool);
    eventually(LONG, "workers gone after the last handle dropped", || {
        worker_pids.iter().all(|p| !alive(*p))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_fails_before_anything_starts() {
    let err = snakepit_core::Pool::start(
        PoolConfig {
            max_payload_bytes: 0,
            ..test_config(1)
        },
        EventBus::default(),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("pools.default.max_payload_bytes = 0"),
        "{text}"
    );
}
