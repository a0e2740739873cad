//! What one version did over a window: counts, and uniform samples of its per-request values.
//!
//! A long window has far more requests than the checks need, so each kind of value (latencies,
//! scores, labelled scores) is kept as a [`Reservoir`]: at most [`MAX_SAMPLES`] values chosen
//! uniformly from all that were offered, with the number offered. Keeping the first values
//! instead would judge a window by its first minutes; thinning a merge by halves would give a
//! quiet interval as much weight as a busy one. Random choices take the generator as an argument,
//! so the caller decides where randomness comes from: the server seeds from the system, the
//! engine from the tick's time, tests from a constant.

use fastrand::Rng;
use serde::{Deserialize, Serialize};

use crate::sequential::Sums;

/// Values kept per kind and version: enough for the rank and distribution tests, bounded so a
/// long step does not grow the state without limit.
pub const MAX_SAMPLES: usize = 5_000;

/// A uniform sample of at most [`MAX_SAMPLES`] of the values offered (Algorithm R), and how many
/// were offered: every value offered is in the sample with the same probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored<T>", bound(deserialize = "T: Deserialize<'de>"))]
pub struct Reservoir<T> {
    /// Values offered so far: the sample's weight when it is merged with another.
    seen: u64,
    values: Vec<T>,
}

/// The stored forms: `{seen, values}`, or a bare list (state written before reservoirs, when
/// every value offered was kept up to the cap), read as a sample of exactly those values.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored<T> {
    Reservoir { seen: u64, values: Vec<T> },
    Values(Vec<T>),
}

impl<T> From<Stored<T>> for Reservoir<T> {
    fn from(stored: Stored<T>) -> Self {
        match stored {
            Stored::Reservoir { seen, values } => Reservoir { seen: seen.max(values.len() as u64), values },
            Stored::Values(values) => values.into(),
        }
    }
}

impl<T> Default for Reservoir<T> {
    fn default() -> Self {
        Reservoir { seen: 0, values: Vec::new() }
    }
}

/// Every value of the list, as the sample of exactly those values however many there are (tests
/// and simulations build windows this way; a merge brings it back within [`MAX_SAMPLES`]).
impl<T> From<Vec<T>> for Reservoir<T> {
    fn from(values: Vec<T>) -> Self {
        Reservoir { seen: values.len() as u64, values }
    }
}

impl<T> FromIterator<T> for Reservoir<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        values.into_iter().collect::<Vec<T>>().into()
    }
}

impl<T> Reservoir<T> {
    /// How many values were offered (the sample holds at most [`MAX_SAMPLES`] of them).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The sample, in no meaningful order.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Offers one value: kept while there is room, then in place of a random one with
    /// probability `MAX_SAMPLES / seen`, which keeps the sample uniform over everything offered.
    pub fn offer(&mut self, value: T, rng: &mut Rng) {
        self.seen += 1;
        if self.values.len() < MAX_SAMPLES {
            self.values.push(value);
        } else {
            let slot = rng.u64(..self.seen);
            if slot < MAX_SAMPLES as u64 {
                self.values[slot as usize] = value;
            }
        }
    }
}

impl<T: Clone> Reservoir<T> {
    /// Merges `other` into this one so that the result is a uniform sample of both streams
    /// together: how many values come from each side is drawn as if sampling the union without
    /// replacement (hypergeometric, by the counts seen), then that many are picked at random
    /// from each side's sample. A window of 10 requests merged with one of 100,000 contributes
    /// about one value in 10,000, not half.
    pub fn merge(&mut self, other: &Reservoir<T>, rng: &mut Rng) {
        let (seen_self, seen_other) = (self.weight(), other.weight());
        self.seen = seen_self + seen_other;
        let (have_self, have_other) = (self.values.len(), other.values.len());
        if have_self + have_other <= MAX_SAMPLES && (have_self as u64, have_other as u64) == (seen_self, seen_other) {
            // Room for everything, and both samples are complete: so is the result.
            self.values.extend_from_slice(&other.values);
            return;
        }
        // A side cannot give more values than its sample holds: draw only as many as each side
        // can give in proportion to what it stands for, so a thinned busy sample (500 values for
        // 100,000 requests) is not outweighed by a complete quiet one (100 for 100).
        let total = u128::from(seen_self + seen_other);
        let room = |have: usize, seen: u64| match (have, seen) {
            (0, _) | (_, 0) => usize::MAX,
            _ => usize::try_from(have as u128 * total / u128::from(seen)).unwrap_or(usize::MAX),
        };
        let wanted = MAX_SAMPLES.min(have_self + have_other).min(room(have_self, seen_self)).min(room(have_other, seen_other));
        let (mut left_self, mut left_other) = (seen_self, seen_other);
        let (mut take_self, mut take_other) = (0usize, 0usize);
        for _ in 0..wanted {
            // A side whose sample is used up cannot give more (only when a sample is smaller than
            // its count says it should be, e.g. one written before reservoirs).
            let from_self = if take_self == have_self {
                false
            } else if take_other == have_other {
                true
            } else {
                rng.u64(..left_self + left_other) < left_self
            };
            if from_self {
                take_self += 1;
                left_self -= 1;
            } else {
                take_other += 1;
                left_other -= 1;
            }
        }
        pick(&mut self.values, take_self, rng);
        let mut theirs = other.values.clone();
        pick(&mut theirs, take_other, rng);
        self.values.append(&mut theirs);
    }

