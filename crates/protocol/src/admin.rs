//! The admin API's requests and answers (`/admin/v1/...`, and the REST answers of the repository
//! extension on the same listener). The server builds and sends these types and the CLI reads
//! them back, so the two cannot drift apart: a field renamed here is renamed on both sides, and
//! `--output json` prints exactly what the server sent.
//!
//! Requests refuse unknown fields. The routing and rollout vocabulary (tables, changes, phases,
//! steps, verdicts, decisions) is the pure crates' own types, serialized as they are.

use std::fmt;
use std::str::FromStr;

use modelship_rollout::check::Verdict;
use modelship_rollout::engine::{Decision, Phase};
use modelship_rollout::spec::{RolloutSpec, Step};
use modelship_router::{BasisPoints, Change, Role, TrafficTable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `POST /admin/v1/models/{m}/traffic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    pub change: Change,
    #[serde(default)]
    pub reason: String,
    /// Who asked; the `User-Agent` header when absent.
    #[serde(default)]
    pub actor: Option<String>,
}

/// `POST /admin/v1/models/{m}/traffic/rollback`; an empty body restores the previous revision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision whose routing to restore; the one before the latest when absent.
    #[serde(default)]
    pub to_revision: Option<u64>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub actor: Option<String>,
}

/// One recorded routing change: the answer to a change or rollback, and a row of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub model: String,
    pub revision: u64,
    pub at_ms: i64,
    pub actor: String,
    pub reason: String,
    /// What was asked (`null` for a rollback, which restores `traffic` of an earlier revision).
    pub change: Option<Change>,
    pub traffic: TrafficTable,
    /// What the servers committing it serve the model from (`fraud@production`,
    /// `file:/models/fraud.onnx`): routing recorded for another source is never applied.
    /// Absent on revisions written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `GET /admin/v1/models/{m}/traffic`: the routing in force and what it has done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficStatus {
    pub model: String,
    /// The revision in force.
    pub revision: u64,
    pub traffic: TrafficTable,
    /// Each routed version's share of live traffic.
    pub weights: Vec<Weight>,
    pub shadow: Option<ShadowStatus>,
    pub loaded_versions: Vec<String>,
    /// The roles a version can have in `weights` and `shadow`.
    pub roles: Vec<Role>,
    /// When this server began routing by each revision, by its clock, oldest first (the last
    /// 100 since it started): what a fleet's history checker compares with the revisions' order.
    #[serde(default)]
    pub applied: Vec<AppliedRevision>,
}

/// A revision this server began routing by, and when (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRevision {
    pub revision: u64,
    pub at_ms: u64,
}

/// A version's share of live traffic, as basis points and as text (`75%`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weight {
    pub version: String,
    pub role: Role,
    pub weight_bp: BasisPoints,
    pub weight: String,
}

impl Weight {
    pub fn new(version: impl Into<String>, role: Role, weight: BasisPoints) -> Self {
        Weight { version: version.into(), role, weight_bp: weight, weight: weight.to_string() }
    }
}

/// The shadow version, its share of mirrored requests, and how its answers compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    pub version: String,
    pub percent_bp: BasisPoints,
    pub percent: String,
    pub compared: u64,
    pub agreed: u64,
    /// Copies not sent because the shadow version had no room.
    pub dropped: u64,
    pub failed: u64,
    /// `agreed / compared`; `None` before the first comparison.
    pub agreement: Option<f64>,
    /// The mean absolute difference of float outputs; `None` before the first comparison.
    pub mean_abs_diff: Option<f64>,
}

/// An operator's command to a rollout in progress: the last segment of
/// `POST /admin/v1/models/{m}/rollout/{command}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCommand {
    /// Pass an approval gate.
    Approve,
    /// Hold the current routing.
    Pause,
    /// Run the paused step again.
    Resume,
    /// Roll back now.
    Abort,
}

impl RolloutCommand {
    pub const ALL: [RolloutCommand; 4] = [RolloutCommand::Approve, RolloutCommand::Pause, RolloutCommand::Resume, RolloutCommand::Abort];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Approve => "approve",
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Abort => "abort",
        }
    }
}

