//! Always-valid statistics: conclusions that stay within their false-alarm bound however often
//! they are looked at.
//!
//! A fixed-horizon test (a z test, Mann-Whitney) is valid once, at a sample size chosen in
//! advance. A rollout looks at its evidence at every interval and stops at the first alarm, so
//! each look spends the false-alarm budget again. The checks here use a *confidence sequence*
//! instead: an interval for the difference between candidate and stable that covers the true
//! difference at every sample size at once, with probability at least 1 − α. Concluding as soon
//! as the interval leaves a boundary keeps the false-alarm rate at α whenever and however often
//! the evidence is read.
//!
//! The sequence is the normal-mixture one behind the mixture sequential probability ratio test
//! (mSPRT; Robbins 1970; Johari, Koomen, Pekelis and Walsh, "Always Valid Inference", Operations
//! Research 2022), on the estimated difference of two means and its estimated variance, as in the
//! asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
//! ("Time-uniform central limit theory", 2021). With V the variance of the estimate and τ the
//! mixing scale, the radius at level α is
//!
//! ```text
//! r = sqrt( V (V + τ²) / τ² · ( ln((V + τ²) / V) + 2 ln(1/α) ) )
//! ```
//!
//! τ is not left to the user: it is the effect the check is asked to detect (the radius shrinks
//! fastest around the sample size where it reaches that effect when τ² ≈ 0.94 δ², so τ = δ).
//! Conclusions are one-sided ("worse than", "no worse than"): each is drawn from the two-sided
//! sequence at 2α, so each direction errs at most α (the sequence is symmetric).
//!
//! Everything here is a sufficient statistic (counts, sums, sums of squares): it adds up across
//! intervals, replicas and restarts exactly, and is stored with the rollout.

use serde::{Deserialize, Serialize};

/// Count, sum and sum of squares of a stream of values: what a mean and its variance need.
/// Merging two is adding them, exactly, in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        if x.is_finite() {
            self.n += 1;
            self.sum += x;
            self.sum_sq += x * x;
        }
    }

    pub fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (n − 1), never below 0.
    pub fn variance(&self) -> Option<f64> {
        (self.n > 1).then(|| {
            let n = self.n as f64;
            ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
        })
    }
}

/// What the candidate and stable did over a step, as sufficient statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    /// Natural logarithms of per-request latencies (seconds): their mean difference is the log of
    /// the ratio of typical (geometric-mean) latencies.
    #[serde(default)]
    pub log_latency: Moments,
    /// The model's scores, for drift of their mean.
    #[serde(default)]
    pub score: Moments,
    /// 1 for a labelled prediction on the right side of 0.5, else 0: its mean is the accuracy.
    #[serde(default)]
    pub correct: Moments,
    /// Business rewards (a conversion, revenue) posted for the version's answers.
    #[serde(default)]
    pub reward: Moments,
}

impl Sums {
    pub fn merge(&mut self, other: &Sums) {
        self.log_latency.merge(&other.log_latency);
        self.score.merge(&other.score);
        self.correct.merge(&other.correct);
        self.reward.merge(&other.reward);
    }
}

/// An estimate with its confidence-sequence bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    fn around(estimate: f64, variance: f64, tau: f64, alpha: f64) -> Option<Interval> {
        let r = radius(variance, tau, alpha)?;
        Some(Interval { estimate, low: estimate - r, high: estimate + r })
    }
}