    /// Keeps at most `n` of the sampled values, chosen uniformly: still a uniform sample of
    /// everything offered (a sample of a uniform sample), standing for as many values as before.
    /// For sending a sample over the network at a bounded size.
    pub fn thin(&mut self, n: usize, rng: &mut Rng) {
        self.seen = self.weight();
        pick(&mut self.values, n, rng);
    }

    /// The count a sample stands for: at least its own size.
    fn weight(&self) -> u64 {
        self.seen.max(self.values.len() as u64)
    }
}

/// Keeps `n` of `values` chosen uniformly at random (a partial Fisher-Yates shuffle).
fn pick<T>(values: &mut Vec<T>, n: usize, rng: &mut Rng) {
    if n >= values.len() {
        return;
    }
    for i in 0..n {
        let j = rng.usize(i..values.len());
        values.swap(i, j);
    }
    values.truncate(n);
}

/// What one version did over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    /// Per-request latencies in seconds.
    pub latencies: Reservoir<f64>,
    /// The model's scores (e.g. the probability of the positive class), for drift.
    pub scores: Reservoir<f64>,
    /// Scores of requests whose ground-truth label has arrived, with the label.
    pub labelled: Reservoir<(f64, bool)>,
    /// Every value, as sufficient statistics for the always-valid checks (the reservoirs above
    /// keep a sample of them for the fixed-horizon ones).
    #[serde(default)]
    pub sums: Sums,
}

impl Sample {
    /// One answer: a server-side failure or not, its latency in seconds, and the model's score
    /// when it has one. `rng` picks which values the reservoirs keep.
    pub fn observe(&mut self, failed: bool, latency: f64, score: Option<f64>, rng: &mut Rng) {
        self.requests += 1;
        self.errors += u64::from(failed);
        self.latencies.offer(latency, rng);
        if latency > 0.0 {
            self.sums.log_latency.push(latency.ln());
        }
        if let Some(score) = score.filter(|s| s.is_finite()) {
            self.scores.offer(score, rng);
            self.sums.score.push(score);
        }
    }

    /// A ground-truth label arrived for an answer that scored `score` (`>= 0.5` is the positive
    /// class, as the quality check reads it).
    pub fn label(&mut self, score: f64, label: bool, rng: &mut Rng) {
        self.labelled.offer((score, label), rng);
        self.sums.correct.push(f64::from(u8::from((score >= 0.5) == label)));
    }

    /// A business reward (a conversion, revenue) arrived for one of the version's answers.
    pub fn reward(&mut self, value: f64) {
        self.sums.reward.push(value);
    }

    /// The sample with its sums recomputed from the values its reservoirs hold: for a sample
    /// built from lists of every value (tests, simulations), where the lists are the stream.
    pub fn with_sums(mut self) -> Sample {
        let mut sums = Sums { reward: self.sums.reward, ..Sums::default() };
        for &latency in self.latencies.values().iter().filter(|l| **l > 0.0) {
            sums.log_latency.push(latency.ln());
        }
        for &score in self.scores.values() {
            sums.score.push(score);
        }
        for &(score, label) in self.labelled.values() {
            sums.correct.push(f64::from(u8::from((score >= 0.5) == label)));
        }
        self.sums = sums;
        self
    }