impl fmt::Display for RolloutCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path segment that names no rollout command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rollout command '{0}': use approve, pause, resume or abort")]
pub struct UnknownCommand(pub String);

impl FromStr for RolloutCommand {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, UnknownCommand> {
        RolloutCommand::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownCommand(s.to_owned()))
    }
}

/// `POST /admin/v1/models/{m}/rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub spec: RolloutSpec,
    #[serde(default)]
    pub actor: Option<String>,
    /// Roll out a version that failed validation (`validate=fail`, from `validate --record`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `POST /admin/v1/models/{m}/rollout/{command}`; the body may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// Why (recorded with the decision); "by an operator" when empty.
    #[serde(default)]
    pub reason: String,
}

/// `GET /admin/v1/models/{m}/rollout`, and the answer to a start or a command: the model's
/// latest rollout, or none.
///
/// On the wire the rollout's fields sit beside `model`, and `rollout` is its id
/// (`{"model": "fraud", "rollout": 3, "phase": ...}`), or `null` when the model has had no
/// rollout since the server started (`{"model": "fraud", "rollout": null}`).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStatus {
    pub model: String,
    pub rollout: Option<RolloutState>,
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    #[serde(rename = "rollout")]
    pub id: i64,
    /// The version being rolled out.
    pub to: String,
    /// The stable version when the rollout started.
    pub stable: String,
    pub phase: Phase,
    /// The step reached, from 1; after a promotion, the last step (`steps`).
    pub step: usize,
    /// How many steps the plan has.
    pub steps: usize,
    /// The step in progress; `None` once the rollout is done (promoted or rolled back).
    pub current_step: Option<Step>,
    pub started_ms: u64,
    pub step_started_ms: u64,
    pub consecutive_failures: u32,
    pub total_failures: u32,
    /// The latest verdict of each check that judges the current step.
    pub checks: Vec<CheckResult>,
    /// Milliseconds between analyses.
    #[serde(default)]
    pub interval_ms: u64,
    /// The routing revision that carries the rollout's current state, once committed.
    #[serde(default)]
    pub revision: Option<u64>,
    /// When every live replica had applied `revision` (the step's window starts then); `None`
    /// while the fleet is still switching.
    #[serde(default)]
    pub settled_ms: Option<u64>,
    /// The replica whose control loop last wrote the rollout (the leader, in a fleet).
    #[serde(default)]
    pub leader: Option<String>,
    /// The latest notifications of the model's rollout events, newest first, from every live
    /// replica (each sends those of the decisions it committed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRecord>,
}

/// One rollout event's delivery to one notification sink, as the replica that sent it saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// The event's delivery id (`MODEL:ROLLOUT:SEQ:KIND`), the same for every sink.
    pub id: String,
    /// `started`, `step`, `paused`, `resumed`, `promoted`, `rolled_back`, `inconclusive_held`,
    /// `gate_refused` or `leader_changed`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The sink's name in the configuration (never its URL: a Slack URL is a secret).
    pub sink: String,
    /// `sent`, `failed` (every attempt failed), `dropped` (its queue was full) or `pending`.
    pub result: String,
    pub attempts: u32,
    /// When the event happened (ms since the epoch).
    pub at_ms: u64,
    /// The last attempt's outcome: `HTTP 200`, `HTTP 500`, `timed out`...
    #[serde(default)]
    pub detail: String,
    /// The replica that sent it.
    #[serde(default)]
    pub replica: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: String,
    pub result: Verdict,
}

impl Serialize for RolloutStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Some_<'a> {
            model: &'a str,
            #[serde(flatten)]
            rollout: &'a RolloutState,
        }
        #[derive(Serialize)]
        struct None_<'a> {
            model: &'a str,
            rollout: Option<i64>,
        }
        match &self.rollout {
            Some(rollout) => Some_ { model: &self.model, rollout }.serialize(s),
            None => None_ { model: &self.model, rollout: None }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RolloutStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read as a map first: `rollout: null` means no rollout, and otherwise every field of
        // the state must be there (a flattened `Option` would quietly read a broken state as none).
        #[derive(Deserialize)]
        struct Wire {
            model: String,
            #[serde(flatten)]
            rest: serde_json::Map<String, serde_json::Value>,
        }
        let Wire { model, rest } = Wire::deserialize(d)?;
        let rollout = match rest.get("rollout") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some(RolloutState::deserialize(serde_json::Value::Object(rest)).map_err(serde::de::Error::custom)?),
        };
        Ok(RolloutStatus { model, rollout })
    }
}

