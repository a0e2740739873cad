//! Changing traffic: the single writer of routing tables. Each change loads what the new table
//! needs (from the registry), is committed as the next numbered revision (time, actor, reason) to
//! the control store (`control`: this server's SQLite file, or a store the fleet shares), and only
//! then swapped in. A commit that lost the race to another replica changes nothing here but
//! applies the winner's revision; [`Traffic::sync`] applies revisions other replicas committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use modelship_inference::Backend;
use modelship_registry::{ModelRef, Registry};
use modelship_router::{Change, TrafficTable};

use crate::control::{ControlStore, StoreError};
use crate::error::ApiError;
use crate::model::{LoadedModel, ModelSlot, ModelSpec, Served};
use crate::residency::Origin;
use crate::state::AppState;

/// One recorded routing change: the admin API's answer to a change, and a row of its history.
pub use modelship_protocol::admin::Revision;


/// A candidate's share of live traffic (reachable by the canary header when `header`, even at
/// 0 %) and of mirrored traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub weight: modelship_router::BasisPoints,
    pub shadow: modelship_router::BasisPoints,
    pub header: bool,
}

/// What a server serves its model from. Every revision it commits records the label, and
/// routing recorded for another source is never applied: serving `fraud.onnx`, then
/// `fraud@production`, starts the second from its own routing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    /// `fraud@production`, `fraud:1.2.0`, `fraud` or `file:/models/fraud.onnx`; `None` records
    /// nothing and applies whatever is stored.
    pub label: Option<String>,
    /// The registry alias the server follows (of `Traffic::registry_model`). The alias is the one
    /// source of truth for the stable version: every change of the stable version made through
    /// this server moves it first, and a restart serves what it names.
    pub alias: Option<String>,
}

impl Source {
    pub fn file(path: &std::path::Path) -> Self {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Source { label: Some(format!("file:{}", path.display())), alias: None }
    }

    pub fn registry(reference: &ModelRef) -> Self {
        let alias = match reference {
            ModelRef::Alias(_, alias) => Some(alias.clone()),
            _ => None,
        };
        Source { label: Some(reference.to_string()), alias }
    }
}

/// Everything a traffic change needs besides the app state.
pub struct Traffic {
    pub registry: Option<Arc<Registry>>,
    /// The model's name in the registry (the served name may differ).
    pub registry_model: String,
    pub backend: Arc<dyn Backend>,
    /// How versions are loaded; `version` is replaced per version.
    pub spec: ModelSpec,
    pub store: Arc<dyn ControlStore>,
    /// How long the version replaced by a switch or promotion stays loaded for rollback.
    pub keep_warm: Duration,
    pub source: Source,
    /// One change at a time, per server: every write of this model's table (changes, rollbacks,
    /// alias moves, keep-warm expiry) holds it.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The newest stored revision this replica could not apply, and why (reported to the fleet,
    /// so a rollout never counts this replica as routing by it).
    failure: std::sync::Mutex<Option<(u64, String)>>,
}

/// What a rollout's state asks of the routing (see [`Traffic::ensure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The candidate at this split.
    Split(Split),
    /// The candidate is the stable version, nothing else routed.
    Promoted,
    /// Stable only: no candidate, no shadow.
    Stable,
}

/// `served` without the versions its table no longer routes to (the warm previous version), at
/// the same revision: the routing is unchanged, only what is kept loaded. `None` when there is
/// nothing to unload.
fn without_unrouted(served: &Served) -> Option<Served> {
    let routed = served.table.versions();
    if served.versions.keys().all(|v| routed.contains(v.as_str())) {
        return None;
    }
    let versions = served.versions.iter().filter(|(v, _)| routed.contains(v.as_str())).map(|(v, m)| (v.clone(), Arc::clone(m))).collect();
    let mut table = served.table.clone();
    table.previous = None;
    Some(Served { table, revision: served.revision, versions })
}

/// A change the table refuses: a key no request can carry is the client's mistake (400); the
/// others do not fit the routing in force (409).
/// Whether two tables route alike: `previous` (the version kept warm for a rollback) is left
/// out, since a replica drops it when it does not hold that version.
fn routes_alike(a: &TrafficTable, b: &TrafficTable) -> bool {
    TrafficTable { previous: None, ..a.clone() } == TrafficTable { previous: None, ..b.clone() }
}

