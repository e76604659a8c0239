//! The pools' user metrics — what Python code records with `snakepit_bridge.metrics`
//! — as OpenTelemetry instruments, so they leave through the same exporters as the
//! pool's own: the Prometheus registry (`/metrics`) and OTLP.
//!
//! Each name becomes one instrument, `snakepit.user.<name>` (Prometheus:
//! `snakepit_user_<name>`, with `_total` on counters and the unit's suffix when one is
//! declared), the first time a watched pool learns of it (a [`UserMetricSink`] on
//! each pool's registry, see `snakepit_core::user_metrics`):
//! - counters: an observable counter reporting the pool's totals at collection time
//!   (cumulative over its workers, past and present: a replaced worker's part stays);
//! - gauges: an observable gauge, one series per live worker (`worker_id`);
//! - histograms: a histogram with the worker's buckets. The SDK takes no
//!   pre-aggregated histogram, so each batch is replayed as observations chosen
//!   inside their buckets ([`replay`]): bucket counts, count, min and max come out
//!   exact, the sum exact up to floating-point rounding.
//!
//! Every series carries `pool_name`. A name two pools declare as different kinds (or
//! with different buckets) keeps the first declaration; the other pool's data for it
//! is not exported (warned once). Callbacks hold the pools' registries weakly, so a
//! pool that is dropped is not kept alive by its exporter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use opentelemetry::KeyValue;
use snakepit_core::sync::lock;
use snakepit_core::user_metrics::{
    HistogramData, Labels, UserMetricDef, UserMetricKind, UserMetricSink, UserMetrics, UserValue,
};
use snakepit_core::Pool;

/// The prefix of every user metric's instrument name.
pub const USER_METRIC_PREFIX: &str = "snakepit.user.";

/// The registries the callbacks read: pool name, registry.
type Sources = Arc<Mutex<Vec<(Arc<str>, Weak<UserMetrics>)>>>;

enum Made {
    /// An observable counter or gauge (its callback reads the sources).
    Observed(UserMetricKind),
    Histogram(Histogram<f64>, Vec<f64>),
}

/// An instrument builder with `def`'s description and (when it has one) unit; a
/// macro because the SDK's builders for each kind are different types.
macro_rules! described {
    ($builder:expr, $def:expr) => {{
        let b = $builder.with_description($def.description.clone());
        if $def.unit.is_empty() {
            b
        } else {
            b.with_unit($def.unit.clone())
        }
    }};
}

/// The instruments made so far, one per name, shared by every watched pool.
pub(crate) struct UserInstruments {
    meter: Meter,
    sources: Sources,
    made: Mutex<HashMap<String, Made>>,
    warned: Mutex<std::collections::HashSet<String>>,
}

impl UserInstruments {
    pub(crate) fn new(meter: Meter) -> Arc<Self> {
        Arc::new(UserInstruments {
            meter,
            sources: Arc::default(),
            made: Mutex::default(),
            warned: Mutex::default(),
        })
    }

    /// Export `pools`' user metrics from now on (their totals so far included).
    pub(crate) fn watch(self: &Arc<Self>, pools: &[Pool]) {
        for pool in pools {
            let registry = pool.user_metrics();
            {
                let mut sources = lock(&self.sources);
                if sources
                    .iter()
                    .any(|(_, w)| w.upgrade().is_some_and(|r| Arc::ptr_eq(&r, registry)))
                {
                    continue;
                }
                sources.push((Arc::from(pool.name()), Arc::downgrade(registry)));
            }
            registry.set_sink(self.clone());
        }
    }

    fn warn_once(&self, pool: &str, def: &UserMetricDef) {
        if lock(&self.warned).insert(def.name.clone()) {
            tracing::warn!(target: "snakepit::telemetry", pool, metric = %def.name,
                "user metric not exported for this pool: another pool declared the same name as another kind or with other buckets");
        }
    }

    /// The instrument of `def`, made if new; false when the name is taken by another
    /// kind.
    fn ensure(&self, pool: &str, def: &UserMetricDef) -> bool {
        let mut made = lock(&self.made);
        if let Some(m) = made.get(&def.name) {
            let same = match m {
                Made::Observed(kind) => *kind == def.kind,
                Made::Histogram(_, buckets) => {
                    def.kind == UserMetricKind::Histogram && *buckets == def.buckets
                }
            };
            if !same {
                drop(made);
                self.warn_once(pool, def);
            }
            return same;
        }
        let name = format!("{USER_METRIC_PREFIX}{}", def.name);
        let meter = &self.meter;
        let instrument = match def.kind {
            UserMetricKind::Histogram => {
                let b = described!(meter.f64_histogram(name), def);
                Made::Histogram(
                    b.with_boundaries(def.buckets.clone()).build(),
                    def.buckets.clone(),
                )
            }
            UserMetricKind::Counter => {
                described!(meter.f64_observable_counter(name), def)
                    .with_callback(self.reader(&def.name))
                    .build();
                Made::Observed(def.kind)
            }
            UserMetricKind::Gauge => {
                described!(meter.f64_observable_gauge(name), def)
                    .with_callback(self.reader(&def.name))
                    .build();
                Made::Observed(def.kind)
            }
        };
        made.insert(def.name.clone(), instrument);
        true
    }
}

