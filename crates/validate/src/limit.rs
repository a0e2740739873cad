//! Thresholds as the command line writes them, parsed into typed limits with messages that say
//! what was expected.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metric::Metric;

/// A threshold that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} '{given}': {reason}")]
pub struct LimitError {
    pub flag: &'static str,
    pub given: String,
    pub reason: String,
}

fn error(flag: &'static str, given: &str, reason: impl Into<String>) -> LimitError {
    LimitError { flag, given: given.to_owned(), reason: reason.into() }
}

/// `--min METRIC=VALUE` or `--max METRIC=VALUE`: the metric on the data must be at least (at
/// most) the value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
}

/// Which side of the value passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

impl Op {
    pub fn passes(self, value: f64, limit: f64) -> bool {
        match self {
            Op::AtLeast => value >= limit,
            Op::AtMost => value <= limit,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
        })
    }
}

fn metric_and_value(flag: &'static str, given: &str) -> Result<(Metric, f64), LimitError> {
    let Some((name, value)) = given.split_once('=') else {
        return Err(error(flag, given, "expected METRIC=NUMBER, e.g. auc=0.92"));
    };
    let metric: Metric = name.parse().map_err(|e: crate::metric::UnknownMetric| error(flag, given, e.to_string()))?;
    let value: f64 = value.trim().parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| error(flag, given, format!("'{}' is not a finite number", value.trim())))?;
    Ok((metric, value))
}

impl Bound {
    /// `--min auc=0.92`: refused for a metric that is better lower (`--min log_loss` would pass
    /// every worse model), naming the flag that was meant.
    pub fn min(given: &str) -> Result<Bound, LimitError> {
        let (metric, value) = metric_and_value("--min", given)?;
        if !metric.higher_is_better() {
            return Err(error("--min", given, format!("{metric} is better lower: a floor would pass every worse model; use --max {metric}={value}")));
        }
        Ok(Bound { metric, op: Op::AtLeast, value })
    }

    /// `--max log_loss=0.3`: refused for a metric that is better higher.
    pub fn max(given: &str) -> Result<Bound, LimitError> {
        let (metric, value) = metric_and_value("--max", given)?;
        if metric.higher_is_better() {
            return Err(error("--max", given, format!("{metric} is better higher: a ceiling would pass every worse model; use --min {metric}={value}")));
        }
        Ok(Bound { metric, op: Op::AtMost, value })
    }
}

/// `--max-drop METRIC=AMOUNT`: against the reference model on the same rows, the metric may be
/// worse by at most `amount` (lower for AUC, accuracy and R², higher for the losses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drop {
    pub metric: Metric,
    pub amount: f64,
}

impl Drop {
    pub fn parse(given: &str) -> Result<Drop, LimitError> {
        let (metric, amount) = metric_and_value("--max-drop", given)?;
        if amount < 0.0 {
            return Err(error("--max-drop", given, "the allowed regression is a non-negative amount, e.g. auc=0.005"));
        }
        Ok(Drop { metric, amount })
    }

    /// How much worse `candidate` is than `reference` (negative when it is better).
    pub fn regression(&self, reference: f64, candidate: f64) -> f64 {
        if self.metric.higher_is_better() { reference - candidate } else { candidate - reference }
    }
}

/// `--max-p99 [BATCH=]DURATION`: the 99th percentile of one run at `batch` rows (1 when not
/// given) must not exceed `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBudget {
    pub batch: usize,
    pub max: Duration,
}

impl LatencyBudget {
    pub fn parse(given: &str) -> Result<LatencyBudget, LimitError> {
        let (batch, duration) = match given.split_once('=') {
            Some((batch, duration)) => {
                let batch = batch.trim().parse::<usize>().ok().filter(|b| *b > 0).ok_or_else(|| error("--max-p99", given, format!("'{batch}' is not a batch size (rows, 1 or more)")))?;
                (batch, duration)
            }
            None => (1, given),
        };
        let max = humantime::parse_duration(duration.trim()).map_err(|e| error("--max-p99", given, format!("'{}' is not a duration like 20ms or 1.5ms ({e})", duration.trim())))?;
        if max.is_zero() {
            return Err(error("--max-p99", given, "a budget of zero passes no model"));
        }
        Ok(LatencyBudget { batch, max })
    }
}

