//! Process figures for the detailed report, read from /proc (Linux).

use std::time::Instant;

use serde::Serialize;
use snakepit_core::Pool;

/// Process figures for `/health/detailed` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct SystemStats {
    /// This (Rust) process.
    pub rss_bytes: u64,
    /// All workers of all pools, as last measured (shared pages counted in each).
    pub workers_rss_bytes: u64,
    /// The PSS of every pool's workers and fork-server templates: the memory they
    /// really hold together (shared pages counted once).
    pub workers_pss_bytes: u64,
    /// Since the health state was made.
    pub uptime_seconds: f64,
    /// Open file descriptors of this process.
    pub open_fds: usize,
    /// Threads of this process.
    pub threads: usize,
    /// This process's id.
    pub pid: u32,
}

/// A numeric field of /proc/self/status (`VmRSS:  1234 kB` → 1234).
fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Measure now (`started`: when the service started; `pools`: whose workers to add up).
pub fn sample(started: Instant, pools: &[Pool]) -> SystemStats {
    let stats: Vec<_> = pools.iter().map(Pool::stats).collect();
    SystemStats {
        rss_bytes: status_field("VmRSS:") * 1024,
        workers_rss_bytes: stats
            .iter()
            .flat_map(|s| &s.workers)
            .map(|w| w.rss_bytes)
            .sum(),
        workers_pss_bytes: stats.iter().map(|s| s.total_pss_bytes()).sum(),
        uptime_seconds: started.elapsed().as_secs_f64(),
        open_fds: open_fds(),
        threads: status_field("Threads:") as usize,
        pid: std::process::id(),
    }
}
