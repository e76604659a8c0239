//! User metrics from the workers' `snakepit_bridge.metrics`, aggregated per pool.
//!
//! Each worker ships what changed since its last batch (counter and histogram deltas,
//! gauge values) once a second on its telemetry pipe. The pool adds the deltas into
//! its own totals, so a counter never goes backwards when a worker dies or is
//! replaced (the dead worker's totals stay in); gauges are kept per worker and leave
//! with it. Everything arriving is checked again here (names, kinds, buckets, amounts)
//! and capped — at most [`MAX_METRICS`] names per pool, [`MAX_LABEL_VALUES`] values per
//! label (more share [`OVERFLOW_VALUE`], as the `command` label does), values cut to
//! [`MAX_VALUE_LEN`] — so a worker cannot grow the pool's memory or its series without
//! bound. What is refused is counted ([`UserMetrics::refused`]) and said once per name.
//!
//! Exporters read the totals ([`UserMetrics::series`]) at collection time; histograms
//! can also be followed batch by batch through a [`UserMetricSink`] (the OpenTelemetry
//! SDK has no way to take a pre-aggregated histogram, so snakepit-otel replays each
//! batch into one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::sync;

/// Metric names per pool; more are refused.
pub const MAX_METRICS: usize = 200;
/// Distinct values of one label of one metric; more share [`OVERFLOW_VALUE`].
pub const MAX_LABEL_VALUES: usize = 100;
/// Labels per metric; a label set with more is refused.
pub const MAX_LABELS: usize = 8;
/// Longest label value kept.
pub const MAX_VALUE_LEN: usize = 100;
/// Longest metric or label name.
pub const MAX_NAME_LEN: usize = 64;
/// Most buckets of a histogram.
pub const MAX_BUCKETS: usize = 64;
/// The label value shared by values beyond [`MAX_LABEL_VALUES`].
pub const OVERFLOW_VALUE: &str = "__other__";
/// Label names the pool sets itself.
const RESERVED_LABELS: [&str; 2] = ["pool_name", "worker_id"];

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserMetricKind {
    /// Only goes up; summed over the pool's workers.
    Counter,
    /// Goes up and down; one series per worker.
    Gauge,
    /// A distribution over fixed buckets; summed over the pool's workers.
    Histogram,
}

/// A metric as its worker declared it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserMetricDef {
    /// Its name, without the exporters' prefix.
    pub name: String,
    /// Its kind.
    pub kind: UserMetricKind,
    /// Its description.
    #[serde(default, rename = "help")]
    pub description: String,
    /// Its unit (UCUM, e.g. `s`, `By`), or empty.
    #[serde(default)]
    pub unit: String,
    /// A histogram's bucket upper bounds (the last bucket, to +Inf, is implied).
    #[serde(default)]
    pub buckets: Vec<f64>,
}

/// Label pairs, sorted by name.
pub type Labels = Vec<(String, String)>;

/// A histogram's observations: one worker's batch, or the pool's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramData {
    /// Observations per bucket (`buckets.len() + 1` of them).
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Smallest observation.
    pub min: f64,
    /// Largest observation.
    pub max: f64,
}

impl HistogramData {
    fn merge(&mut self, other: &HistogramData) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One series' current value.
#[derive(Debug, Clone, PartialEq)]
pub enum UserValue {
    /// A counter's total over the pool's workers, past and present.
    Counter(f64),
    /// A gauge's last value from one worker.
    Gauge(f64),
    /// A histogram's totals over the pool's workers, past and present.
    Histogram(HistogramData),
}

/// One series of a user metric.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSeries {
    /// The metric.
    pub def: Arc<UserMetricDef>,
    /// Its labels (sorted by name, capped).
    pub labels: Labels,
    /// The worker it belongs to (gauges only).
    pub worker_id: Option<Arc<str>>,
    /// The value.
    pub value: UserValue,
}

