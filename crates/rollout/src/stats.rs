//! Comparing two samples: does the candidate behave like stable? And how good are predictions
//! against ground truth?
//!
//! Every test here answers a one-sided question ("is the candidate worse?") with a p-value, or
//! measures a distance between distributions, from raw samples. They are exact formulas or the
//! standard large-sample approximations; callers decide how many samples are enough. The quality
//! metrics (AUC, accuracy, log loss; RMSE, MAE, R²) are scikit-learn's definitions, and the tests
//! hold them to values scikit-learn computed.

/// The standard normal cumulative distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * (-z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
        .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Average ranks (1-based) of `values`, ties sharing their mean rank; also the tie correction
/// term sum(t^3 - t) over tie groups.
fn ranks(values: &[f64]) -> (Vec<f64>, f64) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut ties = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && values[order[j]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j + 1) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = rank;
        }
        let t = (j - i) as f64;
        ties += t * t * t - t;
        i = j;
    }
    (ranks, ties)
}

/// Mann-Whitney U test of whether `candidate` values tend to be larger than `stable` ones (e.g.
/// latencies): returns the one-sided p-value (normal approximation with tie and continuity
/// correction) and the common-language effect size P(candidate > stable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    pub p_greater: f64,
    pub effect: f64,
}

pub fn mann_whitney(stable: &[f64], candidate: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (stable.len() as f64, candidate.len() as f64);
    if stable.is_empty() || candidate.is_empty() {
        return None;
    }
    let all: Vec<f64> = stable.iter().chain(candidate).copied().collect();
    let (r, ties) = ranks(&all);
    let rank_sum_candidate: f64 = r[stable.len()..].iter().sum();
    let u = rank_sum_candidate - n2 * (n2 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let effect = u / (n1 * n2);
    if variance <= 0.0 {
        return Some(MannWhitney { p_greater: 1.0, effect });
    }
    let z = (u - mean - 0.5) / variance.sqrt();
    Some(MannWhitney { p_greater: 1.0 - normal_cdf(z), effect })
}

/// One-sided two-proportion z test: p-value that the candidate's rate (`bad_c` of `n_c`) is above
/// stable's (`bad_s` of `n_s`).
pub fn proportion_greater(bad_s: u64, n_s: u64, bad_c: u64, n_c: u64) -> Option<f64> {
    if n_s == 0 || n_c == 0 {
        return None;
    }
    let (ps, pc) = (bad_s as f64 / n_s as f64, bad_c as f64 / n_c as f64);
    let pooled = (bad_s + bad_c) as f64 / (n_s + n_c) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n_s as f64 + 1.0 / n_c as f64)).sqrt();
    if se == 0.0 {
        return Some(if pc > ps { 0.0 } else { 1.0 });
    }
    Some(1.0 - normal_cdf((pc - ps) / se))
}

/// One-sided test that the candidate's rate exceeds stable's by more than `margin` (absolute):
/// Wald z with unpooled variance (a floor of one event per side keeps zero counts testable).
pub fn proportion_greater_by(bad_s: u64, n_s: u64, bad_c: u64, n_c: u64, margin: f64) -> Option<f64> {
    if margin == 0.0 {
        return proportion_greater(bad_s, n_s, bad_c, n_c);
    }
    if n_s == 0 || n_c == 0 {
        return None;
    }
    let rate = |bad: u64, n: u64| (bad.max(1) as f64 / n as f64).min(1.0);
    let (ps, pc) = (rate(bad_s, n_s), rate(bad_c, n_c));
    let se = (ps * (1.0 - ps) / n_s as f64 + pc * (1.0 - pc) / n_c as f64).sqrt();
    let diff = bad_c as f64 / n_c as f64 - bad_s as f64 / n_s as f64 - margin;
    Some(if se == 0.0 { if diff > 0.0 { 0.0 } else { 1.0 } } else { 1.0 - normal_cdf(diff / se) })
}

