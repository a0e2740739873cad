//! Checks: each compares the candidate with stable over the same window and gives a verdict.
//! Too few samples is *inconclusive*, never a pass. A check the step gives nothing to judge is
//! *not applicable* there: the engine decides which, by the kind of step.

use fastrand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::sample::{MAX_SAMPLES, Reservoir, Sample};
use crate::stats;

/// One analysis window: what stable and the candidate did over the same period. In a shadow
/// step the candidate's sample is its answers to the mirrored copies of stable's requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub stable: Sample,
    pub candidate: Sample,
    /// Shadow comparisons in the window (candidate answering mirrored requests).
    pub compared: u64,
    pub agreed: u64,
    /// Values fetched from outside for this window, by check key (PromQL results).
    #[serde(default)]
    pub external: std::collections::BTreeMap<String, f64>,
}

impl Window {
    /// Adds `other` to this window; `rng` picks which values the merged samples keep.
    pub fn merge(&mut self, other: &Window, rng: &mut Rng) {
        self.stable.merge(&other.stable, rng);
        self.candidate.merge(&other.candidate, rng);
        self.compared += other.compared;
        self.agreed += other.agreed;
        // The latest value of an external query stands for the window.
        self.external.extend(other.external.iter().map(|(k, v)| (k.clone(), *v)));
    }

    /// Both samples thinned to at most `n` values per reservoir ([`Sample::thin`]).
    pub fn thin(&mut self, n: usize, rng: &mut Rng) {
        self.stable.thin(n, rng);
        self.candidate.thin(n, rng);
    }

