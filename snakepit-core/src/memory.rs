//! How much memory a worker process holds, read from `/proc` (measured by us, not
//! reported by the worker).
//!
//! RSS counts every resident page, so N processes forked from one template that share
//! a 200 MB model each "use" 200 MB and the pool seems to use N × 200 MB. PSS divides
//! each shared page among the processes that map it (the sum over processes is the real
//! total); USS is the pages only this process holds — what killing it frees, and so
//! what `max_memory_mb` recycles forked workers on.

/// One process's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MemoryUsage {
    pub rss: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss: u64,
    /// Unique set size: private pages (clean and dirty).
    pub uss: u64,
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub(crate) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// RSS, PSS and USS from `/proc/<pid>/smaps_rollup` (one page-table walk: tens to
/// hundreds of µs for a large process, so it runs in the monitor, never on a request).
pub(crate) fn usage(pid: u32) -> Option<MemoryUsage> {
    if pid == 0 {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(text) => parse_rollup(&text),
        // No smaps_rollup (a kernel before 4.14, or a sandbox that hides it): RSS from
        // statm still drives max_memory_mb; PSS and USS stay unknown (0).
        Err(_) => rss_from_statm(pid).map(|rss| MemoryUsage {
            rss,
            ..MemoryUsage::default()
        }),
    }
}

/// Resident set size from `/proc/<pid>/statm`.
fn rss_from_statm(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

fn parse_rollup(text: &str) -> Option<MemoryUsage> {
    let mut usage = MemoryUsage::default();
    let mut seen_rss = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> Option<u64> { rest.trim().strip_suffix("kB")?.trim().parse().ok() };
        match key {
            "Rss" => {
                usage.rss = kib()? * 1024;
                seen_rss = true;
            }
            "Pss" => usage.pss = kib()? * 1024,
            "Private_Clean" | "Private_Dirty" => usage.uss += kib()? * 1024,
            _ => {}
        }
    }
    seen_rss.then_some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_is_parsed() {
        let text = "55d0c0de0000-7ffc0de00000 ---p 00000000 00:00 0  [rollup]\n\
                    Rss:              204800 kB\nPss:               40960 kB\n\
                    Pss_Anon:          30000 kB\nShared_Clean:     100000 kB\n\
                    Private_Clean:      1024 kB\nPrivate_Dirty:      2048 kB\n";
        assert_eq!(
            parse_rollup(text),
            Some(MemoryUsage {
                rss: 204800 * 1024,
                pss: 40960 * 1024,
                uss: 3072 * 1024,
            })
        );
        assert_eq!(parse_rollup("garbage"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let own = usage(std::process::id()).expect("smaps_rollup of this process");
        assert!(own.rss > 0 && own.pss > 0 && own.uss > 0, "{own:?}");
        assert!(own.uss <= own.pss && own.pss <= own.rss, "{own:?}");
        assert_eq!(usage(0), None);
    }
}
