//! The control store: what the replicas of a fleet share, so that N processes act as one
//! deployment. Selected by one setting (`--control-store`, `server.control_store`,
//! `MODELSHIP_CONTROL_STORE`):
//!
//! - `embedded` (the default): this process's SQLite file (`STATE_DIR/traffic.db`); one replica.
//! - `redis://HOST:PORT[/DB]`: a Redis server the fleet shares;
//!   `redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`: the primary a set of Redis
//!   Sentinels names, followed through failovers, every write that matters acknowledged by a
//!   replica (`WAIT`) before it counts.
//! - `kubernetes` or `kubernetes://NAMESPACE` (the cargo feature `kubernetes`): ConfigMaps and a
//!   `Lease` in the cluster's API server, in the pod's own namespace unless one is named.
//!
//! What lives there, per model:
//! - **routing revisions**, committed only as the next number after the latest stored (compare
//!   and swap on the revision: a transaction in SQLite, a Lua script in Redis, which runs
//!   atomically), so a replica that lost a race cannot overwrite the winner; it applies the
//!   winner's table instead. Each commit is published; replicas also re-read the latest revision
//!   periodically, because a published message is lost while a subscriber is disconnected;
//! - **the rollout** ([`StoredRollout`]) and its decisions, written with compare and swap on the
//!   record's `seq`, and, for the control loop's writes, only while the writer holds the
//!   **lease** (one replica leads a model's rollout; the lease expires unless renewed, so when the
//!   leader dies another takes over within its time to live);
//! - **replica reports** ([`ReplicaReport`]): the revision each live replica routes by, or why
//!   it cannot, the acknowledgement the leader waits for before a step's window starts;
//! - **evidence** ([`Evidence`]): each replica's observations for the rollout, appended to a
//!   bounded log the leader reads from a cursor kept in the rollout record, so a new leader
//!   never counts a window twice nor skips one;
//! - **labels** posted to one replica for predictions another made, appended to a bounded log
//!   every replica reads.
//!
//! No consensus protocol of our own: every guarantee is a compare and swap, a key's time to
//! live, or an append, done by the store.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use modelship_rollout::check::Window;
use modelship_rollout::engine::{Action, Decision, Rollout};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

mod embedded;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod redis_store;

pub use embedded::Embedded;
#[cfg(feature = "kubernetes")]
pub use kubernetes::KubernetesStore;
pub use redis_store::RedisStore;

/// One recorded routing change (the admin API's type).
pub use modelship_protocol::admin::Revision;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer committed first: `latest` is the revision stored now (`None`: none yet).
    #[error("revision {wanted} is not the next one: the store holds revision {}", latest.map_or("none".to_owned(), |l| l.to_string()))]
    Conflict { wanted: u64, latest: Option<u64> },
    /// The rollout record changed since it was read (another replica wrote it), or a rollout
    /// is already in progress where one was to be created.
    #[error("the rollout changed meanwhile: {0}")]
    Stale(String),
    /// A control-loop write from a replica that no longer holds the lease.
    #[error("this replica no longer leads the rollout (the lease is held by {holder})")]
    NotLeader { holder: String },
    #[error("the control store ({store}) cannot be reached: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("the control store holds a record this server cannot read: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { latest, .. } => ApiError::Conflict(format!(
                "the routing was changed by another replica meanwhile (now revision {}); this replica applies it: look at the traffic again and retry the change",
                latest.map_or("none".to_owned(), |l| l.to_string())
            )),
            StoreError::Stale(what) => ApiError::Conflict(format!("{what}; look at the rollout again and retry")),
            StoreError::NotLeader { .. } => ApiError::Conflict(e.to_string()),
            StoreError::Unavailable { .. } => ApiError::ControlStoreUnavailable(e.to_string()),
            StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// A model's rollout as the fleet shares it: the engine's state plus what the fleet needs to
/// resume it anywhere. Every write replaces the whole record and bumps `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRollout {
    pub id: i64,
    /// The compare-and-swap token: a write must carry the stored `seq` plus one.
    pub seq: u64,
    pub model: String,
    /// The stable version when the rollout started (what the candidate is compared with).
    pub stable: String,
    pub rollout: Rollout,
    /// The routing applied for the rollout's state, once it is.
    #[serde(default)]
    pub applied: Option<Applied>,
    /// Where the leader stopped reading the evidence log.
    #[serde(default)]
    pub evidence_cursor: Option<String>,
    /// The replica whose control loop wrote the record last.
    #[serde(default)]
    pub leader: Option<String>,
}

