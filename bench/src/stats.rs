//! Statistics over rounds: medians, nearest-rank percentiles and the per-round differences
//! against the direct call that the report is built from.
//!
//! The added latency of a path is the median over rounds of `pX(path, round) - pX(direct, round)`,
//! taken only over rounds in which both runs were kept. A difference of percentiles is not a
//! percentile of differences, but it is how Dapr and Istio report, so our figures stay comparable.

use serde::Serialize;

/// The median of `values`, the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The nearest-rank percentile (`q` in 0..=1) of an ascending slice: the smallest value with at
/// least `q` of the samples at or below it.
pub fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median with the range it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values (kept rounds) it is made of.
    pub n: usize,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let median = median(values)?;
    let finite = values.iter().copied().filter(|x| x.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.clone().fold(f64::NEG_INFINITY, f64::max);
    Some(Spread {
        median,
        min,
        max,
        n: finite.count(),
    })
}

/// `value(path) - value(base)` for every round present in both lists (each a list of
/// `(round, value)` of kept runs), in round order.
pub fn paired_differences(path: &[(u32, f64)], base: &[(u32, f64)]) -> Vec<f64> {
    let mut out: Vec<(u32, f64)> = path
        .iter()
        .filter_map(|&(round, v)| {
            base.iter()
                .find(|&&(r, _)| r == round)
                .map(|&(_, b)| (round, v - b))
        })
        .collect();
    out.sort_by_key(|&(r, _)| r);
    out.into_iter().map(|(_, d)| d).collect()
}

/// vCPU per 1000 requests per second, from CPU time used while `requests` were served:
/// (cpu_s / window) / (requests / window / 1000), the window cancels out.
pub fn vcpu_per_krps(cpu_seconds: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_seconds * 1000.0 / requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(500));
        assert_eq!(nearest_rank(&v, 0.99), Some(990));
        assert_eq!(nearest_rank(&v, 0.999), Some(999));
        assert_eq!(nearest_rank(&v, 1.0), Some(1000));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank(&[7], 0.999), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    #[test]
    fn differences_pair_rounds_and_skip_dropped_ones() {
        // Round 2 of the path and round 4 of the direct call were dropped.
        let path = [(1, 300.0), (3, 320.0), (4, 900.0), (5, 310.0), (0, 305.0)];
        let base = [(0, 100.0), (1, 90.0), (2, 95.0), (3, 110.0), (5, 100.0)];
        let d = paired_differences(&path, &base);
        assert_eq!(d, vec![205.0, 210.0, 210.0, 210.0]);
        assert_eq!(median(&d), Some(210.0));
    }

    #[test]
    fn median_of_differences_is_not_difference_of_medians() {
        // A noisy round moves both runs; pairing cancels it, unpaired medians do not.
        let path = [(0, 200.0), (1, 210.0), (2, 1200.0)];
        let base = [(0, 100.0), (1, 1000.0), (2, 1100.0)];
        let d = paired_differences(&path, &base);
        assert_eq!(median(&d), Some(100.0));
        let unpaired =
            median(&[200.0, 210.0, 1200.0]).unwrap() - median(&[100.0, 1000.0, 1100.0]).unwrap();
        assert_eq!(unpaired, -790.0);
    }

    #[test]
    fn spread_reports_range_and_count() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 2.5,
                min: 1.0,
                max: 10.0,
                n: 4
            }
        );
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn cpu_per_thousand_rps() {
        // 0.7 s of CPU while serving 10,000 requests (1000 rps for 10 s) = 0.07 vCPU per 1000 rps.
        let v = vcpu_per_krps(0.7, 10_000).unwrap();
        assert!((v - 0.07).abs() < 1e-12);
        assert_eq!(vcpu_per_krps(1.0, 0), None);
    }
}