/// The radius of the two-sided normal-mixture confidence sequence at level `alpha` for an
/// estimate of variance `variance`, mixing scale `tau`. `None` for a variance that is not
/// positive and finite (nothing to conclude from).
pub fn radius(variance: f64, tau: f64, alpha: f64) -> Option<f64> {
    if !(variance > 0.0 && variance.is_finite() && tau > 0.0 && alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let t2 = tau * tau;
    Some((variance * (variance + t2) / t2 * (((variance + t2) / variance).ln() + 2.0 * (1.0 / alpha).ln())).sqrt())
}

/// The one-sided level each direction of a two-sided sequence at `alpha` gives: see the module.
fn two_sided(alpha: f64) -> f64 {
    (2.0 * alpha).min(0.5)
}

/// Difference of two error rates (candidate − stable), `errors` of `requests` each, for one-sided
/// conclusions at `alpha`. Each rate's variance is taken at (errors + 1) / (requests + 2), so a
/// side with no error yet is not read as certain.
pub fn rate_difference(stable: (u64, u64), candidate: (u64, u64), tau: f64, alpha: f64) -> Option<Interval> {
    let ((es, ns), (ec, nc)) = (stable, candidate);
    if ns == 0 || nc == 0 {
        return None;
    }
    let var = |e: u64, n: u64| {
        let p = (e as f64 + 1.0) / (n as f64 + 2.0);
        p * (1.0 - p) / n as f64
    };
    let estimate = ec as f64 / nc as f64 - es as f64 / ns as f64;
    Interval::around(estimate, var(es, ns) + var(ec, nc), tau, two_sided(alpha))
}

/// Difference of two means (candidate − stable) for one-sided conclusions at `alpha`; each
/// side's variance is floored at `floor` (values that happen to be equal are not certain).
pub fn mean_difference(stable: &Moments, candidate: &Moments, tau: f64, alpha: f64, floor: f64) -> Option<Interval> {
    let (ms, mc) = (stable.mean()?, candidate.mean()?);
    let (vs, vc) = (stable.variance()?.max(floor), candidate.variance()?.max(floor));
    Interval::around(mc - ms, vs / stable.n as f64 + vc / candidate.n as f64, tau, two_sided(alpha))
}

/// One proportion, `hits` of `n`, for one-sided conclusions at `alpha` (variance as in
/// [`rate_difference`]).
pub fn proportion(hits: u64, n: u64, tau: f64, alpha: f64) -> Option<Interval> {
    if n == 0 {
        return None;
    }
    let p = (hits as f64 + 1.0) / (n as f64 + 2.0);
    Interval::around(hits as f64 / n as f64, p * (1.0 - p) / n as f64, tau, two_sided(alpha))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_add_up_in_any_order() {
        let mut a = Moments::default();
        let mut b = Moments::default();
        for x in [1.0, 2.0, 3.0] {
            a.push(x);
        }
        for x in [4.0, f64::NAN, 5.0] {
            b.push(x);
        }
        let mut ab = a;
        ab.merge(&b);
        let mut ba = b;
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!((ab.n, ab.mean(), ab.variance()), (5, Some(3.0), Some(2.5)));
        assert_eq!((Moments::default().mean(), a.variance().map(|v| v > 0.0)), (None, Some(true)));
    }

    /// The radius is the published formula: checked against values computed by hand (Python,
    /// `math.sqrt(v*(v+t*t)/(t*t)*(math.log((v+t*t)/v)+2*math.log(1/a)))`).
    #[test]
    fn the_radius_is_the_normal_mixture_boundary() {
        let cases = [(1e-4, 0.02, 0.01, 0.036_775_974_297_784_22), (1e-6, 0.01, 0.02, 0.003_544_510_994_901_063), (0.5, 0.5, 0.05, 3.097_643_375_668_706_5)];
        for (v, t, a, want) in cases {
            let got = radius(v, t, a).unwrap();
            assert!((got - want).abs() < 1e-12 * want, "radius({v}, {t}, {a}) = {got}, want {want}");
        }
        // It shrinks as evidence grows, but slower than a fixed-horizon interval (the price of
        // looking at any time): its ratio to sqrt(V) grows like sqrt(ln(1/V)).
        let r = |n: f64| radius(0.04 / n, 0.02, 0.01).unwrap();
        assert!(r(1_000.0) > r(10_000.0) && r(10_000.0) > r(100_000.0));
        assert!(r(100_000.0) / (0.04f64 / 100_000.0).sqrt() > r(1_000.0) / (0.04f64 / 1_000.0).sqrt());
        assert_eq!((radius(0.0, 0.02, 0.01), radius(1e-4, 0.0, 0.01), radius(f64::NAN, 0.1, 0.01)), (None, None, None));
    }

    #[test]
    fn a_rate_with_no_error_yet_is_not_certain() {
        let i = rate_difference((0, 50), (0, 50), 0.01, 0.01).unwrap();
        assert!(i.low < 0.0 && i.high > 0.0, "{i:?}");
        let clear = rate_difference((10, 1_000), (100, 1_000), 0.02, 0.01).unwrap();
        assert!(clear.low > 0.05, "{clear:?}");
        assert_eq!(rate_difference((0, 0), (1, 10), 0.01, 0.01), None);
    }
}
