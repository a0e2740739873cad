//! What the log keeps: predictions, the labels and rewards that follow them, the marks rollbacks
//! leave, and the audit of what was purged. Each is a flat table (its columns are the schema
//! documented in docs/src/reference/predictions.md).

use serde::{Deserialize, Serialize};

use crate::table::{Column, Kind, Value};

/// The tables of the log, each a directory of Parquet files under the log's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Predictions,
    Feedback,
    Rollbacks,
    Audit,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Predictions, Table::Feedback, Table::Rollbacks, Table::Audit];

    pub fn dir(self) -> &'static str {
        match self {
            Table::Predictions => "predictions",
            Table::Feedback => "feedback",
            Table::Rollbacks => "rollbacks",
            Table::Audit => "audit",
        }
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Predictions => &PREDICTION_COLUMNS,
            Table::Feedback => &FEEDBACK_COLUMNS,
            Table::Rollbacks => &MARK_COLUMNS,
            Table::Audit => &AUDIT_COLUMNS,
        }
    }
}

const fn col(name: &'static str, kind: Kind, required: bool) -> Column {
    Column { name, kind, required }
}

const PREDICTION_COLUMNS: [Column; 16] = [
    col("request_id", Kind::Text, true),
    col("time", Kind::Millis, true),
    col("model", Kind::Label, true),
    col("version", Kind::Label, true),
    col("revision", Kind::Int, false),
    col("role", Kind::Label, true),
    col("status", Kind::Int, true),
    col("latency_ms", Kind::Float, true),
    col("inputs", Kind::Text, false),
    col("entities", Kind::Text, false),
    col("outputs", Kind::Text, false),
    col("score", Kind::Float, false),
    col("error", Kind::Text, false),
    col("served_version", Kind::Label, false),
    col("agreed", Kind::Bool, false),
    col("replica", Kind::Label, false),
];

/// One answer a version gave: to a client (`stable`, `canary`, `pinned`) or to a mirrored copy
/// (`shadow`, beside the version whose answer the client got and whether the two agreed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub request_id: String,
    /// Milliseconds since the epoch when it was answered.
    pub time: i64,
    pub model: String,
    pub version: String,
    /// The routing revision it was routed under.
    pub revision: Option<i64>,
    pub role: String,
    /// The HTTP status of its answer (over gRPC, the status of its error).
    pub status: i64,
    pub latency_ms: f64,
    /// The input tensors, as a V2 JSON `inputs` array.
    pub inputs: Option<String>,
    /// The entities whose features the feature store added, as JSON.
    pub entities: Option<String>,
    /// The output tensors, as a V2 JSON `outputs` array; none when it failed.
    pub outputs: Option<String>,
    /// The model's score for the first row, as rollout analysis reads it.
    pub score: Option<f64>,
    pub error: Option<String>,
    /// For a shadow answer: the version whose answer the client got.
    pub served_version: Option<String>,
    /// For a shadow answer: whether it equals the answer the client got.
    pub agreed: Option<bool>,
    /// The replica that answered.
    pub replica: Option<String>,
}

impl Prediction {
    pub fn row(&self) -> Vec<Value> {
        self.clone().into_row()
    }

    /// [`Prediction::row`] without copying its strings.
    pub fn into_row(self) -> Vec<Value> {
        vec![
            Value::Text(self.request_id),
            Value::Int(self.time),
            Value::Text(self.model),
            Value::Text(self.version),
            self.revision.into(),
            Value::Text(self.role),
            Value::Int(self.status),
            Value::Float(self.latency_ms),
            self.inputs.into(),
            self.entities.into(),
            self.outputs.into(),
            self.score.into(),
            self.error.into(),
            self.served_version.into(),
            self.agreed.into(),
            self.replica.into(),
        ]
    }

