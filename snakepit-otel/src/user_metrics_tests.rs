use super::*;

/// The histogram data of `values` over `bounds`, as the bridge computes it.
fn data_of(bounds: &[f64], values: &[f64]) -> HistogramData {
    let mut counts = vec![0; bounds.len() + 1];
    for v in values {
        counts[bounds.partition_point(|b| b < v)] += 1;
    }
    HistogramData {
        counts,
        sum: values.iter().sum(),
        count: values.len() as u64,
        min: values.iter().cloned().fold(f64::INFINITY, f64::min),
        max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn check(bounds: &[f64], values: &[f64]) {
    let want = data_of(bounds, values);
    let replayed: Vec<f64> = replay(bounds, &want)
        .into_iter()
        .flat_map(|(v, times)| std::iter::repeat_n(v, times as usize))
        .collect();
    let got = data_of(bounds, &replayed);
    assert_eq!(got.counts, want.counts, "bucket counts of {values:?}");
    assert_eq!(
        (got.count, got.min, got.max),
        (want.count, want.min, want.max)
    );
    let tolerance = 1e-9 * want.sum.abs().max(1.0);
    assert!(
        (got.sum - want.sum).abs() <= tolerance,
        "sum {} for {}",
        got.sum,
        want.sum
    );
}

#[test]
fn a_replayed_batch_has_the_buckets_count_min_max_and_sum_of_the_real_one() {
    let bounds = [1.0, 2.0, 4.0, 8.0, 16.0];
    check(&bounds, &[3.0]);
    check(&bounds, &[0.5, 0.5]);
    check(&bounds, &[1.0, 2.0, 4.0, 8.0, 16.0, 17.0]);
    check(&bounds, &[-3.0, 100.0, 100.0, 1.5]);
    check(&bounds, &[2.0, 2.0, 2.0, 2.0]);
    // Pseudo-random batches, including values on the bounds.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        let n = 1 + round % 37;
        let values: Vec<f64> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let r = (x >> 33) as f64 / (1u64 << 31) as f64;
                if x.is_multiple_of(7) {
                    bounds[(x % 5) as usize]
                } else {
                    r * 20.0 - 1.0
                }
            })
            .collect();
        check(&bounds, &values);
    }
}

#[test]
fn an_inconsistent_batch_replays_nothing_rather_than_something_wrong() {
    let bounds = [1.0, 2.0];
    let bad = HistogramData {
        counts: vec![1, 1],
        sum: 1.0,
        count: 2,
        min: 0.5,
        max: 1.5,
    };
    assert!(
        replay(&bounds, &bad).is_empty(),
        "counts do not fit the bounds"
    );
}
