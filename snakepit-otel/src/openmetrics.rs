//! OpenMetrics text exposition with exemplars on the request-duration histogram, so an
//! operator can jump from a slow bucket to a trace.
//!
//! Neither crate in the chain can do this: the OpenTelemetry Rust SDK (0.33) does not
//! collect exemplars yet (open-telemetry/opentelemetry-rust#3369) and the `prometheus`
//! crate cannot encode them (tikv/rust-prometheus#393). So the metrics layer keeps, per
//! pool, command and bucket, the trace id of a recent sampled request
//! ([`ExemplarStore`]), and this module renders the registry's families as OpenMetrics
//! with those exemplars attached. The classic text format stays the default; a scraper
//! asking for `application/openmetrics-text` gets this one.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use snakepit_core::sync;

/// The seed's request-duration buckets, in seconds: defined here, beside the exemplar
/// store that keeps one exemplar per bucket, and used by `metrics` for its histograms.
pub const REQUEST_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// The content type of this exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The histogram that carries exemplars.
const EXEMPLAR_FAMILY: &str = "snakepit_request_duration_seconds";
/// An exemplar younger than this is not replaced (bounds the cost of capturing them).
const REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub trace_id: String,
    pub span_id: String,
    pub value: f64,
    pub at: SystemTime,
}

type Buckets = [Option<Exemplar>; REQUEST_BUCKETS.len() + 1];

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

    pub fn record(&self, pool: &str, command: &str, exemplar: Exemplar) {
        let mut map = sync::lock(&self.map);
        let buckets = map
            .entry((pool.to_string(), command.to_string()))
            .or_default();
        let index = bucket_index(exemplar.value);
        buckets[index] = Some(exemplar);
    }

    fn get(&self, pool: &str, command: &str) -> Option<Buckets> {
        let map = sync::lock(&self.map);
        map.get(&(pool.to_string(), command.to_string())).cloned()
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

fn labels(pairs: &[LabelPair], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = pairs
        .iter()
        .map(|l| format!("{}=\"{}\"", l.name(), escape(l.value())))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

fn label<'a>(pairs: &'a [LabelPair], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// Render `families` as OpenMetrics, exemplars from `store` on the duration buckets.
pub fn render(families: &[MetricFamily], store: &ExemplarStore) -> String {
    let mut out = String::with_capacity(32 * 1024);
    for family in families {
        let name = family.name();
        let kind = family.get_field_type();
        // OpenMetrics names a counter family without `_total`; its samples keep it.
        let family_name = match kind {
            MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let type_name = match kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "unknown",
        };
        let _ = writeln!(out, "# TYPE {family_name} {type_name}");
        if !family.help().is_empty() {
            let _ = writeln!(out, "# HELP {family_name} {}", escape(family.help()));
        }
        for metric in family.get_metric() {
            let pairs = metric.get_label();
            match kind {
                MetricType::COUNTER => {
                    let _ = writeln!(
                        out,
                        "{family_name}_total{} {}",
                        labels(pairs, None),
                        number(metric.get_counter().get_value())
                    );
                }
                MetricType::GAUGE => {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        labels(pairs, None),
                        number(metric.get_gauge().get_value())
                    );
                }
                MetricType::HISTOGRAM => {
                    let h = metric.get_histogram();
                    let exemplars = (name == EXEMPLAR_FAMILY)
                        .then(|| store.get(label(pairs, "pool_name"), label(pairs, "command")))
                        .flatten();
                    let mut saw_inf = false;
                    for (i, bucket) in h.get_bucket().iter().enumerate() {
                        let le = bucket.upper_bound();
                        saw_inf |= le.is_infinite();
                        let _ = write!(
                            out,
                            "{name}_bucket{} {}",
                            labels(pairs, Some(("le", number(le)))),
                            bucket.cumulative_count()
                        );
                        if let Some(e) = exemplars
                            .as_ref()
                            .and_then(|b| b.get(i))
                            .and_then(Option::as_ref)
                        {
                            let ts =
                                e.at.duration_since(UNIX_EPOCH)
                                    .unwrap_or_default()
                                    .as_secs_f64();
                            let _ = write!(
                                out,
                                " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {ts:.3}",
                                e.trace_id,
                                e.span_id,
                                number(e.value)
                            );
                        }
                        out.push('\n');
                    }
                    if !saw_inf {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {}",
                            labels(pairs, Some(("le", "+Inf".into()))),
                            h.get_sample_count()
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        labels(pairs, None),
                        number(h.get_sample_sum())
                    );
                    let _ = writeln!(
                        out,
                        "{name}_count{} {}",
                        labels(pairs, None),
                        h.get_sample_count()
                    );
                }
                MetricType::SUMMARY | MetricType::UNTYPED => {
                    // Never produced by the OpenTelemetry bridge; nothing to render.
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
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