impl StoredRollout {
    pub fn is_done(&self) -> bool {
        self.rollout.phase.is_done()
    }
}

/// Which routing action was applied for a rollout's state, as which revision, and when every
/// live replica acknowledged it (the step's evidence counts from then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub action: Action,
    pub revision: u64,
    #[serde(default)]
    pub settled_ms: Option<u64>,
}

/// How a rollout record may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// A new rollout: only when none is stored or the stored one is done, with the next id and
    /// `seq` 0.
    Create,
    /// A change to the stored rollout: its `seq` must be the stored one plus one, and when
    /// `leader` is given the lease must be held by that replica (the control loop's writes;
    /// an operator's command needs no lease).
    Update { leader: Option<&'a str> },
}

/// What a replica tells the fleet, every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: String,
    /// The routing revision it serves.
    pub revision: u64,
    /// A newer revision it cannot apply, and why (e.g. a version it cannot load).
    #[serde(default)]
    pub failed: Option<(u64, String)>,
    /// Its admin address, for people reading the fleet's state.
    #[serde(default)]
    pub admin: Option<String>,
    /// The latest notifications it sent of the model's rollout events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<modelship_protocol::admin::NotificationRecord>,
}

/// What one replica observed for a rollout since its last report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub rollout: i64,
    /// The routing revision in force over the whole period (the older one when it changed
    /// during it), so the leader can drop what was observed before the step's routing.
    pub revision: u64,
    pub replica: String,
    pub window: Window,
}

/// A page of a log: what was appended after the cursor, and the cursor to read on from.
pub type Page<T> = (Vec<T>, Option<String>);

/// A model's lease: who holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub mine: bool,
}

/// Everything the fleet shares. Every method is one request to the store (or one atomic
/// script), with a bounded wait.
pub trait ControlStore: Send + Sync {
    /// `embedded`, `redis` or `kubernetes`: for logs, metrics and readiness.
    fn kind(&self) -> &'static str;

    /// Whether other processes share this store (so this replica must follow it).
    fn is_shared(&self) -> bool {
        self.kind() != "embedded"
    }

    /// The latest revision of `model`, if any was committed.
    fn latest<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>>;

    /// Every revision of `model`, oldest first.
    fn history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<Revision>, StoreError>>;

    /// Commits `revision` if it is the next one: revision 0 into an empty history, else exactly
    /// one after the latest. Otherwise [`StoreError::Conflict`], and nothing is written.
    ///
    /// With `leader` (a rollout's control loop applying its step), only while that replica holds
    /// the model's lease, else [`StoreError::NotLeader`]: a leader cut off mid-analysis cannot
    /// route by a step the new leader has moved past (the fencing of its in-flight writes).
    fn commit<'a>(&'a self, revision: &'a Revision, leader: Option<&'a str>) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Revision numbers of `model` as others commit them, while the connection lasts (the stream
    /// ends when it drops). Best effort: a subscriber also re-reads [`ControlStore::latest`].
    /// A store only this process writes returns a stream that never yields.
    fn changes<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>>;

    /// The model's latest rollout (in progress or done), if it ever had one.
    fn rollout<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<StoredRollout>, StoreError>>;

    /// Writes `record` as [`Write`] allows, with the decisions that led to it appended to the
    /// model's rollout history, all or nothing: [`StoreError::Stale`] or
    /// [`StoreError::NotLeader`] when the write is not allowed, and nothing is written.
    fn save_rollout<'a>(&'a self, record: &'a StoredRollout, write: Write<'a>, decisions: &'a [Decision]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every decision of every rollout of `model`, oldest first, with its rollout's id.
    fn rollout_history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Decision)>, StoreError>>;

    /// Takes or renews the model's lease for `holder` for `ttl`, if it is free or `holder`'s;
    /// answers who holds it after the call.
    fn lease<'a>(&'a self, model: &'a str, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Gives the lease up, if `holder` holds it (a replica shutting down).
    fn release<'a>(&'a self, model: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The time by the store's clock, in milliseconds since the Unix epoch: what a rollout's
    /// times (a step's start, its hold, its decisions) are measured on, so that leaders whose
    /// clocks disagree judge one hold alike. A store without a clock of its own answers this
    /// process's.
    fn now_ms<'a>(&'a self) -> BoxFuture<'a, Result<u64, StoreError>> {
        futures::FutureExt::boxed(async move { Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)) })
    }

    /// Records this replica's report (its heartbeat).
    fn report<'a>(&'a self, model: &'a str, report: &'a ReplicaReport) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The reports of the replicas heard from within `live` (by the store's clock where it has
    /// one), by replica name.
    fn replicas<'a>(&'a self, model: &'a str, live: Duration) -> BoxFuture<'a, Result<Vec<ReplicaReport>, StoreError>>;

    /// Appends a replica's evidence to the model's bounded evidence log.
    fn push_evidence<'a>(&'a self, model: &'a str, evidence: &'a Evidence) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Evidence appended after `cursor`, and the cursor to read on from; with `None`, none, only
    /// the cursor of the log's end (a new rollout reads on from where it started).
    fn evidence<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<Evidence>, StoreError>>;

    /// Appends feedback (request id, a label or a reward) that this replica could not join
    /// itself, for the replica that made the prediction.
    fn push_labels<'a>(&'a self, model: &'a str, labels: &'a [(String, Feedback)]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Feedback appended after `cursor`; with `None`, none, only the cursor of the log's end (a
    /// replica reads on from where it started: feedback older than its predictions joins
    /// nothing). An entry this version cannot read is skipped.
    fn labels<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<(String, Feedback)>, StoreError>>;
}

