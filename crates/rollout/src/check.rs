//! Checks: each compares the candidate with stable over the same window and gives a verdict.
//! Too few samples is *inconclusive*, never a pass. A check the step gives nothing to judge is
//! *not applicable* there: the engine decides which, by the kind of step.

use fastrand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::sample::{MAX_SAMPLES, Reservoir, Sample};
use crate::sequential::{self, Sums};
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

/// What one version did over a whole step, as sufficient statistics: what the always-valid
/// checks judge (they read every request since the step began, never a sample of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    #[serde(default)]
    pub sums: Sums,
}

/// Random pairs of one candidate latency and one stable latency, and how many of them had the
/// candidate slower than a tolerance times stable. If the candidate is no slower than that in
/// stochastic order, each pair is slower with probability at most 1/2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairs {
    pub pairs: u64,
    pub slower: u64,
}

/// The evidence of a step so far: every window since it began, added up. It is stored with the
/// rollout, so it survives restarts and a new leader; windows from a fleet's replicas add up the
/// same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub stable: Tally,
    pub candidate: Tally,
    pub compared: u64,
    pub agreed: u64,
    /// Latency pairs by the latency check's tolerance (`max_ratio`, as written).
    #[serde(default)]
    pub latency: std::collections::BTreeMap<String, Pairs>,
}

impl Evidence {
    pub fn add(&mut self, w: &Window) {
        for (tally, sample) in [(&mut self.stable, &w.stable), (&mut self.candidate, &w.candidate)] {
            tally.requests += sample.requests;
            tally.errors += sample.errors;
            tally.sums.merge(&sample.sums);
        }
        self.compared += w.compared;
        self.agreed += w.agreed;
    }

    /// Pairs the window's latencies for a latency check of tolerance `ratio`: each pair one
    /// candidate value and one stable value, every value used once, drawn at random from the
    /// window's uniform samples (so from distinct requests).
    pub fn pair_latencies(&mut self, w: &Window, ratio: f64, rng: &mut Rng) {
        let (s, c) = (w.stable.latencies.values(), w.candidate.latencies.values());
        let n = s.len().min(c.len());
        if n == 0 {
            return;
        }
        let order = |len: usize, rng: &mut Rng| {
            let mut idx: Vec<usize> = (0..len).collect();
            for i in 0..n {
                let j = rng.usize(i..len);
                idx.swap(i, j);
            }
            idx.truncate(n);
            idx
        };
        let (si, ci) = (order(s.len(), rng), order(c.len(), rng));
        let slower = si.iter().zip(&ci).filter(|&(&a, &b)| c[b] > ratio * s[a]).count();
        let entry = self.latency.entry(ratio_key(ratio)).or_default();
        entry.pairs += n as u64;
        entry.slower += slower as u64;
    }
}

/// How a latency tolerance names its pairs in [`Evidence::latency`].
fn ratio_key(ratio: f64) -> String {
    format!("{ratio}")
}

