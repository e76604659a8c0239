//! `snakepit serve` from the built binary, as an operator runs it: every example command
//! over HTTP with SPEC §6's status codes, the correlation id echoed, a real Prometheus
//! scraping it with the shipped `prometheus.yml` and alert rules (a forced crash makes
//! the crash alert pending or firing), and SIGTERM under load losing no accepted request.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snakepit_e2e::*;

mod support;
use support::Server;

fn start_server(extra_toml: &str) -> Server {
    Server::start("serve", |port, _| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
drain_timeout_ms = 10000

[[pools]]
name = "default"
size = 2
{transport}

[[pools]]
name = "tiny"
size = 1
max_queue_size = 0
{transport}

[telemetry.logs]
format = "json"
{extra_toml}
"#,
            transport = transport_toml(),
        )
    })
}

/// `POST path` with a JSON body.
fn post(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
    match http_request(port, "POST", path, headers, Some(body)) {
        Ok(r) => r,
        Err(e) => panic!("POST 127.0.0.1:{port}{path}: {e}"),
    }
}

fn exec(port: u16, body: &str) -> HttpResponse {
    post(port, "/v1/execute", body, &[])
}

#[test]
fn every_example_command_and_status_code_over_http() {
    let s = start_server("");
    let p = s.port;

    let r = post(
        p,
        "/v1/execute",
        r#"{"command":"ping"}"#,
        &[("x-correlation-id", "corr-http-1")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-correlation-id"),
        Some("corr-http-1"),
        "correlation id echoed"
    );
    let v = r.json();
    assert_eq!(v["result"], "pong");
    assert!(v["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["worker_id"].as_str().unwrap().starts_with("default-"));
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        exec(p, r#"{"command":"ping"}"#)
            .header("x-correlation-id")
            .is_some(),
        "generated when missing"
    );

    let echo = exec(p, r#"{"command":"echo","args":{"text":"héllo","n":[1,2]}}"#);
    assert_eq!(
        echo.json()["result"],
        serde_json::json!({"text": "héllo", "n": [1, 2]})
    );
    assert_eq!(
        // `ms: float`: the integer arrives as the float the hint asks for.
        exec(p, r#"{"command":"sleep","args":{"ms":20}}"#).json()["result"]["slept_ms"],
        20.0
    );
    assert!(
        exec(p, r#"{"command":"spin","args":{"ms":5}}"#).json()["result"]["loops"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        exec(p, r#"{"command":"alloc","args":{"mb":4}}"#).status,
        200
    );
    let described = exec(p, r#"{"command":"describe"}"#).json();
    assert!(described["result"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "stream"));

    // Streaming: NDJSON chunks then a done line.
    let r = post(
        p,
        "/v1/execute/stream",
        r#"{"command":"stream","args":{"n":3}}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{}", r.body);
    assert_eq!(lines[2]["chunk"], serde_json::json!({"i": 2}));
    assert_eq!(lines[3]["done"], true);

    // 422 with the traceback.
    let r = exec(
        p,
        r#"{"command":"fail","args":{"type":"ValueError","message":"bad input"}}"#,
    );
    assert_eq!(r.status, 422);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "Python");
    assert_eq!(e["python_type"], "ValueError");
    assert!(e["python_traceback"]
        .as_str()
        .unwrap()
        .contains("raise exc_type(message)"));
    assert!(e["request_id"].as_str().is_some());

    // 400s: malformed JSON, wrong type, missing field, args that do not fit.
    for body in [
        r#"{not json"#,
        r#"{"command": 5}"#,
        r#"{"args": {}}"#,
        r#"{"command":"sleep","args":{"nope":1}}"#,
        r#"{"command":"echo","args":[1]}"#,
        r#"{"command":"ping","timeout_ms":18446744073709551615}"#,
        r#"{"command":"ping","timeout_ms":0}"#,
    ] {
        let r = exec(p, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.json()["error"]["message"].as_str().is_some(),
            "{}",
            r.body
        );
    }
    // 404s: unknown command, unknown pool.
    assert_eq!(exec(p, r#"{"command":"nope"}"#).status, 404);
    let r = exec(p, r#"{"command":"ping","pool":"nope"}"#);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "UnknownPool");
    // 413: over the payload limit.
    let big = format!(
        r#"{{"command":"echo","args":{{"blob":"{}"}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    assert_eq!(exec(p, &big).status, 413);
    // 502: the worker crashed.
    let r = exec(p, r#"{"command":"crash","args":{"code":3}}"#);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "WorkerCrashed");
    // 504: timeout.
    let r = exec(p, r#"{"command":"hang","timeout_ms":300}"#);
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "Timeout");
    // 429 with Retry-After: the one-worker, no-queue pool is busy.
    let busy = std::thread::spawn(move || {
        exec(p, r#"{"command":"sleep","args":{"ms":1500},"pool":"tiny"}"#)
    });
    // Ping only once the sleep holds the worker: a ping that won the race to the
    // server would take the only slot and turn the sleep into the 429.
    let tiny_busy = || {
        get_json(p, "/health/detailed")["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|x| x["name"] == "tiny").cloned())
            .is_some_and(|tiny| tiny["busy_workers"] == 1)
    };
    assert!(
        wait_until(Duration::from_secs(5), tiny_busy),
        "the tiny pool never got busy with the sleep"
    );
    let r = exec(p, r#"{"command":"ping","pool":"tiny"}"#);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap().status, 200);

    // Sessions: a TTL beyond a year is refused, not overflowed.
    let r = post(
        p,
        "/v1/sessions",
        r#"{"ttl_seconds":18446744073709551615}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("ttl"), "{}", r.body);
    let r = post(
        p,
        "/v1/sessions",
        r#"{"ttl_seconds":60,"metadata":{"user":"ann"}}"#,
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    let put = exec(
        p,
        &format!(
            r#"{{"command":"session_put","args":{{"key":"k","value":1}},"session_id":"{sid}"}}"#
        ),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let got = exec(
        p,
        &format!(r#"{{"command":"session_get","session_id":"{sid}"}}"#),
    )
    .json();
    assert_eq!(got["result"]["state"]["k"], 1);
    assert_eq!(got["result"]["metadata"]["user"], "ann");
    let del = http_delete(p, &format!("/v1/sessions/{sid}"));
    assert_eq!(del, 204);
    assert_eq!(http_delete(p, &format!("/v1/sessions/{sid}")), 404);
    assert_eq!(
        exec(
            p,
            &format!(r#"{{"command":"session_get","session_id":"{sid}"}}"#)
        )
        .status,
        404
    );

    // The operator's side of the same server.
    assert_eq!(http_get(p, "/health", &[]).status, 200);
    assert_eq!(http_get(p, "/dashboard", &[]).status, 200);
    let metrics = http_get(p, "/metrics", &[]);
    assert!(
        metrics.body.contains(
            r#"snakepit_requests_total{command="fail",pool_name="default",status="error"}"#
        ),
        "{}",
        metrics.body
    );
}

fn http_delete(port: u16, path: &str) -> u16 {
    match http_request(port, "DELETE", path, &[], None) {
        Ok(r) => r.status,
        Err(e) => panic!("DELETE 127.0.0.1:{port}{path}: {e}"),
    }
}

#[test]
fn prometheus_with_the_shipped_config_fires_the_crash_alert() {
    let s = start_server("");
    let shipped = repo().join("collector-config");
    let dir = TempDir::new("prometheus-shipped");
    // The shipped files, with only the target moved to this server and faster intervals.
    let config = std::fs::read_to_string(shipped.join("prometheus.yml"))
        .unwrap()
        .replace("127.0.0.1:4000", &format!("127.0.0.1:{}", s.port))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(shipped.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test installs it)");
    let _prometheus = Proc {
        child,
        name: "prometheus",
    };
    assert!(wait_until(Duration::from_secs(20), || port_open(port)));
    // Let it see the zero-initialized crash counter before the crash.
    assert!(wait_until(Duration::from_secs(30), || {
        get_json(port, "/api/v1/query?query=snakepit_workers_crashed_total")["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    }));
    let start = Instant::now();
    let r = exec(s.port, r#"{"command":"crash","args":{"code":9}}"#);
    assert_eq!(r.status, 502);
    let state = || -> Option<String> {
        let alerts = get_json(port, "/api/v1/alerts");
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "SnakepitWorkersCrashing")
            .and_then(|a| a["state"].as_str().map(String::from))
    };
    assert!(
        wait_until(Duration::from_secs(60), || matches!(
            state().as_deref(),
            Some("pending" | "firing")
        )),
        "crash alert never became pending: {}",
        get_json(port, "/api/v1/alerts")
    );
    eprintln!(
        "crash alert {} after {:?}",
        state().unwrap_or_default(),
        start.elapsed()
    );
    // The crash is labelled by how the worker ended (it exited with code 9), and the
    // other causes stay at zero.
    let crashes = |cause: &str| -> Option<f64> {
        let q = urlencode(&format!(
            "sum(snakepit_workers_crashed_total{{error_type=\"{cause}\"}})"
        ));
        get_json(port, &format!("/api/v1/query?query={q}"))["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    assert!(
        wait_until(Duration::from_secs(30), || crashes("exit") == Some(1.0)),
        "exit crashes: {:?}",
        crashes("exit")
    );
    assert_eq!(crashes("killed"), Some(0.0));
    let rules = get_json(port, "/api/v1/rules");
    let names: Vec<String> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
}

#[test]
fn sigterm_under_load_drains_every_accepted_request() {
    let mut s = start_server("");
    let p = s.port;
    let load: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || exec(p, r#"{"command":"sleep","args":{"ms":1200}}"#)))
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // all admitted (2 running, 6 queued)
                                                    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    // New requests are refused while draining (or find the listener gone).
    let late = std::net::TcpStream::connect(("127.0.0.1", p))
        .map(|_| exec(p, r#"{"command":"ping"}"#).status);
    if let Ok(status) = late {
        assert!(
            status == 503 || status == 0,
            "a new request during drain got {status}"
        );
    }
    for (i, t) in load.into_iter().enumerate() {
        let r = t.join().unwrap();
        assert_eq!(
            r.status, 200,
            "accepted request {i} was lost: {} {}",
            r.status, r.body
        );
    }
    let exited = wait_until(Duration::from_secs(20), || {
        s.child.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "serve did not exit after draining");
    assert!(s.child.wait().unwrap().success());
}