/// Feedback on one prediction, handed on through the control store: a ground-truth label, or a
/// business reward. Written as `true`/`false` or a number, so a log written before rewards
/// reads the same, and a replica of that time skips the entries with rewards it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Feedback {
    Label(bool),
    Reward(f64),
}

/// Why `write` of `record` over `stored` is refused, if it is (the lease is checked by each
/// store, where it lives). The same rule for every store; Redis runs it as a Lua script
/// (`redis_store::SAVE_ROLLOUT_SCRIPT`).
pub(crate) fn check_write(stored: Option<&StoredRollout>, record: &StoredRollout, write: Write<'_>) -> Option<StoreError> {
    match (write, stored) {
        (Write::Create, Some(s)) if !s.is_done() => {
            Some(StoreError::Stale(format!("model '{}' already has a rollout in progress (rollout {}); abort it first", s.model, s.id)))
        }
        (Write::Create, s) => {
            let next = s.map_or(1, |s| s.id + 1);
            (record.id != next || record.seq != 0).then(|| StoreError::Stale(format!("a new rollout must be rollout {next} at seq 0")))
        }
        (Write::Update { .. }, None) => Some(StoreError::Stale(format!("model '{}' has no rollout", record.model))),
        (Write::Update { .. }, Some(s)) => (s.id != record.id || s.seq + 1 != record.seq).then(|| {
            StoreError::Stale(format!("rollout {} is at seq {} (this write was for rollout {} at seq {})", s.id, s.seq, record.id, record.seq.saturating_sub(1)))
        }),
    }
}

/// Checks a setting without opening anything.
pub fn check_setting(setting: &str) -> Result<(), String> {
    if setting == "embedded" {
        return Ok(());
    }
    if setting.starts_with("redis+sentinel://") {
        return redis_store::SentinelUrl::parse(setting).map(|_| ()).map_err(|e| format!("'{}' is not a usable Sentinel URL: {e}", redact(setting)));
    }
    if setting.starts_with("redis://") || setting.starts_with("rediss://") {
        return redis::Client::open(setting).map(|_| ()).map_err(|e| format!("'{}' is not a usable Redis URL: {e}", redact(setting)));
    }
    if let Some(namespace) = kubernetes_namespace(setting) {
        namespace?;
        if cfg!(feature = "kubernetes") {
            return Ok(());
        }
        return Err("control store 'kubernetes' needs a modelship built with the cargo feature `kubernetes` (cargo build -p modelship --features kubernetes); use 'embedded' (one replica) or redis://HOST:PORT (a fleet)".to_owned());
    }
    Err(format!("control store '{}' is not 'embedded', a redis://HOST:PORT[/DB] URL, a redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE URL or kubernetes[://NAMESPACE]", redact(setting)))
}

/// The namespace a `kubernetes` setting names: `None` for the client's own (the pod's service
/// account, else the kubeconfig context's); `None` outright when the setting is not one.
fn kubernetes_namespace(setting: &str) -> Option<Result<Option<&str>, String>> {
    if setting == "kubernetes" {
        return Some(Ok(None));
    }
    let namespace = setting.strip_prefix("kubernetes://")?;
    // A namespace is a DNS-1123 label.
    let label = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    Some(if label {
        Ok(Some(namespace))
    } else {
        Err(format!("'{setting}' does not name a Kubernetes namespace (kubernetes://NAMESPACE: lowercase letters, digits and '-', at most 63)"))
    })
}

