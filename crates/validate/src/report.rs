//! The report: every gate with its checks, each a measured value, its limit and a verdict. The
//! JSON (`--output json`) is this type as serde writes it, and its field names are kept for
//! scripts; the table and the Markdown are renderings of the same rows.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limit::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    Quality,
    Contract,
    Latency,
    Resources,
    Distribution,
}

impl GateName {
    pub const ALL: [GateName; 5] = [GateName::Quality, GateName::Contract, GateName::Latency, GateName::Resources, GateName::Distribution];

    pub fn as_str(self) -> &'static str {
        match self {
            GateName::Quality => "quality",
            GateName::Contract => "contract",
            GateName::Latency => "latency",
            GateName::Resources => "resources",
            GateName::Distribution => "distribution",
        }
    }
}

impl fmt::Display for GateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check's outcome. `measured`: reported with no limit to judge it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Measured,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Measured => "measured",
        }
    }

    /// A gate's or a report's verdict from its parts: failed if any failed, passed if any passed.
    pub fn of(parts: impl IntoIterator<Item = Verdict>) -> Verdict {
        parts.into_iter().fold(Verdict::Measured, |all, v| match (all, v) {
            (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
            (Verdict::Pass, _) | (_, Verdict::Pass) => Verdict::Pass,
            _ => Verdict::Measured,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A plain number (a metric, a PSI).
    Number,
    Ms,
    Bytes,
}

impl Unit {
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Number => format!("{value:.4}"),
            Unit::Ms => format!("{value:.3} ms"),
            Unit::Bytes => format!("{:.1} MiB", value / (1024.0 * 1024.0)),
        }
    }
}

/// The value a check is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    pub op: Op,
    pub value: f64,
}

/// One measured thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable for scripts: `auc`, `auc_drop`, `p99_batch_1`, `memory_request`, `psi`,
    /// `input.NAME`, `output.NAME`...
    pub id: String,
    pub value: Option<f64>,
    pub unit: Unit,
    pub limit: Option<Limit>,
    pub verdict: Verdict,
    /// What it means, for people.
    pub detail: String,
}

impl Check {
    /// A value judged against `limit`, when there is one.
    pub fn judged(id: impl Into<String>, value: f64, unit: Unit, limit: Option<Limit>, detail: impl Into<String>) -> Check {
        let verdict = match limit {
            Some(l) if l.op.passes(value, l.value) => Verdict::Pass,
            Some(_) => Verdict::Fail,
            None => Verdict::Measured,
        };
        Check { id: id.into(), value: Some(value), unit, limit, verdict, detail: detail.into() }
    }

    /// A value that could not be measured: failed when something depended on it.
    pub fn unmeasured(id: impl Into<String>, unit: Unit, limit: Option<Limit>, detail: impl Into<String>) -> Check {
        let verdict = if limit.is_some() { Verdict::Fail } else { Verdict::Measured };
        Check { id: id.into(), value: None, unit, limit, verdict, detail: detail.into() }
    }

    pub fn value_text(&self) -> String {
        self.value.map_or_else(|| "-".to_owned(), |v| self.unit.format(v))
    }

    pub fn limit_text(&self) -> String {
        self.limit.map_or_else(String::new, |l| format!("{} {}", l.op, self.unit.format(l.value)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub gate: GateName,
    pub verdict: Verdict,
    pub checks: Vec<Check>,
}

impl Gate {
    pub fn new(gate: GateName, checks: Vec<Check>) -> Gate {
        Gate { gate, verdict: Verdict::of(checks.iter().map(|c| c.verdict)), checks }
    }
}

/// A gate that did not run, and why (what to pass to run it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub gate: GateName,
    pub reason: String,
}

/// A model named as it was given, with the version it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The file or registry reference as given.
    pub reference: String,
    pub version: Option<String>,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) if !self.reference.ends_with(&format!(":{v}")) => write!(f, "{} (version {v})", self.reference),
            _ => f.write_str(&self.reference),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: Subject,
    pub against: Option<Subject>,
    /// The data file the quality and distribution gates read, and how many rows.
    pub data: Option<String>,
    pub rows: Option<usize>,
    /// True when no gate failed.
    pub passed: bool,
    pub gates: Vec<Gate>,
    pub skipped: Vec<Skipped>,
}

impl Report {
    pub fn new(model: Subject, against: Option<Subject>, data: Option<String>, rows: Option<usize>, gates: Vec<Gate>, skipped: Vec<Skipped>) -> Report {
        let passed = gates.iter().all(|g| g.verdict != Verdict::Fail);
        Report { model, against, data, rows, passed, gates, skipped }
    }

    /// The failed checks: `gate check value (limit)`, or `gate check: detail` when nothing was
    /// measured against a limit.
    pub fn failures(&self) -> Vec<String> {
        self.gates
            .iter()
            .flat_map(|g| {
                g.checks.iter().filter(|c| c.verdict == Verdict::Fail).map(move |c| match (c.value, c.limit) {
                    (Some(_), Some(_)) => format!("{} {} {} (limit {})", g.gate, c.id, c.value_text(), c.limit_text()),
                    _ => format!("{} {}: {}", g.gate, c.id, c.detail),
                })
            })
            .collect()
    }

    /// One row per check: gate, check, value, limit, verdict, detail.
    pub fn rows(&self) -> Vec<[String; 6]> {
        self.gates
            .iter()
            .flat_map(|g| {
                g.checks.iter().map(|c| [g.gate.to_string(), c.id.clone(), c.value_text(), c.limit_text(), c.verdict.as_str().to_owned(), c.detail.clone()])
            })
            .collect()
    }

