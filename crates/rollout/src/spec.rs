//! The rollout spec: what to roll out, in which steps, judged by which checks, failing how.
//! Shorthands (`canary`, `linear`, `blue_green`) expand to steps; [`RolloutSpec::resolve`] checks
//! everything and lists every problem before anything changes.

use std::time::Duration;

use modelship_router::BasisPoints;
use serde::{Deserialize, Deserializer, Serialize};

use crate::check::Check;

/// A duration written as `30s`, `5m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Span(#[serde(serialize_with = "ser_span")] pub Duration);

fn ser_span<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The longest span a spec may give. The engine counts time in `u64` milliseconds, where a
/// duration near 2^64 ms wraps around to almost nothing (a hold of "584942417y" would end at
/// once); and no rollout holds a step, analyses or runs for more than a year.
pub const MAX_SPAN: Duration = Duration::from_secs(365 * 24 * 3600);

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(text.trim()).map_err(|e| format!("'{text}' is not a duration like 30s, 5m or 1h ({e})"))?;
        if d > MAX_SPAN {
            return Err(format!("'{text}' is longer than a year; give a duration of at most 365d"));
        }
        Ok(Span(d))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "{n} has no unit: write a duration like {n}s, {n}m or {n}h (or 250ms)"
            ))),
        }
    }
}

/// A share written as `5%`, `0.5%` or `250bp` (a bare number is a percentage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Share(pub BasisPoints);

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => format!("{n}%"),
            Raw::Text(t) => t,
        };
        text.parse().map(Share).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Mirror `percent` of requests to the candidate; answers compared, never returned.
    Shadow { percent: Share, hold: Span },
    /// Only requests with the canary header reach the candidate (internal testers, a preview).
    Header { hold: Span },
    /// `weight` of live traffic to the candidate.
    Weight { weight: Share, hold: Span },
    /// Wait for `rollout approve`.
    Approve {},
    /// Wait for a POST to `url` to answer 2xx (go) or anything else (no go).
    Webhook { url: String },
    /// An A/B experiment: `weight` of live traffic to the candidate (sticky by the routing's key)
    /// until the spec's `reward` checks declare a winner: the candidate (the rollout goes on),
    /// or stable (the failure action: roll back, keeping stable). With no winner when `hold`
    /// ends, `no_winner` says what happens.
    Experiment {
        weight: Share,
        hold: Span,
        #[serde(default)]
        no_winner: NoWinner,
    },
}

/// What an experiment with no winner by its end does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoWinner {
    /// Roll back: stable stays.
    #[default]
    Keep,
    /// Go on with the rollout as if the candidate had won.
    Promote,
    /// Pause where it is, with the experiment's report, for a person to decide.
    Report,
}

/// `canary: {weights: [5, 25, 50, 100], every: 5m}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryShorthand {
    pub weights: Vec<Share>,
    pub every: Span,
}

/// `linear: {step: 10%, every: 1m}` (the seed's Linear10PercentEvery1Minute)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearShorthand {
    pub step: Share,
    pub every: Span,
}

/// `blue_green: {preview: 10m}`: header-only preview, then everything at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenShorthand {
    pub preview: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnNoData {
    /// Too few samples: wait (the deadline still applies).
    #[default]
    Hold,
    /// Too few samples counts as a failure.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Rollback,
    Pause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailurePolicy {
    /// Failing analyses in a row that end the rollout.
    #[serde(default = "three")]
    pub consecutive: u32,
    /// Failing analyses in all that end the rollout.
    #[serde(default = "five")]
    pub total: u32,
    /// Below this many samples a check is inconclusive.
    #[serde(default = "min_samples")]
    pub min_samples: u64,
    #[serde(default)]
    pub on_no_data: OnNoData,
    /// The whole rollout must finish within this; past it, the failure action is taken.
    #[serde(default = "deadline")]
    pub deadline: Span,
    /// How many of the latest intervals (within the current step) the checks judge together.
    #[serde(default = "window")]
    pub window: usize,
}

fn window() -> usize {
    10
}

fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn min_samples() -> u64 {
    100
}
fn deadline() -> Span {
    Span(Duration::from_secs(2 * 3600))
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy { consecutive: 3, total: 5, min_samples: 100, on_no_data: OnNoData::Hold, deadline: deadline(), window: window() }
    }
}

/// A rollout as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The version to roll out; it replaces the current stable version.
    pub to: String,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub canary: Option<CanaryShorthand>,
    #[serde(default)]
    pub linear: Option<LinearShorthand>,
    #[serde(default)]
    pub blue_green: Option<BlueGreenShorthand>,
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub failure: FailurePolicy,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How often the checks run.
    #[serde(default = "interval")]
    pub interval: Span,
    /// End a step before its hold once every check that judges it has shown, always validly,
    /// that the candidate is no worse than its margin.
    #[serde(default)]
    pub advance_on_evidence: bool,
}

