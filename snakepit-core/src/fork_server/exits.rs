//! Exit statuses of forked workers, by pid. A forked worker is the keeper's child, not
//! the pool's, so the keeper reaps it and reports how it ended; this board hands each
//! report to the `WorkerProcess` waiting for it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ExitInfo;
use crate::sync;

/// Reports kept for a pid nobody watches yet (a worker that died before its fork
/// reply was read), and for how long.
const EARLY_KEPT: usize = 64;
const EARLY_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct ExitBoard {
    inner: Mutex<Board>,
}

#[derive(Default)]
struct Board {
    watched: HashMap<u32, watch::Sender<Option<ExitInfo>>>,
    early: VecDeque<(u32, ExitInfo, Instant)>,
}

impl ExitBoard {
    /// A watch that gets `pid`'s exit (at once, if it was reported already).
    pub fn watch(&self, pid: u32) -> watch::Receiver<Option<ExitInfo>> {
        let mut board = sync::lock(&self.inner);
        board.early.retain(|(_, _, at)| at.elapsed() < EARLY_FOR);
        // A report for a pid that runs now is an earlier process's (the keeper also
        // reaps workers' orphaned children, and pids are reused): not this one's.
        if let Some(i) = board
            .early
            .iter()
            .position(|(p, _, _)| *p == pid && !crate::memory::running(pid))
        {
            let (_, info, _) =
                board
                    .early
                    .remove(i)
                    .unwrap_or((pid, ExitInfo::LOST, Instant::now()));
            return watch::channel(Some(info)).1;
        }
        let (tx, rx) = watch::channel(None);
        board.watched.insert(pid, tx);
        rx
    }

    /// The keeper reaped `pid`.
    pub fn report(&self, pid: u32, info: ExitInfo) {
        let mut board = sync::lock(&self.inner);
        match board.watched.remove(&pid) {
            Some(tx) => {
                tx.send_replace(Some(info));
            }
            None => {
                if board.early.len() >= EARLY_KEPT {
                    board.early.pop_front();
                }
                board.early.push_back((pid, info, Instant::now()));
            }
        }
    }

    /// The keeper is gone, and every worker with it (they die with it by
    /// `PR_SET_PDEATHSIG`): nobody will report their exits any more.
    pub fn all_lost(&self) {
        let mut board = sync::lock(&self.inner);
        for (_, tx) in board.watched.drain() {
            tx.send_replace(Some(ExitInfo::LOST));
        }
        board.early.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above any pid_max: no process runs with these pids.
    const BIG: u32 = 0x7fff_0000;

    #[test]
    fn reports_reach_watchers_before_and_after() {
        let board = ExitBoard::default();
        let rx = board.watch(BIG);
        assert_eq!(*rx.borrow(), None);
        let exit = ExitInfo {
            code: Some(3),
            signal: None,
        };
        board.report(BIG, exit);
        assert_eq!(*rx.borrow(), Some(exit));
        // Reported before anyone watched: kept for the watcher.
        board.report(BIG + 1, exit);
        assert_eq!(*board.watch(BIG + 1).borrow(), Some(exit));
        // Each report is handed out once.
        assert_eq!(*board.watch(BIG + 1).borrow(), None);
        let rx12 = board.watch(BIG + 2);
        board.all_lost();
        assert_eq!(*rx12.borrow(), Some(ExitInfo::LOST));
    }

    #[test]
    fn early_reports_are_bounded() {
        let board = ExitBoard::default();
        let exit = ExitInfo {
            code: Some(0),
            signal: None,
        };
        for pid in BIG..BIG + 1000 {
            board.report(pid, exit);
        }
        assert_eq!(sync::lock(&board.inner).early.len(), EARLY_KEPT);
    }
}
