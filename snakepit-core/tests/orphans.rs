//! No orphans: a process running a pool is SIGKILLed; 2 s later none of its Python
//! workers may survive — not even one stuck in C code that holds the GIL (a
//! backtracking regex), where no Python thread can run to notice the pool is gone.
//! The test binary is its own child: run with `--child` it starts a pool, sets one
//! worker on the regex, prints the workers' pids and waits to be killed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::alive;

fn main() {
    if std::env::args().any(|a| a == "--child") {
        child();
        return;
    }
    // `cargo test -- <filter>` passes a filter; honour it like a normal harness would.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter
        .as_deref()
        .is_some_and(|f| !"no_worker_survives_a_sigkilled_pool".contains(f))
    {
        println!("running 0 tests");
        return;
    }
    println!("test no_worker_survives_a_sigkilled_pool ...");
    no_worker_survives_a_sigkilled_pool();
    println!("test no_worker_survives_a_sigkilled_pool ... ok");
}

fn child() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("snakepit-orphans-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let adapter = "import re\nfrom snakepit_bridge.example import ExampleAdapter\nfrom snakepit_bridge import command\n\n\nclass Stuck(ExampleAdapter):\n    @command\n    def stuck_regex(self):\n        return bool(re.match(r\"(a+)+$\", \"a\" * 64 + \"b\"))\n";
        if let Err(e) = std::fs::write(dir.join("orphan_adapter.py"), adapter) {
            panic!("cannot write the adapter: {e}");
        }
        let mut cfg = common::test_config(3);
        cfg.adapter = "orphan_adapter:Stuck".into();
        cfg.python.pythonpath = vec![dir.clone()];
        // No deadline: only the pool's death may end this call.
        cfg.request_timeout_ms = 0;
        let pool = common::start(cfg).await;
        let stuck = pool.clone();
        tokio::spawn(async move {
            let _ = stuck
                .execute(snakepit_core::Request::new("stuck_regex", serde_json::json!({})))
                .await;
        });
        while pool.stats().busy_workers < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pids: Vec<String> = pool
            .stats()
            .workers
            .iter()
            .map(|w| w.pid.to_string())
            .collect();
        println!("RUN {} PIDS {}", pool.run_id(), pids.join(","));
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// Every process whose command line carries `run_id`.
fn processes_of_run(run_id: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&format!("--run-id {run_id}")) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

fn no_worker_survives_a_sigkilled_pool() {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => panic!("current_exe: {e}"),
    };
    let mut child = match Command::new(exe)
        .arg("--child")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot start child: {e}"),
    };
    let stdout = child.stdout.take().map(BufReader::new);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    if let Some(mut out) = stdout {
        while !line.starts_with("RUN ") {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 || Instant::now() > deadline {
                let _ = child.kill();
                panic!("child exited or stalled before its pool was ready");
            }
        }
    }
    let mut parts = line.split_whitespace();
    let run_id = parts.nth(1).unwrap_or_default().to_string();
    let pids: Vec<u32> = parts
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "child reported {line:?}");
    // With the fork server, its keeper and template carry the run id too (and the
    // forked workers their command line).
    let of_run = processes_of_run(&run_id);
    let expected = match common::test_start_method() {
        snakepit_core::StartMethod::Spawn => 3,
        snakepit_core::StartMethod::ForkServer => 5,
    };
    assert_eq!(
        of_run.len(),
        expected,
        "processes findable by run id: {of_run:?}"
    );
    assert!(
        pids.iter().all(|p| of_run.contains(p)),
        "workers {pids:?} findable by run id among {of_run:?}"
    );
    for pid in &pids {
        assert!(
            alive(*pid),
            "worker {pid} should be running before the kill"
        );
    }

    let _ = child.kill(); // SIGKILL: no destructor, no shutdown code runs in the child
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("snakepit-orphans-{}", child.id())),
    );
    std::thread::sleep(Duration::from_secs(2));

    let survivors: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    let leftovers = processes_of_run(&run_id);
    for pid in survivors.iter().chain(&leftovers) {
        // SAFETY: kill(2) of processes this test started, to leave nothing behind.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(
        survivors.is_empty(),
        "workers outlived their pool by 2 s: {survivors:?}"
    );
    assert!(
        leftovers.is_empty(),
        "processes of run {run_id} remain: {leftovers:?}"
    );
}