fn interval() -> Span {
    Span(Duration::from_secs(30))
}

/// A spec whose steps are expanded and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub to: String,
    pub steps: Vec<Step>,
    pub checks: Vec<Check>,
    pub failure: FailurePolicy,
    pub on_failure: OnFailure,
    pub interval: Span,
    #[serde(default)]
    pub advance_on_evidence: bool,
}

impl RolloutSpec {
    fn expand(&self, steps: &mut Vec<Step>, problems: &mut Vec<String>) {
        if let Some(CanaryShorthand { weights, every }) = &self.canary {
            if weights.is_empty() {
                problems.push("canary.weights is empty".to_owned());
            }
            if weights.windows(2).any(|w| w[1].0 <= w[0].0) {
                problems.push("canary.weights must increase".to_owned());
            }
            *steps = weights.iter().map(|w| Step::Weight { weight: *w, hold: *every }).collect();
        }
        if let Some(LinearShorthand { step, every }) = &self.linear {
            if step.0.get() == 0 {
                problems.push("linear.step must be above 0%".to_owned());
            } else {
                let mut w = 0u32;
                while w < 10_000 {
                    w = (w + u32::from(step.0.get())).min(10_000);
                    steps.push(Step::Weight { weight: Share(BasisPoints::new(w).unwrap_or(BasisPoints::ALL)), hold: *every });
                }
            }
        }
        if let Some(BlueGreenShorthand { preview }) = &self.blue_green {
            *steps = vec![Step::Header { hold: *preview }, Step::Weight { weight: Share(BasisPoints::ALL), hold: Span::default() }];
        }
    }

