//! The command line: `exec` (result on stdout, Python errors with traceback and exit 1),
//! `bench` (a table), `serve --check-config` (exit 2 naming key and value), and unknown
//! commands or malformed flags (clear usage errors).

use std::process::{Command, Output};

fn snakepit(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snakepit"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run snakepit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_prints_results_and_python_errors() {
    let ok = snakepit(&["exec", "echo", "--args", r#"{"a": [1, 2]}"#], &[]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout).trim(), r#"{"a":[1,2]}"#);

    let streamed = snakepit(
        &["exec", "stream", "--args", r#"{"n": 2}"#, "--stream"],
        &[],
    );
    assert_eq!(
        text(&streamed.stdout).lines().collect::<Vec<_>>(),
        [r#"{"i":0}"#, r#"{"i":1}"#]
    );

    let failed = snakepit(
        &[
            "exec",
            "fail",
            "--args",
            r#"{"type": "KeyError", "message": "gone"}"#,
        ],
        &[],
    );
    assert_eq!(failed.status.code(), Some(1));
    let err = text(&failed.stderr);
    assert!(
        err.contains("Python raised KeyError") && err.contains("raise exc_type(message)"),
        "{err}"
    );

    let bad_args = snakepit(&["exec", "echo", "--args", "[1]"], &[]);
    assert_eq!(bad_args.status.code(), Some(1));
    assert!(
        text(&bad_args.stderr).contains("--args"),
        "{}",
        text(&bad_args.stderr)
    );
}

#[test]
fn bench_prints_a_table() {
    let out = snakepit(&["bench", "--seconds", "0.5", "--concurrency", "1,4"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].contains("in flight") && rows[0].contains("p99 ms"),
        "{table}"
    );
    assert_eq!(rows.len(), 3, "{table}");
    let requests: u64 = rows[1].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(requests > 0, "{table}");
}

#[test]
fn configuration_errors_and_usage_errors_are_clear() {
    let ok = snakepit(&["serve", "--check-config"], &[]);
    assert!(ok.status.success());
    assert!(text(&ok.stdout).contains("configuration OK"));

    // --listen (what the Dockerfile and the Kubernetes manifests pass) wins over the
    // default and reaches the config as the address itself.
    let listen = snakepit(
        &["serve", "--check-config", "--listen", "0.0.0.0:4100"],
        &[],
    );
    assert!(listen.status.success(), "{}", text(&listen.stderr));
    assert!(
        text(&listen.stdout).contains("listen 0.0.0.0:4100"),
        "{}",
        text(&listen.stdout)
    );
    // The OTEL_* variables are part of the configuration serve will run with: a bad
    // one fails the check, not the start.
    let bad_env = snakepit(
        &["serve", "--check-config"],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")],
    );
    assert_eq!(bad_env.status.code(), Some(2));
    assert!(
        text(&bad_env.stderr).contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
        "{}",
        text(&bad_env.stderr)
    );
    let bad_listen = snakepit(&["serve", "--check-config", "--listen", "nowhere"], &[]);
    assert_eq!(bad_listen.status.code(), Some(2));
    assert!(text(&bad_listen.stderr).contains("server.listen"));

    let bad = snakepit(
        &["serve", "--check-config"],
        &[("SNAKEPIT_POOLS__DEFAULT__MAX_QUEUE_SIZE", "-3")],
    );
    assert_eq!(bad.status.code(), Some(2));
    let err = text(&bad.stderr);
    assert!(
        err.contains("max_queue_size") && err.contains("-3"),
        "{err}"
    );

    // Several overrides on one pool, typed by the key they target.
    let many = snakepit(
        &["serve", "--check-config"],
        &[
            ("SNAKEPIT_POOLS__DEFAULT__SIZE", "3"),
            ("SNAKEPIT_POOLS__DEFAULT__MAX_REQUESTS", "5"),
            ("SNAKEPIT_POOLS__DEFAULT__QUEUE_TIMEOUT_MS", "2000"),
            ("SNAKEPIT_HEALTH__AUTH_TOKEN", "1234567890123456"),
        ],
    );
    assert!(many.status.success(), "{}", text(&many.stderr));
    assert!(
        text(&many.stdout).contains("default x3"),
        "{}",
        text(&many.stdout)
    );

    // Huge values: refused with the key and the range, never a panic at run time.
    for (var, key) in [
        (
            "SNAKEPIT_POOLS__DEFAULT__QUEUE_TIMEOUT_MS",
            "queue_timeout_ms",
        ),
        (
            "SNAKEPIT_POOLS__DEFAULT__SESSIONS__CLEANUP_INTERVAL_MS",
            "cleanup_interval_ms",
        ),
    ] {
        let huge = snakepit(
            &["serve", "--check-config"],
            &[(var, "9223372036854775807")],
        );
        assert_eq!(huge.status.code(), Some(2));
        let err = text(&huge.stderr);
        assert!(err.contains(key) && err.contains("..="), "{err}");
    }

    let missing = snakepit(
        &[
            "--config",
            "/nonexistent/snakepit.toml",
            "serve",
            "--check-config",
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/snakepit.toml"));

    let unknown = snakepit(&["frobnicate"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("unrecognized subcommand 'frobnicate'"),
        "{}",
        text(&unknown.stderr)
    );

    let malformed = snakepit(&["bench", "--seconds", "soon"], &[]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        text(&malformed.stderr).contains("--seconds"),
        "{}",
        text(&malformed.stderr)
    );
}
