//! Timing callers for the benches: `drive` runs `concurrency` caller tasks in a loop for
//! a while and returns every call's latency, the wall time and this process's CPU time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Sample {
    pub micros: Vec<u32>,
    pub elapsed: Duration,
    pub errors: usize,
    /// CPU time this (Rust) process spent, user + system: less noisy than wall time.
    pub cpu: Duration,
}

pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; no other preconditions.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

impl Sample {
    pub fn merge(&mut self, other: Sample) {
        self.micros.extend(other.micros);
        self.elapsed += other.elapsed;
        self.errors += other.errors;
        self.cpu += other.cpu;
    }
    pub fn cpu_per_call_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.micros.len().max(1) as f64
    }
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        self.micros.sort_unstable();
        let i = ((self.micros.len() - 1) as f64 * p).round() as usize;
        self.micros[i] as f64
    }
    pub fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` callers loop for `duration`, each call timed; `call(i)` is caller i's
/// next call and says whether it succeeded.
pub async fn drive<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let cpu_start = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut micros, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(i).await {
                    micros.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (micros, errors)
        }));
    }
    let mut sample = Sample::default();
    for t in tasks {
        if let Ok((m, e)) = t.await {
            sample.micros.extend(m);
            sample.errors += e;
        }
    }
    sample.elapsed = start.elapsed();
    sample.cpu = process_cpu().saturating_sub(cpu_start);
    sample
}