    /// The first lines of every rendering: what was validated, on what, against what.
    pub fn headline(&self) -> String {
        let mut line = self.model.to_string();
        if let Some(against) = &self.against {
            line += &format!(" against {against}");
        }
        if let (Some(data), Some(rows)) = (&self.data, self.rows) {
            line += &format!(", on {rows} rows of {data}");
        }
        line
    }

    /// A pull request comment: a verdict heading, a table of every check, the gates not run.
    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mark = |v: Verdict| match v {
            Verdict::Pass => "✅ pass",
            Verdict::Fail => "❌ fail",
            Verdict::Measured => "measured",
        };
        let mut out = if self.passed {
            "### ✅ modelship validate: every gate passed\n\n".to_owned()
        } else {
            let failed: Vec<&str> = self.gates.iter().filter(|g| g.verdict == Verdict::Fail).map(|g| g.gate.as_str()).collect();
            format!("### ❌ modelship validate: {} failed\n\n", failed.join(", "))
        };
        out += &format!("`{}`\n\n", cell(&self.headline()));
        out += "| gate | check | value | limit | verdict | detail |\n|---|---|---:|---|---|---|\n";
        for g in &self.gates {
            for c in &g.checks {
                out += &format!(
                    "| {} | `{}` | {} | {} | {} | {} |\n",
                    g.gate,
                    cell(&c.id),
                    cell(&c.value_text()),
                    cell(&c.limit_text()),
                    mark(c.verdict),
                    cell(&c.detail)
                );
            }
        }
        if !self.skipped.is_empty() {
            out += "\nNot run: ";
            out += &self.skipped.iter().map(|s| format!("{} ({})", s.gate, cell(&s.reason))).collect::<Vec<_>>().join("; ");
            out += ".\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        let quality = Gate::new(
            GateName::Quality,
            vec![
                Check::judged("auc", 0.9081, Unit::Number, Some(Limit { op: Op::AtLeast, value: 0.92 }), "area under the ROC curve"),
                Check::judged("log_loss", 0.1698, Unit::Number, None, "mean cross-entropy | clipped"),
            ],
        );
        let latency = Gate::new(GateName::Latency, vec![Check::judged("p99_batch_1", 0.125, Unit::Ms, Some(Limit { op: Op::AtMost, value: 20.0 }), "")]);
        Report::new(
            Subject { reference: "testdata/models/logistic_regression.onnx".into(), version: None },
            Some(Subject { reference: "fraud@production".into(), version: Some("3".into()) }),
            Some("holdout.csv".into()),
            Some(500),
            vec![quality, latency],
            vec![Skipped { gate: GateName::Contract, reason: "no --against reference".into() }],
        )
    }

    #[test]
    fn verdicts_combine_failure_first() {
        use Verdict::*;
        for (parts, want) in [(vec![], Measured), (vec![Measured], Measured), (vec![Measured, Pass], Pass), (vec![Pass, Fail, Measured], Fail)] {
            assert_eq!(Verdict::of(parts.clone()), want, "{parts:?}");
        }
    }

    #[test]
    fn a_failed_check_fails_its_gate_and_the_report() {
        let report = sample();
        assert!(!report.passed);
        assert_eq!((report.gates[0].verdict, report.gates[1].verdict), (Verdict::Fail, Verdict::Pass));
        assert_eq!(report.failures(), ["quality auc 0.9081 (limit >= 0.9200)"]);
        assert_eq!(report.rows()[0], ["quality", "auc", "0.9081", ">= 0.9200", "fail", "area under the ROC curve"].map(String::from));
        assert_eq!(report.rows()[2][2..4], ["0.125 ms".to_owned(), "<= 20.000 ms".to_owned()]);
        assert_eq!(Check::unmeasured("auc", Unit::Number, Some(Limit { op: Op::AtLeast, value: 0.9 }), "one class").verdict, Verdict::Fail);
    }

    #[test]
    fn markdown_for_a_pull_request() {
        assert_eq!(
            sample().markdown(),
            "### ❌ modelship validate: quality failed\n\n\
             `testdata/models/logistic_regression.onnx against fraud@production (version 3), on 500 rows of holdout.csv`\n\n\
             | gate | check | value | limit | verdict | detail |\n|---|---|---:|---|---|---|\n\
             | quality | `auc` | 0.9081 | >= 0.9200 | ❌ fail | area under the ROC curve |\n\
             | quality | `log_loss` | 0.1698 |  | measured | mean cross-entropy \\| clipped |\n\
             | latency | `p99_batch_1` | 0.125 ms | <= 20.000 ms | ✅ pass |  |\n\
             \nNot run: contract (no --against reference).\n"
        );
    }

    /// The JSON field names scripts read.
    #[test]
    fn json_shape_is_stable() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["against"], serde_json::json!({"reference": "fraud@production", "version": "3"}));
        assert_eq!(
            json["gates"][0]["checks"][0],
            serde_json::json!({"id": "auc", "value": 0.9081, "unit": "number", "limit": {"op": ">=", "value": 0.92}, "verdict": "fail", "detail": "area under the ROC curve"})
        );
        assert_eq!(json["gates"][1]["gate"], "latency");
        assert_eq!(json["skipped"][0], serde_json::json!({"gate": "contract", "reason": "no --against reference"}));
        assert_eq!(json["rows"], 500);
    }
}
