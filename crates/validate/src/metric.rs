//! Quality metrics on labelled data, by the names the command line uses.

use std::fmt;
use std::str::FromStr;

use modelship_rollout::stats;
use serde::{Deserialize, Serialize};

/// What a model predicts, which decides the metrics that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A binary classifier: one score per row, the probability of the positive class.
    Classification,
    /// One number per row.
    Regression,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Auc,
    Accuracy,
    LogLoss,
    Rmse,
    Mae,
    R2,
}

impl Metric {
    pub const ALL: [Metric; 6] = [Metric::Auc, Metric::Accuracy, Metric::LogLoss, Metric::Rmse, Metric::Mae, Metric::R2];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Auc => "auc",
            Metric::Accuracy => "accuracy",
            Metric::LogLoss => "log_loss",
            Metric::Rmse => "rmse",
            Metric::Mae => "mae",
            Metric::R2 => "r2",
        }
    }

    pub fn task(self) -> Task {
        match self {
            Metric::Auc | Metric::Accuracy | Metric::LogLoss => Task::Classification,
            Metric::Rmse | Metric::Mae | Metric::R2 => Task::Regression,
        }
    }

    /// AUC, accuracy and R² are better higher; losses and errors lower.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Auc | Metric::Accuracy | Metric::R2)
    }

    /// The metrics reported for a task even when no threshold names them.
    pub fn defaults(task: Task) -> &'static [Metric] {
        match task {
            Task::Classification => &[Metric::Auc, Metric::Accuracy, Metric::LogLoss],
            Task::Regression => &[Metric::Rmse, Metric::Mae, Metric::R2],
        }
    }

    /// The metric of `predictions` against `truth`; `None` when it cannot be computed (no rows,
    /// or AUC on labels of a single class).
    pub fn compute(self, predictions: &[f64], truth: &Truth) -> Option<f64> {
        match (self, truth) {
            (Metric::Auc, Truth::Classes(labels)) => stats::auc(predictions, labels),
            (Metric::Accuracy, Truth::Classes(labels)) => stats::accuracy(predictions, labels),
            (Metric::LogLoss, Truth::Classes(labels)) => stats::log_loss(predictions, labels),
            (Metric::Rmse, Truth::Values(targets)) => stats::rmse(predictions, targets),
            (Metric::Mae, Truth::Values(targets)) => stats::mae(predictions, targets),
            (Metric::R2, Truth::Values(targets)) => stats::r2(predictions, targets),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric '{0}': use auc, accuracy, log_loss (classification) or rmse, mae, r2 (regression)")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase().replace('-', "_");
        Metric::ALL.into_iter().find(|m| m.as_str() == name || (name == "logloss" && *m == Metric::LogLoss)).ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// The ground truth of each row: classes of a binary classifier, or target values.
#[derive(Debug, Clone, PartialEq)]
pub enum Truth {
    Classes(Vec<bool>),
    Values(Vec<f64>),
}

impl Truth {
    pub fn task(&self) -> Task {
        match self {
            Truth::Classes(_) => Task::Classification,
            Truth::Values(_) => Task::Regression,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Truth::Classes(c) => c.len(),
            Truth::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label values read from a file as a task needs them: for classification, 0/1 (or
    /// false/true) only; the first value that is not is named with its row.
    pub fn from_values(task: Task, values: &[f64]) -> Result<Truth, String> {
        match task {
            Task::Regression => Ok(Truth::Values(values.to_vec())),
            Task::Classification => values
                .iter()
                .enumerate()
                .map(|(i, &v)| match v {
                    0.0 => Ok(false),
                    1.0 => Ok(true),
                    other => Err(format!("row {}: label {other} is not 0 or 1 (a binary classifier's labels)", i + 1)),
                })
                .collect::<Result<Vec<bool>, String>>()
                .map(Truth::Classes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_known() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>(), Ok(m));
        }
        assert_eq!("LogLoss".parse::<Metric>(), Ok(Metric::LogLoss));
        assert_eq!("log-loss".parse::<Metric>(), Ok(Metric::LogLoss));
        let err = "f1".parse::<Metric>().unwrap_err().to_string();
        assert!(err.contains("'f1'") && err.contains("auc") && err.contains("r2"), "{err}");
    }

    #[test]
    fn each_metric_needs_its_task() {
        let classes = Truth::Classes(vec![false, true, true]);
        let values = Truth::Values(vec![0.0, 1.0, 1.0]);
        let p = [0.2, 0.7, 0.4];
        assert_eq!(Metric::Accuracy.compute(&p, &classes), Some(2.0 / 3.0));
        assert_eq!(Metric::Accuracy.compute(&p, &values), None);
        assert_eq!(Metric::Mae.compute(&p, &values).map(|v| (v * 1e9).round()), Some(((0.2 + 0.3 + 0.6) / 3.0 * 1e9_f64).round()));
        assert_eq!(Metric::Mae.compute(&p, &classes), None);
        assert_eq!(Metric::Auc.compute(&p, &Truth::Classes(vec![true, true, true])), None, "one class");
        assert!(Metric::Auc.higher_is_better() && !Metric::LogLoss.higher_is_better() && Metric::R2.higher_is_better());
    }

    #[test]
    fn labels_of_a_classifier_are_zero_or_one() {
        assert_eq!(Truth::from_values(Task::Classification, &[0.0, 1.0]), Ok(Truth::Classes(vec![false, true])));
        let err = Truth::from_values(Task::Classification, &[0.0, 1.0, 2.0]).unwrap_err();
        assert!(err.contains("row 3") && err.contains("label 2"), "{err}");
        assert_eq!(Truth::from_values(Task::Regression, &[2.5]), Ok(Truth::Values(vec![2.5])));
    }
}