/// The statistics a check uses. The always-valid one is the default in new specs; today's
/// fixed-horizon tests stay available by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// A confidence sequence over the whole step ([`crate::sequential`]): its false-alarm rate
    /// holds at α however often it is read. One conclusion ends the step.
    Sequential,
    /// Error rate: a two-proportion z test on the latest windows.
    ZTest,
    /// Latency: a one-sided Mann-Whitney test on the latest windows' sampled latencies.
    MannWhitney,
    /// Drift: the population stability index of the latest windows' sampled scores.
    Psi,
    /// Agreement: the share of the latest windows against `min`, no interval.
    Threshold,
    /// Quality: the difference of accuracy (or AUC) on the latest windows' sampled labels.
    Difference,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Sequential => "sequential",
            Test::ZTest => "z_test",
            Test::MannWhitney => "mann_whitney",
            Test::Psi => "psi",
            Test::Threshold => "threshold",
            Test::Difference => "difference",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Fails when the candidate's error rate is above stable's by more than `max_increase`
    /// (absolute, e.g. 0.01 = one point), at false-alarm rate `alpha`. `effect` is the rise the
    /// sequential test is tuned to catch quickly (default `max_increase`, or one point).
    ErrorRate {
        #[serde(default = "default_increase")]
        max_increase: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<Test>,
    },
    /// Fails when the candidate is slower than `max_ratio` times stable. Sequential: a test of
    /// stochastic order, on random pairs of one candidate and one stable request: it fails when
    /// the candidate is slower than `max_ratio` times stable in surely more than half of them;
    /// `effect` is the share of pairs it is tuned to catch (default 0.6). `mann_whitney`: a
    /// significant Mann-Whitney test and a median above the ratio.
    Latency {
        #[serde(default = "default_ratio")]
        max_ratio: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<Test>,
    },
    /// Shadow: the share of requests where the candidate's answer agrees with stable's must not
    /// be below `min`.
    Agreement {
        min: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<Test>,
    },
    /// Prediction drift. Sequential: the mean score moves by more than `max_shift` either way;
    /// `psi`: the population stability index of sampled scores is above `max_psi`.
    Drift {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_psi: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_shift: Option<f64>,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<Test>,
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
    /// Quality on delayed ground truth: the candidate's accuracy (or AUC, fixed-horizon only)
    /// minus stable's must not fall below `min_delta`, once each has `min_labels` labels.
    Quality {
        metric: QualityMetric,
        #[serde(default)]
        min_delta: f64,
        #[serde(default = "default_labels")]
        min_labels: usize,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effect: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<Test>,
    },
    /// A business metric: rewards (a conversion as 0/1, revenue) posted for each version's
    /// answers. The candidate wins when an always-valid interval for its mean reward minus
    /// stable's lies above zero, and loses when it lies below; `effect` (in the reward's units)
    /// is the difference the test is tuned to find. Ends an `experiment` step.
    Reward {
        effect: f64,
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default = "default_true")]
        higher_is_better: bool,
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
fn default_labels() -> usize {
    200
}
fn default_true() -> bool {
    true
}
/// The drift check's sequential tolerance when none is given: a move of the mean score by 0.05.
const DEFAULT_SHIFT: f64 = 0.05;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Enough evidence, and nothing wrong found in it; an always-valid check says where its
    /// interval stands.
    Pass {
        value: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An always-valid conclusion in the candidate's favour: shown no worse than the check's
    /// margin (a guard), or better than stable (a reward). It may end a step early.
    Proven { value: f64, reason: String },
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
            Check::Reward { .. } => "reward",
        }
    }

    /// The test the check runs: the one named, else what a new spec gets
    /// ([`Check::with_default_test`]); a check stored before tests had names runs the
    /// fixed-horizon one it ran then.
    pub fn test(&self) -> Option<Test> {
        match self {
            Check::ErrorRate { test, .. } => Some(test.unwrap_or(Test::ZTest)),
            Check::Latency { test, .. } => Some(test.unwrap_or(Test::MannWhitney)),
            Check::Agreement { test, .. } => Some(test.unwrap_or(Test::Threshold)),
            Check::Drift { test, .. } => Some(test.unwrap_or(Test::Psi)),
            Check::Quality { test, .. } => Some(test.unwrap_or(Test::Difference)),
            Check::Reward { .. } => Some(Test::Sequential),
            Check::Prometheus { .. } => None,
        }
    }

    /// Whether the check concludes from an always-valid sequence (a conclusion ends the step).
    pub fn is_sequential(&self) -> bool {
        self.test() == Some(Test::Sequential)
    }

    /// The check as a new spec means it: the sequential test unless one is named (a drift check
    /// that gives only `max_psi`, or a quality check on AUC, keeps the fixed-horizon one).
    pub fn with_default_test(mut self) -> Check {
        match &mut self {
            Check::ErrorRate { test, .. } | Check::Latency { test, .. } | Check::Agreement { test, .. } => {
                test.get_or_insert(Test::Sequential);
            }
            Check::Drift { test, max_psi, max_shift, .. } => {
                test.get_or_insert(if max_psi.is_some() && max_shift.is_none() { Test::Psi } else { Test::Sequential });
            }
            Check::Quality { test, metric, .. } => {
                test.get_or_insert(if *metric == QualityMetric::Auc { Test::Difference } else { Test::Sequential });
            }
            Check::Reward { .. } | Check::Prometheus { .. } => {}
        }
        self
    }

    /// Problems with the test a check names (it must be one the check has).
    pub fn test_problem(&self) -> Option<String> {
        let test = self.test()?;
        let allowed: &[Test] = match self {
            Check::ErrorRate { .. } => &[Test::Sequential, Test::ZTest],
            Check::Latency { .. } => &[Test::Sequential, Test::MannWhitney],
            Check::Agreement { .. } => &[Test::Sequential, Test::Threshold],
            Check::Drift { .. } => &[Test::Sequential, Test::Psi],
            Check::Quality { metric: QualityMetric::Accuracy, .. } => &[Test::Sequential, Test::Difference],
            Check::Quality { metric: QualityMetric::Auc, .. } => &[Test::Difference],
            Check::Reward { .. } | Check::Prometheus { .. } => return None,
        };
        (!allowed.contains(&test)).then(|| {
            let names: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
            format!("{}.test '{}' is not one of its tests: {}", self.name(), test.name(), names.join(", "))
        })
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

    /// Judges the step's evidence: an always-valid check reads all of it (`evidence`), a
    /// fixed-horizon one the latest windows (`w`). `min_samples` is the policy's floor under
    /// which nothing is concluded; it counts the values seen, not the sample kept of them.
    pub fn judge(&self, w: &Window, evidence: &Evidence, min_samples: u64) -> Verdict {
        if self.is_sequential() {
            self.judge_sequential(evidence, min_samples)
        } else {
            self.judge_fixed(w, min_samples)
        }
    }

    fn judge_sequential(&self, e: &Evidence, min_samples: u64) -> Verdict {
        let min_samples = min_samples.max(1);
        let few = |what: &str, have: u64| Verdict::Inconclusive { reason: format!("{have} {what}, fewer than {min_samples}") };
        let (s, c) = (&e.stable, &e.candidate);
        let no_interval = |what: &str| Verdict::Inconclusive { reason: format!("no interval yet: {what} have no spread") };
        match *self {
            Check::ErrorRate { max_increase, alpha, effect, .. } => {
                if c.requests < min_samples || s.requests < min_samples {
                    return few("requests", c.requests.min(s.requests));
                }
                let tau = effect.unwrap_or(if max_increase > 0.0 { max_increase } else { 0.01 });
                let Some(i) = sequential::rate_difference((s.errors, s.requests), (c.errors, c.requests), tau, alpha) else {
                    return no_interval("error rates");
                };
                let rc = c.errors as f64 / c.requests as f64;
                let margin = if max_increase > 0.0 { max_increase } else { tau };
                let shown = format!("error rate {rc:.4} vs stable {:.4}: difference {} (always valid, α = {alpha})", s.errors as f64 / s.requests as f64, points(&i));
                if i.low > max_increase {
                    Verdict::Fail { value: rc, reason: format!("{shown}, above +{}", pct(max_increase)) }
                } else if i.high < margin {
                    Verdict::Proven { value: rc, reason: format!("{shown}: no worse than +{}", pct(margin)) }
                } else {
                    Verdict::Pass { value: rc, reason: Some(shown) }
                }
            }
            Check::Latency { max_ratio, alpha, effect, .. } => {
                let pairs = e.latency.get(&ratio_key(max_ratio)).copied().unwrap_or_default();
                if pairs.pairs < min_samples {
                    return few("latency pairs", pairs.pairs);
                }
                // The effect is a share of pairs (0.6: slower in 60 % of them); the boundary is 1/2.
                let tau = effect.map_or(0.1, |share| share - 0.5);
                let Some(i) = sequential::proportion(pairs.slower, pairs.pairs, tau, alpha) else { return no_interval("latency pairs") };
                let typical = match (s.sums.log_latency.mean(), c.sums.log_latency.mean()) {
                    (Some(ls), Some(lc)) => format!("; typical latency {:.3}x stable's", (lc - ls).exp()),
                    _ => String::new(),
                };
                let shown = format!(
                    "slower than {max_ratio}x stable's in {:.1} % of {} random pairs, between {:.1} % and {:.1} % (always valid, α = {alpha}){typical}",
                    i.estimate * 100.0, pairs.pairs, i.low * 100.0, i.high * 100.0
                );
                if i.low > 0.5 {
                    Verdict::Fail { value: i.estimate, reason: format!("{shown}: slower in most pairs") }
                } else if i.high < 0.5 {
                    Verdict::Proven { value: i.estimate, reason: format!("{shown}: no slower than {max_ratio}x") }
                } else {
                    Verdict::Pass { value: i.estimate, reason: Some(shown) }
                }
            }
            Check::Agreement { min, alpha, effect, .. } => {
                if e.compared < min_samples {
                    return few("shadow comparisons", e.compared);
                }
                let Some(i) = sequential::proportion(e.agreed, e.compared, effect.unwrap_or(0.02), alpha) else {
                    return no_interval("comparisons");
                };
                let shown = format!("agreement {:.4}, between {:.4} and {:.4} (always valid, α = {alpha})", i.estimate, i.low, i.high);
                if i.high < min {
                    Verdict::Fail { value: i.estimate, reason: format!("{shown}, below {min}") }
                } else if i.low >= min {
                    Verdict::Proven { value: i.estimate, reason: format!("{shown}: at least {min}") }
                } else {
                    Verdict::Pass { value: i.estimate, reason: Some(shown) }
                }
            }
            Check::Drift { max_shift, alpha, .. } => {
                let (ss, sc) = (&s.sums.score, &c.sums.score);
                if sc.n < min_samples || ss.n < min_samples {
                    return few("scores", sc.n.min(ss.n));
                }
                let max_shift = max_shift.unwrap_or(DEFAULT_SHIFT);
                let Some(i) = sequential::mean_difference(ss, sc, max_shift, alpha, 1e-6) else { return no_interval("scores") };
                let shown = format!("mean score moved {:+.4}, between {:+.4} and {:+.4} (always valid, α = {alpha})", i.estimate, i.low, i.high);
                if i.low > max_shift || i.high < -max_shift {
                    Verdict::Fail { value: i.estimate, reason: format!("{shown}, beyond ±{max_shift}") }
                } else if i.low > -max_shift && i.high < max_shift {
                    Verdict::Proven { value: i.estimate, reason: format!("{shown}: within ±{max_shift}") }
                } else {
                    Verdict::Pass { value: i.estimate, reason: Some(shown) }
                }
            }
            Check::Quality { min_delta, min_labels, alpha, effect, .. } => {
                let min_labels = min_labels.max(1) as u64;
                let (qs, qc) = (&s.sums.correct, &c.sums.correct);
                if qc.n < min_labels || qs.n < min_labels {
                    return Verdict::Inconclusive { reason: format!("{} labels, waiting for {min_labels}", qc.n.min(qs.n)) };
                }
                let tau = effect.unwrap_or(if min_delta < 0.0 { -min_delta } else { 0.02 });
                let hits = |m: &sequential::Moments| (m.sum.round().max(0.0) as u64, m.n);
                let Some(i) = sequential::rate_difference(hits(qs), hits(qc), tau, alpha) else { return no_interval("labels") };
                let margin = if min_delta < 0.0 { min_delta } else { -tau };
                let shown = format!("accuracy {:+.4} against stable, between {:+.4} and {:+.4} (always valid, α = {alpha})", i.estimate, i.low, i.high);
                if i.high < min_delta {
                    Verdict::Fail { value: i.estimate, reason: format!("{shown}, below {min_delta:+}") }
                } else if i.low > margin {
                    Verdict::Proven { value: i.estimate, reason: format!("{shown}: no worse than {margin:+}") }
                } else {
                    Verdict::Pass { value: i.estimate, reason: Some(shown) }
                }
            }
            Check::Reward { effect, alpha, higher_is_better } => {
                let (rs, rc) = (&s.sums.reward, &c.sums.reward);
                if rc.n < min_samples || rs.n < min_samples {
                    return few("rewards", rc.n.min(rs.n));
                }
                // A winner either way at most `alpha` in all: each direction at half of it.
                let Some(i) = sequential::mean_difference(rs, rc, effect, alpha / 2.0, 1e-12) else { return no_interval("rewards") };
                let shown = format!(
                    "mean reward {:.4} vs stable {:.4}: difference {:+.4}, between {:+.4} and {:+.4} (always valid, α = {alpha})",
                    rc.mean().unwrap_or_default(), rs.mean().unwrap_or_default(), i.estimate, i.low, i.high
                );
                let (better, worse) = if higher_is_better { (i.low > 0.0, i.high < 0.0) } else { (i.high < 0.0, i.low > 0.0) };
                if worse {
                    Verdict::Fail { value: i.estimate, reason: format!("{shown}: stable is better") }
                } else if better {
                    Verdict::Proven { value: i.estimate, reason: format!("{shown}: the candidate is better") }
                } else {
                    Verdict::Pass { value: i.estimate, reason: Some(shown) }
                }
            }
            // Never sequential ([`Check::test`]): judged on the latest windows' external values.
            Check::Prometheus { .. } => Verdict::Inconclusive { reason: "a prometheus check is judged on the latest windows".to_owned() },
        }
    }

    fn judge_fixed(&self, w: &Window, min_samples: u64) -> Verdict {
        // Nothing is concluded from no samples, whatever the floor says: an empty window has no
        // median and no rates.
        let min_samples = min_samples.max(1);
        let few = |what: &str, have: u64| Verdict::Inconclusive { reason: format!("{have} {what}, fewer than {min_samples}") };
        match *self {
            Check::ErrorRate { max_increase, alpha, .. } => {
                let (s, c) = (&w.stable, &w.candidate);
                if c.requests < min_samples || s.requests < min_samples {
                    return few("requests", c.requests.min(s.requests));
                }
                let (rs, rc) = (s.errors as f64 / s.requests as f64, c.errors as f64 / c.requests as f64);
                let p = stats::proportion_greater_by(s.errors, s.requests, c.errors, c.requests, max_increase).unwrap_or(1.0);
                if rc > rs + max_increase && p < alpha {
                    Verdict::Fail { value: rc, reason: format!("error rate {:.4} vs stable {:.4} (p = {p:.2e})", rc, rs) }
                } else {
                    Verdict::Pass { value: rc, reason: None }
                }
            }
            Check::Latency { max_ratio, alpha, .. } => {
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
                    Verdict::Pass { value: ratio, reason: None }
                }
            }
            Check::Agreement { min, .. } => {
                if w.compared < min_samples {
                    return few("shadow comparisons", w.compared);
                }
                let rate = w.agreed as f64 / w.compared as f64;
                if rate < min {
                    Verdict::Fail { value: rate, reason: format!("agreement {rate:.4} below {min}") }
                } else {
                    Verdict::Pass { value: rate, reason: None }
                }
            }
            Check::Drift { max_psi, .. } => {
                let max_psi = max_psi.unwrap_or(0.1);
                let (s, c) = (&w.stable.scores, &w.candidate.scores);
                if c.seen() < min_samples || s.seen() < min_samples {
                    return few("scores", c.seen().min(s.seen()));
                }
                let psi = stats::psi(s.values(), c.values(), 10).unwrap_or(0.0);
                if psi > max_psi {
                    Verdict::Fail { value: psi, reason: format!("prediction drift PSI {psi:.3} above {max_psi}") }
                } else {
                    Verdict::Pass { value: psi, reason: None }
                }
            }
            Check::Reward { .. } => Verdict::Inconclusive { reason: "a reward check is judged on the step's evidence".to_owned() },
            Check::Prometheus { ref query, max, min, .. } => match w.external.get(query) {
                None => Verdict::Inconclusive { reason: "no value from Prometheus yet".to_owned() },
                Some(&v) if max.is_some_and(|m| v > m) => {
                    Verdict::Fail { value: v, reason: format!("{query} = {v} above {}", max.unwrap_or_default()) }
                }
                Some(&v) if min.is_some_and(|m| v < m) => {
                    Verdict::Fail { value: v, reason: format!("{query} = {v} below {}", min.unwrap_or_default()) }
                }
                Some(&v) => Verdict::Pass { value: v, reason: None },
            },
            Check::Quality { metric, min_delta, min_labels, .. } => {
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
                    Verdict::Pass { value: delta, reason: None }
                }
            }
        }
    }
}

