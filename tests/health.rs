//! The health endpoints over real HTTP against pools of real Python workers: readiness
//! flips with the pool (killed workers, a queue over its limit, start-up, draining),
//! detailed shows replacements, /metrics negotiates its format, rate limits answer 429
//! with Retry-After without slowing liveness, and the token guards what it should.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request};
use snakepit_e2e::*;
use snakepit_health::{Health, HealthConfig, MetricsFormat, ReadinessCriteria};

async fn serve(health: &Health) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = health.router();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    port
}

async fn get(port: u16, path: &str, headers: &[(&'static str, &'static str)]) -> HttpResponse {
    let (path, headers) = (path.to_string(), headers.to_vec());
    tokio::task::spawn_blocking(move || http_get(port, &path, &headers))
        .await
        .expect("request thread")
}

async fn wait_status(port: u16, path: &str, status: u16, within: Duration) -> HttpResponse {
    let deadline = Instant::now() + within;
    loop {
        let r = get(port, path, &[]).await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; last: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn failing(r: &HttpResponse) -> Vec<String> {
    r.json()["failing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_pool_and_detailed_shows_replacements() {
    let events = EventBus::default();
    let cfg = HealthConfig {
        criteria: ReadinessCriteria {
            min_available_workers: 2,
            max_queue_size: 1,
            ..ReadinessCriteria::default()
        },
        ..HealthConfig::default()
    };
    let health = Health::new(cfg, &events).expect("health");
    health.set_metrics(std::sync::Arc::new(|f| {
        Some(match f {
            MetricsFormat::Prometheus => "# TYPE up gauge\nup 1\n".to_string(),
            MetricsFormat::OpenMetrics => "# TYPE up gauge\nup 1\n# EOF\n".to_string(),
        })
    }));
    let port = serve(&health).await;

    // Start-up: live, not ready.
    let r = get(port, "/health", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/health+json"));
    assert_eq!(r.json()["status"], "ok");
    let r = get(port, "/health/ready", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "not_ready");
    assert_eq!(failing(&r), vec!["starting".to_string()]);

    let pool = Pool::start(
        PoolConfig {
            size: 2,
            ..pool_config()
        },
        events.clone(),
    )
    .await
    .expect("pool");
    health.add_pool(pool.clone());
    health.mark_serving();
    let r = get(port, "/health/ready", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["checks"]["default:min_available_workers"][0]["status"],
        "pass"
    );

    // Detailed: pools, workers, system, key metrics.
    let d = get(port, "/health/detailed", &[]).await;
    assert_eq!(d.status, 200);
    let body = d.json();
    assert_eq!(body["status"], "pass", "{body}");
    let workers = body["pools"][0]["workers"].as_array().unwrap().clone();
    assert_eq!(workers.len(), 2);
    for key in ["rss_bytes", "uptime_seconds", "open_fds", "threads"] {
        assert!(
            body["system"][key].as_f64().unwrap() > 0.0,
            "system.{key}: {body}"
        );
    }
    for key in [
        "requests_per_second",
        "queue_time_avg_ms",
        "error_rate",
        "crash_rate_per_minute",
    ] {
        assert!(body["metrics"].get(key).is_some(), "metrics.{key}");
    }

    // A killed worker: not ready, naming the criterion, until its replacement is up.
    let victim = workers[0]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) of a worker this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let r = wait_status(port, "/health/ready", 503, Duration::from_secs(10)).await;
    assert!(
        failing(&r).contains(&"default:min_available_workers".to_string()),
        "{}",
        r.body
    );
    assert_eq!(
        get(port, "/health", &[]).await.status,
        200,
        "liveness unaffected"
    );
    wait_status(port, "/health/ready", 200, Duration::from_secs(20)).await;
    let pids: Vec<i32> = get(port, "/health/detailed", &[]).await.json()["pools"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(
        !pids.contains(&victim),
        "the replacement has a new pid: {pids:?}"
    );

    // A queue over its limit: not ready until it drains.
    let mut load = Vec::new();
    for _ in 0..4 {
        let p = pool.clone();
        load.push(tokio::spawn(async move {
            p.execute(Request::new("sleep", json!({"ms": 1500}))).await
        }));
    }
    let r = wait_status(port, "/health/ready", 503, Duration::from_secs(10)).await;
    assert!(
        failing(&r).contains(&"default:max_queue_size".to_string()),
        "{}",
        r.body
    );
    for l in load {
        l.await.unwrap().unwrap();
    }
    wait_status(port, "/health/ready", 200, Duration::from_secs(10)).await;

    // /metrics negotiates.
    let m = get(port, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = get(
        port,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .await;
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(m.body.ends_with("# EOF\n"));

    // Draining: not ready, still live.
    health.begin_draining();
    let r = get(port, "/health/ready", &[]).await;
    assert_eq!(r.status, 503);
    assert!(failing(&r).contains(&"draining".to_string()));
    assert_eq!(get(port, "/health", &[]).await.status, 200);
    pool.shutdown(Duration::from_secs(5)).await;
    let r = wait_status(port, "/health", 503, Duration::from_secs(10)).await;
    assert_eq!(r.json()["status"], "error", "supervision stopped: not live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_the_token() {
    const TOKEN: &str = "s3cret-token-1234567";
    let events = EventBus::default();
    let cfg = HealthConfig {
        auth_token: Some(TOKEN.into()),
        ..HealthConfig::default()
    };
    let health = Health::new(cfg, &events).expect("health");
    let pool = Pool::start(pool_config(), events.clone())
        .await
        .expect("pool");
    health.add_pool(pool.clone());
    health.mark_serving();
    let port = serve(&health).await;
    const BEARER: &str = "Bearer s3cret-token-1234567";

    for path in ["/health/detailed", "/dashboard", "/dashboard/snapshot"] {
        let r = get(port, path, &[]).await;
        assert_eq!(r.status, 401, "{path} without token");
        assert!(r.header("www-authenticate").is_some());
        let wrong = get(
            port,
            path,
            &[("Authorization", "Bearer wrong-token-000000000")],
        )
        .await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
    }
    assert_eq!(
        get(port, "/health/detailed", &[("Authorization", BEARER)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(port, &format!("/dashboard?token={TOKEN}"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(port, "/health", &[]).await.status,
        200,
        "liveness needs no token"
    );
    assert_eq!(
        get(port, "/health/ready", &[]).await.status,
        200,
        "readiness needs no token"
    );

    // A burst past 40 on detailed gets 429 with Retry-After.
    let burst: Vec<HttpResponse> = tokio::task::spawn_blocking(move || {
        (0..80)
            .map(|_| http_get(port, "/health/detailed", &[("Authorization", BEARER)]))
            .collect()
    })
    .await
    .unwrap();
    let limited: Vec<&HttpResponse> = burst.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty(), "no 429 in a burst of 80");
    // The bucket holds 40; the token checks above already took some.
    assert!(burst.iter().filter(|r| r.status == 200).count() >= 25);
    let retry: u64 = limited[0]
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);

    // Liveness stays prompt while detailed is flooded (a hang detector, not a benchmark).
    let flood = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(3) {
            let _ = http_get(port, "/health/detailed", &[("Authorization", BEARER)]);
            n += 1;
        }
        n
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get(port, "/health", &[]).await.status, 200);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flood.await.unwrap() > 20);
    assert!(
        slowest < Duration::from_secs(1),
        "liveness took {slowest:?} under a flood"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}