/// Follows a pool's user metrics as they arrive (see the module docs): an exporter
/// that must make an instrument per name, or that takes histograms batch by batch.
///
/// Called outside the registry's lock (so a sink may read [`UserMetrics::series`]),
/// from the tasks that read the workers' pipes; batches of different workers may
/// arrive in any order, and a histogram batch may arrive before the `define` of its
/// metric (the batch carries the definition too).
pub trait UserMetricSink: Send + Sync + 'static {
    /// Pool `pool` learned of metric `def`.
    fn define(&self, pool: &str, def: &Arc<UserMetricDef>);
    /// One batch of observations of `def` in series `labels` of pool `pool`.
    fn histogram(
        &self,
        pool: &str,
        def: &Arc<UserMetricDef>,
        labels: &Labels,
        data: &HistogramData,
    );
}

/// What the sink is told once the registry's lock is released.
enum Note {
    Define(Arc<UserMetricDef>),
    Histogram(Arc<UserMetricDef>, Labels, HistogramData),
}

/// One pool's user metrics.
#[derive(Default)]
pub struct UserMetrics {
    inner: Mutex<Registry>,
    refused: AtomicU64,
}

#[derive(Default)]
struct Registry {
    pool: Arc<str>,
    defs: HashMap<String, Arc<UserMetricDef>>,
    totals: HashMap<(String, Labels), UserValue>,
    gauges: HashMap<(String, Labels, Arc<str>), f64>,
    label_values: HashMap<(String, String), HashSet<String>>,
    warned: HashSet<String>,
    sink: Option<Arc<dyn UserMetricSink>>,
}

/// A batch line as the bridge writes it.
#[derive(Deserialize)]
pub(crate) struct Batch {
    #[serde(default)]
    defs: Vec<UserMetricDef>,
    #[serde(default)]
    c: Vec<(String, BTreeMap<String, String>, f64)>,
    #[serde(default)]
    h: Vec<HistogramRow>,
    #[serde(default)]
    g: Vec<(String, BTreeMap<String, String>, f64)>,
}

type HistogramRow = (
    String,
    BTreeMap<String, String>,
    Vec<u64>,
    f64,
    u64,
    f64,
    f64,
);

fn tell(sink: &dyn UserMetricSink, pool: &str, notes: Vec<Note>) {
    for note in notes {
        match note {
            Note::Define(def) => sink.define(pool, &def),
            Note::Histogram(def, labels, data) => sink.histogram(pool, &def, &labels, &data),
        }
    }
}

/// Cut `s` to at most `max` bytes, on a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let end = (0..=max)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(end);
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN
}

impl UserMetrics {
    /// An empty registry for pool `pool`.
    pub(crate) fn new(pool: &str) -> Self {
        UserMetrics {
            inner: Mutex::new(Registry {
                pool: Arc::from(pool),
                ..Registry::default()
            }),
            refused: AtomicU64::new(0),
        }
    }

    /// Series, metric definitions or amounts refused so far (invalid, conflicting, or
    /// over a cap).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Every series now: counter and histogram totals, gauges per live worker.
    pub fn series(&self) -> Vec<UserSeries> {
        self.series_where(|_| true)
    }

    /// The series of metric `name` now (what an exporter's per-name callback reads).
    pub fn series_of(&self, name: &str) -> Vec<UserSeries> {
        self.series_where(|n| n == name)
    }

    fn series_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<UserSeries> {
        let reg = sync::lock(&self.inner);
        let mut out: Vec<UserSeries> = reg
            .totals
            .iter()
            .filter(|((name, _), _)| wanted(name))
            .filter_map(|((name, labels), value)| {
                Some(UserSeries {
                    def: reg.defs.get(name)?.clone(),
                    labels: labels.clone(),
                    worker_id: None,
                    value: value.clone(),
                })
            })
            .collect();
        out.extend(
            reg.gauges
                .iter()
                .filter(|((name, _, _), _)| wanted(name))
                .filter_map(|((name, labels, worker), v)| {
                    Some(UserSeries {
                        def: reg.defs.get(name)?.clone(),
                        labels: labels.clone(),
                        worker_id: Some(worker.clone()),
                        value: UserValue::Gauge(*v),
                    })
                }),
        );
        out.sort_by(|a, b| {
            (&a.def.name, &a.labels, &a.worker_id).cmp(&(&b.def.name, &b.labels, &b.worker_id))
        });
        out
    }