fn change_error(e: modelship_router::ChangeError) -> ApiError {
    match e {
        modelship_router::ChangeError::BadStickyKey(_) => ApiError::Invalid(e.to_string()),
        _ => ApiError::Conflict(e.to_string()),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether a change of the stable version moves the alias the server follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AliasStep {
    /// A change made through the server: the alias follows it, unless the version failed
    /// validation (`validate=fail`).
    Move,
    /// A rollout's step: the alias follows it (the rollout's start judged the version).
    MoveJudged,
    /// A change that comes from the alias (its move, or what it names at startup).
    Follow,
}

/// What a starting server does with the latest recorded revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Resume it as recorded.
    Apply,
    /// Commit `table` over it, for `reason`.
    Restart { table: TrafficTable, reason: String },
}

/// The rule a starting server applies to the latest revision `latest`: the server serves from
/// `source` and loaded `started_on` (for a server following an alias, `follows_alias`, the
/// version the alias names now).
pub(crate) fn resume_decision(latest: &Revision, source: Option<&str>, follows_alias: bool, started_on: &str) -> Resume {
    match (latest.source.as_deref(), source) {
        (Some(recorded), Some(now)) if recorded != now => {
            return Resume::Restart {
                table: TrafficTable::new(started_on),
                reason: format!("now served from {now}, not {recorded}: the routing recorded for {recorded} is not carried over"),
            };
        }
        _ => {}
    }
    if !follows_alias || latest.traffic.stable == started_on {
        return Resume::Apply;
    }
    let alias = source.unwrap_or("the alias");
    let mut table = latest.traffic.clone();
    table.previous = None;
    table.stable = started_on.to_owned();
    Resume::Restart {
        table: table.without_self_comparison(),
        reason: format!(
            "{alias} names {started_on}, but the recorded routing served {}: the alias decides what a server following it serves",
            latest.traffic.stable
        ),
    }
}

impl Traffic {
    pub fn new(
        registry: Option<Arc<Registry>>,
        registry_model: String,
        backend: Arc<dyn Backend>,
        spec: ModelSpec,
        store: Arc<dyn ControlStore>,
        keep_warm: Duration,
    ) -> Self {
        Traffic {
            registry,
            registry_model,
            backend,
            spec,
            store,
            keep_warm,
            source: Source::default(),
            lock: Arc::default(),
            failure: std::sync::Mutex::default(),
        }
    }

    /// The same, recording `source` on its revisions (and following its alias, if any).
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// `NAME@ALIAS` when the server follows an alias.
    pub fn followed_alias(&self) -> Option<String> {
        self.source.alias.as_ref().map(|a| format!("{}@{a}", self.registry_model))
    }

    /// The newest revision in the store this replica could not apply, and why.
    pub fn failure(&self) -> Option<(u64, String)> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes the routing what `target` asks for `version`, committing a revision only when it is
    /// not so already; returns the revision in force after. Idempotent: a replica taking over a
    /// rollout applies its state without knowing what was applied before.
    /// With `leader`, the commit is fenced by the model's lease ([`ControlStore::commit`]): a
    /// rollout's control loop that lost the lease mid-analysis commits nothing.
    pub async fn ensure(&self, state: &AppState, version: &str, target: Target, actor: &str, reason: &str, leader: Option<&str>) -> Result<u64, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        // A change committed elsewhere first: decide on the latest routing.
        if let Err(e) = self.sync_locked(state).await {
            tracing::warn!(model = %self.spec.name, error = %e, "cannot apply the latest routing before a rollout's change");
        }
        // Another replica may commit between the read and the commit (a leader applying the
        // step this replica's `rollout start` applies too): the lost commit applied the winner's
        // table, so deciding again either finds the target in force or commits on top of it.
        // Only a lost commit is retried: a version that does not load is refused once.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (_, before) = state.models.routing(&self.spec.name)?;
            match self.ensure_locked(state, version, target, actor, reason, leader).await {
                Err(ApiError::Conflict(_)) if attempts < 3 && state.models.routing(&self.spec.name).is_ok_and(|(_, r)| r != before) => continue,
                result => return result,
            }
        }
    }

    async fn ensure_locked(&self, state: &AppState, version: &str, target: Target, actor: &str, reason: &str, leader: Option<&str>) -> Result<u64, ApiError> {
        // A resting model routes all traffic to its stable version: in force for these targets
        // without loading it again.
        if let Some(ModelSlot::Resting(r)) = state.models.slot(&self.spec.name)
            && (target == Target::Stable || (target == Target::Promoted && r.table.stable == version))
        {
            return Ok(r.revision);
        }
        let served = self.served(state).await?;
        let mut table = served.table.clone();
        match target {
            Target::Split(Split { weight, shadow, header }) => {
                table.candidate = (weight.get() > 0 || header).then(|| modelship_router::Candidate { version: version.to_owned(), weight });
                table.shadow = (shadow.get() > 0).then(|| modelship_router::Shadow { version: version.to_owned(), percent: shadow });
                if table.candidate == served.table.candidate && table.shadow == served.table.shadow {
                    return Ok(served.revision);
                }
            }
            Target::Stable => {
                if table.candidate.is_none() && table.shadow.is_none() {
                    return Ok(served.revision);
                }
                table.candidate = None;
                table.shadow = None;
            }
            Target::Promoted => {
                if table.stable == version && table.candidate.is_none() && table.shadow.is_none() {
                    return Ok(served.revision);
                }
                table.candidate = Some(modelship_router::Candidate { version: version.to_owned(), weight: modelship_router::BasisPoints::ALL });
                table.shadow = None;
                table = table.apply(&Change::Promote).map_err(change_error)?;
            }
        }
        // The rollout judged the version when it started (`rollout start --force` for one that
        // failed validation): its promotion moves the alias without asking again.
        Ok(self.install_with(state, &served, table, None, actor, reason, None, AliasStep::MoveJudged, leader).await?.revision)
    }

    /// Follows the control store for this model until shutdown: applies every newer revision, on a
    /// published change at once, else within `every` (a publish is lost while disconnected).
    pub async fn follow_store(self: Arc<Self>, state: AppState, every: Duration) {
        let model = self.spec.name.clone();
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes: Option<BoxStream<'static, u64>> = None;
        loop {
            if changes.is_none() {
                changes = match self.store.changes(&model).await {
                    Ok(stream) => Some(stream),
                    Err(e) => {
                        tracing::debug!(model = %model, error = %e, "cannot subscribe to routing changes; re-reading periodically");
                        None
                    }
                };
            }
            let pushed = async {
                match changes.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = pushed => {
                    if next.is_none() {
                        changes = None;
                    }
                }
                _ = ticker.tick() => {}
            }
            if state.health.is_draining() {
                return;
            }
            if let Err(e) = self.sync(&state).await {
                tracing::warn!(model = %model, error = %e, "cannot apply the latest routing from the control store; serving the current one");
            }
        }
    }

    /// Applies `change` to the model's table; returns the new revision.
    pub async fn change(&self, state: &AppState, change: Change, actor: &str, reason: &str) -> Result<Revision, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        let served = self.served(state).await?;
        let table = served.table.apply(&change).map_err(change_error)?;
        self.install(state, &served, table, Some(change), actor, reason).await
    }

    /// Makes `version` the stable one, as an alias move asks. Every replica that follows the
    /// alias sees the move: the first to commit switches the fleet, the others find the switch
    /// in force once they applied the latest revision, and commit nothing (`None`).
    ///
    /// `seen` is the revision that was in force before the alias was read. When the latest
    /// revision is another, the routing changed meanwhile and the alias read may be older than
    /// that change (a promotion moves the alias, then commits): nothing is committed, and the
    /// follower decides again from fresh reads. Without this, a follower that read the alias
    /// just before a promotion moved it switched the fleet back to the old version.
    pub async fn switch_to(&self, state: &AppState, version: &str, seen: u64, actor: &str, reason: &str) -> Result<Option<Revision>, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        self.sync_locked(state).await?;
        let (table, revision) = state.models.routing(&self.spec.name)?;
        if table.stable == version || revision != seen {
            return Ok(None);
        }
        let served = self.served(state).await?;
        let change = Change::Switch { version: version.to_owned() };
        let table = served.table.apply(&change).map_err(change_error)?;
        match self.install_with(state, &served, table, Some(change), actor, reason, None, AliasStep::Follow, None).await {
            // Another replica committed first (install applied its revision): the same move?
            Err(ApiError::Conflict(e)) => match state.models.routing(&self.spec.name)? {
                (now, _) if now.stable == version => Ok(None),
                _ => Err(ApiError::Conflict(e)),
            },
            other => other.map(Some),
        }
    }

    /// Restores the table of revision `to` (default: the one before the current), as a new revision.
    pub async fn rollback(&self, state: &AppState, to: Option<u64>, actor: &str, reason: &str) -> Result<Revision, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        let served = self.served(state).await?;
        let history = self.store.history(&self.spec.name).await?;
        let Some(target) = to.or_else(|| served.revision.checked_sub(1)) else {
            return Err(ApiError::Conflict("there is no earlier revision to roll back to".to_owned()));
        };
        let table = history
            .iter()
            .find(|r| r.revision == target)
            .map(|r| r.traffic.clone())
            .ok_or_else(|| ApiError::Conflict(format!("there is no revision {target} of model '{}'", self.spec.name)))?;
        let reason = if reason.is_empty() { format!("rollback to revision {target}") } else { format!("rollback to revision {target}: {reason}") };
        let revision = self.install(state, &served, table, None, actor, &reason).await?;
        let mut history = history;
        history.push(revision.clone());
        self.mark_rolled_back(state, &history, &revision);
        Ok(revision)
    }

    /// Marks, in the prediction log (when there is one), the predictions of each version that
    /// `rollback` stopped routing: over the unbroken run of revisions that routed it. Written in
    /// the background (retried until the store takes it); writing a mark twice changes nothing.
    pub fn mark_rolled_back(&self, state: &AppState, history: &[Revision], rollback: &Revision) {
        let Some(log) = state.predictions.get() else { return };
        let routed: Vec<modelship_predictions::Routed> = history
            .iter()
            .map(|r| modelship_predictions::Routed {
                revision: i64::try_from(r.revision).unwrap_or(i64::MAX),
                at_ms: r.at_ms,
                versions: std::iter::once(r.traffic.stable.clone())
                    .chain(r.traffic.candidate.as_ref().map(|c| c.version.clone()))
                    .chain(r.traffic.shadow.as_ref().map(|s| s.version.clone()))
                    .collect(),
            })
            .collect();
        let revision = i64::try_from(rollback.revision).unwrap_or(i64::MAX);
        let marks = modelship_predictions::marks_for_rollback(&routed, revision, &rollback.actor, &rollback.reason, log.replica());
        for mut mark in marks {
            mark.model = self.spec.name.clone();
            tracing::info!(model = %mark.model, version = %mark.version, from_revision = mark.from_revision, to_revision = mark.to_revision, "marking the rolled-back version's predictions");
            // Queued now (a close that follows writes it); written in the background.
            drop(log.mark(mark));
        }
    }

    pub async fn history(&self) -> Result<Vec<Revision>, ApiError> {
        Ok(self.store.history(&self.spec.name).await?)
    }

    /// Applies the latest revision in the store when it is newer than the one in force (another
    /// replica committed it): loads and warms what it routes to, then swaps it in. Returns the
    /// revision applied, if any. A version that cannot be loaded leaves the current table serving.
    pub async fn sync(&self, state: &AppState) -> Result<Option<u64>, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        self.sync_locked(state).await
    }

    async fn sync_locked(&self, state: &AppState) -> Result<Option<u64>, ApiError> {
        let (table, revision) = state.models.routing(&self.spec.name)?;
        let Some(latest) = self.store.latest(&self.spec.name).await? else { return Ok(None) };
        // Revision 0 is also what a freshly started server holds before it read the store, so
        // there the table decides; after that, the number does, and the routing where the
        // numbers are equal. A store whose latest is older than the revision in force lost
        // writes (a Redis failover before they reached the new primary): its routing is the
        // fleet's now, and the next commit reuses the lost number with other routing, which
        // this replica must not take for the one it serves.
        let in_force = match revision {
            0 => latest.revision == 0 && latest.traffic == table,
            _ => latest.revision == revision && routes_alike(&latest.traffic, &table),
        };
        if !in_force && latest.revision <= revision && revision != 0 {
            tracing::warn!(
                model = %self.spec.name, in_force = revision, store = latest.revision,
                "the control store's latest revision is not the one this replica serves (it lost writes: a failover?); applying the store's"
            );
        }
        if in_force {
            if self.failure.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
                state.models.set_reload_error(&self.spec.name, None);
            }
            return Ok(None);
        }
        // A resting model loads again only for a routing that is not already in force.
        let applied = match self.served(state).await {
            Ok(served) => self.apply(state, &served, latest.traffic, latest.revision).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((latest.revision, e.to_string()));
            // Readiness lists it too; the routing in force keeps serving.
            state.models.set_reload_error(&self.spec.name, Some(format!("revision {} cannot be applied: {e}", latest.revision)));
            return Err(e);
        }
        if self.failure.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            state.models.set_reload_error(&self.spec.name, None);
        }
        tracing::info!(model = %self.spec.name, revision = latest.revision, actor = %latest.actor, reason = %latest.reason, "applied a revision from the control store");
        Ok(Some(latest.revision))
    }

    /// Serves `table` as `revision` (already committed): loads what it routes to, keeps the
    /// previous version warm when the table names one and it is loaded.
    async fn apply(&self, state: &AppState, served: &Served, mut table: TrafficTable, revision: u64) -> Result<(), ApiError> {
        let versions = self.versions_for(state, served, &mut table, None).await?;
        let next = Served { table, revision, versions };
        self.publish(state, served, next);
        Ok(())
    }

    /// Switches all traffic to `model`, a version loaded (and warmed) by the caller from outside
    /// the registry: a served file whose contents changed. The version it replaces stays warm
    /// for a rollback, as with any switch.
    pub async fn adopt(&self, state: &AppState, model: Arc<LoadedModel>, actor: &str, reason: &str) -> Result<Revision, ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        // A resting model is not loaded again for a version that replaces it (a followed file's
        // new contents): the version it rests at may be gone from the file.
        let served = match state.models.slot(&self.spec.name) {
            Some(ModelSlot::Resting(r)) => Arc::new(r.unloaded()),
            _ => self.served(state).await?,
        };
        let change = Change::Switch { version: model.version.clone() };
        let table = served.table.apply(&change).map_err(change_error)?;
        self.install_with(state, &served, table, Some(change), actor, reason, Some(model), AliasStep::Move, None).await
    }

    /// Before [`Traffic::resume`], on a control store the fleet shares: a routing recorded for
    /// another model source is the fleet's, and restarting it from this server's source would
    /// reset every replica's. Refused, saying what to do.
    pub async fn check_source(&self) -> Result<(), String> {
        if self.store.kind() == "embedded" {
            return Ok(());
        }
        let latest = self.store.latest(&self.spec.name).await.map_err(|e| e.to_string())?;
        match (latest.as_ref().and_then(|l| l.source.as_deref()), self.source.label.as_deref()) {
            (Some(recorded), Some(now)) if recorded != now => Err(format!(
                "the {} control store holds the routing of model '{}' recorded for {recorded}, and this server serves {now}: starting would reset every replica's routing. \
                 Serve {recorded} as the fleet does, serve this model under another name (--name), or use another control store",
                self.store.kind(),
                self.spec.name
            )),
            _ => Ok(()),
        }
    }

    /// At startup: resumes the routing recorded for this model and source, or records the
    /// current routing as the first revision when there is none. In a fleet the first replica
    /// to start commits it; the others apply what it committed.
    ///
    /// Recorded routing is never half-applied:
    /// - recorded for another source (the model was served from a file, now from the registry):
    ///   not carried over; one revision records the new source and its stable version;
    /// - on a server following `NAME@ALIAS`, whose stable version is not what the alias names
    ///   (it was moved while the server was stopped): the alias decides, and one revision
    ///   records that, with the recorded candidate and shadow kept where they still apply.
    pub async fn resume(&self, state: &AppState) -> Result<(), ApiError> {
        let _one_at_a_time = self.lock.lock().await;
        let _loaded = state.residency.pin(&self.spec.name);
        let (table, _) = state.models.routing(&self.spec.name)?;
        let Some(latest) = self.store.latest(&self.spec.name).await? else {
            let initial = Revision {
                model: self.spec.name.clone(),
                revision: 0,
                at_ms: now_ms(),
                actor: "server".to_owned(),
                reason: "initial routing".to_owned(),
                change: None,
                traffic: table,
                source: self.source.label.clone(),
            };
            return match self.store.commit(&initial, None).await {
                Ok(()) => Ok(()),
                // Another replica committed first: apply what it wrote.
                Err(StoreError::Conflict { .. }) => self.resume_recorded(state).await,
                Err(e) => Err(e.into()),
            };
        };
        let started_on = &table.stable;
        let restart = match resume_decision(&latest, self.source.label.as_deref(), self.source.alias.is_some(), started_on) {
            Resume::Apply => return self.resume_recorded(state).await,
            Resume::Restart { table, reason } => (table, reason),
        };
        // Committed over the latest revision, with what this server loaded at startup.
        let served = self.served(state).await?;
        let base = Served { table: latest.traffic.clone(), revision: latest.revision, versions: served.versions.clone() };
        let (table, reason) = restart;
        match self.install_with(state, &base, table, None, "server", &reason, None, AliasStep::Follow, None).await {
            Ok(revision) => {
                tracing::warn!(model = %self.spec.name, revision = revision.revision, reason = %reason, "the recorded routing was not resumed as it was");
                Ok(())
            }
            // Another replica reconciled first: install applied its revision.
            Err(ApiError::Conflict(_)) => self.resume_recorded(state).await,
            Err(e) => Err(e),
        }
    }

    /// Applies the latest recorded revision (see [`Traffic::sync`]).
    async fn resume_recorded(&self, state: &AppState) -> Result<(), ApiError> {
        if let Some(revision) = self.sync_locked(state).await? {
            tracing::info!(model = %self.spec.name, revision, "resumed the recorded routing");
        }
        Ok(())
    }

    /// Loads what `table` routes to, swaps it in, records it.
    async fn install(
        &self,
        state: &AppState,
        served: &Served,
        table: TrafficTable,
        change: Option<Change>,
        actor: &str,
        reason: &str,
    ) -> Result<Revision, ApiError> {
        self.install_with(state, served, table, change, actor, reason, None, AliasStep::Move, None).await
    }

    /// [`Traffic::install`], with one version already loaded by the caller. A new stable version
    /// on a server that follows an alias moves the alias first (see [`Traffic::move_alias`]),
    /// unless the change comes from the alias (`AliasStep::Follow`); if the commit then fails,
    /// the alias is moved back.
    #[allow(clippy::too_many_arguments)]
    async fn install_with(
        &self,
        state: &AppState,
        served: &Served,
        table: TrafficTable,
        change: Option<Change>,
        actor: &str,
        reason: &str,
        loaded: Option<Arc<LoadedModel>>,
        alias: AliasStep,
        leader: Option<&str>,
    ) -> Result<Revision, ApiError> {
        let mut table = table.without_self_comparison();
        let versions = self.versions_for(state, served, &mut table, loaded.as_ref()).await?;
        let moved = if alias != AliasStep::Follow && table.stable != served.table.stable {
            if alias == AliasStep::Move {
                self.refuse_failed_validation(&table.stable).await?;
            }
            self.move_alias(&served.table.stable, &table.stable, actor, reason).await?
        } else {
            false
        };
        let revision = Revision {
            model: self.spec.name.clone(),
            revision: served.revision + 1,
            at_ms: now_ms(),
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            change,
            traffic: table.clone(),
            source: self.source.label.clone(),
        };
        if let Err(e) = self.store.commit(&revision, leader).await {
            let conflict = matches!(e, StoreError::Conflict { .. });
            if conflict && let Err(sync) = self.sync_locked(state).await {
                tracing::warn!(model = %self.spec.name, error = %sync, "cannot apply the routing another replica committed");
            }
            // Another replica's commit that made the same version stable (a follower of the
            // alias this change moved) agrees with the alias: moving it back would send the
            // fleet back to the old version at the next poll.
            let agreed = conflict && state.models.routing(&self.spec.name).is_ok_and(|(now, _)| now.stable == table.stable);
            if moved && !agreed {
                self.move_alias_back(&table.stable, &served.table.stable).await;
            }
            return Err(e.into());
        }
        let next = Served { table, revision: revision.revision, versions };
        self.publish(state, served, next);
        tracing::info!(
            model = %self.spec.name, revision = revision.revision, actor, reason,
            traffic = %serde_json::to_string(&revision.traffic).unwrap_or_default(), "traffic changed"
        );
        Ok(revision)
    }

    /// On a server that follows `NAME@ALIAS`, points the alias at `to` (recorded in the
    /// registry's alias history with `actor`) before the revision making it stable is committed:
    /// the alias stays the one source of truth, so a restart serves what was promoted. The move
    /// is a compare and set from `from`, the stable version in force: an alias moved meanwhile by
    /// someone else is never undone, and the change is refused (the server follows the alias).
    /// A registry that refuses the move refuses the change: the routing stays as it is. Returns
    /// whether the alias was moved.
    async fn move_alias(&self, from: &str, to: &str, actor: &str, reason: &str) -> Result<bool, ApiError> {
        let (Some(alias), Some(registry)) = (&self.source.alias, &self.registry) else { return Ok(false) };
        let name = &self.registry_model;
        let recorded = if reason.is_empty() { actor.to_owned() } else { format!("{actor}: {reason}") };
        let recorded: String = recorded.chars().take(256).collect();
        if registry.is_read_only() {
            return Err(ApiError::Conflict(format!(
                "this server follows {name}@{alias}, and making {to} stable moves that alias, but the registry is read-only here; \
                 the routing is unchanged. Make the registry writable, or move the alias where it is (`modelship models alias {name} {alias} {to}`): the server follows it"
            )));
        }
        match registry.set_alias_if(name, alias, from, to, &recorded).await {
            Ok(moved) => {
                if moved.is_some() {
                    tracing::info!(model = %name, alias = %alias, from, to, actor, "moved the alias this server follows");
                }
                Ok(moved.is_some())
            }
            Err(e @ modelship_registry::RegistryError::AliasMoved { .. }) => Err(ApiError::Conflict(format!(
                "{e}; the routing is unchanged, and this server follows the alias: look at the traffic again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// On a server that follows an alias, a version `validate --record` judged failed becomes
    /// stable only through `rollout start --force` or `models alias --force` (which the server
    /// follows), never through a plain `traffic promote` or `switch`.
    async fn refuse_failed_validation(&self, version: &str) -> Result<(), ApiError> {
        let (Some(alias), Some(registry)) = (&self.source.alias, &self.registry) else { return Ok(()) };
        let name = &self.registry_model;
        let record = registry.resolve(&ModelRef::Version(name.clone(), version.to_owned())).await?;
        if record.failed_validation() {
            return Err(ApiError::Conflict(format!(
                "{name}:{version} failed validation (validate=fail, recorded by `modelship validate --record`), and making it stable moves {name}@{alias}; \
                 the routing is unchanged. To serve it anyway: `modelship models alias {name} {alias} {version} --force` (the server follows), or `modelship rollout start --force`"
            )));
        }
        Ok(())
    }

    /// Undoes [`Traffic::move_alias`] after the change it was made for could not be committed,
    /// unless the alias was moved again meanwhile.
    async fn move_alias_back(&self, to: &str, from: &str) {
        let (Some(alias), Some(registry)) = (&self.source.alias, &self.registry) else { return };
        let name = &self.registry_model;
        match registry.set_alias_if(name, alias, to, from, "server: the change that moved it was not committed").await {
            Ok(_) => tracing::warn!(model = %name, alias = %alias, version = from, "moved the alias back: the change that moved it was not committed"),
            Err(e) => tracing::error!(
                model = %name, alias = %alias, error = %e,
                "cannot move the alias back after a change that was not committed; the server follows the alias"
            ),
        }
    }

    /// The model's served state to change. A model resting to save memory, served from a
    /// registry, is changed as it is: what the new table routes to is loaded from the registry
    /// as for any change (so an alias move never loads the version it moves away from). One
    /// served from a file is loaded again first (no registry holds its versions).
    async fn served(&self, state: &AppState) -> Result<Arc<Served>, ApiError> {
        match state.models.slot(&self.spec.name) {
            Some(ModelSlot::Resting(r)) if self.registry.is_some() => {
                Ok(Arc::new(r.unloaded()))
            }
            _ => state.residency.load(&self.spec.name).await,
        }
    }

    /// Swaps `next` in for `served`: background priority for shadow-only versions, shadow
    /// agreement reset for a new pair, metrics, then the table.
    fn publish(&self, state: &AppState, served: &Served, next: Served) {
        // Versions that only answer mirrored requests yield the CPU to the ones clients wait for.
        let live: std::collections::BTreeSet<&str> = next.table.weights().into_iter().map(|(v, _, _)| v).collect();
        for (v, m) in &next.versions {
            m.set_background(!live.contains(v.as_str()));
        }
        if next.table.shadow != served.table.shadow || next.table.stable != served.table.stable {
            // Agreement is between one shadow and one stable version: a new pair starts from zero.
            state.shadows.reset(&self.spec.name);
        }
        state.models.publish(&self.spec.name, next);
        // New versions may take the server past its bound on loaded models.
        state.residency.settle(&self.spec.name);
        self.schedule_cool_down(state);
    }

    /// After `keep_warm`, unloads the warm previous version if nothing routes to it any more.
    /// The expiry is a write like any other: it takes the writer's lock and replaces only the
    /// table it read (compare and swap), so it can never undo a newer revision.
    fn schedule_cool_down(&self, state: &AppState) {
        let (app, name, wait, lock) = (state.clone(), self.spec.name.clone(), self.keep_warm, Arc::clone(&self.lock));
        state.tasks.spawn("keep-warm", move |_| async move {
            tokio::time::sleep(wait).await;
            let _one_at_a_time = lock.lock().await;
            let Ok(served) = app.models.served(&name) else { return };
            let Some(next) = without_unrouted(&served) else { return };
            let gone: Vec<String> = served.versions.keys().filter(|v| !next.versions.contains_key(*v)).cloned().collect();
            if app.models.publish_if(&name, &served, next) {
                app.residency.settle(&name);
                for version in gone {
                    tracing::info!(model = %name, version = %version, "unloaded a version nothing routes to any more");
                }
            }
        });
    }

    /// What `table` needs loaded: every version it routes to, plus the version it replaced
    /// (`previous`), kept warm for an instant rollback when it is still loaded; when it is not,
    /// `previous` is dropped from the table.
    async fn versions_for(
        &self,
        state: &AppState,
        served: &Served,
        table: &mut TrafficTable,
        loaded: Option<&Arc<LoadedModel>>,
    ) -> Result<BTreeMap<String, Arc<LoadedModel>>, ApiError> {
        let mut versions = self.routed_versions(state, served, table, loaded).await?;
        match table.previous.as_ref().and_then(|p| served.versions.get(p)) {
            Some(m) => {
                versions.entry(m.version.clone()).or_insert_with(|| Arc::clone(m));
            }
            None => table.previous = None,
        }
        Ok(versions)
    }

    /// Every version `table` routes to: the ones `served` has already (or `loaded`), the others
    /// loaded from the registry.
    async fn routed_versions(
        &self,
        state: &AppState,
        served: &Served,
        table: &TrafficTable,
        loaded: Option<&Arc<LoadedModel>>,
    ) -> Result<BTreeMap<String, Arc<LoadedModel>>, ApiError> {
        let mut versions = BTreeMap::new();
        for v in table.versions() {
            let model = match (served.versions.get(v), loaded.filter(|m| m.version == v)) {
                (Some(m), _) | (None, Some(m)) => Arc::clone(m),
                (None, None) => self.load(state, v).await?,
            };
            versions.insert(v.to_owned(), model);
        }
        Ok(versions)
    }

    async fn load(&self, state: &AppState, version: &str) -> Result<Arc<LoadedModel>, ApiError> {
        let registry = self.registry.as_ref().ok_or_else(|| {
            ApiError::Conflict(format!(
                "version {version} is not loaded, and this server serves a file; serve the model from a registry (NAME@ALIAS or NAME:VERSION) to route between versions"
            ))
        })?;
        let origin = Origin::Registry { registry: Arc::clone(registry), model: self.registry_model.clone() };
        let (bytes, warm_up) = crate::residency::fetch(&origin, version, &self.spec.warm_up).await?;
        let spec = ModelSpec { version: version.to_owned(), warm_up, ..self.spec.clone() };
        LoadedModel::load_warm(Arc::clone(&self.backend), bytes, spec, Arc::clone(&state.metrics), &format!("version {version}")).await
    }
}

#[cfg(test)]
mod tests {
    use modelship_router::{BasisPoints, Candidate, Shadow};

    use super::*;

    fn recorded(source: Option<&str>, stable: &str, candidate: Option<&str>, shadow: Option<&str>) -> Revision {
        let mut traffic = TrafficTable::new(stable);
        traffic.candidate = candidate.map(|v| Candidate { version: v.to_owned(), weight: BasisPoints::new(1000).unwrap() });
        traffic.shadow = shadow.map(|v| Shadow { version: v.to_owned(), percent: BasisPoints::ALL });
        traffic.previous = Some("0".to_owned());
        Revision { model: "fraud".into(), revision: 7, at_ms: 0, actor: "t".into(), reason: String::new(), change: None, traffic, source: source.map(str::to_owned) }
    }

    #[test]
    fn a_starting_server_resumes_only_routing_of_its_source_that_its_alias_agrees_with() {
        let alias = Some("fraud@production");
        // (latest revision, this server's source, follows an alias, version started on)
        // -> None: resumed; Some((stable, candidate, shadow, reason fragment)): restarted
        type Want = Option<(&'static str, Option<&'static str>, Option<&'static str>, &'static str)>;
        let cases: Vec<(Revision, Option<&str>, bool, &str, Want)> = vec![
            // The promotion moved the alias: what was promoted is resumed.
            (recorded(alias, "2", None, None), alias, true, "2", None),
            (recorded(alias, "1", Some("2"), None), alias, true, "1", None),
            // Revisions written before sources were recorded: resumed as before.
            (recorded(None, "1", None, None), alias, true, "1", None),
            // A file's server, and a pinned version: their revisions are the truth.
            (recorded(Some("file:/m/fraud.onnx"), "1-abc", None, None), Some("file:/m/fraud.onnx"), false, "1", None),
            (recorded(Some("fraud:1"), "2", None, None), Some("fraud:1"), false, "1", None),
            // The alias moved while the server was stopped: it decides, the canary stays.
            (recorded(alias, "1", Some("3"), None), alias, true, "2", Some(("2", Some("3"), None, "names 2, but the recorded routing served 1"))),
            // ... and a candidate or shadow that is now stable ends.
            (recorded(alias, "1", Some("2"), Some("2")), alias, true, "2", Some(("2", None, None, "the alias decides"))),
            // Another source's routing is never carried over.
            (
                recorded(Some("file:/m/fraud.onnx"), "1", Some("2"), None),
                alias,
                true,
                "1",
                Some(("1", None, None, "now served from fraud@production, not file:/m/fraud.onnx")),
            ),
            (recorded(alias, "2", None, Some("3")), Some("file:/m/fraud.onnx"), false, "1", Some(("1", None, None, "is not carried over"))),
        ];
        for (latest, source, follows, started_on, want) in cases {
            let got = resume_decision(&latest, source, follows, started_on);
            match (&got, want) {
                (Resume::Apply, None) => {}
                (Resume::Restart { table, reason }, Some((stable, candidate, shadow, fragment))) => {
                    assert_eq!(
                        (table.stable.as_str(), table.candidate.as_ref().map(|c| c.version.as_str()), table.shadow.as_ref().map(|s| s.version.as_str())),
                        (stable, candidate, shadow),
                        "{latest:?}"
                    );
                    assert!(table.previous.is_none(), "{table:?}");
                    assert!(reason.contains(fragment), "{reason}");
                }
                _ => panic!("{latest:?} from {source:?} on {started_on}: got {got:?}, want {want:?}"),
            }
        }
    }
}
