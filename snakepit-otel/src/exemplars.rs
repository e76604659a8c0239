//! [`ExemplarStore`]: per pool, command and duration bucket, the trace id of a recent
//! sampled request, kept by the metrics layer for the OpenMetrics exposition (see
//! `openmetrics.rs`, which renders them; the SDK cannot collect exemplars yet).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use snakepit_core::sync;

/// The seed's request-duration buckets, in seconds: defined here, beside the exemplar
/// store that keeps one exemplar per bucket, and used by `metrics` for its histograms.
pub const REQUEST_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// An exemplar younger than this is not replaced (bounds the cost of capturing them).
const REFRESH: Duration = Duration::from_secs(5);

/// One sampled request, pointing from a histogram bucket to its trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// The trace, as 32 hex digits.
    pub trace_id: String,
    /// The request span, as 16 hex digits.
    pub span_id: String,
    /// The observed duration, seconds.
    pub value: f64,
    /// When it was observed.
    pub at: SystemTime,
}

pub(crate) type Buckets = [Option<Exemplar>; REQUEST_BUCKETS.len() + 1];

/// Recent exemplars per (pool, command) and bucket.
#[derive(Debug, Default)]
pub struct ExemplarStore {
    map: Mutex<HashMap<(String, String), Buckets>>,
}

fn bucket_index(value: f64) -> usize {
    REQUEST_BUCKETS
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(REQUEST_BUCKETS.len())
}

impl ExemplarStore {
    /// True when the bucket `value` falls in has no fresh exemplar (worth a span lookup).
    pub fn wants(&self, pool: &str, command: &str, value: f64) -> bool {
        let map = sync::lock(&self.map);
        let fresh = map
            .get(&(pool.to_string(), command.to_string()))
            .and_then(|b| b[bucket_index(value)].as_ref())
            .is_some_and(|e| e.at.elapsed().unwrap_or(Duration::MAX) < REFRESH);
        !fresh
    }

    /// Keep `exemplar` for its bucket of (`pool`, `command`), replacing the one before.
    pub fn record(&self, pool: &str, command: &str, exemplar: Exemplar) {
        let mut map = sync::lock(&self.map);
        let buckets = map
            .entry((pool.to_string(), command.to_string()))
            .or_default();
        let index = bucket_index(exemplar.value);
        buckets[index] = Some(exemplar);
    }

    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn get(&self, pool: &str, command: &str) -> Option<Buckets> {
        let map = sync::lock(&self.map);
        map.get(&(pool.to_string(), command.to_string())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_seed_boundaries() {
        assert_eq!(bucket_index(0.0005), 0);
        assert_eq!(bucket_index(0.001), 0);
        assert_eq!(bucket_index(0.002), 1);
        assert_eq!(bucket_index(7.0), 8);
        assert_eq!(bucket_index(11.0), 9);
    }

    #[test]
    fn fresh_exemplars_are_kept_stale_ones_replaced() {
        let store = ExemplarStore::default();
        assert!(store.wants("p", "c", 0.002));
        store.record(
            "p",
            "c",
            Exemplar {
                trace_id: "t".into(),
                span_id: "s".into(),
                value: 0.002,
                at: SystemTime::now(),
            },
        );
        assert!(!store.wants("p", "c", 0.003), "same bucket, fresh");
        assert!(store.wants("p", "c", 0.3), "other bucket");
        store.record(
            "p",
            "c",
            Exemplar {
                trace_id: "old".into(),
                span_id: "s".into(),
                value: 0.002,
                at: SystemTime::now() - REFRESH * 2,
            },
        );
        assert!(store.wants("p", "c", 0.002), "stale");
    }
}
