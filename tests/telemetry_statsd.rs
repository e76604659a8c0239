//! StatsD: a real StatsD daemon (npm `statsd`) receives the request counters and timers
//! and the worker lifecycle counters.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use snakepit_core::{EventBus, Pool, Request};
use snakepit_e2e::*;
use snakepit_otel::{LogFormat, StatsdConfig, Telemetry, TelemetryConfig};

fn admin(port: u16, command: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(format!("{command}\n").as_bytes());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"END\n\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_statsd_daemon_receives_counters_and_timers() {
    let node_dir = repo().join("tests/node");
    let daemon = node_dir.join("node_modules/statsd/bin/statsd");
    assert!(
        daemon.exists(),
        "npm statsd missing: run scripts/test (npm ci in tests/node)"
    );
    let dir = TempDir::new("statsd");
    let (udp, mgmt) = (free_port(), free_port());
    let config = dir.path().join("config.js");
    std::fs::write(
        &config,
        format!("{{ port: {udp}, address: '127.0.0.1', mgmt_port: {mgmt}, mgmt_address: '127.0.0.1', flushInterval: 600000, backends: [] }}\n"),
    )
    .unwrap();
    let child = Command::new("node")
        .arg(&daemon)
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let _statsd = Proc {
        child,
        name: "statsd",
    };
    assert!(
        wait_until(Duration::from_secs(15), || port_open(mgmt)),
        "statsd admin port"
    );

    let mut cfg = TelemetryConfig::default();
    cfg.logs.format = LogFormat::Off;
    cfg.statsd = Some(StatsdConfig {
        address: format!("127.0.0.1:{udp}"),
        prefix: "snakepit".into(),
        flush_interval_ms: 200,
    });
    let telemetry = Telemetry::build(cfg).expect("telemetry");
    let events = EventBus::default();
    telemetry.attach(&events).expect("attach");
    let pool = Pool::start(pool_config(), events.clone())
        .await
        .expect("pool");
    telemetry.watch_pools(std::slice::from_ref(&pool));
    for _ in 0..10 {
        pool.execute(Request::new("ping", json!({}))).await.unwrap();
    }
    pool.execute(Request::new("fail", json!({})))
        .await
        .unwrap_err();
    pool.execute(Request::new("nope", json!({})))
        .await
        .unwrap_err();

    let counters_ok = wait_until(Duration::from_secs(15), || {
        let c = admin(mgmt, "counters");
        c.contains("'snakepit.default.requests.success': 10")
            && c.contains("'snakepit.default.requests.error': 2")
            && c.contains("'snakepit.default.workers.started': 2")
    });
    let counters = admin(mgmt, "counters");
    assert!(counters_ok, "counters: {counters}");
    let timers = admin(mgmt, "timers");
    assert!(
        timers.contains("'snakepit.default.request.duration'"),
        "timers: {timers}"
    );
    assert!(
        timers.contains("'snakepit.default.command.ping.duration'"),
        "timers: {timers}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
    telemetry.shutdown(Duration::from_secs(2));
}
