//! A fresh install: the binary alone (bridge sources taken from the copy compiled into
//! it), no venv yet. The first `snakepit exec` creates the workers' environment with
//! visible progress; the second reuses it silently.

use std::process::Command;

use snakepit_e2e::TempDir;

#[test]
fn first_run_bootstraps_the_environment_with_progress_then_reuses_it() {
    let home = TempDir::new("bootstrap");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_snakepit"))
            .args(["exec", "echo", "--args", r#"{"fresh": true}"#])
            .env("SNAKEPIT_BRIDGE_SOURCE", "embedded")
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("SNAKEPIT_VENV", home.path().join("venv"))
            .env_remove("SNAKEPIT_PYTHON")
            .output()
            .expect("run snakepit")
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        r#"{"fresh":true}"#
    );
    assert!(
        stderr.contains("[1/2] creating the workers' Python environment"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[2/2] installing snakepit_bridge[otel]"),
        "{stderr}"
    );
    assert!(home.path().join("venv/bin/python").exists());
    let extracted = std::fs::read_dir(home.path().join("cache/snakepit"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("bridge-"));
    assert!(extracted, "the embedded bridge was extracted to the cache");

    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        !stderr.contains("[1/2]") && !stderr.contains("[2/2]"),
        "reused: {stderr}"
    );
}