    pub fn from_row(row: &[Value]) -> Self {
        let text = |i: usize| row[i].text().map(str::to_owned);
        Prediction {
            request_id: text(0).unwrap_or_default(),
            time: row[1].int().unwrap_or_default(),
            model: text(2).unwrap_or_default(),
            version: text(3).unwrap_or_default(),
            revision: row[4].int(),
            role: text(5).unwrap_or_default(),
            status: row[6].int().unwrap_or_default(),
            latency_ms: row[7].float().unwrap_or_default(),
            inputs: text(8),
            entities: text(9),
            outputs: text(10),
            score: row[11].float(),
            error: text(12),
            served_version: text(13),
            agreed: row[14].bool(),
            replica: text(15),
        }
    }

    /// Approximately what it takes in memory, for rolling files by size.
    pub fn size(&self) -> usize {
        96 + self.request_id.len()
            + self.model.len()
            + self.version.len()
            + self.role.len()
            + [&self.inputs, &self.entities, &self.outputs, &self.error, &self.served_version, &self.replica]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

const FEEDBACK_COLUMNS: [Column; 6] = [
    col("request_id", Kind::Text, true),
    col("time", Kind::Millis, true),
    col("label", Kind::Bool, false),
    col("reward", Kind::Float, false),
    col("replica", Kind::Label, false),
    col("joined", Kind::Bool, false),
];

/// A label or a reward posted for an answered request, joined to its prediction by request id
/// (a client posts feedback by request id alone: the prediction says which model it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub request_id: String,
    pub time: i64,
    pub label: Option<bool>,
    pub reward: Option<f64>,
    /// The replica it was posted to.
    pub replica: Option<String>,
    /// Whether it was joined to its answer when posted (or handed to the fleet to join); `false`:
    /// no answer was known for it then.
    pub joined: Option<bool>,
}

impl Feedback {
    pub fn row(&self) -> Vec<Value> {
        vec![Value::Text(self.request_id.clone()), Value::Int(self.time), self.label.into(), self.reward.into(), self.replica.clone().into(), self.joined.into()]
    }

    pub fn from_row(row: &[Value]) -> Self {
        Feedback {
            request_id: row[0].text().unwrap_or_default().to_owned(),
            time: row[1].int().unwrap_or_default(),
            label: row[2].bool(),
            reward: row[3].float(),
            replica: row[4].text().map(str::to_owned),
            joined: row[5].bool(),
        }
    }
}

const MARK_COLUMNS: [Column; 9] = [
    col("model", Kind::Label, true),
    col("version", Kind::Label, true),
    col("from_revision", Kind::Int, true),
    col("to_revision", Kind::Int, true),
    col("from_time", Kind::Millis, true),
    col("time", Kind::Millis, true),
    col("actor", Kind::Label, true),
    col("reason", Kind::Text, true),
    col("replica", Kind::Label, false),
];

/// What a rollback marks: `version` of `model` answered under revisions `from_revision` up to
/// (not including) `to_revision`, the rollback's own revision; every prediction it made there
/// was made by a version later rolled back. Marks are written once per (model, version,
/// to_revision): writing one again changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub model: String,
    pub version: String,
    pub from_revision: i64,
    pub to_revision: i64,
    /// When the first marked revision was committed.
    pub from_time: i64,
    /// When the rollback was committed.
    pub time: i64,
    pub actor: String,
    pub reason: String,
    pub replica: Option<String>,
}

impl Mark {
    pub fn row(&self) -> Vec<Value> {
        vec![
            Value::Text(self.model.clone()),
            Value::Text(self.version.clone()),
            Value::Int(self.from_revision),
            Value::Int(self.to_revision),
            Value::Int(self.from_time),
            Value::Int(self.time),
            Value::Text(self.actor.clone()),
            Value::Text(self.reason.clone()),
            self.replica.clone().into(),
        ]
    }

    pub fn from_row(row: &[Value]) -> Self {
        let text = |i: usize| row[i].text().unwrap_or_default().to_owned();
        Mark {
            model: text(0),
            version: text(1),
            from_revision: row[2].int().unwrap_or_default(),
            to_revision: row[3].int().unwrap_or_default(),
            from_time: row[4].int().unwrap_or_default(),
            time: row[5].int().unwrap_or_default(),
            actor: text(6),
            reason: text(7),
            replica: row[8].text().map(str::to_owned),
        }
    }