    /// Adds `other` to this sample: counts add up, and each reservoir becomes a uniform sample of
    /// both windows together.
    pub fn merge(&mut self, other: &Sample, rng: &mut Rng) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latencies.merge(&other.latencies, rng);
        self.scores.merge(&other.scores, rng);
        self.labelled.merge(&other.labelled, rng);
        self.sums.merge(&other.sums);
    }

    /// Each reservoir thinned to at most `n` values ([`Reservoir::thin`]).
    pub fn thin(&mut self, n: usize, rng: &mut Rng) {
        self.latencies.thin(n, rng);
        self.scores.thin(n, rng);
        self.labelled.thin(n, rng);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.labelled.seen() == 0 && self.sums.reward.n == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    /// A reservoir offered `0..n` (as `f64`), with seed `seed`.
    fn stream(n: u64, seed: u64) -> Reservoir<f64> {
        let mut rng = Rng::with_seed(seed);
        let mut r = Reservoir::default();
        for i in 0..n {
            r.offer(i as f64, &mut rng);
        }
        r
    }

    fn quantile(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    }

    /// Kolmogorov-Smirnov p-value of `values` (scaled to [0, 1)) against the uniform distribution
    /// of a whole stream, represented by an evenly spaced grid.
    fn uniform_p(values: &[f64], scale: f64) -> f64 {
        let grid: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 10_000.0).collect();
        let scaled: Vec<f64> = values.iter().map(|v| v / scale).collect();
        stats::ks(&scaled, &grid).expect("both non-empty").1
    }

    /// A thinned reservoir (what a replica sends the leader) is still a uniform sample standing
    /// for everything offered, and merges with its weight.
    #[test]
    fn a_thinned_reservoir_stays_uniform_and_keeps_its_weight() {
        const N: u64 = 200_000;
        let mut busy = stream(N, 3);
        busy.thin(500, &mut Rng::with_seed(4));
        assert_eq!((busy.seen(), busy.values().len()), (N, 500));
        assert!(uniform_p(busy.values(), N as f64) > 0.001);
        let mut quiet = stream(100, 5);
        quiet.thin(500, &mut Rng::with_seed(6));
        assert_eq!(quiet.values().len(), 100, "nothing to thin");
        // Merged, the quiet side contributes about its share (100 of 200,100), not half.
        let mut merged = busy.clone();
        merged.merge(&quiet, &mut Rng::with_seed(7));
        assert_eq!(merged.seen(), N + 100);
        let small = merged.values().iter().filter(|v| **v < 100.0).count();
        assert!(small <= 3, "{small} of {} values from the quiet side", merged.values().len());
    }

    #[test]
    fn a_reservoir_is_a_uniform_sample_of_a_long_stream() {
        const N: u64 = 1_000_000;
        let r = stream(N, 7);
        assert_eq!((r.seen(), r.values().len()), (N, MAX_SAMPLES));
        let n = N as f64;
        let mean = r.values().iter().sum::<f64>() / MAX_SAMPLES as f64 / n;
        // The sample mean of 5,000 uniform values has a standard error of 0.29 / 71 = 0.004.
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
        for q in [0.1, 0.5, 0.9] {
            let got = quantile(r.values(), q) / n;
            assert!((got - q).abs() < 0.02, "quantile {q}: {got}");
        }
        let p = uniform_p(r.values(), n);
        assert!(p > 0.01, "KS against uniform: p = {p}");
        let quantiles = [0.1, 0.5, 0.9].map(|q| quantile(r.values(), q) / n);
        eprintln!("reservoir of {N} increasing values: mean {mean:.4}, quantiles 0.1/0.5/0.9 {quantiles:.4?}, KS p = {p:.3}");
        // Keeping the first 5,000 (what a capped list does) fails the same test outright.
        let first: Vec<f64> = (0..MAX_SAMPLES).map(|i| i as f64).collect();
        assert!(uniform_p(&first, n) < 1e-10);
    }

    #[test]
    fn a_short_stream_is_kept_whole() {
        let r = stream(10, 1);
        assert_eq!((r.seen(), r.values()), (10, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..]));
    }

    /// Merges `small` values of 1.0 with `large` values of 0.0 (each side a reservoir, offered one
    /// by one), `trials` times: the average share of ones in the merged sample.
    fn share_of_small(small: u64, large: u64, trials: u64) -> f64 {
        let mut rng = Rng::with_seed(11);
        let mut large_side = Reservoir::default();
        for _ in 0..large {
            large_side.offer(0.0, &mut rng);
        }
        let mut small_side = Reservoir::default();
        for _ in 0..small {
            small_side.offer(1.0, &mut rng);
        }
        let mut ones = 0.0;
        for _ in 0..trials {
            // Both orders: which side is merged into which must not matter.
            let mut merged = small_side.clone();
            merged.merge(&large_side, &mut rng);
            let mut other_way = large_side.clone();
            other_way.merge(&small_side, &mut rng);
            for m in [&merged, &other_way] {
                assert_eq!((m.seen(), m.values().len()), (small + large, MAX_SAMPLES.min((small + large) as usize)));
                ones += m.values().iter().sum::<f64>() / m.values().len() as f64;
            }
        }
        ones / (2 * trials) as f64
    }

    #[test]
    fn merging_weighs_each_side_by_what_it_saw() {
        // (small, large, trials, expected share of the small side, tolerance)
        let table = [
            // 10 of 100,010 values: about 0.5 of the 5,000 kept, 1e-4 of the sample.
            (10, 100_000, 1_000, 10.0 / 100_010.0, 0.15e-4),
            (5_000, 5_000, 20, 0.5, 0.01),
            (10_000, 1_000_000, 20, 10_000.0 / 1_010_000.0, 0.001),
            (100, 300, 5, 0.25, 1e-12),
        ];
        for (small, large, trials, expected, tolerance) in table {
            let share = share_of_small(small, large, trials);
            eprintln!("merging {small} with {large}: share of the {small} {share:.3e}, expected {expected:.3e}");
            assert!((share - expected).abs() <= tolerance, "{small} + {large}: share {share}, expected {expected}");
        }
    }

    #[test]
    fn merging_many_windows_of_different_sizes_stays_uniform() {
        // Windows of very different sizes, each offered consecutive values, merged in turn as the
        // engine does: the merged sample is uniform over the whole range.
        let sizes = [10u64, 200_000, 30, 5_000, 700_000, 1, 94_959];
        let total: u64 = sizes.iter().sum();
        let mut rng = Rng::with_seed(3);
        let mut merged = Reservoir::default();
        let mut start = 0u64;
        for (i, size) in sizes.iter().enumerate() {
            let mut window = Reservoir::default();
            for v in start..start + size {
                window.offer(v as f64, &mut rng);
            }
            start += size;
            merged.merge(&window, &mut rng);
            assert_eq!(merged.seen(), sizes[..=i].iter().sum::<u64>());
        }
        assert_eq!(merged.values().len(), MAX_SAMPLES);
        let p = uniform_p(merged.values(), total as f64);
        assert!(p > 0.01, "KS against uniform: p = {p}");
        let mean = merged.values().iter().sum::<f64>() / MAX_SAMPLES as f64 / total as f64;
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
        eprintln!("{} windows of sizes {sizes:?} merged: mean {mean:.4}, KS p = {p:.3}", sizes.len());
    }

    #[test]
    fn samples_merge_counts_and_reservoirs() {
        let mut rng = Rng::with_seed(5);
        let mut a = Sample { requests: 3, errors: 1, latencies: vec![0.1, 0.2, 0.3].into(), ..Default::default() };
        let b = Sample { requests: 2, errors: 0, latencies: vec![0.4, 0.5].into(), scores: vec![0.9].into(), ..Default::default() };
        a.merge(&b, &mut rng);
        assert_eq!((a.requests, a.errors, a.latencies.seen(), a.scores.values()), (5, 1, 5, &[0.9][..]));
        assert_eq!(a.latencies.values(), [0.1, 0.2, 0.3, 0.4, 0.5]);
    }

    #[test]
    fn reads_what_it_writes_and_the_older_bare_lists() {
        let r = stream(6_000, 2);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reservoir<f64>>(&json).unwrap(), r);
        let old: Sample = serde_json::from_str(r#"{"requests": 2, "errors": 0, "latencies": [0.1, 0.2], "scores": [], "labelled": [[0.9, true]]}"#).unwrap();
        assert_eq!((old.latencies.seen(), old.labelled.values()), (2, &[(0.9, true)][..]));
    }
}
