//! Every example in examples/ runs and does what it says; the OTLP one against a real
//! receiver (rotel), whose received spans must include the example's and its workers'.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use snakepit_e2e::*;

/// An example binary `cargo test --workspace` built next to this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo test --workspace` (it builds the examples)",
        path.display()
    );
    path
}

fn run(name: &str, env: &[(&str, String)]) -> String {
    let out = Command::new(example(name))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn custom_adapter_example() {
    let out = run("custom_adapter", &[]);
    assert!(
        out.contains("commands: remember, score, strict, tokens"),
        "{out}"
    );
    assert!(
        out.contains(r#"score  -> {"score":1.0,"text":"I love this great library"}"#)
            || out.contains(r#""score":1.0"#),
        "{out}"
    );
    assert!(out.contains(r#"remember -> {"seen":2}"#), "{out}");
    assert!(
        out.contains("ValueError: text must not be empty") && out.contains("sentiment.py"),
        "{out}"
    );
}

#[test]
fn embed_axum_example() {
    let out = run("embed_axum", &[]);
    assert!(out.contains(r#"{"shouted":"HELLO FROM AXUM"}"#), "{out}");
    assert!(out.contains("POST /v1/execute -> 200 OK"), "{out}");
    assert!(out.contains("GET /health/ready -> 200 OK"), "{out}");
    // Both calls (the route's and the API's) went through the telemetry layer.
    assert!(
        out.contains("GET /metrics -> 2 snakepit_requests_total series"),
        "{out}"
    );
}

#[test]
fn otlp_export_example_against_a_real_receiver() {
    let rotel = Rotel::start();
    let out = run(
        "otlp_export",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.grpc_endpoint())],
    );
    assert!(out.contains("dropped 0"), "{out}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let spans = rotel.spans();
            spans.iter().any(|s| {
                s["resource"]["service.name"] == "snakepit-example" && s["name"] == "default/sleep"
            }) && spans
                .iter()
                .any(|s| s["resource"]["service.name"] == "snakepit-example-worker")
        }),
        "spans received: {:?}",
        rotel
            .spans()
            .iter()
            .map(|s| (s["resource"]["service.name"].clone(), s["name"].clone()))
            .collect::<Vec<_>>()
    );
    assert!(wait_until(Duration::from_secs(10), || !rotel
        .logs()
        .is_empty()
        && !rotel.metrics().is_empty()));
}