/// A memory quantity as Kubernetes writes one: `512Mi`, `1Gi`, `1.5Gi`, `500M`, `64Ki`, or bytes.
pub fn parse_bytes(flag: &'static str, given: &str) -> Result<u64, LimitError> {
    let text = given.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let scale: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        other => return Err(error(flag, given, format!("unknown unit '{other}': use Ki, Mi, Gi (or k, M, G), e.g. 512Mi"))),
    };
    let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite() && *v > 0.0).ok_or_else(|| error(flag, given, "expected a positive quantity like 512Mi or 1Gi"))?;
    Ok((value * scale).ceil() as u64)
}

/// Bytes as whole mebibytes, rounded up: `300Mi` (a request never rounds below what was measured).
pub fn mebibytes(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_and_refuse_the_wrong_side() {
        assert_eq!(Bound::min("auc=0.92"), Ok(Bound { metric: Metric::Auc, op: Op::AtLeast, value: 0.92 }));
        assert_eq!(Bound::max("log_loss=0.3"), Ok(Bound { metric: Metric::LogLoss, op: Op::AtMost, value: 0.3 }));
        assert_eq!(Bound::max("rmse = 1.5").map(|b| b.value), Ok(1.5));
        let cases = [
            (Bound::min("log_loss=0.3"), "use --max log_loss=0.3"),
            (Bound::max("auc=0.9"), "use --min auc=0.9"),
            (Bound::min("auc"), "expected METRIC=NUMBER"),
            (Bound::min("auc=high"), "'high' is not a finite number"),
            (Bound::min("auc=NaN"), "is not a finite number"),
            (Bound::min("f1=0.9"), "unknown metric 'f1'"),
        ];
        for (result, want) in cases {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(want), "{err} (want {want})");
        }
        assert!(Op::AtLeast.passes(0.92, 0.92) && !Op::AtLeast.passes(0.919, 0.92) && Op::AtMost.passes(0.3, 0.3));
    }

    #[test]
    fn a_drop_is_a_regression_in_the_metric_s_own_direction() {
        let auc = Drop::parse("auc=0.005").unwrap();
        assert!((auc.regression(0.95, 0.94) - 0.01).abs() < 1e-12);
        assert!(auc.regression(0.94, 0.95) < 0.0, "better is a negative regression");
        let loss = Drop::parse("log_loss=0.01").unwrap();
        assert!((loss.regression(0.10, 0.13) - 0.03).abs() < 1e-12);
        assert!(Drop::parse("auc=-0.1").unwrap_err().to_string().contains("non-negative"));
    }

    #[test]
    fn latency_budgets_name_their_batch() {
        assert_eq!(LatencyBudget::parse("20ms"), Ok(LatencyBudget { batch: 1, max: Duration::from_millis(20) }));
        assert_eq!(LatencyBudget::parse("32=40ms"), Ok(LatencyBudget { batch: 32, max: Duration::from_millis(40) }));
        assert_eq!(LatencyBudget::parse("1500us").map(|b| b.max), Ok(Duration::from_micros(1500)));
        for (given, want) in [("0=1ms", "not a batch size"), ("x=1ms", "not a batch size"), ("fast", "not a duration"), ("0s", "zero")] {
            let err = LatencyBudget::parse(given).unwrap_err().to_string();
            assert!(err.contains(want), "{given}: {err}");
        }
    }

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        let cases = [("512Mi", 512 << 20), ("1Gi", 1 << 30), ("1.5Gi", 3 << 29), ("500M", 500_000_000), ("64Ki", 65_536), ("1000", 1000), ("2k", 2000)];
        for (given, want) in cases {
            assert_eq!(parse_bytes("--max-memory", given), Ok(want), "{given}");
        }
        for given in ["512MB", "Mi", "-1Mi", "0"] {
            assert!(parse_bytes("--max-memory", given).is_err(), "{given}");
        }
        assert_eq!((mebibytes(1), mebibytes(300 << 20), mebibytes((300 << 20) + 1)), ("1Mi".to_owned(), "300Mi".to_owned(), "301Mi".to_owned()));
    }
}