impl UserInstruments {
    /// The collection-time callback of metric `name`'s counter or gauge.
    fn reader(&self, name: &str) -> impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static {
        let (sources, wanted) = (self.sources.clone(), name.to_string());
        move |obs| observe(&sources, &wanted, |v, attrs| obs.observe(v, attrs))
    }
}

/// The attributes of one series: `pool_name`, `worker_id` for gauges, its labels.
fn attributes(pool: &str, worker_id: Option<&str>, labels: &Labels) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(labels.len() + 2);
    attrs.push(KeyValue::new("pool_name", pool.to_string()));
    if let Some(w) = worker_id {
        attrs.push(KeyValue::new("worker_id", w.to_string()));
    }
    attrs.extend(
        labels
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    attrs
}

/// Report the counters' totals or the gauges' values of metric `name` in every pool
/// whose registry declares it as the instrument's kind.
fn observe(sources: &Sources, name: &str, mut report: impl FnMut(f64, &[KeyValue])) {
    let registries: Vec<_> = lock(sources)
        .iter()
        .filter_map(|(pool, w)| Some((pool.clone(), w.upgrade()?)))
        .collect();
    for (pool, registry) in registries {
        for series in registry.series_of(name) {
            let value = match series.value {
                UserValue::Counter(v) | UserValue::Gauge(v) => v,
                UserValue::Histogram(_) => continue,
            };
            report(
                value,
                &attributes(&pool, series.worker_id.as_deref(), &series.labels),
            );
        }
    }
}

impl UserMetricSink for UserInstruments {
    fn define(&self, pool: &str, def: &Arc<UserMetricDef>) {
        self.ensure(pool, def);
    }

    fn histogram(
        &self,
        pool: &str,
        def: &Arc<UserMetricDef>,
        labels: &Labels,
        data: &HistogramData,
    ) {
        if !self.ensure(pool, def) {
            return;
        }
        let histogram = match lock(&self.made).get(&def.name) {
            Some(Made::Histogram(h, _)) => h.clone(),
            _ => return,
        };
        let attrs = attributes(pool, None, labels);
        for (value, times) in replay(&def.buckets, data) {
            for _ in 0..times {
                histogram.record(value, &attrs);
            }
        }
    }
}

/// Observations that reproduce `data` in a histogram with upper bounds `bounds`
/// (buckets `(b[i-1], b[i]]`, the last one to +Inf), as (value, times) pairs: one at
/// the minimum, one at the maximum, and each bucket's others at one value inside it,
/// placed so the values add up to the sum. Bucket counts, count, min and max are
/// exact; the sum is, up to rounding, when it is consistent with the rest.
pub fn replay(bounds: &[f64], data: &HistogramData) -> Vec<(f64, u64)> {
    let n = data.count;
    if n == 0 || data.counts.len() != bounds.len() + 1 {
        return Vec::new();
    }
    if n == 1 {
        return vec![(data.min, 1)];
    }
    let bucket_of = |v: f64| bounds.partition_point(|b| *b < v);
    let mut left = data.counts.clone();
    let (at_min, at_max) = (bucket_of(data.min), bucket_of(data.max));
    let mut out = Vec::with_capacity(bounds.len() + 3);
    for (value, i) in [(data.min, at_min), (data.max, at_max)] {
        if left[i] > 0 {
            left[i] -= 1;
            out.push((value, 1));
        }
    }
    let placed: f64 = out.iter().map(|(v, _)| v).sum();
    // Where each bucket's other observations may go: inside it, and inside [min, max].
    let room = |i: usize| -> (f64, f64) {
        let lo = if i == 0 {
            data.min
        } else {
            bounds[i - 1].next_up().max(data.min)
        };
        let hi = if i == bounds.len() {
            data.max
        } else {
            bounds[i].min(data.max)
        };
        (lo, hi.max(lo))
    };
    let base: f64 = (0..left.len())
        .filter(|i| left[*i] > 0)
        .map(|i| left[i] as f64 * room(i).0)
        .sum();
    let mut extra = (data.sum - placed - base).max(0.0);
    for (i, &times) in left.iter().enumerate() {
        if times == 0 {
            continue;
        }
        let (lo, hi) = room(i);
        let take = extra.min((hi - lo) * times as f64);
        extra -= take;
        out.push(((lo + take / times as f64).clamp(lo, hi), times));
    }
    out
}

#[cfg(test)]
#[path = "user_metrics_tests.rs"]
mod tests;