    /// Whether `p` is one of the predictions this mark covers.
    pub fn covers(&self, p: &Prediction) -> bool {
        p.model == self.model && p.version == self.version && p.revision.is_some_and(|r| (self.from_revision..self.to_revision).contains(&r))
    }
}

const AUDIT_COLUMNS: [Column; 6] = [
    col("time", Kind::Millis, true),
    col("actor", Kind::Label, true),
    col("action", Kind::Label, true),
    col("model", Kind::Label, false),
    col("rows", Kind::Int, true),
    col("detail", Kind::Text, true),
];

/// One change to stored predictions (a purge), as the audit table keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub model: Option<String>,
    pub rows: i64,
    pub detail: String,
}

impl Audit {
    pub fn row(&self) -> Vec<Value> {
        vec![
            Value::Int(self.time),
            Value::Text(self.actor.clone()),
            Value::Text(self.action.clone()),
            self.model.clone().into(),
            Value::Int(self.rows),
            Value::Text(self.detail.clone()),
        ]
    }

    pub fn from_row(row: &[Value]) -> Self {
        let text = |i: usize| row[i].text().unwrap_or_default().to_owned();
        Audit { time: row[0].int().unwrap_or_default(), actor: text(1), action: text(2), model: row[3].text().map(str::to_owned), rows: row[4].int().unwrap_or_default(), detail: text(5) }
    }
}

/// One revision of a model's routing, as far as marking needs it: the versions it routed
/// (stable, candidate, shadow) and when it was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub revision: i64,
    pub at_ms: i64,
    pub versions: Vec<String>,
}

/// The marks a rollback leaves: each version routed before it (`history`'s last entry before
/// `rollback`) and no longer routed after it, over the unbroken run of revisions that routed it
/// up to the rollback. `history` is in revision order and holds the rollback's own revision.
pub fn marks_for_rollback(history: &[Routed], rollback: i64, actor: &str, reason: &str, replica: Option<&str>) -> Vec<Mark> {
    let Some(after) = history.iter().find(|r| r.revision == rollback) else { return Vec::new() };
    let earlier: Vec<&Routed> = history.iter().filter(|r| r.revision < rollback).collect();
    let Some(before) = earlier.last() else { return Vec::new() };
    let mut marks = Vec::new();
    for version in before.versions.iter().filter(|v| !after.versions.contains(v)) {
        let first = earlier.iter().rev().take_while(|r| r.versions.contains(version)).last().copied().unwrap_or(before);
        if marks.iter().any(|m: &Mark| &m.version == version) {
            continue;
        }
        marks.push(Mark {
            model: String::new(),
            version: version.clone(),
            from_revision: first.revision,
            to_revision: rollback,
            from_time: first.at_ms,
            time: after.at_ms,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            replica: replica.map(str::to_owned),
        });
    }
    marks
}