    /// Follow histogram batches from now on; the totals so far are handed over first,
    /// as one batch per series, so the sink misses nothing and counts nothing twice.
    pub fn set_sink(&self, sink: Arc<dyn UserMetricSink>) {
        let (pool, notes) = {
            let mut reg = sync::lock(&self.inner);
            let mut notes: Vec<Note> = reg.defs.values().cloned().map(Note::Define).collect();
            for ((name, labels), value) in &reg.totals {
                if let (UserValue::Histogram(data), Some(def)) = (value, reg.defs.get(name)) {
                    notes.push(Note::Histogram(def.clone(), labels.clone(), data.clone()));
                }
            }
            reg.sink = Some(sink.clone());
            (reg.pool.clone(), notes)
        };
        // Batches applied from here on reach the sink themselves; the totals taken
        // above are exactly what came before them.
        tell(&*sink, &pool, notes);
    }

    fn refuse(&self, reg: &mut Registry, name: &str, why: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if reg.warned.len() < MAX_METRICS && reg.warned.insert(name.to_string()) {
            tracing::warn!(target: "snakepit::python", pool = %reg.pool, metric = name,
                "user metric refused: {why} (said once per metric)");
        }
    }

    /// Apply one batch from worker `worker_id`.
    pub(crate) fn apply(&self, worker_id: &Arc<str>, batch: Batch) {
        let mut notes = Vec::new();
        let (pool, sink) = {
            let mut reg = sync::lock(&self.inner);
            self.apply_locked(&mut reg, worker_id, batch, &mut notes);
            (reg.pool.clone(), reg.sink.clone())
        };
        if let Some(sink) = sink {
            tell(&*sink, &pool, notes);
        }
    }

    fn apply_locked(
        &self,
        reg: &mut Registry,
        worker_id: &Arc<str>,
        batch: Batch,
        notes: &mut Vec<Note>,
    ) {
        for def in batch.defs {
            if let Some(def) = self.define(reg, def) {
                notes.push(Note::Define(def));
            }
        }
        for (name, labels, delta) in batch.c {
            let Some(labels) = self.admit(reg, &name, UserMetricKind::Counter, labels) else {
                continue;
            };
            if !(delta.is_finite() && delta >= 0.0) {
                self.refuse(
                    reg,
                    &name,
                    "a counter amount that is negative or not finite",
                );
                continue;
            }
            let total = reg
                .totals
                .entry((name, labels))
                .or_insert(UserValue::Counter(0.0));
            if let UserValue::Counter(v) = total {
                *v += delta;
            }
        }
        for (name, labels, counts, sum, count, min, max) in batch.h {
            let Some(labels) = self.admit(reg, &name, UserMetricKind::Histogram, labels) else {
                continue;
            };
            let Some(def) = reg.defs.get(&name).cloned() else {
                continue;
            };
            let data = HistogramData {
                counts,
                sum,
                count,
                min,
                max,
            };
            let consistent = data.counts.len() == def.buckets.len() + 1
                && data.counts.iter().sum::<u64>() == data.count
                && data.count > 0
                && data.sum.is_finite()
                && data.min <= data.max;
            if !consistent {
                self.refuse(
                    reg,
                    &name,
                    "a histogram batch whose counts do not fit its buckets",
                );
                continue;
            }
            if reg.sink.is_some() {
                notes.push(Note::Histogram(def.clone(), labels.clone(), data.clone()));
            }
            match reg.totals.get_mut(&(name.clone(), labels.clone())) {
                Some(UserValue::Histogram(total)) => total.merge(&data),
                _ => {
                    reg.totals
                        .insert((name, labels), UserValue::Histogram(data));
                }
            }
        }
        for (name, labels, value) in batch.g {
            let Some(labels) = self.admit(reg, &name, UserMetricKind::Gauge, labels) else {
                continue;
            };
            if !value.is_finite() {
                self.refuse(reg, &name, "a gauge value that is not finite");
                continue;
            }
            reg.gauges.insert((name, labels, worker_id.clone()), value);
        }
    }