/// A rollout decision as recorded: a row of `GET /admin/v1/models/{m}/rollout/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutDecision {
    pub rollout: i64,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The answer to a batch of labels (`POST /v1/feedback`, `/admin/v1/models/{m}/feedback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackAnswer {
    /// Labels joined to a prediction.
    pub joined: usize,
    /// Request ids with no prediction here to join (the first 100).
    pub unknown: Vec<String>,
    /// Labels handed to the fleet (through the control store) for the replica that made the
    /// prediction: the unknown ones, when this replica is one of several.
    #[serde(default)]
    pub forwarded: usize,
}

/// A model's state in the repository extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelState {
    Ready,
    Loading,
    Unavailable,
}

/// The answer to `POST /v2/repository/models/{m}/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLoaded {
    pub model: String,
    /// The registry version now served.
    pub version: String,
    pub state: ModelState,
}

/// The answer to `POST /v2/repository/models/{m}/unload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUnloaded {
    pub model: String,
    pub state: ModelState,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `golden` (JSON as the server sent it) as `T` and writes it back: the same JSON.
    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(golden: &str) -> T {
        let value: T = serde_json::from_str(golden).unwrap_or_else(|e| panic!("{e}: {golden}"));
        let again: serde_json::Value = serde_json::to_value(&value).unwrap();
        assert_eq!(again, serde_json::from_str::<serde_json::Value>(golden).unwrap(), "{golden}");
        value
    }

    #[test]
    fn traffic_answers_round_trip() {
        let status: TrafficStatus = round_trip(
            r#"{"applied":[{"at_ms":1796690000000,"revision":2},{"at_ms":1796690001250,"revision":3}],"loaded_versions":["1","2"],"model":"fraud","revision":3,"roles":["stable","candidate","shadow"],"shadow":{"agreed":0,"agreement":null,"compared":0,"dropped":0,"failed":0,"mean_abs_diff":null,"percent":"100%","percent_bp":10000,"version":"2"},"traffic":{"candidate":{"version":"2","weight":2500},"shadow":{"percent":10000,"version":"2"},"stable":"1","sticky":{"header":"x-user-id"}},"weights":[{"role":"stable","version":"1","weight":"75%","weight_bp":7500},{"role":"candidate","version":"2","weight":"25%","weight_bp":2500}]}"#,
        );
        assert_eq!(status.weights[1], Weight::new("2", Role::Candidate, BasisPoints::new(2500).unwrap()));
        let shadow = status.shadow.unwrap();
        assert_eq!((shadow.percent_bp, shadow.agreement), (BasisPoints::ALL, None));
        let plain: TrafficStatus = round_trip(
            r#"{"applied":[],"loaded_versions":["1","2"],"model":"fraud","revision":0,"roles":["stable","candidate","shadow"],"shadow":null,"traffic":{"candidate":{"version":"2","weight":0},"stable":"1"},"weights":[{"role":"stable","version":"1","weight":"100%","weight_bp":10000},{"role":"candidate","version":"2","weight":"0%","weight_bp":0}]}"#,
        );
        assert!(plain.shadow.is_none());
        assert_eq!(status.applied.last(), Some(&AppliedRevision { revision: 3, at_ms: 1_796_690_001_250 }));
        // A server from before `applied` answered without it: read as none.
        let older: TrafficStatus = serde_json::from_str(r#"{"loaded_versions":[],"model":"fraud","revision":0,"roles":[],"shadow":null,"traffic":{"stable":"1"},"weights":[]}"#).unwrap();
        assert!(older.applied.is_empty());
        let history: Vec<Revision> = round_trip(
            r#"[{"model":"fraud","revision":0,"at_ms":1796156088675,"actor":"server","reason":"initial routing","change":null,"traffic":{"stable":"1","candidate":{"version":"2","weight":0}}},{"model":"fraud","revision":3,"at_ms":1796156088729,"actor":"admin-api","reason":"","change":{"op":"sticky","key":{"header":"x-user-id"}},"traffic":{"stable":"1","candidate":{"version":"2","weight":2500},"shadow":{"version":"2","percent":10000},"sticky":{"header":"x-user-id"}}}]"#,
        );
        assert_eq!(history[1].change, Some(Change::Sticky { key: Some(modelship_router::StickyKey::Header("x-user-id".into())) }));
    }

    #[test]
    fn rollout_statuses_round_trip() {
        let none: RolloutStatus = round_trip(r#"{"model":"fraud","rollout":null}"#);
        assert_eq!(none, RolloutStatus { model: "fraud".into(), rollout: None });
        let paused: RolloutStatus = round_trip(
            r#"{"model":"fraud","checks":[{"check":"error_rate","result":{"value":0.0,"verdict":"pass"}},{"check":"latency","result":{"value":1.0,"verdict":"pass"}}],"consecutive_failures":0,"interval_ms":30000,"leader":"replica-2","revision":7,"settled_ms":2000,"current_step":{"weight":{"hold":"5m","weight":"25%"}},"phase":{"phase":"paused","reason":"by an operator"},"rollout":3,"stable":"1","started_ms":1000,"step":2,"step_started_ms":1000,"steps":4,"to":"2","total_failures":0}"#,
        );
        let state = paused.rollout.unwrap();
        assert_eq!((state.id, state.step, state.steps), (3, 2, 4));
        assert_eq!(state.phase, Phase::Paused { reason: "by an operator".into() });
        assert!(matches!(state.current_step, Some(Step::Weight { .. })));
        assert_eq!(state.checks[1].result, Verdict::Pass { value: 1.0, reason: None });
        let shadow: RolloutStatus = round_trip(
            r#"{"model":"fraud","checks":[{"check":"agreement","result":{"reason":"0 shadow comparisons, fewer than 20","verdict":"inconclusive"}},{"check":"quality","result":{"reason":"the candidate's answers to mirrored requests get no labels","verdict":"not_applicable"}}],"consecutive_failures":0,"interval_ms":30000,"leader":"replica-2","revision":7,"settled_ms":2000,"current_step":{"shadow":{"hold":"10m","percent":"100%"}},"phase":{"phase":"progressing"},"rollout":3,"stable":"1","started_ms":1000,"step":1,"step_started_ms":1000,"steps":4,"to":"2","total_failures":0}"#,
        );
        let checks = shadow.rollout.unwrap().checks;
        assert!(matches!(checks[0].result, Verdict::Inconclusive { .. }));
        assert!(matches!(checks[1].result, Verdict::NotApplicable { .. }));
        // Done: no current step, and the step number stays within the plan.
        let promoted: RolloutStatus = round_trip(
            r#"{"model":"fraud","checks":[],"consecutive_failures":0,"interval_ms":30000,"leader":"replica-2","revision":7,"settled_ms":2000,"current_step":null,"phase":{"phase":"promoted"},"rollout":3,"stable":"1","started_ms":1000,"step":2,"step_started_ms":3000,"steps":2,"to":"2","total_failures":0}"#,
        );
        assert_eq!(promoted.rollout.unwrap().current_step, None);
    }

    #[test]
    fn a_broken_rollout_state_is_an_error_not_no_rollout() {
        let missing = serde_json::from_str::<RolloutStatus>(r#"{"model":"fraud","rollout":3,"to":"2"}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");
        assert!(serde_json::from_str::<RolloutStatus>(r#"{"rollout":null}"#).is_err());
    }

    #[test]
    fn decisions_and_other_answers_round_trip() {
        let history: Vec<RolloutDecision> = round_trip(
            r#"[{"rollout":1,"at":1796156088740,"action":{"action":"route","weight":1000,"shadow":0,"header":true},"reason":"rollout started; step 1 of 2","evidence":[]},{"rollout":3,"at":4000,"action":{"action":"pause"},"reason":"paused: by an operator","evidence":[["error_rate",{"verdict":"pass","value":0.0}],["latency",{"verdict":"pass","value":1.0}]]}]"#,
        );
        assert_eq!(history[1].decision.evidence[0].0, "error_rate");
        let feedback: FeedbackAnswer = round_trip(r#"{"forwarded":0,"joined":0,"unknown":["nope"]}"#);
        assert_eq!(feedback.unknown, ["nope"]);
        let loaded: ModelLoaded = round_trip(r#"{"model":"iris","version":"3","state":"READY"}"#);
        assert_eq!(loaded.state, ModelState::Ready);
        round_trip::<ModelUnloaded>(r#"{"model":"iris","state":"UNAVAILABLE"}"#);
    }

    #[test]
    fn requests_read_what_the_cli_sends_and_refuse_unknown_fields() {
        let change: ChangeRequest =
            round_trip(r#"{"change": {"op": "canary", "version": "2", "weight": 2500}, "reason": "canary", "actor": "me"}"#);
        assert_eq!(change.change, Change::Canary { version: "2".into(), weight: BasisPoints::new(2500).unwrap() });
        let bare: ChangeRequest = serde_json::from_str(r#"{"change": {"op": "promote"}}"#).unwrap();
        assert_eq!((bare.reason.as_str(), bare.actor), ("", None));
        let start: StartRequest =
            serde_json::from_str(r#"{"spec": {"to": "2", "steps": [{"weight": {"weight": "10%", "hold": "1m"}}, {"approve": {}}]}}"#).unwrap();
        assert_eq!(start.spec.steps.len(), 2);
        for bad in [
            r#"{"change": {"op": "promote"}, "actr": "me"}"#,
            r#"{"to_revision": 2, "why": "x"}"#,
            r#"{"spec": {"to": "2"}, "model": "fraud"}"#,
            r#"{"reason": "x", "force": true}"#,
        ] {
            let refused = [
                serde_json::from_str::<ChangeRequest>(bad).is_err(),
                serde_json::from_str::<RollbackRequest>(bad).is_err(),
                serde_json::from_str::<StartRequest>(bad).is_err(),
                serde_json::from_str::<CommandRequest>(bad).is_err(),
            ];
            assert!(refused.iter().all(|r| *r), "{bad}: {refused:?}");
        }
    }

    #[test]
    fn commands_parse_from_their_path_segment() {
        for command in RolloutCommand::ALL {
            assert_eq!(command.as_str().parse::<RolloutCommand>(), Ok(command));
            assert_eq!(serde_json::to_value(command).unwrap(), command.as_str());
        }
        let unknown = "promote".parse::<RolloutCommand>().unwrap_err();
        assert_eq!(unknown.to_string(), "unknown rollout command 'promote': use approve, pause, resume or abort");
    }
}

/// `GET /admin/v1/models`: every model a server serves, what it holds loaded and its rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedModels {
    pub models: Vec<ServedModel>,
}

/// One model of a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedModel {
    pub name: String,
    /// `READY`, `LOADING` or `UNAVAILABLE` (as the repository index says).
    pub state: String,
    /// The version requests go to when none is asked for; `None` until the model is ready.
    pub stable: Option<String>,
    /// The routing revision in force.
    pub revision: Option<u64>,
    /// Every version loaded (the stable one, a candidate, a shadow, one kept warm).
    pub versions: Vec<LoadedVersion>,
    /// True for a model the server was started with (it has a traffic writer and rollouts);
    /// false for one loaded through the repository API.
    pub configured: bool,
    /// The phase of its latest rollout (`progressing`, `promoted`, `rolled_back`...), if any.
    pub rollout: Option<String>,
    /// Why it is not ready, or why the last attempt to replace it failed.
    pub error: Option<String>,
}

/// One loaded version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedVersion {
    pub version: String,
    /// The ONNX model's size.
    pub model_bytes: u64,
    /// How much the process's resident memory grew while the version loaded (its sessions,
    /// weights and arenas); approximate when other work ran meanwhile; `None` where it cannot be read.
    pub memory_bytes: Option<u64>,
    pub load_seconds: f64,
}