/// Opens the store a setting names: `embedded` (with `embedded_path`), `redis://...` or
/// `kubernetes[://NAMESPACE]`. Nothing is connected yet.
pub fn open(setting: &str, embedded_path: &Path) -> Result<std::sync::Arc<dyn ControlStore>, String> {
    check_setting(setting)?;
    if setting == "embedded" {
        return Ok(std::sync::Arc::new(Embedded::open(embedded_path)?));
    }
    #[cfg(feature = "kubernetes")]
    if let Some(Ok(namespace)) = kubernetes_namespace(setting) {
        return Ok(std::sync::Arc::new(KubernetesStore::new(namespace)));
    }
    Ok(std::sync::Arc::new(RedisStore::new(setting)?))
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures::StreamExt;
    use modelship_router::TrafficTable;

    use super::*;

    pub(crate) fn revision(model: &str, n: u64) -> Revision {
        Revision {
            model: model.to_owned(),
            revision: n,
            at_ms: n as i64,
            actor: "test".to_owned(),
            reason: format!("r{n}"),
            change: None,
            traffic: TrafficTable::new(n.to_string()),
            source: None,
        }
    }

    /// What every store must do, whatever it is.
    async fn behaves_as_a_store(store: &dyn ControlStore, model: &str) {
        assert_eq!(store.latest(model).await.unwrap(), None);
        assert_eq!(store.commit(&revision(model, 1), None).await, Err(StoreError::Conflict { wanted: 1, latest: None }), "the first is 0");
        store.commit(&revision(model, 0), None).await.unwrap();
        store.commit(&revision(model, 1), None).await.unwrap();
        assert_eq!(store.commit(&revision(model, 1), None).await, Err(StoreError::Conflict { wanted: 1, latest: Some(1) }), "lost the race");
        assert_eq!(store.commit(&revision(model, 3), None).await, Err(StoreError::Conflict { wanted: 3, latest: Some(1) }), "no gaps");
        assert_eq!(store.latest(model).await.unwrap(), Some(revision(model, 1)));
        assert_eq!(store.history(model).await.unwrap(), vec![revision(model, 0), revision(model, 1)]);
        assert_eq!(store.latest("other").await.unwrap(), None, "models are apart");
    }

    pub(crate) fn record(id: i64, seq: u64, done: bool) -> StoredRollout {
        let spec: modelship_rollout::spec::RolloutSpec =
            serde_json::from_value(serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1m"}})).unwrap();
        let (mut rollout, _) = Rollout::start(spec.resolve().unwrap(), 0);
        if done {
            rollout.handle(modelship_rollout::engine::Event::Abort { now: 1, reason: "test".into() });
        }
        StoredRollout { id, seq, model: "fraud".into(), stable: "1".into(), rollout, applied: None, evidence_cursor: None, leader: None }
    }

    fn decision(reason: &str) -> Decision {
        Decision { at: 0, action: Action::Pause, reason: reason.into(), evidence: vec![] }
    }

    /// Rollout records: one in progress at a time, every write a compare and swap on `seq`,
    /// decisions appended with the write that made them.
    async fn keeps_rollouts(store: &dyn ControlStore) {
        assert_eq!(store.rollout("fraud").await.unwrap(), None);
        let update = Write::Update { leader: None };
        assert!(matches!(store.save_rollout(&record(1, 1, false), update, &[]).await, Err(StoreError::Stale(_))), "nothing to update");
        assert!(matches!(store.save_rollout(&record(2, 0, false), Write::Create, &[]).await, Err(StoreError::Stale(_))), "ids start at 1");
        store.save_rollout(&record(1, 0, false), Write::Create, &[decision("start")]).await.unwrap();
        let e = store.save_rollout(&record(2, 0, false), Write::Create, &[]).await.unwrap_err();
        assert!(e.to_string().contains("already has a rollout in progress (rollout 1)"), "{e}");
        store.save_rollout(&record(1, 1, false), update, &[decision("one")]).await.unwrap();
        // A writer that read seq 0 lost to the one above.
        assert!(matches!(store.save_rollout(&record(1, 1, false), update, &[decision("lost")]).await, Err(StoreError::Stale(_))));
        store.save_rollout(&record(1, 2, true), update, &[decision("abort")]).await.unwrap();
        assert_eq!(store.rollout("fraud").await.unwrap(), Some(record(1, 2, true)));
        store.save_rollout(&record(2, 0, false), Write::Create, &[decision("second")]).await.unwrap();
        let history: Vec<(i64, String)> = store.rollout_history("fraud").await.unwrap().into_iter().map(|(id, d)| (id, d.reason)).collect();
        let expected = [(1, "start"), (1, "one"), (1, "abort"), (2, "second")].map(|(id, r)| (id, r.to_owned()));
        assert_eq!(history, expected);
    }

    /// Reports, evidence and labels as the fleet exchanges them.
    async fn carries_the_fleet(store: &dyn ControlStore) {
        let report = |replica: &str, revision| ReplicaReport { replica: replica.into(), revision, failed: None, admin: None, notifications: Vec::new() };
        store.report("fraud", &report("a", 1)).await.unwrap();
        store.report("fraud", &report("a", 2)).await.unwrap();
        let live = store.replicas("fraud", Duration::from_secs(3)).await.unwrap();
        assert_eq!(live, [report("a", 2)], "the latest report of each replica");
        assert_eq!(store.replicas("other", Duration::from_secs(3)).await.unwrap(), []);

        let (none, end) = store.evidence("fraud", None).await.unwrap();
        assert!(none.is_empty());
        let evidence = |n: u64| Evidence { rollout: 1, revision: n, replica: "a".into(), window: Window { compared: n, ..Window::default() } };
        store.push_evidence("fraud", &evidence(1)).await.unwrap();
        store.push_evidence("fraud", &evidence(2)).await.unwrap();
        let (got, cursor) = store.evidence("fraud", end.as_deref()).await.unwrap();
        assert_eq!(got, [evidence(1), evidence(2)]);
        store.push_evidence("fraud", &evidence(3)).await.unwrap();
        let (got, _) = store.evidence("fraud", cursor.as_deref()).await.unwrap();
        assert_eq!(got, [evidence(3)], "read on from the cursor: nothing twice");
    }

    #[tokio::test]
    async fn the_embedded_store_commits_only_the_next_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("traffic.db")).unwrap();
        behaves_as_a_store(&store, "fraud").await;
        keeps_rollouts(&store).await;
        carries_the_fleet(&store).await;
        let lease = store.lease("fraud", "a", Duration::from_secs(1)).await.unwrap();
        assert!(lease.mine, "one process always leads");
    }

    /// A state file written before rollouts were shared records still resumes its rollout.
    #[tokio::test]
    async fn an_older_state_file_keeps_its_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traffic.db");
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, stable TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
             CREATE TABLE rollout_decisions (rollout INTEGER NOT NULL, decision TEXT NOT NULL);",
        )
        .unwrap();
        let state = serde_json::to_string(&record(1, 0, false).rollout).unwrap();
        old.execute("INSERT INTO rollouts (model, stable, state, done, updated_ms) VALUES ('fraud', '1', ?1, 0, 0)", [state]).unwrap();
        let paused = serde_json::to_string(&decision("paused by hand")).unwrap();
        old.execute("INSERT INTO rollout_decisions (rollout, decision) VALUES (1, ?1)", [paused]).unwrap();
        drop(old);
        let store = Embedded::open(&path).unwrap();
        assert_eq!(store.rollout("fraud").await.unwrap(), Some(record(1, 0, false)));
        store.save_rollout(&record(1, 1, false), Write::Update { leader: None }, &[decision("resumed")]).await.unwrap();
        let reasons: Vec<String> = store.rollout_history("fraud").await.unwrap().into_iter().map(|(_, d)| d.reason).collect();
        assert_eq!(reasons, ["paused by hand", "resumed"]);
        // Opened again, the file is upgraded already.
        drop(store);
        assert_eq!(Embedded::open(&path).unwrap().rollout("fraud").await.unwrap(), Some(record(1, 1, false)));
    }

    /// Each model numbers its own rollouts, in every store: two models' first rollouts are both 1.
    #[tokio::test]
    async fn each_model_numbers_its_own_rollouts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("traffic.db")).unwrap();
        let churn = StoredRollout { model: "churn".into(), ..record(1, 0, false) };
        store.save_rollout(&record(1, 0, false), Write::Create, &[decision("fraud's")]).await.unwrap();
        store.save_rollout(&churn, Write::Create, &[decision("churn's")]).await.unwrap();
        store.save_rollout(&StoredRollout { seq: 1, ..churn.clone() }, Write::Update { leader: None }, &[]).await.unwrap();
        assert_eq!(store.rollout("fraud").await.unwrap(), Some(record(1, 0, false)));
        assert_eq!(store.rollout("churn").await.unwrap().map(|r| r.seq), Some(1));
        let history = |model: &'static str| {
            let store = &store;
            async move { store.rollout_history(model).await.unwrap().into_iter().map(|(id, d)| (id, d.reason)).collect::<Vec<_>>() }
        };
        assert_eq!(history("fraud").await, [(1, "fraud's".to_owned())]);
        assert_eq!(history("churn").await, [(1, "churn's".to_owned())]);
    }

    #[test]
    fn settings_name_a_store_or_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        assert_eq!(open("embedded", &path).unwrap().kind(), "embedded");
        assert_eq!(open("redis://127.0.0.1:1/0", &path).unwrap().kind(), "redis", "opening does not connect");
        if cfg!(feature = "kubernetes") {
            assert_eq!(open("kubernetes", &path).unwrap().kind(), "kubernetes", "opening does not connect");
            assert_eq!(open("kubernetes://ml-serving", &path).unwrap().kind(), "kubernetes");
        } else {
            let e = open("kubernetes", &path).err().unwrap();
            assert!(e.contains("needs a modelship built with the cargo feature `kubernetes`"), "{e}");
            assert!(check_setting("kubernetes://ml-serving").unwrap_err().contains("cargo feature `kubernetes`"));
        }
        let e = check_setting("kubernetes://ML_Serving").unwrap_err();
        assert!(e.contains("does not name a Kubernetes namespace"), "{e}");
        assert!(check_setting("kubernetes://").unwrap_err().contains("does not name a Kubernetes namespace"));
        assert!(open("etcd://x", &path).err().unwrap().contains("is not 'embedded', a redis://HOST:PORT[/DB] URL, a redis+sentinel://"));
        assert_eq!(open("redis+sentinel://10.0.0.1:26379,10.0.0.2/modelship", &path).unwrap().kind(), "redis", "opening does not connect");
        for (bad, says) in [
            ("redis+sentinel://10.0.0.1:26379", "names no service"),
            ("redis+sentinel://10.0.0.1:x/modelship", "is not HOST:PORT"),
            ("redis+sentinel://[::1]:26379/modelship", "IPv6"),
            ("redis+sentinel://h:26379/mod ship", "not a Sentinel service name"),
            ("redis+sentinel://h:26379/modelship/db", "not a database number"),
            ("redis+sentinel://h:26379/modelship?wait=99", "wait=99"),
            ("redis+sentinel://h:26379/modelship?timeout=1", "not a known parameter"),
        ] {
            let e = check_setting(bad).unwrap_err();
            assert!(e.contains(says) && e.contains("not a usable Sentinel URL"), "{bad}: {e}");
        }
        let e = check_setting("redis+sentinel://:s3cret@h:26379/modelship/db").unwrap_err();
        assert!(!e.contains("s3cret"), "no password in messages: {e}");
        assert_eq!(redact("redis://user:secret@host:6379/1"), "redis://***@host:6379/1");
    }

    /// A real primary, its replica and three Sentinels: a write counts only once a replica
    /// holds it (`WAIT`), and when the primary dies the store follows the Sentinels to the
    /// replica they promote, with every acknowledged write there.
    #[tokio::test]
    async fn the_sentinel_store_waits_for_a_replica_and_follows_a_failover() {
        use crate::testing::net::{RedisServer, Sentinel};
        let mut primary = RedisServer::start();
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port(), 2)).collect();
        let url = format!("redis+sentinel://{}/modelship", sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect::<Vec<_>>().join(","));
        let store = RedisStore::new(&url).unwrap();
        // No replica yet: the commit reaches the primary, but is reported as not done.
        let e = store.commit(&revision("fraud", 0), None).await.unwrap_err();
        assert!(matches!(&e, StoreError::Unavailable { reason, .. } if reason.contains("0 of 1 replicas acknowledged")), "{e}");
        let mut replicas: Vec<RedisServer> = (0..2).map(|_| RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()])).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Once the replicas have synced, writes are acknowledged.
        let mut next = 1;
        loop {
            match store.commit(&revision("fraud", next), None).await {
                Ok(()) => break,
                Err(StoreError::Unavailable { .. }) => next += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(std::time::Instant::now() < deadline, "no replica ever acknowledged a write");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The Sentinels learn of the replicas (from the primary's INFO, every 10 s) and of each
        // other (hello messages) before a failover can be agreed on.
        for sentinel in &sentinels {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", sentinel.port())).unwrap().get_multiplexed_async_connection().await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let known: Vec<redis::Value> = redis::cmd("SENTINEL").arg("REPLICAS").arg("modelship").query_async(&mut c).await.unwrap();
                let peers: Vec<redis::Value> = redis::cmd("SENTINEL").arg("SENTINELS").arg("modelship").query_async(&mut c).await.unwrap();
                if known.len() == 2 && peers.len() == 2 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "a Sentinel knows {} replicas and {} peers", known.len(), peers.len());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(store.lease("fraud", "a", Duration::from_secs(60)).await.unwrap().mine);
        store.save_rollout(&record(1, 0, false), Write::Create, &[decision("start")]).await.unwrap();
        // The primary dies: the Sentinels promote a replica, and the store writes there once the
        // other replica follows it.
        primary.kill();
        let failed_over = std::time::Instant::now();
        let deadline = failed_over + Duration::from_secs(60);
        let mut last: StoreError;
        loop {
            match store.save_rollout(&record(1, 1, false), Write::Update { leader: Some("a") }, &[decision("after the failover")]).await {
                Ok(()) => break,
                // Refused by a primary on which the first attempt landed without a replica's
                // acknowledgement: the record is there already.
                Err(StoreError::Stale(_)) if store.rollout("fraud").await.unwrap().is_some_and(|r| r.seq == 1) => break,
                Err(e @ StoreError::Unavailable { .. }) => last = e,
                Err(e) => panic!("after the failover: {e}"),
            }
            assert!(std::time::Instant::now() < deadline, "the store never wrote to a new primary: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("sentinel store: writing to the promoted replica {:?} after the primary died", failed_over.elapsed());
        let mut roles = Vec::new();
        for replica in &replicas {
            let mut direct = redis::Client::open(replica.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut direct).await.unwrap();
            roles.push(role.first() == Some(&redis::Value::BulkString(b"master".to_vec())));
        }
        assert_eq!(roles.iter().filter(|r| **r).count(), 1, "one replica was promoted: {roles:?}");
        // Everything acknowledged before the failover is there: the revision, the lease, the
        // record and its decisions.
        assert_eq!(store.latest("fraud").await.unwrap().map(|r| r.revision), Some(next));
        assert_eq!(store.lease("fraud", "b", Duration::from_secs(60)).await.unwrap().holder, "a");
        let reasons: Vec<String> = store.rollout_history("fraud").await.unwrap().into_iter().map(|(_, d)| d.reason).collect();
        assert_eq!(reasons, ["start", "after the failover"]);
        // With no replica left, writes are reported not done again, never silently single.
        let follower = roles.iter().position(|r| !r).unwrap();
        replicas[follower].kill();
        let e = store.commit(&revision("fraud", next + 1), None).await.unwrap_err();
        assert!(matches!(&e, StoreError::Unavailable { reason, .. } if reason.contains("acknowledged")), "{e}");
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_service_and_the_replicas_to_wait_for() {
        let url = redis_store::SentinelUrl::parse("redis+sentinel://:p%40ss@10.0.0.1:26380,sentinel-b/modelship/2?wait=2").unwrap();
        let expected = redis_store::SentinelUrl {
            sentinels: vec![("10.0.0.1".into(), 26380), ("sentinel-b".into(), 26379)],
            service: "modelship".into(),
            db: 2,
            username: None,
            password: Some("p@ss".into()),
            wait: 2,
        };
        assert_eq!(url, expected);
        let plain = redis_store::SentinelUrl::parse("redis+sentinel://h:1/svc").unwrap();
        assert_eq!((plain.db, plain.wait, plain.password), (0, 1, None), "one replica acknowledges by default");
        assert_eq!(redis_store::SentinelUrl::parse("redis+sentinel://h:1/svc?wait=0").unwrap().wait, 0);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_a_hang() {
        let store = RedisStore::new(&format!("redis://127.0.0.1:{}/0", crate::testing::net::closed_port())).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(store.latest("fraud").await, Err(StoreError::Unavailable { store: "redis", .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Against a real redis-server (installed by `scripts/setup.sh --test`), started on a free
    /// port for this test.
    #[tokio::test]
    async fn the_redis_store_commits_only_the_next_revision_and_publishes_it() {
        let redis = crate::testing::net::RedisServer::start();
        let store = RedisStore::new(&redis.url()).unwrap();
        behaves_as_a_store(&store, "fraud").await;
        // Rollout times are Redis' clock: between two reads of `TIME` around it, in ms.
        let time = || async {
            let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
            let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
            s * 1000 + us / 1000
        };
        let before = time().await;
        let now = store.now_ms().await.unwrap();
        assert!((before..=time().await).contains(&now), "{before} <= {now}");
        let mut changes = store.changes("fraud").await.unwrap();
        let other = RedisStore::new(&redis.url()).unwrap();
        other.commit(&revision("fraud", 2), None).await.unwrap();
        let published = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.expect("published within 5 s");
        assert_eq!(published, Some(2));
        assert_eq!(store.latest("fraud").await.unwrap().map(|r| r.revision), Some(2), "a second client sees the first's commit");
        // Many writers racing for one revision: exactly one wins.
        let stores: Vec<RedisStore> = (0..8).map(|_| RedisStore::new(&redis.url()).unwrap()).collect();
        let third = revision("fraud", 3);
        let results = futures::future::join_all(stores.iter().map(|s| s.commit(&third, None))).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        keeps_rollouts(&store).await;
        carries_the_fleet(&store).await;
    }

    /// One leader at a time; its writes carry the lease, and a replica that lost it cannot write.
    #[tokio::test]
    async fn the_redis_lease_has_one_holder_and_fences_its_writes() {
        let redis = crate::testing::net::RedisServer::start();
        let (a, b) = (RedisStore::new(&redis.url()).unwrap(), RedisStore::new(&redis.url()).unwrap());
        let ttl = Duration::from_millis(400);
        assert!(a.lease("fraud", "a", ttl).await.unwrap().mine);
        let taken = b.lease("fraud", "b", ttl).await.unwrap();
        assert_eq!((taken.mine, taken.holder.as_str()), (false, "a"));
        a.save_rollout(&record(1, 0, false), Write::Create, &[]).await.unwrap();
        let e = b.save_rollout(&record(1, 1, false), Write::Update { leader: Some("b") }, &[]).await.unwrap_err();
        assert_eq!(e, StoreError::NotLeader { holder: "a".into() });
        a.save_rollout(&record(1, 1, false), Write::Update { leader: Some("a") }, &[]).await.unwrap();
        // a stops renewing: within its time to live b takes over, and a's writes are refused.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(b.lease("fraud", "b", ttl).await.unwrap().mine);
        let e = a.save_rollout(&record(1, 2, false), Write::Update { leader: Some("a") }, &[]).await.unwrap_err();
        assert_eq!(e, StoreError::NotLeader { holder: "b".into() });
        b.release("fraud", "a").await.unwrap();
        assert!(!a.lease("fraud", "a", ttl).await.unwrap().mine, "only the holder gives the lease up");
        // A routing commit by a control loop carries the lease too: a's, sent after b took
        // over, is refused; b's lands.
        let e = a.commit(&revision("fraud", 0), Some("a")).await.unwrap_err();
        assert_eq!(e, StoreError::NotLeader { holder: "b".into() });
        assert_eq!(b.latest("fraud").await.unwrap(), None, "nothing written");
        b.commit(&revision("fraud", 0), Some("b")).await.unwrap();
        b.release("fraud", "b").await.unwrap();
        assert!(a.lease("fraud", "a", ttl).await.unwrap().mine, "given up: free at once");

        // Labels handed on: a reader starts at the end of the log and reads on from there.
        let (old, mut cursor) = b.labels("fraud", None).await.unwrap();
        assert!(old.is_empty());
        a.push_labels("fraud", &[("r1".into(), Feedback::Label(true)), ("r2".into(), Feedback::Label(false))]).await.unwrap();
        a.push_labels("fraud", &[("r3".into(), Feedback::Reward(12.5))]).await.unwrap();
        let (got, next) = b.labels("fraud", cursor.as_deref()).await.unwrap();
        assert_eq!(got, [("r1".to_owned(), Feedback::Label(true)), ("r2".to_owned(), Feedback::Label(false)), ("r3".to_owned(), Feedback::Reward(12.5))]);
        cursor = next;
        assert_eq!(b.labels("fraud", cursor.as_deref()).await.unwrap().0, []);
    }
}
