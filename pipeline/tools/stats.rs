//! Figures the tools share: percentiles and means as defectflow reports them.

use serde::Serialize;

/// The value at rank ⌈p·n⌉ of sorted `values` (n > 0): the nearest-rank percentile
/// used wherever defectflow reports one.
pub fn nearest_rank(values: &[f64], p: f64) -> f64 {
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// p50, p99 and max of a set of latencies.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// p50, p99 (nearest rank) and max of seconds, in milliseconds; `None` for none.
pub fn percentiles_ms(seconds: &[f64]) -> Option<Percentiles> {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| nearest_rank(&sorted, p) * 1000.0;
    sorted.last().map(|max| Percentiles { p50: rank(0.5), p99: rank(0.99), max: max * 1000.0 })
}

/// The mean; `None` for none.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_ten_values() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&values, 0.5), 5.0);
        assert_eq!(nearest_rank(&values, 0.99), 10.0);
        assert_eq!(nearest_rank(&values, 0.0), 1.0);
        let p = percentiles_ms(&[0.3, 0.1, 0.2]).expect("three values");
        assert_eq!((p.p50, p.p99, p.max), (200.0, 300.0, 300.0));
        assert!(percentiles_ms(&[]).is_none());
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
    }
}