/// Population stability index of `actual` against `expected`, over `bins` quantile bins of
/// `expected` (1e-4 floor per bin so empty bins stay finite). Rule of thumb: < 0.1 stable,
/// 0.1-0.25 moderate shift, > 0.25 large shift.
pub fn psi(expected: &[f64], actual: &[f64], bins: usize) -> Option<f64> {
    if expected.is_empty() || actual.is_empty() || bins < 2 {
        return None;
    }
    let mut sorted = expected.to_vec();
    sorted.sort_by(f64::total_cmp);
    let edges: Vec<f64> = (1..bins).map(|i| sorted[(i * sorted.len() / bins).min(sorted.len() - 1)]).collect();
    let histogram = |values: &[f64]| {
        let mut counts = vec![0.0; bins];
        for v in values {
            counts[edges.partition_point(|e| e <= v)] += 1.0;
        }
        counts.iter().map(|c| (c / values.len() as f64).max(1e-4)).collect::<Vec<f64>>()
    };
    let (e, a) = (histogram(expected), histogram(actual));
    Some(e.iter().zip(&a).map(|(e, a)| (a - e) * (a / e).ln()).sum())
}

/// Two-sample Kolmogorov-Smirnov: the largest distance between the empirical distributions, and
/// its asymptotic p-value.
pub fn ks(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    let n = (a.len() * b.len()) as f64 / (a.len() + b.len()) as f64;
    let lambda = (n.sqrt() + 0.12 + 0.11 / n.sqrt()) * d;
    // Kolmogorov's series for the tail probability.
    let p = (1..=100).map(|k| {
        let k = f64::from(k);
        2.0 * (-1f64).powf(k - 1.0) * (-2.0 * k * k * lambda * lambda).exp()
    });
    Some((d, p.sum::<f64>().clamp(0.0, 1.0)))
}

/// Area under the ROC curve of `scores` for binary `labels`; `None` without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 || scores.len() != labels.len() {
        return None;
    }
    let (r, _) = ranks(scores);
    let rank_sum: f64 = r.iter().zip(labels).filter(|(_, l)| **l).map(|(r, _)| r).sum();
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// The share of `scores` on the right side of 0.5 (`>= 0.5` is the positive class, as the rollout's
/// quality check decides), for binary `labels`.
pub fn accuracy(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.is_empty() || scores.len() != labels.len() {
        return None;
    }
    Some(scores.iter().zip(labels).filter(|(p, y)| (**p >= 0.5) == **y).count() as f64 / scores.len() as f64)
}

/// Mean binary cross-entropy of `probabilities` (of the positive class) for `labels`, each
/// clipped to [ε, 1 − ε] with ε the f64 machine epsilon, as scikit-learn's `log_loss` does for
/// float64 input (so a confident wrong answer costs ~36, not infinity).
pub fn log_loss(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
    if probabilities.is_empty() || probabilities.len() != labels.len() {
        return None;
    }
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(f64::EPSILON, 1.0 - f64::EPSILON);
            -(if y { p.ln() } else { (1.0 - p).ln() })
        })
        .sum();
    Some(total / probabilities.len() as f64)
}

/// Root mean squared error of `predictions` against `targets`.
pub fn rmse(predictions: &[f64], targets: &[f64]) -> Option<f64> {
    mean_of(predictions, targets, |d| d * d).map(f64::sqrt)
}

/// Mean absolute error of `predictions` against `targets`.
pub fn mae(predictions: &[f64], targets: &[f64]) -> Option<f64> {
    mean_of(predictions, targets, f64::abs)
}

/// The coefficient of determination, 1 − SS_res / SS_tot. Constant targets have no variance to
/// explain: 1 when every prediction is exact, else 0 (scikit-learn's `force_finite`).
pub fn r2(predictions: &[f64], targets: &[f64]) -> Option<f64> {
    let residual = mean_of(predictions, targets, |d| d * d)?;
    let mean = targets.iter().sum::<f64>() / targets.len() as f64;
    let total = targets.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>() / targets.len() as f64;
    Some(if total == 0.0 { if residual == 0.0 { 1.0 } else { 0.0 } } else { 1.0 - residual / total })
}

