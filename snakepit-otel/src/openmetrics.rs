//! OpenMetrics text exposition with exemplars on the request-duration histogram, so an
//! operator can jump from a slow bucket to a trace.
//!
//! Neither crate in the chain can do this: the OpenTelemetry Rust SDK (0.33) does not
//! collect exemplars yet (open-telemetry/opentelemetry-rust#3369) and the `prometheus`
//! crate cannot encode them (tikv/rust-prometheus#393). So the metrics layer keeps, per
//! pool, command and bucket, the trace id of a recent sampled request
//! ([`ExemplarStore`], in `exemplars.rs`), and this module renders the registry's families as OpenMetrics
//! with those exemplars attached. The classic text format stays the default; a scraper
//! asking for `application/openmetrics-text` gets this one.

use std::fmt::Write;
use std::time::UNIX_EPOCH;

use prometheus::proto::{LabelPair, MetricFamily, MetricType};

pub use crate::exemplars::{Exemplar, ExemplarStore, REQUEST_BUCKETS};

/// The content type of this exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The histogram that carries exemplars.
const EXEMPLAR_FAMILY: &str = "snakepit_request_duration_seconds";
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