/// A prediction of version 1 of `model` for the tests: `id`, at `time`, with nothing optional.
#[cfg(test)]
pub(crate) fn sample(id: &str, model: &str, time: i64) -> Prediction {
    Prediction {
        request_id: id.into(),
        time,
        model: model.into(),
        version: "1".into(),
        revision: Some(1),
        role: "stable".into(),
        status: 200,
        latency_ms: 1.0,
        inputs: None,
        entities: None,
        outputs: None,
        score: None,
        error: None,
        served_version: None,
        agreed: None,
        replica: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(revision: i64, versions: &[&str]) -> Routed {
        Routed { revision, at_ms: revision * 1000, versions: versions.iter().map(|v| (*v).to_owned()).collect() }
    }

    /// (history, rollback revision) -> (version, from, to) marked.
    #[test]
    fn a_rollback_marks_what_it_stopped_routing_over_its_unbroken_run() {
        let cases: Vec<(&str, Vec<Routed>, i64, Vec<(&str, i64)>)> = vec![
            (
                "a canary rolled back: the candidate from its first revision",
                vec![routed(1, &["1"]), routed(2, &["1", "2"]), routed(3, &["1", "2"]), routed(4, &["1"])],
                4,
                vec![("2", 2)],
            ),
            (
                "a promotion rolled back: the promoted version, canary revisions included",
                vec![routed(1, &["1"]), routed(2, &["1", "2"]), routed(3, &["2"]), routed(4, &["2"]), routed(5, &["1"])],
                5,
                vec![("2", 2)],
            ),
            (
                "a version routed before, then not, then again: only its last run",
                vec![routed(1, &["1"]), routed(2, &["1", "2"]), routed(3, &["1"]), routed(4, &["1", "2"]), routed(5, &["1"])],
                5,
                vec![("2", 4)],
            ),
            ("a shadow and a canary both dropped", vec![routed(1, &["1"]), routed(2, &["1", "2", "3"]), routed(3, &["1"])], 3, vec![("2", 2), ("3", 2)]),
            ("nothing dropped: nothing marked", vec![routed(1, &["1"]), routed(2, &["1", "2"]), routed(3, &["1", "2"])], 3, vec![]),
            ("the first revision: nothing before it", vec![routed(1, &["1"])], 1, vec![]),
            ("an unknown rollback revision", vec![routed(1, &["1"]), routed(2, &["1", "2"])], 9, vec![]),
        ];
        for (what, history, rollback, expected) in cases {
            let marks = marks_for_rollback(&history, rollback, "alice", "errors", Some("r0"));
            let got: Vec<(&str, i64)> = marks.iter().map(|m| (m.version.as_str(), m.from_revision)).collect();
            assert_eq!(got, expected, "{what}");
            for m in &marks {
                assert_eq!((m.to_revision, m.time, m.from_time), (rollback, rollback * 1000, m.from_revision * 1000), "{what}");
            }
        }
    }

    #[test]
    fn a_mark_covers_its_version_in_its_revisions_only() {
        let mark = Mark {
            model: "m".into(),
            version: "2".into(),
            from_revision: 2,
            to_revision: 4,
            from_time: 0,
            time: 0,
            actor: "a".into(),
            reason: "r".into(),
            replica: None,
        };
        let p = |version: &str, revision: Option<i64>| Prediction { version: version.into(), revision, role: "candidate".into(), ..sample("x", "m", 0) };
        assert!(mark.covers(&p("2", Some(2))) && mark.covers(&p("2", Some(3))));
        assert!(!mark.covers(&p("2", Some(4))) && !mark.covers(&p("2", Some(1))) && !mark.covers(&p("1", Some(3))) && !mark.covers(&p("2", None)));
    }

    #[test]
    fn every_table_round_trips_through_parquet() {
        let prediction = Prediction {
            request_id: "r1".into(),
            time: 1_765_000_000_000,
            model: "fraud".into(),
            version: "2".into(),
            revision: Some(3),
            role: "shadow".into(),
            status: 200,
            latency_ms: 0.8,
            inputs: Some(r#"[{"name":"x"}]"#.into()),
            entities: None,
            outputs: Some("[]".into()),
            score: Some(0.5),
            error: None,
            served_version: Some("1".into()),
            agreed: Some(false),
            replica: Some("r0".into()),
        };
        let bytes = crate::table::encode("predictions", Table::Predictions.columns(), &[prediction.row()]).unwrap();
        let rows = crate::table::decode(bytes, Table::Predictions.columns()).unwrap();
        assert_eq!(Prediction::from_row(&rows[0]), prediction);
        let feedback = Feedback { request_id: "r1".into(), time: 5, label: None, reward: Some(1.5), replica: Some("r0".into()), joined: Some(true) };
        let bytes = crate::table::encode("feedback", Table::Feedback.columns(), &[feedback.row()]).unwrap();
        assert_eq!(Feedback::from_row(&crate::table::decode(bytes, Table::Feedback.columns()).unwrap()[0]), feedback);
        let audit = Audit { time: 1, actor: "ops".into(), action: "purge".into(), model: Some("fraud".into()), rows: 7, detail: "d".into() };
        let bytes = crate::table::encode("audit", Table::Audit.columns(), &[audit.row()]).unwrap();
        assert_eq!(Audit::from_row(&crate::table::decode(bytes, Table::Audit.columns()).unwrap()[0]), audit);
    }
}