fn mean_of(predictions: &[f64], targets: &[f64], f: impl Fn(f64) -> f64) -> Option<f64> {
    if predictions.is_empty() || predictions.len() != targets.len() {
        return None;
    }
    Some(predictions.iter().zip(targets).map(|(p, t)| f(p - t)).sum::<f64>() / predictions.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers (SplitMix64) for reproducible samples.
    fn uniform(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        for (z, p) in [(0.0, 0.5), (1.0, 0.841_344_7), (-1.96, 0.024_997_9), (3.0, 0.998_650_1)] {
            assert!((normal_cdf(z) - p).abs() < 1e-6, "{z}: {}", normal_cdf(z));
        }
    }

    #[test]
    fn mann_whitney_sees_a_slower_candidate_and_not_an_equal_one() {
        let stable = uniform(1, 500);
        let same = uniform(2, 500);
        let slower: Vec<f64> = uniform(3, 500).iter().map(|x| x * 1.3).collect();
        let equal = mann_whitney(&stable, &same).unwrap();
        assert!(equal.p_greater > 0.05 && (equal.effect - 0.5).abs() < 0.05, "{equal:?}");
        let worse = mann_whitney(&stable, &slower).unwrap();
        assert!(worse.p_greater < 1e-6 && worse.effect > 0.6, "{worse:?}");
        // Ties everywhere: no evidence either way.
        let flat = mann_whitney(&[1.0; 50], &[1.0; 50]).unwrap();
        assert!(flat.p_greater > 0.4);
        assert_eq!(mann_whitney(&[], &[1.0]), None);
    }

    #[test]
    fn proportions() {
        assert!(proportion_greater(10, 1000, 10, 1000).unwrap() > 0.4);
        assert!(proportion_greater(10, 1000, 40, 1000).unwrap() < 1e-4);
        assert!(proportion_greater(40, 1000, 10, 1000).unwrap() > 0.99);
        assert_eq!(proportion_greater(0, 0, 1, 10), None);
    }

    #[test]
    fn psi_and_ks_see_a_shift() {
        let a = uniform(4, 2000);
        let b = uniform(5, 2000);
        let shifted: Vec<f64> = b.iter().map(|x| x * 0.7 + 0.3).collect();
        assert!(psi(&a, &b, 10).unwrap() < 0.02);
        assert!(psi(&a, &shifted, 10).unwrap() > 0.25);
        let (d, p) = ks(&a, &b).unwrap();
        assert!(d < 0.05 && p > 0.05, "{d} {p}");
        let (d, p) = ks(&a, &shifted).unwrap();
        assert!(d > 0.25 && p < 1e-6, "{d} {p}");
    }

    #[test]
    fn auc_of_perfect_random_and_inverted_scores() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    }

    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() < 1e-12 * want.abs().max(1.0))
    }

    /// Expected values from scikit-learn 1.9.1 (`roc_auc_score`, `log_loss(labels=[0, 1])`,
    /// `accuracy_score(y, p >= 0.5)`) on float64 input, recorded as literals.
    #[test]
    fn classification_metrics_match_scikit_learn() {
        /// Scores, labels, then AUC, log loss and accuracy.
        type Case = (&'static [f64], &'static [u8], f64, f64, f64);
        let cases: [Case; 4] = [
            (&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], 0.75, 0.472_287_953_809_176_15, 0.75),
            (&[0.9, 0.2, 0.6, 0.6, 0.3, 0.5, 0.05], &[1, 0, 1, 0, 0, 1, 0], 0.875, 0.408_105_120_214_058_6, 0.857_142_857_142_857_1),
            // Certain answers, right: the clipping keeps the loss finite and tiny.
            (&[0.0, 1.0, 0.5, 0.25], &[0, 1, 1, 0], 1.0, 0.245_207_313_252_931_66, 1.0),
            // Certain answers, wrong: each costs -ln(ε) ≈ 36.04.
            (&[1.0, 0.0, 0.7], &[0, 1, 1], 0.0, 24.147_993_907_391_01, 0.333_333_333_333_333_3),
        ];
        for (scores, labels, want_auc, want_loss, want_accuracy) in cases {
            let labels: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
            assert!(close(auc(scores, &labels), want_auc), "auc {scores:?}: {:?}", auc(scores, &labels));
            assert!(close(log_loss(scores, &labels), want_loss), "log loss {scores:?}: {:?}", log_loss(scores, &labels));
            assert!(close(accuracy(scores, &labels), want_accuracy), "accuracy {scores:?}: {:?}", accuracy(scores, &labels));
        }
        assert_eq!((accuracy(&[], &[]), log_loss(&[0.5], &[]), log_loss(&[], &[])), (None, None, None));
    }

    /// Expected values from scikit-learn 1.9.1 (`sqrt(mean_squared_error)`, `mean_absolute_error`,
    /// `r2_score`), recorded as literals.
    #[test]
    fn regression_metrics_match_scikit_learn() {
        /// Predictions, targets, then RMSE, MAE and R².
        type Case = (&'static [f64], &'static [f64], f64, f64, f64);
        let cases: [Case; 4] = [
            (&[2.5, 0.0, 2.0, 8.0], &[3.0, -0.5, 2.0, 7.0], 0.612_372_435_695_794_5, 0.5, 0.948_608_137_044_967_9),
            (&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 0.0, 0.0, 1.0),
            (&[10.0, -3.5, 4.25, 0.0, 7.5], &[9.0, -2.0, 5.0, 1.0, 6.0], 1.188_486_432_400_471_4, 1.15, 0.905_581_550_802_139_1),
            // Constant targets: nothing to explain, and these predictions are not exact.
            (&[1.0, 2.0], &[4.0, 4.0], 2.549_509_756_796_392_2, 2.5, 0.0),
        ];
        for (predictions, targets, want_rmse, want_mae, want_r2) in cases {
            assert!(close(rmse(predictions, targets), want_rmse), "rmse {predictions:?}: {:?}", rmse(predictions, targets));
            assert!(close(mae(predictions, targets), want_mae), "mae {predictions:?}: {:?}", mae(predictions, targets));
            assert!(close(r2(predictions, targets), want_r2), "r2 {predictions:?}: {:?}", r2(predictions, targets));
        }
        assert_eq!(r2(&[4.0, 4.0], &[4.0, 4.0]), Some(1.0));
        assert_eq!((rmse(&[], &[]), mae(&[1.0], &[1.0, 2.0]), r2(&[], &[])), (None, None, None));
    }

    /// Expected values from an independent NumPy implementation (edges at the sorted expected
    /// values' `i·n/bins` positions, `searchsorted(side="right")`, a 1e-4 floor per bin).
    #[test]
    fn psi_matches_an_independent_implementation() {
        let expected: Vec<f64> = (0..20).map(|i| 0.05 * f64::from(i)).collect();
        let shifted: Vec<f64> = expected.iter().map(|x| x + 0.2).collect();
        let cases: [(&[f64], &[f64], usize, f64); 4] = [
            (&expected, &expected, 4, 0.0),
            (&expected, &shifted, 4, 0.439_444_915_467_243_9),
            (&expected, &[0.9; 10], 4, 6.905_408_065_178_880_5),
            (&[0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], &[0.2, 0.2, 0.2, 0.6, 0.65, 0.7, 0.9, 0.95, 0.99], 3, 1.126_041_324_185_58),
        ];
        for (e, a, bins, want) in cases {
            assert!(close(psi(e, a, bins), want), "psi {a:?}: {:?}", psi(e, a, bins));
        }
    }
}