    /// Expands shorthands and checks the spec; every problem is listed.
    pub fn resolve(self) -> Result<Plan, Vec<String>> {
        let mut problems = Vec::new();
        if self.to.trim().is_empty() {
            problems.push("'to' names no version".to_owned());
        }
        let mut steps = self.steps.clone();
        let shorthands = usize::from(self.canary.is_some()) + usize::from(self.linear.is_some()) + usize::from(self.blue_green.is_some());
        match (shorthands, steps.is_empty()) {
            (0, true) => problems.push("no steps: give steps, or a shorthand such as `canary: {weights: [5, 25, 50, 100], every: 5m}`".to_owned()),
            (0, false) => {}
            (1, true) => {}
            _ => problems.push("give either steps or one shorthand (canary, linear, blue_green)".to_owned()),
        }
        if shorthands == 1 && steps.is_empty() {
            self.expand(&mut steps, &mut problems);
        }
        for (i, step) in steps.iter().enumerate() {
            if let Step::Webhook { url } = step
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!("steps[{i}].webhook.url '{url}' is not an http(s) URL"));
            }
        }
        if self.failure.consecutive == 0 || self.failure.total == 0 {
            problems.push("failure.consecutive and failure.total must be at least 1".to_owned());
        }
        if self.failure.min_samples == 0 {
            problems.push("failure.min_samples must be at least 1: no check can judge an empty window".to_owned());
        }
        if self.interval.0 < Duration::from_millis(100) {
            problems.push("interval must be at least 100ms".to_owned());
        }
        if self.failure.deadline.0 <= self.interval.0 {
            problems.push("failure.deadline must be longer than the interval".to_owned());
        }
        let checks: Vec<Check> = self.checks.iter().cloned().map(Check::with_default_test).collect();
        for (i, step) in steps.iter().enumerate() {
            if let Step::Experiment { weight, .. } = step {
                if weight.0.get() == 0 || weight.0 == BasisPoints::ALL {
                    problems.push(format!("steps[{i}].experiment.weight must be between 0% and 100%: both versions need traffic"));
                }
                if !checks.iter().any(|c| matches!(c, Check::Reward { .. })) {
                    problems.push(format!("steps[{i}] is an experiment but no check is a reward: add `reward: {{effect: ...}}` to checks"));
                }
            }
        }
        for check in &checks {
            if let Some(problem) = check.test_problem() {
                problems.push(problem);
            }
            let alpha = match check {
                Check::ErrorRate { alpha, .. }
                | Check::Latency { alpha, .. }
                | Check::Agreement { alpha, .. }
                | Check::Drift { alpha, .. }
                | Check::Quality { alpha, .. }
                | Check::Reward { alpha, .. } => Some(*alpha),
                Check::Prometheus { .. } => None,
            };
            if let Some(alpha) = alpha.filter(|a| !(*a > 0.0 && *a <= 0.25)) {
                problems.push(format!("{}.alpha {alpha} is not a false-alarm rate between 0 and 0.25", check.name()));
            }
            match check {
                Check::ErrorRate { effect: Some(e), .. } | Check::Quality { effect: Some(e), .. } | Check::Agreement { effect: Some(e), .. } if !(*e > 0.0 && *e < 1.0) => {
                    problems.push(format!("{}.effect {e} is not a difference of rates between 0 and 1 (0.005 is half a point)", check.name()))
                }
                Check::Latency { effect: Some(e), .. } if !(*e > 0.5 && *e < 1.0) => {
                    problems.push(format!("latency.effect {e} is not a share of pairs between 0.5 and 1 (0.6: the candidate slower in 60 % of them)"))
                }
                Check::Drift { max_shift: Some(m), .. } if !(*m > 0.0 && m.is_finite()) => problems.push(format!("drift.max_shift {m} must be above 0")),
                Check::Drift { max_psi: Some(m), .. } if *m <= 0.0 => problems.push(format!("drift.max_psi {m} must be above 0")),
                Check::Reward { effect, .. } if !(*effect > 0.0 && effect.is_finite()) => problems.push(format!(
                    "reward.effect {effect} must be above 0: the smallest difference of mean reward worth finding, in the reward's units (0.01 for a point of conversion)"
                )),
                _ => {}
            }
            match check {
                Check::Agreement { min, .. } if !(0.0..=1.0).contains(min) => problems.push(format!("agreement.min {min} is not between 0 and 1")),
                Check::Latency { max_ratio, .. } if *max_ratio < 1.0 => problems.push(format!("latency.max_ratio {max_ratio} is below 1")),
                Check::Prometheus { url, .. } if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    problems.push(format!("prometheus.url '{url}' is not an http(s) URL"))
                }
                Check::Prometheus { max: None, min: None, .. } => problems.push("a prometheus check needs max or min".to_owned()),
                Check::Quality { min_labels: 0, .. } => problems.push("quality.min_labels must be at least 1".to_owned()),
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(Plan {
                to: self.to,
                steps,
                checks,
                failure: self.failure,
                on_failure: self.on_failure,
                interval: self.interval,
                advance_on_evidence: self.advance_on_evidence,
            })
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{MAX_SPAN, RolloutSpec, Span};

    #[test]
    fn spans_are_parsed_or_refused_with_the_reason() {
        let year = MAX_SPAN;
        for (text, expected) in [
            ("30s", Ok(Duration::from_secs(30))),
            (" 1h30m ", Ok(Duration::from_secs(5400))),
            ("250ms", Ok(Duration::from_millis(250))),
            ("365d", Ok(year)),
            ("1y", Err("longer than a year")),
            ("365d 1ms", Err("longer than a year")),
            // Exactly 2^64 ms: as u64 milliseconds it would be 0, a hold that ends at once.
            ("18446744073709551s 616ms", Err("longer than a year")),
            ("18446744073709551616s", Err("is not a duration")),
            ("99999999999999999999999h", Err("is not a duration")),
            ("5 minutes and a bit", Err("is not a duration")),
            ("", Err("is not a duration")),
            ("-5m", Err("is not a duration")),
        ] {
            match (text.parse::<Span>(), expected) {
                (Ok(Span(d)), Ok(want)) => assert_eq!(d, want, "{text}"),
                (Err(e), Err(want)) => assert!(e.contains(want) && e.contains(text), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_absurd_span_anywhere_in_a_spec_is_refused_at_parse() {
        for spec in [
            r#"{"to": "2", "canary": {"weights": [5, 100], "every": "18446744073709551s 616ms"}}"#,
            r#"{"to": "2", "linear": {"step": "10%", "every": "400d"}}"#,
            r#"{"to": "2", "blue_green": {"preview": "2y"}}"#,
            r#"{"to": "2", "steps": [{"weight": {"weight": "5%", "hold": "1000y"}}]}"#,
            r#"{"to": "2", "steps": [{"approve": {}}], "interval": "500d"}"#,
            r#"{"to": "2", "steps": [{"approve": {}}], "failure": {"deadline": "584942417y"}}"#,
        ] {
            let e = serde_json::from_str::<RolloutSpec>(spec).unwrap_err().to_string();
            assert!(e.contains("longer than a year"), "{spec}: {e}");
        }
    }

    #[test]
    fn a_span_without_a_unit_says_which_units_to_write() {
        for (spec, number) in [("to: '2'\ncanary: {weights: [5, 100], every: 5}\n", "5"), ("to: '2'\ncanary: {weights: [5, 100], every: 1m}\ninterval: 0.5\n", "0.5")] {
            let e = serde_yaml_ng::from_str::<RolloutSpec>(spec).unwrap_err().to_string();
            assert!(e.contains(&format!("{number} has no unit: write a duration like {number}s")), "{spec}: {e}");
        }
    }
}
