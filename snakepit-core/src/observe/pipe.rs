//! The telemetry pipe's reader: one task per worker, one JSON line per record, each
//! handed to the part of the pool it is for. Lines are capped at 64 KiB (the rest of
//! a longer one is cut, and the line refused); the worker bounds what it queues.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::BufReader;

use super::python_logs::{self, Record};
use super::user_metrics::Batch;
use super::PoolObserved;
use crate::process::read_line_capped;

/// One line of the telemetry pipe.
#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Line {
    /// A record of Python's `logging`.
    Log(Box<Record>),
    /// Records the worker dropped since its last such line.
    Dropped { logs: u64 },
    /// User metrics changed since the worker's last batch.
    Metrics(Box<Batch>),
}

/// Read one worker's telemetry pipe until the worker closes it (it exited).
pub(crate) async fn read(
    pipe: tokio::net::unix::pipe::Receiver,
    worker_id: Arc<str>,
    pool: Arc<str>,
    observed: Arc<PoolObserved>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    while let Some(line) = read_line_capped(&mut reader).await {
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Log(record)) => {
                observed.logs.records.fetch_add(1, Ordering::Relaxed);
                python_logs::emit(&worker_id, &pool, &record);
            }
            Ok(Line::Dropped { logs }) => {
                observed.logs.dropped.fetch_add(logs, Ordering::Relaxed);
            }
            Ok(Line::Metrics(batch)) => observed.metrics.apply(&worker_id, *batch),
            Err(e) => {
                // Not a record (an over-long line was cut, or a bridge of another
                // version): counted with the dropped log records.
                observed.logs.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "snakepit::python", worker_id = %worker_id, pool = %pool,
                    "a telemetry line from the worker is not a record: {e}");
            }
        }
    }
    observed.metrics.forget_worker(&worker_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_records_drop_counts_or_metric_batches() {
        let log: Line = serde_json::from_str(
            r#"{"t":"log","level":30,"levelname":"WARNING","logger":"bars.user","msg":"hi","line":3,"request_id":"r1","extra":1}"#,
        )
        .unwrap();
        assert!(matches!(log, Line::Log(_)));
        assert!(matches!(
            serde_json::from_str::<Line>(r#"{"t":"dropped","logs":7}"#).unwrap(),
            Line::Dropped { logs: 7 }
        ));
        assert!(matches!(
            serde_json::from_str::<Line>(
                r#"{"t":"metrics","defs":[{"name":"n","kind":"counter","help":"","unit":""}],"c":[["n",{"m":"a"},2.0]],"h":[],"g":[]}"#
            )
            .unwrap(),
            Line::Metrics(_)
        ));
        assert!(serde_json::from_str::<Line>(r#"{"t":"other"}"#).is_err());
    }
}
