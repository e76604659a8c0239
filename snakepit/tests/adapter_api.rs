//! What an adapter written with type hints and `async def` gives an HTTP client of
//! `snakepit serve`, with the bundled example adapter: an OpenAPI 3.1 document that a
//! real validator (`openapi-spec-validator`, from PyPI) accepts, the catalog at
//! `/v1/commands`, arguments checked against the hints (400 naming the parameter),
//! a route per command (unary and streaming), async commands under concurrent calls,
//! and a deadline that cancels the coroutine inside Python while the worker stays.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snakepit_e2e::*;

mod support;
use support::Server;

/// `snakepit serve` with one pool, `default`, of `size` workers.
fn start(size: usize) -> Server {
    Server::start("adapter-api", |port, _| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[[pools]]
name = "default"
size = {size}
{transport}

[telemetry.logs]
format = "json"
"#,
            transport = transport_toml(),
        )
    })
}

fn exec(s: &Server, body: Value) -> HttpResponse {
    s.post("/v1/execute", &body.to_string(), &[])
}

/// The command `name` in the pool's catalog.
fn described(catalog: &Value, name: &str) -> Value {
    catalog["pools"]["default"]["commands"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in the catalog: {catalog}"))
}

fn ndjson(r: &HttpResponse) -> Vec<Value> {
    r.body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_api_is_described_checked_and_served_per_command() {
    let s = start(2);

    // The OpenAPI document passes a real validator.
    let r = s.get("/openapi.json");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    let file = s.dir.path().join("openapi.json");
    std::fs::write(&file, &r.body).expect("write the document");
    let out = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi_spec_validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["openapi"], "3.1.0");
    generated_client_calls(&s, &file);
    let score = &doc["paths"]["/v1/pools/default/commands/score"]["post"];
    assert_eq!(score["operationId"], "default__score");
    let features =
        &score["requestBody"]["content"]["application/json"]["schema"]["properties"]["features"];
    assert_eq!(features["type"], "array", "{features}");
    assert_eq!(features["items"]["type"], "number", "{features}");
    // distance's Point lives in the components, referenced from its operation.
    let distance =
        doc["paths"]["/v1/pools/default/commands/distance"]["post"]["requestBody"].to_string();
    assert!(
        distance.contains("#/components/schemas/Point"),
        "{distance}"
    );
    assert!(doc["components"]["schemas"]["Point"].is_object());
    assert!(
        !r.body.contains("#/$defs/"),
        "every $defs reference rewritten"
    );
    for generic in [
        "/v1/execute",
        "/v1/execute/stream",
        "/v1/sessions",
        "/v1/commands",
    ] {
        assert!(doc["paths"].get(generic).is_some(), "{generic}");
    }

    // The catalog.
    let r = s.get("/v1/commands");
    assert_eq!(r.status, 200, "{}", r.body);
    let catalog = r.json();
    let score = described(&catalog, "score");
    assert_eq!(score["streaming"], false);
    assert_eq!(score["async"], false);
    assert_eq!(score["params"], json!(["features", "weights", "mode"]));
    assert_eq!(
        score["args_schema"]["properties"]["features"]["type"],
        "array"
    );
    assert!(score["doc"]
        .as_str()
        .is_some_and(|d| d.contains("Weighted")));
    assert_eq!(described(&catalog, "async_sleep")["async"], true);
    let stream = described(&catalog, "async_stream");
    assert_eq!(
        (&stream["async"], &stream["streaming"]),
        (&json!(true), &json!(true))
    );
    let names: Vec<&str> = catalog["pools"]["default"]["commands"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");

    // Arguments that do not fit the hints: 400 naming parameter, type and what came.
    let r = exec(
        &s,
        json!({"command": "score", "args": {"features": "oops"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for needle in ["features", "list[float]", "str"] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }

    // The command's own route: the body is its arguments, the answer as /v1/execute's.
    let r = s.post(
        "/v1/pools/default/commands/score",
        r#"{"features": [1, 2, 3], "mode": "mean"}"#,
        &[("x-correlation-id", "corr-per-command")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-correlation-id"), Some("corr-per-command"));
    let v = r.json();
    assert_eq!(v["result"], json!({"score": 2.0, "n": 3.0}));
    assert!(v["worker_id"]
        .as_str()
        .is_some_and(|w| w.starts_with("default-")));
    assert!(v["request_id"].as_str().is_some() && v["duration_ms"].as_f64().is_some());
    let r = s.post("/v1/pools/default/commands/ping", "", &[]);
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!("pong")),
        "empty body: {{}}"
    );
    let r = s.post(
        "/v1/pools/default/commands/score",
        r#"{"features": "oops"}"#,
        &[],
    );
    assert_eq!(r.status, 400, "the same checks: {}", r.body);
    let r = s.post(
        "/v1/pools/default/commands/distance",
        r#"{"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}}"#,
        &[],
    );
    assert_eq!(
        (r.status, r.json()["result"].clone()),
        (200, json!(5.0)),
        "{}",
        r.body
    );

    // A streaming command's route answers NDJSON, as /v1/execute/stream does.
    let r = s.post(
        "/v1/pools/default/commands/async_stream?timeout_ms=10000",
        r#"{"n": 3, "delay_ms": 5}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines = ndjson(&r);
    assert_eq!(lines.len(), 4, "{}", r.body);
    for (i, line) in lines.iter().take(3).enumerate() {
        assert_eq!(line["chunk"], json!({"i": i}));
    }
    assert_eq!(lines[3]["done"], true);

    // What /v1/execute refuses, the route refuses the same way.
    assert_eq!(
        s.post("/v1/pools/default/commands/nope", "{}", &[]).status,
        404
    );
    assert_eq!(
        s.post("/v1/pools/nope/commands/ping", "{}", &[]).status,
        404
    );
    assert_eq!(
        s.post("/v1/pools/default/commands/ping", "[1]", &[]).status,
        400
    );
    let r = s.post("/v1/pools/default/commands/ping?timeout_ms=0", "", &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.post("/v1/pools/default/commands/ping?bogus=1", "", &[]);
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn async_commands_serve_concurrent_calls_and_a_deadline_cancels_inside_python() {
    // One worker: the call after the deadline can only find the same one, or its
    // replacement.
    let s = start(1);

    let calls: Vec<_> = (0..16)
        .map(|_| {
            let port = s.port;
            std::thread::spawn(move || {
                let body = json!({"command": "async_sleep", "args": {"ms": 50}}).to_string();
                http_request(port, "POST", "/v1/execute", &[], Some(&body))
            })
        })
        .collect();
    for call in calls {
        let r = call.join().expect("a caller thread").expect("an answer");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["result"]["slept_ms"], 50.0);
    }

    let before = exec(&s, json!({"command": "whoami"})).json();
    let started = Instant::now();
    let r = exec(
        &s,
        json!({"command": "async_sleep", "args": {"ms": 5000}, "timeout_ms": 300}),
    );
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let e = r.json()["error"].clone();
    assert_eq!(e["type"], "Timeout");
    let message = e["message"].as_str().unwrap_or("");
    assert!(
        message.contains("cancelled inside Python") && message.contains("worker was kept"),
        "{message}"
    );
    let stack = e["python_stack"].as_str().unwrap_or("");
    assert!(
        stack.contains("async_sleep"),
        "where it was awaiting: {stack:?}"
    );

    let after = exec(&s, json!({"command": "whoami"})).json();
    assert_eq!(after["worker_id"], before["worker_id"], "the same worker");
    assert_eq!(
        after["result"]["pid"], before["result"]["pid"],
        "the same process"
    );
    let pool = &get_json(s.port, "/health/detailed")["pools"][0];
    assert_eq!(pool["crashes_total"], 0, "{pool}");
    assert_eq!(pool["recycles_total"], 0, "{pool}");

    // The failure is logged as a timeout, with where the coroutine was.
    assert!(
        wait_until(Duration::from_secs(10), || read_jsonl(&s.log_path())
            .iter()
            .any(|l| l["error_type"] == "Timeout"
                && l["python_stack"]
                    .as_str()
                    .is_some_and(|p| p.contains("async_sleep")))),
        "no Timeout log line with the stack"
    );
}

/// A client generator consumes the document: `openapi-python-client` (from PyPI)
/// generates a typed Python client from it, and that client calls the running server
/// with its own models (score's arguments with the `mode` enum, distance's `Point`s).
fn generated_client_calls(s: &Server, doc: &std::path::Path) {
    let out_dir = s.dir.path().join("client");
    let generator = python().with_file_name("openapi-python-client");
    let out = Command::new(&generator)
        .args(["generate", "--overwrite", "--path"])
        .arg(doc)
        .arg("--output-path")
        .arg(&out_dir)
        .output()
        .expect("run openapi-python-client");
    assert!(
        out.status.success() && out_dir.join("snakepit_client").is_dir(),
        "openapi-python-client could not generate a client:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let program = format!(
        r#"
import sys
sys.path.insert(0, {dir:?})
from snakepit_client import Client
from snakepit_client.api.default import default_distance, default_score
from snakepit_client import models as m
c = Client(base_url="http://127.0.0.1:{port}")
r = default_score.sync(client=c, body=m.DefaultScoreScoreArguments(
    features=[1.0, 2.0], mode=m.DefaultScoreScoreArgumentsMode.MEAN))
print(r.result.additional_properties["score"])
r = default_distance.sync(client=c, body=m.DefaultDistanceDistanceArguments(
    a=m.Point(x=0.0, y=0.0), b=m.Point(x=3.0, y=4.0)))
print(r.result)
"#,
        dir = out_dir.display().to_string(),
        port = s.port,
    );
    let out = Command::new(python())
        .args(["-c", &program])
        .output()
        .expect("run the generated client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().collect::<Vec<_>>() == ["1.5", "5.0"],
        "the generated client's calls:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
