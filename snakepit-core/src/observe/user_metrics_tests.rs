use super::*;

fn batch(json: &str) -> Batch {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn worker(id: &str) -> Arc<str> {
    Arc::from(id)
}

const DEFS: &str = r#"[
    {"name":"tokens","kind":"counter","help":"Tokens","unit":""},
    {"name":"depth","kind":"gauge","help":"","unit":""},
    {"name":"size","kind":"histogram","help":"","unit":"","buckets":[1,10]}
]"#;

fn counter(m: &UserMetrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.series().into_iter().find_map(|s| match s.value {
        UserValue::Counter(v) if s.def.name == name && s.labels == labels => Some(v),
        _ => None,
    })
}

#[test]
fn counters_sum_over_workers_and_keep_a_dead_workers_totals() {
    let m = UserMetrics::new("p");
    m.apply(
        &worker("w1"),
        batch(&format!(
            r#"{{"defs":{DEFS},"c":[["tokens",{{"model":"a"}},3]]}}"#
        )),
    );
    m.apply(
        &worker("w2"),
        batch(&format!(
            r#"{{"defs":{DEFS},"c":[["tokens",{{"model":"a"}},4.5]]}}"#
        )),
    );
    assert_eq!(counter(&m, "tokens", &[("model", "a")]), Some(7.5));
    m.forget_worker("w1");
    assert_eq!(
        counter(&m, "tokens", &[("model", "a")]),
        Some(7.5),
        "never backwards"
    );
    m.apply(
        &worker("w3"),
        batch(r#"{"c":[["tokens",{"model":"a"},1]]}"#),
    );
    assert_eq!(counter(&m, "tokens", &[("model", "a")]), Some(8.5));
    assert_eq!(m.refused(), 0);
}

#[test]
fn gauges_are_per_worker_and_leave_with_it() {
    let m = UserMetrics::new("p");
    let defs = format!(r#"{{"defs":{DEFS},"g":[["depth",{{}},5]]}}"#);
    m.apply(&worker("w1"), batch(&defs));
    m.apply(&worker("w2"), batch(r#"{"g":[["depth",{},7]]}"#));
    m.apply(&worker("w2"), batch(r#"{"g":[["depth",{},9]]}"#));
    let gauges: Vec<_> = m
        .series()
        .into_iter()
        .map(|s| (s.worker_id.map(|w| w.to_string()), s.value))
        .collect();
    assert_eq!(
        gauges,
        vec![
            (Some("w1".into()), UserValue::Gauge(5.0)),
            (Some("w2".into()), UserValue::Gauge(9.0))
        ]
    );
    m.forget_worker("w1");
    assert_eq!(m.series().len(), 1);
}

#[test]
fn histograms_merge_and_a_sink_gets_the_totals_then_each_batch() {
    struct Seen(
        Mutex<Vec<HistogramData>>,
        Mutex<Vec<String>>,
        std::sync::OnceLock<Arc<UserMetrics>>,
    );
    impl UserMetricSink for Seen {
        fn define(&self, pool: &str, def: &Arc<UserMetricDef>) {
            assert_eq!(pool, "p");
            // Told outside the registry's lock: reading the series here must not
            // deadlock (an exporter makes its instruments and reads them back).
            let _ = self.2.get().map(|m| m.series());
            sync::lock(&self.1).push(def.name.clone());
        }
        fn histogram(
            &self,
            pool: &str,
            def: &Arc<UserMetricDef>,
            _: &Labels,
            data: &HistogramData,
        ) {
            assert_eq!((pool, def.name.as_str()), ("p", "size"));
            sync::lock(&self.0).push(data.clone());
        }
    }
    let m = Arc::new(UserMetrics::new("p"));
    m.apply(
        &worker("w1"),
        batch(&format!(
            r#"{{"defs":{DEFS},"h":[["size",{{}},[1,2,0],12.0,3,0.5,6.0]]}}"#
        )),
    );
    let seen = Arc::new(Seen(
        Mutex::new(Vec::new()),
        Mutex::new(Vec::new()),
        std::sync::OnceLock::new(),
    ));
    let _ = seen.2.set(m.clone());
    m.set_sink(seen.clone());
    let mut defined = sync::lock(&seen.1).clone();
    defined.sort();
    assert_eq!(
        defined,
        ["depth", "size", "tokens"],
        "the sink learns the metrics defined before it"
    );
    m.apply(
        &worker("w2"),
        batch(r#"{"h":[["size",{},[0,0,1],50.0,1,50.0,50.0]]}"#),
    );
    let got = sync::lock(&seen.0).clone();
    assert_eq!(got.len(), 2, "the totals so far, then the new batch");
    assert_eq!(got[0].count, 3);
    assert_eq!(got[1].count, 1);
    let total = m
        .series()
        .into_iter()
        .find_map(|s| match s.value {
            UserValue::Histogram(h) => Some(h),
            _ => None,
        })
        .unwrap();
    assert_eq!(total.counts, vec![1, 2, 1]);
    assert_eq!(
        (total.sum, total.count, total.min, total.max),
        (62.0, 4, 0.5, 50.0)
    );
}

#[test]
fn what_does_not_fit_is_refused_and_counted() {
    let m = UserMetrics::new("p");
    m.apply(&worker("w1"), batch(&format!(r#"{{"defs":{DEFS}}}"#)));
    let cases = [
        // data for an undeclared metric
        r#"{"c":[["nope",{},1]]}"#,
        // the wrong kind
        r#"{"c":[["depth",{},1]]}"#,
        // a negative counter amount
        r#"{"c":[["tokens",{},-1]]}"#,
        // counts that do not match the buckets
        r#"{"h":[["size",{},[1,1],2.0,2,1.0,1.0]]}"#,
        // a count that is not the sum of the buckets
        r#"{"h":[["size",{},[1,1,1],2.0,2,1.0,1.0]]}"#,
        // a reserved label name
        r#"{"c":[["tokens",{"pool_name":"x"},1]]}"#,
        // a conflicting declaration
        r#"{"defs":[{"name":"tokens","kind":"gauge"}]}"#,
        // an invalid name
        r#"{"defs":[{"name":"9lives","kind":"counter"}]}"#,
        // buckets that do not increase
        r#"{"defs":[{"name":"h2","kind":"histogram","buckets":[2,1]}]}"#,
    ];
    for (i, case) in cases.iter().enumerate() {
        m.apply(&worker("w1"), batch(case));
        assert_eq!(m.refused(), i as u64 + 1, "{case}");
    }
    assert!(m.series().is_empty(), "{:?}", m.series());
}

#[test]
fn label_values_and_metric_names_are_capped() {
    let m = UserMetrics::new("p");
    m.apply(&worker("w1"), batch(&format!(r#"{{"defs":{DEFS}}}"#)));
    for i in 0..(MAX_LABEL_VALUES + 50) {
        m.apply(
            &worker("w1"),
            batch(&format!(r#"{{"c":[["tokens",{{"user":"u{i}"}},1]]}}"#)),
        );
    }
    let series = m.series();
    assert_eq!(series.len(), MAX_LABEL_VALUES + 1);
    assert_eq!(
        counter(&m, "tokens", &[("user", OVERFLOW_VALUE)]),
        Some(50.0)
    );
    let long = "x".repeat(500);
    m.apply(
        &worker("w1"),
        batch(&format!(r#"{{"g":[["depth",{{"k":"{long}"}},1]]}}"#)),
    );
    assert!(m.series().iter().any(|s| s
        .labels
        .first()
        .is_some_and(|(_, v)| v.len() == MAX_VALUE_LEN)));

    let m = UserMetrics::new("p");
    for i in 0..(MAX_METRICS + 5) {
        m.apply(
            &worker("w1"),
            batch(&format!(
                r#"{{"defs":[{{"name":"m{i}","kind":"counter"}}]}}"#
            )),
        );
    }
    assert_eq!(m.refused(), 5);
}
