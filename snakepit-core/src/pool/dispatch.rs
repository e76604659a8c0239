//! Handing jobs to workers: the most recently idle worker first (LIFO), else a FIFO
//! queue that workers drain as they finish.
//!
//! LIFO matters: a worker that just finished is warm (its process and threads are
//! awake, its caches hot). Rotating through idle workers instead measured 2.5× the
//! latency of a bare client at one request in flight on four workers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::job::Job;

struct Idle {
    worker_id: Arc<str>,
    tx: mpsc::UnboundedSender<Job>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Idle workers; the last pushed is the warmest.
    idle: Vec<Idle>,
}

#[derive(Default)]
pub(crate) struct Dispatcher {
    state: Mutex<State>,
}

impl Dispatcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Give `job` to the warmest idle worker, or queue it.
    pub fn submit(&self, mut job: Job) {
        let mut state = self.lock();
        while let Some(idle) = state.idle.pop() {
            match idle.tx.send(job) {
                Ok(()) => return,
                Err(returned) => job = returned.0, // that worker is gone; try the next
            }
        }
        state.queue.push_back(job);
    }

    /// Worker side: the oldest queued job, or else register as idle; the next job
    /// then arrives on `tx`.
    pub fn next_or_idle(
        &self,
        worker_id: &Arc<str>,
        tx: &mpsc::UnboundedSender<Job>,
    ) -> Option<Job> {
        let mut state = self.lock();
        if let Some(job) = state.queue.pop_front() {
            return Some(job);
        }
        state.idle.push(Idle {
            worker_id: worker_id.clone(),
            tx: tx.clone(),
        });
        None
    }

    /// The worker stopped waiting (it got a job, or is leaving).
    pub fn leave_idle(&self, worker_id: &Arc<str>) {
        self.lock().idle.retain(|i| &i.worker_id != worker_id);
    }

    /// Everything still queued (shutdown).
    pub fn drain(&self) -> Vec<Job> {
        self.lock().queue.drain(..).collect()
    }
}
