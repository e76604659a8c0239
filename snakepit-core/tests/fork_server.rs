//! `start_method = "fork_server"` with real Python: workers are forked from a template
//! (their parent is the keeper, not the template), share its pages, draw their own
//! random numbers, outlive a template that dies (which is started again), and a
//! template that cannot fork safely (threads) or cannot load the adapter fails the
//! pool's start once, saying why. Everything else of the pool runs on forked workers
//! when the whole suite runs with `START_METHOD_UNDER_TEST=fork_server`.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{ForkAfter, PoolConfig, Request, StartError, StartMethod};

/// A directory with `fork_test_adapter.py` holding `source`.
fn adapter_dir(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snakepit-fork-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("adapter dir");
    std::fs::write(dir.join(format!("{name}.py")), source).expect("adapter file");
    dir
}

fn forked(size: usize) -> PoolConfig {
    PoolConfig {
        start_method: StartMethod::ForkServer,
        ..test_config(size)
    }
}

/// `forked(size)` serving `class` of an adapter module `name` holding `source`; the
/// module's directory comes back for the test to remove.
fn forked_adapter(name: &str, source: &str, class: &str, size: usize) -> (PoolConfig, PathBuf) {
    let dir = adapter_dir(name, source);
    let mut cfg = forked(size);
    cfg.adapter = format!("{name}:{class}");
    cfg.python.pythonpath = vec![dir.clone()];
    (cfg, dir)
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

const RANDOM_ADAPTER: &str = r#"
import os, random, time
from snakepit_bridge import Adapter, command

LOADED_IN = os.getpid()


class Forked(Adapter):
    def __init__(self):
        super().__init__()
        self.built_in = os.getpid()

    @command
    def whoami(self, wait=0.0):
        time.sleep(wait)
        return {"pid": os.getpid(), "loaded_in": LOADED_IN, "built_in": self.built_in,
                "draw": random.random()}
"#;

async fn whoami(pool: &snakepit_core::Pool, wait: f64) -> serde_json::Value {
    let served = pool
        .execute(Request::new("whoami", json!({ "wait": wait })))
        .await
        .expect("whoami");
    served.value().expect("whoami returns JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_come_from_one_template_and_the_keeper_reaps_them() {
    let (cfg, dir) = forked_adapter("fork_random", RANDOM_ADAPTER, "Forked", 3);
    let pool = start(cfg).await;
    let stats = pool.stats();
    assert_eq!(stats.start_method, StartMethod::ForkServer);
    let template = stats.template.clone().expect("template stats");
    assert!(template.ready && template.pid != 0, "{template:?}");
    let keeper = parent_of(template.pid);
    let pids = pids(&pool);
    assert_eq!(pids.len(), 3);
    for pid in &pids {
        // Forked twice: the middle process left, so the keeper (not the template) is
        // the parent, and a template that dies takes no worker with it.
        assert_eq!(parent_of(*pid), keeper, "parent of worker {pid}");
    }
    // One call per worker at once (each waits, so each lands on its own worker): each
    // answers from its own process, with the module the template imported
    // (fork_after = "import": the adapter itself was built in the worker), and its
    // first random draw is its own (re-seeded after the fork; the same seed in every
    // worker would give the same first draw).
    let answers = futures_util::future::join_all((0..3).map(|_| whoami(&pool, 0.5))).await;
    let mut seen_pids = HashSet::new();
    let mut draws = HashSet::new();
    for me in &answers {
        assert_eq!(me["loaded_in"], json!(template.pid), "{me}");
        assert_eq!(me["built_in"], me["pid"], "{me}");
        seen_pids.insert(me["pid"].as_u64().unwrap_or(0) as u32);
        draws.insert(me["draw"].to_string());
    }
    assert_eq!(seen_pids, pids.iter().copied().collect(), "{answers:?}");
    assert_eq!(draws.len(), 3, "workers drew the same numbers: {answers:?}");
    // PSS and USS are measured beside RSS, and shared pages make PSS < RSS.
    eventually(LONG, "memory measured", || {
        let s = pool.stats();
        s.workers.iter().all(|w| w.pss_bytes > 0 && w.uss_bytes > 0)
            && s.template.as_ref().is_some_and(|t| t.pss_bytes > 0)
    })
    .await;
    for w in pool.stats().workers {
        assert!(
            w.uss_bytes < w.pss_bytes && w.pss_bytes < w.rss_bytes,
            "{w:?}"
        );
    }
    pool.shutdown(Duration::from_secs(5)).await;
    // The keeper was waited for; the template (its child, SIGTERMed with it) may take
    // a moment more to be gone.
    let all: Vec<u32> = pids.iter().copied().chain([template.pid, keeper]).collect();
    eventually(
        Duration::from_secs(5),
        "every process of the pool gone",
        || all.iter().all(|p| !alive(*p)),
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_after_init_builds_the_adapter_once_in_the_template() {
    let (mut cfg, dir) = forked_adapter(
        "fork_init",
        &RANDOM_ADAPTER.replace("Forked", "Built"),
        "Built",
        2,
    );
    cfg.fork_after = ForkAfter::Init;
    let pool = start(cfg).await;
    let template = pool.stats().template.expect("template").pid;
    let me = whoami(&pool, 0.0).await;
    assert_eq!(me["built_in"], json!(template), "{me}");
    assert_ne!(me["pid"], json!(template), "{me}");
    pool.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_dies_is_restarted_and_its_workers_serve_on() {
    let (cfg, dir) = forked_adapter("fork_restart", RANDOM_ADAPTER, "Forked", 2);
    let pool = start(cfg).await;
    let before = pids(&pool);
    let old = pool.stats().template.expect("template");
    // SAFETY: kill(2) of the template this test's pool started.
    unsafe { libc::kill(old.pid as i32, libc::SIGKILL) };
    eventually(LONG, "a new template", || {
        pool.stats()
            .template
            .is_some_and(|t| t.ready && t.pid != old.pid && t.restarts == 1)
    })
    .await;
    // The workers forked from the old one never noticed.
    assert_eq!(pids(&pool), before);
    for _ in 0..4 {
        let me = whoami(&pool, 0.0).await;
        assert_eq!(me["loaded_in"], json!(old.pid), "{me}");
    }
    // And a worker that dies now comes from the new template.
    let new_template = pool.stats().template.expect("template").pid;
    for victim in before.clone() {
        // SAFETY: kill(2) of a worker this test's pool started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    }
    eventually(LONG, "replacement workers", || {
        let now = pids(&pool);
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    })
    .await;
    let me = whoami(&pool, 0.0).await;
    assert_eq!(me["loaded_in"], json!(new_template), "{me}");
    assert_eq!(
        parent_of(me["pid"].as_u64().unwrap_or(0) as u32),
        parent_of(new_template)
    );
    pool.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_that_dies_takes_its_workers_and_the_pool_starts_a_new_one() {
    let pool = start(forked(2)).await;
    let before = pids(&pool);
    let old = pool.stats().template.expect("template");
    let keeper = parent_of(old.pid);
    // SAFETY: kill(2) of the keeper this test's pool started.
    unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
    // Its template and workers die with it (PR_SET_PDEATHSIG); the pool starts a new
    // keeper and forks new workers from its template.
    eventually(LONG, "a new keeper, template and workers", || {
        let s = pool.stats();
        let t = s.template.clone().unwrap_or_else(|| old.clone());
        let now: Vec<u32> = s.workers.iter().map(|w| w.pid).collect();
        t.ready
            && t.pid != old.pid
            && s.ready_workers == 2
            && now.iter().all(|p| !before.contains(p))
    })
    .await;
    for pid in before.iter().chain([&old.pid, &keeper]) {
        assert!(!alive(*pid), "{pid} outlived its keeper");
    }
    let new_keeper = parent_of(pool.stats().template.expect("template").pid);
    assert_ne!(new_keeper, keeper);
    for w in pids(&pool) {
        assert_eq!(parent_of(w), new_keeper);
    }
    pool.execute(Request::new("ping", json!({})))
        .await
        .expect("served after the keeper died");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_threads_is_refused_with_their_names() {
    let (cfg, dir) = forked_adapter("fork_threads", "import threading, time\nfrom snakepit_bridge.example import ExampleAdapter\n\
         threading.Thread(target=time.sleep, args=(3600,), name='model-prefetch', daemon=True).start()\n\
         class Threaded(ExampleAdapter):\n    \
         pass\n", "Threaded", 2);
    let err = snakepit_core::Pool::start(cfg, snakepit_core::EventBus::default())
        .await
        .expect_err("a threaded template must not fork");
    let StartError::ForkServer { message, .. } = &err else {
        panic!("expected StartError::ForkServer, got {err:?}");
    };
    for needle in [
        "model-prefetch",
        "single-threaded",
        "start_method = \"spawn\"",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_fails_to_import_fails_the_start_once_with_its_traceback() {
    let (cfg, dir) = forked_adapter(
        "fork_broken",
        "raise RuntimeError('model file missing: /models/x.bin')\n",
        "Nope",
        4,
    );
    let err = snakepit_core::Pool::start(cfg, snakepit_core::EventBus::default())
        .await
        .expect_err("a broken adapter fails the start");
    let text = err.to_string();
    assert!(matches!(err, StartError::ForkServer { .. }), "{err:?}");
    assert!(text.contains("model file missing: /models/x.bin"), "{text}");
    assert!(text.contains("Traceback"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn preload_names_are_checked() {
    let mut cfg = forked(1);
    cfg.preload = vec!["numpy".into(), "os.path".into()];
    assert!(cfg.validate().is_ok());
    cfg.preload = vec!["numpy; import os".into()];
    let err = cfg.validate().expect_err("not a module name");
    assert_eq!(err.key, "pools.default.preload");
}