    /// A worker's gauges leave with it (its counters and histograms stay in the totals).
    pub(crate) fn forget_worker(&self, worker_id: &str) {
        sync::lock(&self.inner)
            .gauges
            .retain(|(_, _, w), _| &**w != worker_id);
    }

    /// Learn `def`; the definition when it is new.
    fn define(&self, reg: &mut Registry, def: UserMetricDef) -> Option<Arc<UserMetricDef>> {
        if let Some(known) = reg.defs.get(&def.name) {
            if known.kind != def.kind || known.buckets != def.buckets {
                let why = format!(
                    "a worker declared it as a {:?} (buckets {:?}), the pool knows it as a {:?} (buckets {:?})",
                    def.kind, def.buckets, known.kind, known.buckets
                );
                self.refuse(reg, &def.name, &why);
            }
            return None;
        }
        let buckets_ok = def.kind != UserMetricKind::Histogram
            || (!def.buckets.is_empty()
                && def.buckets.len() <= MAX_BUCKETS
                && def.buckets.iter().all(|b| b.is_finite())
                && def.buckets.windows(2).all(|w| w[0] < w[1]));
        if !valid_name(&def.name) {
            self.refuse(reg, &def.name, "not a valid name");
        } else if !buckets_ok {
            let why = format!("its buckets are not finite, increasing, 1 to {MAX_BUCKETS}");
            self.refuse(reg, &def.name, &why);
        } else if reg.defs.len() >= MAX_METRICS {
            let why = format!("the pool already has {MAX_METRICS} user metrics (MAX_METRICS)");
            self.refuse(reg, &def.name, &why);
        } else {
            let mut def = def;
            cut(&mut def.description, 1024);
            cut(&mut def.unit, MAX_NAME_LEN);
            let def = Arc::new(def);
            reg.defs.insert(def.name.clone(), def.clone());
            return Some(def);
        }
        None
    }

    /// The capped label set of one row of metric `name`, or `None` if refused.
    fn admit(
        &self,
        reg: &mut Registry,
        name: &str,
        kind: UserMetricKind,
        labels: BTreeMap<String, String>,
    ) -> Option<Labels> {
        match reg.defs.get(name) {
            Some(def) if def.kind == kind => {}
            _ => {
                let why = format!(
                    "data for it as a {kind:?}, but the pool knows no such {kind:?} (its \
                     definition was refused before, or declared another kind)"
                );
                self.refuse(reg, name, &why);
                return None;
            }
        }
        if labels.len() > MAX_LABELS {
            let why = format!("{} labels, more than {MAX_LABELS}", labels.len());
            self.refuse(reg, name, &why);
            return None;
        }
        let mut out = Vec::with_capacity(labels.len());
        for (key, mut value) in labels {
            if !valid_name(&key) || RESERVED_LABELS.contains(&key.as_str()) {
                self.refuse(reg, name, "a label name that is invalid or set by the pool");
                return None;
            }
            cut(&mut value, MAX_VALUE_LEN);
            let seen = reg
                .label_values
                .entry((name.to_string(), key.clone()))
                .or_default();
            if !seen.contains(&value) {
                if seen.len() >= MAX_LABEL_VALUES {
                    value = OVERFLOW_VALUE.to_string();
                } else {
                    seen.insert(value.clone());
                }
            }
            out.push((key, value));
        }
        Some(out)
    }
}

#[cfg(test)]
#[path = "user_metrics_tests.rs"]
mod tests;