    /// Nothing observed.
    pub fn is_empty(&self) -> bool {
        self.stable.is_empty() && self.candidate.is_empty() && self.compared == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Fails when the candidate's error rate is above stable's by more than `max_increase`
    /// (absolute, e.g. 0.01 = one point) with significance `alpha`.
    ErrorRate {
        #[serde(default = "default_increase")]
        max_increase: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
    /// Fails when the candidate is slower: a one-sided Mann-Whitney test on per-request latencies
    /// significant at `alpha`, and the candidate's median above stable's by more than `max_ratio`.
    Latency {
        #[serde(default = "default_ratio")]
        max_ratio: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
    /// Shadow: the share of requests where the candidate's answer agrees with stable's.
    Agreement { min: f64 },
    /// Prediction drift: population stability index of the candidate's scores against stable's.
    Drift {
        #[serde(default = "default_psi")]
        max_psi: f64,
    },
    /// A PromQL query against a Prometheus server (for fleets whose replicas report there):
    /// `{{model}}`, `{{stable}}` and `{{candidate}}` in the query are replaced by the names; the
    /// query's value must stay within `max` (and above `min`). No value is inconclusive.
    Prometheus {
        url: String,
        query: String,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        min: Option<f64>,
    },
    /// Quality on delayed ground truth: the candidate's accuracy or AUC minus stable's must not
    /// fall below `min_delta`, once each has `min_labels` labels.
    Quality {
        metric: QualityMetric,
        #[serde(default)]
        min_delta: f64,
        #[serde(default = "default_labels")]
        min_labels: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityMetric {
    Accuracy,
    Auc,
}

fn default_increase() -> f64 {
    0.0
}
fn default_alpha() -> f64 {
    0.01
}
fn default_ratio() -> f64 {
    1.1
}
fn default_psi() -> f64 {
    0.1
}
fn default_labels() -> usize {
    200
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Pass { value: f64 },
    Fail { value: f64, reason: String },
    Inconclusive { reason: String },
    /// The step gives the check nothing to judge (latency in a shadow step, where copies run at
    /// background priority; agreement outside one): it neither holds nor fails the step.
    NotApplicable { reason: String },
}

impl Check {
    pub fn name(&self) -> &'static str {
        match self {
            Check::ErrorRate { .. } => "error_rate",
            Check::Latency { .. } => "latency",
            Check::Agreement { .. } => "agreement",
            Check::Drift { .. } => "drift",
            Check::Quality { .. } => "quality",
            Check::Prometheus { .. } => "prometheus",
        }
    }

    /// The query a Prometheus check sends, with the names filled in.
    pub fn promql(&self, model: &str, stable: &str, candidate: &str) -> Option<(String, String)> {
        match self {
            Check::Prometheus { url, query, .. } => Some((
                url.clone(),
                query.replace("{{model}}", model).replace("{{stable}}", stable).replace("{{candidate}}", candidate),
            )),
            _ => None,
        }
    }

    /// Judges one window; `min_samples` is the policy's floor under which nothing is concluded.
    /// The floor counts the values seen, not the sample kept of them.
    pub fn judge(&self, w: &Window, min_samples: u64) -> Verdict {
        // Nothing is concluded from no samples, whatever the floor says: an empty window has no
        // median and no rates.
        let min_samples = min_samples.max(1);
        let few = |what: &str, have: u64| Verdict::Inconclusive { reason: format!("{have} {what}, fewer than {min_samples}") };
        match *self {
            Check::ErrorRate { max_increase, alpha } => {
                let (s, c) = (&w.stable, &w.candidate);
                if c.requests < min_samples || s.requests < min_samples {
                    return few("requests", c.requests.min(s.requests));
                }
                let (rs, rc) = (s.errors as f64 / s.requests as f64, c.errors as f64 / c.requests as f64);
                let p = stats::proportion_greater_by(s.errors, s.requests, c.errors, c.requests, max_increase).unwrap_or(1.0);
                if rc > rs + max_increase && p < alpha {
                    Verdict::Fail { value: rc, reason: format!("error rate {:.4} vs stable {:.4} (p = {p:.2e})", rc, rs) }
                } else {
                    Verdict::Pass { value: rc }
                }
            }
            Check::Latency { max_ratio, alpha } => {
                let (s, c) = (&w.stable.latencies, &w.candidate.latencies);
                if c.seen() < min_samples || s.seen() < min_samples {
                    return few("latency samples", c.seen().min(s.seen()));
                }
                let (s, c) = (s.values(), c.values());
                let ratio = median(c) / median(s).max(f64::MIN_POSITIVE);
                let test = stats::mann_whitney(s, c).map_or(1.0, |t| t.p_greater);
                if test < alpha && ratio > max_ratio {
                    Verdict::Fail { value: ratio, reason: format!("median latency {ratio:.2}x stable's (Mann-Whitney p = {test:.2e})") }
                } else {
                    Verdict::Pass { value: ratio }
                }
            }
            Check::Agreement { min } => {
                if w.compared < min_samples {
                    return few("shadow comparisons", w.compared);
                }
                let rate = w.agreed as f64 / w.compared as f64;
                if rate < min {
                    Verdict::Fail { value: rate, reason: format!("agreement {rate:.4} below {min}") }
                } else {
                    Verdict::Pass { value: rate }
                }
            }
            Check::Drift { max_psi } => {
                let (s, c) = (&w.stable.scores, &w.candidate.scores);
                if c.seen() < min_samples || s.seen() < min_samples {
                    return few("scores", c.seen().min(s.seen()));
                }
                let psi = stats::psi(s.values(), c.values(), 10).unwrap_or(0.0);
                if psi > max_psi {
                    Verdict::Fail { value: psi, reason: format!("prediction drift PSI {psi:.3} above {max_psi}") }
                } else {
                    Verdict::Pass { value: psi }
                }
            }
            Check::Prometheus { ref query, max, min, .. } => match w.external.get(query) {
                None => Verdict::Inconclusive { reason: "no value from Prometheus yet".to_owned() },
                Some(&v) if max.is_some_and(|m| v > m) => {
                    Verdict::Fail { value: v, reason: format!("{query} = {v} above {}", max.unwrap_or_default()) }
                }
                Some(&v) if min.is_some_and(|m| v < m) => {
                    Verdict::Fail { value: v, reason: format!("{query} = {v} below {}", min.unwrap_or_default()) }
                }
                Some(&v) => Verdict::Pass { value: v },
            },
            Check::Quality { metric, min_delta, min_labels } => {
                let min_labels = min_labels.max(1);
                let (s, c) = (&w.stable.labelled, &w.candidate.labelled);
                if c.seen() < min_labels as u64 || s.seen() < min_labels as u64 {
                    return Verdict::Inconclusive {
                        reason: format!("{} labels, waiting for {min_labels}", c.seen().min(s.seen())),
                    };
                }
                let (s, c) = (s.values(), c.values());
                let score = |l: &[(f64, bool)]| match metric {
                    QualityMetric::Accuracy => {
                        let (scores, labels): (Vec<f64>, Vec<bool>) = l.iter().copied().unzip();
                        stats::accuracy(&scores, &labels).unwrap_or(0.0)
                    }
                    QualityMetric::Auc => {
                        let (scores, labels): (Vec<f64>, Vec<bool>) = l.iter().copied().unzip();
                        stats::auc(&scores, &labels).unwrap_or(0.5)
                    }
                };
                let delta = score(c) - score(s);
                if delta < min_delta {
                    Verdict::Fail { value: delta, reason: format!("{metric:?} {delta:+.4} against stable, below {min_delta:+}") }
                } else {
                    Verdict::Pass { value: delta }
                }
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64) -> Sample {
        Sample { requests, errors, ..Default::default() }
    }

    fn window(stable: Sample, candidate: Sample) -> Window {
        Window { stable, candidate, ..Default::default() }
    }

    fn check(c: Check, w: &Window) -> String {
        match c.judge(w, 100) {
            Verdict::Pass { .. } => "pass".into(),
            Verdict::Fail { reason, .. } => format!("fail: {reason}"),
            Verdict::Inconclusive { reason } => format!("inconclusive: {reason}"),
            Verdict::NotApplicable { reason } => format!("not applicable: {reason}"),
        }
    }

    #[test]
    fn error_rate() {
        let c = Check::ErrorRate { max_increase: 0.0, alpha: 0.01 };
        assert_eq!(check(c.clone(), &window(sample(1000, 10), sample(50, 5))), "inconclusive: 50 requests, fewer than 100");
        assert_eq!(check(c.clone(), &window(sample(1000, 10), sample(1000, 12))), "pass");
        assert!(check(c.clone(), &window(sample(1000, 10), sample(1000, 40))).starts_with("fail: error rate 0.0400 vs stable 0.0100"));
        // With an allowance of two points, +1.5 points passes.
        let lenient = Check::ErrorRate { max_increase: 0.02, alpha: 0.01 };
        assert_eq!(check(lenient, &window(sample(1000, 10), sample(1000, 25))), "pass");
    }

    #[test]
    fn latency_needs_significance_and_size() {
        let c = Check::Latency { max_ratio: 1.1, alpha: 0.01 };
        let base: Vec<f64> = (0..500).map(|i| 0.001 + f64::from(i % 50) * 1e-5).collect();
        let slow: Vec<f64> = base.iter().map(|x| x * 1.3).collect();
        let w = |c: Vec<f64>| window(Sample { latencies: base.clone().into(), ..Default::default() }, Sample { latencies: c.into(), ..Default::default() });
        assert_eq!(check(c.clone(), &w(base.clone())), "pass");
        assert!(check(c.clone(), &w(slow)).starts_with("fail: median latency 1.30x"));
        assert!(check(c, &w(base[..20].to_vec())).starts_with("inconclusive"));
    }

    #[test]
    fn agreement_drift_and_quality() {
        let w = Window { compared: 1000, agreed: 950, ..Default::default() };
        assert!(check(Check::Agreement { min: 0.98 }, &w).starts_with("fail: agreement 0.9500"));
        assert_eq!(check(Check::Agreement { min: 0.9 }, &w), "pass");
        let scores: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let shifted: Vec<f64> = scores.iter().map(|s| s * 0.5 + 0.5).collect();
        let drift = |c: Vec<f64>| window(Sample { scores: scores.clone().into(), ..Default::default() }, Sample { scores: c.into(), ..Default::default() });
        assert_eq!(check(Check::Drift { max_psi: 0.1 }, &drift(scores.clone())), "pass");
        assert!(check(Check::Drift { max_psi: 0.1 }, &drift(shifted)).starts_with("fail: prediction drift"));
        let good: Vec<(f64, bool)> = (0..400).map(|i| if i % 2 == 0 { (0.9, true) } else { (0.1, false) }).collect();
        let bad: Vec<(f64, bool)> = (0..400).map(|i| if i % 5 == 0 { (0.1, true) } else if i % 2 == 0 { (0.9, true) } else { (0.1, false) }).collect();
        let q = Check::Quality { metric: QualityMetric::Accuracy, min_delta: -0.01, min_labels: 200 };
        let labelled = |c: Vec<(f64, bool)>| window(Sample { labelled: good.clone().into(), ..Default::default() }, Sample { labelled: c.into(), ..Default::default() });
        assert_eq!(check(q.clone(), &labelled(good.clone())), "pass");
        assert!(check(q.clone(), &labelled(bad)).starts_with("fail: Accuracy"));
        assert_eq!(check(q, &labelled(good[..10].to_vec())), "inconclusive: 10 labels, waiting for 200");
    }

    #[test]
    fn an_empty_window_is_inconclusive_even_with_no_floor() {
        let checks = [
            Check::ErrorRate { max_increase: 0.0, alpha: 0.01 },
            Check::Latency { max_ratio: 1.1, alpha: 0.01 },
            Check::Agreement { min: 0.9 },
            Check::Drift { max_psi: 0.1 },
            Check::Quality { metric: QualityMetric::Accuracy, min_delta: 0.0, min_labels: 0 },
        ];
        for c in checks {
            let verdict = c.judge(&Window::default(), 0);
            assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{}: {verdict:?}", c.name());
        }
    }

    #[test]
    fn checks_read_from_json() {
        let c: Check = serde_json::from_str(r#"{"latency": {"max_ratio": 1.2}}"#).unwrap();
        assert_eq!(c, Check::Latency { max_ratio: 1.2, alpha: 0.01 });
    }
}