/// A difference of rates in points: `+1.20 points (between +0.40 and +2.00)`.
fn points(i: &sequential::Interval) -> String {
    format!("{:+.2} points (between {:+.2} and {:+.2})", i.estimate * 100.0, i.low * 100.0, i.high * 100.0)
}

fn pct(x: f64) -> String {
    format!("{:.2} points", x * 100.0)
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
        match c.judge(w, &Evidence::default(), 100) {
            Verdict::Pass { .. } => "pass".into(),
            Verdict::Proven { reason, .. } => format!("proven: {reason}"),
            Verdict::Fail { reason, .. } => format!("fail: {reason}"),
            Verdict::Inconclusive { reason } => format!("inconclusive: {reason}"),
            Verdict::NotApplicable { reason } => format!("not applicable: {reason}"),
        }
    }

    #[test]
    fn error_rate() {
        let c = Check::ErrorRate { max_increase: 0.0, alpha: 0.01, effect: None, test: Some(Test::ZTest) };
        assert_eq!(check(c.clone(), &window(sample(1000, 10), sample(50, 5))), "inconclusive: 50 requests, fewer than 100");
        assert_eq!(check(c.clone(), &window(sample(1000, 10), sample(1000, 12))), "pass");
        assert!(check(c.clone(), &window(sample(1000, 10), sample(1000, 40))).starts_with("fail: error rate 0.0400 vs stable 0.0100"));
        // With an allowance of two points, +1.5 points passes.
        let lenient = Check::ErrorRate { max_increase: 0.02, alpha: 0.01, effect: None, test: Some(Test::ZTest) };
        assert_eq!(check(lenient, &window(sample(1000, 10), sample(1000, 25))), "pass");
    }

    #[test]
    fn latency_needs_significance_and_size() {
        let c = Check::Latency { max_ratio: 1.1, alpha: 0.01, effect: None, test: Some(Test::MannWhitney) };
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
        assert!(check(Check::Agreement { min: 0.98, alpha: 0.01, effect: None, test: Some(Test::Threshold) }, &w).starts_with("fail: agreement 0.9500"));
        assert_eq!(check(Check::Agreement { min: 0.9, alpha: 0.01, effect: None, test: Some(Test::Threshold) }, &w), "pass");
        let scores: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let shifted: Vec<f64> = scores.iter().map(|s| s * 0.5 + 0.5).collect();
        let drift = |c: Vec<f64>| window(Sample { scores: scores.clone().into(), ..Default::default() }, Sample { scores: c.into(), ..Default::default() });
        assert_eq!(check(Check::Drift { max_psi: Some(0.1), max_shift: None, alpha: 0.01, test: Some(Test::Psi) }, &drift(scores.clone())), "pass");
        assert!(check(Check::Drift { max_psi: Some(0.1), max_shift: None, alpha: 0.01, test: Some(Test::Psi) }, &drift(shifted)).starts_with("fail: prediction drift"));
        let good: Vec<(f64, bool)> = (0..400).map(|i| if i % 2 == 0 { (0.9, true) } else { (0.1, false) }).collect();
        let bad: Vec<(f64, bool)> = (0..400).map(|i| if i % 5 == 0 { (0.1, true) } else if i % 2 == 0 { (0.9, true) } else { (0.1, false) }).collect();
        let q = Check::Quality { metric: QualityMetric::Accuracy, min_delta: -0.01, min_labels: 200, alpha: 0.01, effect: None, test: Some(Test::Difference) };
        let labelled = |c: Vec<(f64, bool)>| window(Sample { labelled: good.clone().into(), ..Default::default() }, Sample { labelled: c.into(), ..Default::default() });
        assert_eq!(check(q.clone(), &labelled(good.clone())), "pass");
        assert!(check(q.clone(), &labelled(bad)).starts_with("fail: Accuracy"));
        assert_eq!(check(q, &labelled(good[..10].to_vec())), "inconclusive: 10 labels, waiting for 200");
    }

    #[test]
    fn an_empty_window_is_inconclusive_even_with_no_floor() {
        let checks = [
            Check::ErrorRate { max_increase: 0.0, alpha: 0.01, effect: None, test: Some(Test::ZTest) },
            Check::Latency { max_ratio: 1.1, alpha: 0.01, effect: None, test: Some(Test::MannWhitney) },
            Check::Agreement { min: 0.9, alpha: 0.01, effect: None, test: Some(Test::Threshold) },
            Check::Drift { max_psi: Some(0.1), max_shift: None, alpha: 0.01, test: Some(Test::Psi) },
            Check::Quality { metric: QualityMetric::Accuracy, min_delta: 0.0, min_labels: 0, alpha: 0.01, effect: None, test: Some(Test::Difference) },
        ];
        for c in checks {
            let verdict = c.judge(&Window::default(), &Evidence::default(), 0);
            assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{}: {verdict:?}", c.name());
        }
    }

    #[test]
    fn checks_read_from_json() {
        let c: Check = serde_json::from_str(r#"{"latency": {"max_ratio": 1.2}}"#).unwrap();
        assert_eq!(c, Check::Latency { max_ratio: 1.2, alpha: 0.01, effect: None, test: None });
        assert_eq!(c.clone().with_default_test().test(), Some(Test::Sequential));
        assert_eq!(c.test(), Some(Test::MannWhitney), "a check stored before tests had names runs the test it ran then");
    }
}
