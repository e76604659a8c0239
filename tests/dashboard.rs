//! The dashboard in real headless Chromium (Debian's package, driven by playwright-core):
//! it loads without console errors, its numbers move under load, a Python failure's
//! traceback shows up in recent errors, the charts draw, it fits a phone, and when the
//! stream is cut it says so and reconnects by itself. Screenshots are kept in
//! `target/test-artifacts/`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use snakepit_core::{EventBus, Pool, PoolConfig, Request};
use snakepit_e2e::*;
use snakepit_health::{Health, HealthConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of the server whose connections the test can cut (and refuse)
/// until restored: a network outage, as the browser sees it.
async fn cuttable_proxy(target: u16) -> (u16, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let (cut_tx, cut_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if *cut_rx.borrow() {
                continue; // dropped: connection refused in effect
            }
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    (port, cut_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    let script = repo().join("tests/node/dashboard_check.mjs");
    assert!(
        repo()
            .join("tests/node/node_modules/playwright-core")
            .exists(),
        "playwright-core missing: run scripts/test (npm ci in tests/node)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no {chromium}: run scripts/test (apt chromium)"
    );
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");

    let events = EventBus::default();
    let health = Health::new(HealthConfig::default(), &events).expect("health");
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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_port = listener.local_addr().expect("addr").port();
    let app = health.router();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let (port, cut) = cuttable_proxy(server_port).await;

    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/dashboard"))
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut out = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut next = async || -> (String, Value) {
        let line = tokio::time::timeout(Duration::from_secs(90), out.next_line())
            .await
            .expect("browser step timed out")
            .expect("read")
            .expect("browser script ended early");
        assert!(!line.starts_with("FAIL"), "{line}");
        let mut parts = line.splitn(3, ' ');
        let (tag, name, data) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("{}"),
        );
        if tag == "OK" {
            return (
                "ok".into(),
                serde_json::from_str(name).unwrap_or(Value::Null),
            );
        }
        (
            name.to_string(),
            serde_json::from_str(data).unwrap_or(Value::Null),
        )
    };

    let (step, _) = next().await;
    assert_eq!(step, "loaded");
    for _ in 0..30 {
        pool.execute(Request::new("ping", json!({}))).await.unwrap();
    }
    pool.execute(Request::new(
        "fail",
        json!({"type": "ValueError", "message": "shown on the dashboard"}),
    ))
    .await
    .unwrap_err();
    stdin.write_all(b"go\n").await.unwrap();
    let (step, checked) = next().await;
    assert_eq!(step, "checked");
    assert!(checked["requests"].as_f64().unwrap() >= 31.0, "{checked}");
    let tb = checked["traceback"].as_str().unwrap_or_default();
    assert!(
        tb.contains("raise exc_type(message)") && tb.contains("ValueError: shown on the dashboard"),
        "{tb}"
    );
    assert!(
        checked["drawn"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d.as_u64().unwrap() > 1),
        "{checked}"
    );
    assert_eq!(checked["workersRows"], 2);
    // Per worker RSS ≥ PSS ≥ USS > 0 (MB, as shown).
    for row in checked["memory"].as_array().unwrap() {
        let mb: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            mb[0] >= mb[1] && mb[1] >= mb[2] && mb[2] > 0.0,
            "RSS, PSS, USS: {row}"
        );
    }
    assert!(
        checked["overflow"].as_i64().unwrap() <= 1,
        "the page overflows a phone screen: {checked}"
    );

    cut.send_replace(true);
    stdin.write_all(b"cut\n").await.unwrap();
    let (step, banner) = next().await;
    assert_eq!(step, "banner");
    assert!(banner["conn"].as_str().unwrap().contains("disconnected"));

    cut.send_replace(false);
    stdin.write_all(b"restore\n").await.unwrap();
    let (step, done) = next().await;
    assert_eq!(step, "ok", "{done}");
    assert_eq!(done["bannerShown"], false);
    assert!(node.wait().await.unwrap().success());
    for shot in [
        "dashboard-desktop.png",
        "dashboard-phone.png",
        "dashboard-disconnected.png",
    ] {
        assert!(
            artifacts
                .join(shot)
                .metadata()
                .map(|m| m.len() > 10_000)
                .unwrap_or(false),
            "{shot}"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
}
