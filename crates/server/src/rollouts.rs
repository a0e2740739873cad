//! A model's rollout, run by one replica of the fleet at a time.
//!
//! The rollout's state lives in the control store ([`StoredRollout`]), never only in a process:
//! every change to it is a compare-and-swap write there, and the routing it asks for is then
//! made so through [`Traffic::ensure`], which changes nothing when it already is. So:
//!
//! - **Operators' commands** (start, approve, pause, resume, abort) work on any replica: it
//!   reads the record, hands the event to the engine, writes the record back (refused if
//!   another replica wrote it meanwhile) and applies the routing.
//! - **The control loop** runs on the replica holding the model's lease ([`ControlStore::lease`],
//!   renewed every third of its time to live). Its writes carry the lease, so a replica that lost
//!   it (paused, partitioned) cannot write. A replica that takes the lease over reads the record
//!   and goes on from its step: nothing is kept only in the old leader's memory.
//! - **A step counts from when the whole fleet routes by it.** After the routing of a step is
//!   committed, the leader waits until every live replica reports that revision (the
//!   acknowledgement, [`crate::fleet`]) and only then restarts the step's clock
//!   ([`Event::Settled`]); evidence observed before is dropped. A replica that reports it cannot
//!   apply the revision fails the step by the rollout's policy ([`Event::Fault`]).
//! - **Evidence is the fleet's.** Every replica sends what it observed to the store's evidence
//!   log; the leader merges everything after the record's cursor into each analysis window.
//!
//! Locking rule: `writing` serialises this replica's writes (commands, the loop's analysis);
//! Prometheus queries and webhook calls run with no lock held, and `status` never waits for
//! either.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelship_protocol::admin::{CheckResult, RolloutCommand, RolloutDecision, RolloutState, RolloutStatus};
use modelship_rollout::check::Window;
use modelship_rollout::engine::{Action, Decision, Event, Phase, Rollout};
use modelship_registry::ModelRef;
use modelship_rollout::spec::RolloutSpec;
use serde_json::{Value, json};

use crate::control::{Applied, ControlStore, StoreError, StoredRollout, Write};
use crate::error::ApiError;
use crate::model::Served;
use crate::notify::{self, EventKind, Notice};
use crate::state::AppState;
use crate::traffic::{Split, Target, Traffic};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How this replica takes part in rollouts.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// This replica's name in the fleet (unique among live replicas).
    pub replica: String,
    /// The lease's time to live: how long a dead leader holds a rollout up at most.
    pub lease_ttl: Duration,
    /// A replica not heard from within this is not waited for (it left the fleet).
    pub live: Duration,
}

impl FleetConfig {
    pub fn single(replica: &str) -> Self {
        FleetConfig { replica: replica.to_owned(), lease_ttl: Duration::from_secs(10), live: Duration::from_secs(3) }
    }
}

/// The rollout of one model, as this replica sees and drives it.
pub struct Rollouts {
    traffic: Arc<Traffic>,
    pub fleet: FleetConfig,
    writing: tokio::sync::Mutex<()>,
    /// The status as of the last record this replica read or wrote, for readers that must never
    /// wait.
    snapshot: Mutex<RolloutStatus>,
    leading: AtomicBool,
    /// Webhook gates this replica asked while leading: (rollout, step).
    asked: Mutex<HashSet<(i64, usize)>>,
    /// Wakes the control loop when a rollout starts here (it sleeps longer while none runs).
    wake: tokio::sync::Notify,
    /// Steps this replica told were held on inconclusive evidence: (rollout, step).
    held: Mutex<HashSet<(i64, usize)>>,
    /// The last rollout this replica saw ended (`None` before its first look): each end is
    /// counted once, and one that ended before this process started is not counted.
    ended: Mutex<Option<i64>>,
}

/// What led to decisions, for what their notifications call them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Start,
    Resume,
    Other,
}

impl Rollouts {
    pub fn new(traffic: Arc<Traffic>, fleet: FleetConfig) -> Self {
        let snapshot = Mutex::new(RolloutStatus { model: traffic.spec.name.clone(), rollout: None });
        Rollouts { traffic, fleet, writing: tokio::sync::Mutex::new(()), snapshot, leading: AtomicBool::new(false), asked: Mutex::default(), wake: tokio::sync::Notify::new(), held: Mutex::default(), ended: Mutex::default() }
    }

    fn store(&self) -> &dyn ControlStore {
        self.traffic.store.as_ref()
    }

    fn model(&self) -> &str {
        &self.traffic.spec.name
    }

    /// Whether this replica holds the lease (as of its last renewal).
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Starts a rollout of `spec.to` against the current stable version, from any replica.
    pub async fn start(self: &Arc<Self>, state: &AppState, spec: RolloutSpec, actor: &str, force: bool) -> Result<RolloutStatus, ApiError> {
        let plan = spec.resolve().map_err(|problems| ApiError::InvalidSpec(format!("invalid rollout spec: {}", problems.join("; "))))?;
        let _one_at_a_time = self.writing.lock().await;
        let current = self.store().rollout(self.model()).await?;
        if let Some(c) = current.as_ref().filter(|c| !c.is_done()) {
            return Err(ApiError::Conflict(format!("model '{}' already has a rollout in progress (rollout {}); abort it first", self.model(), c.id)));
        }
        let served = state.residency.load(self.model()).await?;
        if plan.to == served.table.stable {
            return Err(ApiError::Conflict(format!("version {} is already the stable version", plan.to)));
        }
        // Refused before anything is written: a record of a rollout that cannot run would hold
        // the model's one rollout until someone aborted it.
        self.check_routable(&served, &plan.to).await?;
        if !force && let Some(refused) = self.check_validated(&plan.to).await? {
            self.tell(state, None, EventKind::GateRefused, 0, &refused.to_string(), None, Some(&plan.to));
            return Err(refused);
        }
        let (rollout, decisions) = Rollout::start(plan, self.store().now_ms().await?);
        // Evidence already in the log belongs to earlier rollouts: read on from its end.
        let (_, evidence_cursor) = self.store().evidence(self.model(), None).await?;
        let record = StoredRollout {
            id: current.map_or(1, |c| c.id + 1),
            seq: 0,
            model: self.model().to_owned(),
            stable: served.table.stable.clone(),
            rollout,
            applied: None,
            evidence_cursor,
            leader: None,
        };
        self.store().save_rollout(&record, Write::Create, &decisions).await?;
        state.observations.set_recording(self.model(), true);
        // Kept loaded from now on (each beat says so again, on every replica).
        state.residency.set_rollout(self.model(), true);
        tracing::info!(model = %self.model(), rollout = record.id, to = %record.rollout.plan.to, actor, "rollout started");
        self.wake.notify_one();
        self.decided(state, &record, &decisions, Cause::Start);
        let record = match self.reconcile(state, record.clone(), None).await {
            Ok(record) => record,
            Err(e) => return Err(self.end_unstarted(state, record, e).await),
        };
        if self.is_leading() {
            // Elsewhere the leader asks at its next analysis.
            self.ask_gate(state, &record);
        }
        Ok(self.observe(state, Some(&record)))
    }

    /// Refuses a version this replica cannot route to: neither loaded nor in the registry (404),
    /// or not loaded while the server serves a file (409).
    async fn check_routable(&self, served: &Served, version: &str) -> Result<(), ApiError> {
        if served.versions.contains_key(version) {
            return Ok(());
        }
        let Some(registry) = &self.traffic.registry else {
            return Err(ApiError::Conflict(format!(
                "version {version} is not loaded, and this server serves a file; serve the model from a registry (NAME@ALIAS or NAME:VERSION) to roll out another version"
            )));
        };
        registry.resolve(&ModelRef::Version(self.traffic.registry_model.clone(), version.to_owned())).await?;
        Ok(())
    }

    /// A version `modelship validate --record` judged failed (`validate=fail`) is not rolled
    /// out unless asked with `force`: the refusal, when it is (the gate's), or why the registry
    /// could not say.
    async fn check_validated(&self, version: &str) -> Result<Option<ApiError>, ApiError> {
        let Some(registry) = &self.traffic.registry else { return Ok(None) };
        let name = &self.traffic.registry_model;
        // A registry that does not answer refuses the start: it cannot say the version passed. A
        // version it does not hold (loaded from elsewhere) carries no verdict.
        let record = match registry.resolve(&ModelRef::Version(name.clone(), version.to_owned())).await {
            Ok(record) => record,
            Err(modelship_registry::RegistryError::UnknownModel(_) | modelship_registry::RegistryError::UnknownVersion { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if record.failed_validation() {
            return Ok(Some(ApiError::Conflict(format!(
                "{name}:{version} failed validation (validate=fail, recorded by `modelship validate --record`; `modelship models show {name}:{version}` shows why); roll it out anyway with --force"
            ))));
        }
        Ok(None)
    }

    /// A rollout whose first step could not be applied (the version is in the registry but does
    /// not load) ends at once, rolled back, so it does not hold the model's rollout; the start
    /// answers with why.
    async fn end_unstarted(&self, state: &AppState, mut record: StoredRollout, error: ApiError) -> ApiError {
        let now = self.store().now_ms().await.unwrap_or_else(|_| now_ms());
        let decisions = record.rollout.handle(Event::Abort { now, reason: format!("its first step could not be applied: {error}") });
        record.seq += 1;
        match self.store().save_rollout(&record, Write::Update { leader: None }, &decisions).await {
            Ok(()) => {
                self.decided(state, &record, &decisions, Cause::Other);
                self.observe(state, Some(&record));
            }
            Err(e) => tracing::warn!(model = %self.model(), rollout = record.id, error = %e, "cannot end a rollout that failed to start; abort it"),
        }
        error
    }

    /// An operator's command to the rollout in progress, from any replica.
    pub async fn command(self: &Arc<Self>, state: &AppState, command: RolloutCommand, reason: &str) -> Result<RolloutStatus, ApiError> {
        let _one_at_a_time = self.writing.lock().await;
        let mut record = self
            .store()
            .rollout(self.model())
            .await?
            .filter(|r| !r.is_done())
            .ok_or_else(|| ApiError::Conflict(format!("model '{}' has no rollout in progress", self.model())))?;
        let now = self.store().now_ms().await?;
        let reason = if reason.is_empty() { "by an operator".to_owned() } else { reason.to_owned() };
        let event = match command {
            RolloutCommand::Approve => Event::Approve { now },
            RolloutCommand::Pause => Event::Pause { now, reason },
            RolloutCommand::Resume => Event::Resume { now },
            RolloutCommand::Abort => Event::Abort { now, reason },
        };
        let decisions = record.rollout.handle(event);
        record.seq += 1;
        self.store().save_rollout(&record, Write::Update { leader: None }, &decisions).await?;
        self.decided(state, &record, &decisions, if command == RolloutCommand::Resume { Cause::Resume } else { Cause::Other });
        let record = self.reconcile(state, record, None).await?;
        if self.is_leading() {
            // Elsewhere the leader asks at its next analysis.
            self.ask_gate(state, &record);
        }
        Ok(self.observe(state, Some(&record)))
    }

    /// The rollout's status: read from the store, or as last seen when it cannot be reached.
    pub async fn status(&self, state: &AppState) -> RolloutStatus {
        let mut status = match tokio::time::timeout(Duration::from_secs(2), self.store().rollout(self.model())).await {
            Ok(Ok(record)) => self.observe(state, record.as_ref()),
            _ => self.snapshot(),
        };
        // What the other replicas sent, from their reports (each sends the decisions it committed).
        if let Some(rollout) = status.rollout.as_mut()
            && self.store().is_shared()
            && let Ok(Ok(replicas)) = tokio::time::timeout(Duration::from_secs(2), self.store().replicas(self.model(), self.fleet.live)).await
        {
            let others = replicas.into_iter().filter(|r| r.replica != self.fleet.replica).flat_map(|r| r.notifications);
            rollout.notifications = merge_notifications(std::mem::take(&mut rollout.notifications).into_iter().chain(others));
        }
        status
    }

    /// The status as last seen; never waits.
    pub fn snapshot(&self) -> RolloutStatus {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn history(&self) -> Result<Vec<RolloutDecision>, ApiError> {
        let decisions = self.store().rollout_history(self.model()).await?;
        Ok(decisions.into_iter().map(|(rollout, decision)| RolloutDecision { rollout, decision }).collect())
    }

    /// Takes in a record read from the store: the status snapshot, the rollout metrics, and
    /// whether this replica records observations. Returns the status.
    pub fn observe(&self, state: &AppState, record: Option<&StoredRollout>) -> RolloutStatus {
        let mut status = RolloutStatus { model: self.model().to_owned(), rollout: record.map(state_of) };
        if let (Some(rollout), Some(notifier)) = (status.rollout.as_mut(), state.notifier.get()) {
            rollout.notifications = notifier.recent(self.model());
        }
        if let Some(r) = record {
            publish(state, self.model(), &r.rollout);
        }
        {
            let done = record.filter(|r| r.is_done());
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            match (*ended, done) {
                (None, d) => {
                    // Both outcomes from 0, so the first end is an increase Prometheus sees.
                    for outcome in ["promoted", "rolled_back"] {
                        let _ = state.metrics.rollouts_finished.with_label_values(&[self.model(), outcome]);
                    }
                    *ended = Some(d.map_or(0, |r| r.id));
                }
                (Some(last), Some(r)) if r.id > last => {
                    let outcome = if r.rollout.phase == Phase::Promoted { "promoted" } else { "rolled_back" };
                    state.metrics.rollouts_finished.with_label_values(&[self.model(), outcome]).inc();
                    *ended = Some(r.id);
                }
                _ => {}
            }
        }
        let active = record.is_some_and(|r| !r.is_done());
        // A model under rollout stays loaded, whatever its step routes (an approval gate routes
        // nothing to the candidate yet).
        state.residency.set_rollout(self.model(), active);
        if active != state.observations.is_recording(self.model()) {
            state.observations.set_recording(self.model(), active);
            if let (true, Some(log), Some(r)) = (active, state.predictions.get(), record) {
                let (log, state, model) = (Arc::clone(log), state.clone(), self.model().to_owned());
                let since = i64::try_from(r.rollout.started).unwrap_or(i64::MAX);
                tokio::spawn(async move { remember_logged(&state, &log, &model, since).await });
            }
        }
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        status
    }

    /// Makes the routing what the record's state asks for, if the record does not say it was
    /// applied already; writes the applied revision back (under the lease when `leader`).
    async fn reconcile(&self, state: &AppState, mut record: StoredRollout, leader: Option<&str>) -> Result<StoredRollout, ApiError> {
        let desired = record.rollout.desired();
        if record.applied.as_ref().is_some_and(|a| a.action == desired) {
            return Ok(record);
        }
        let target = match &desired {
            Action::Route { weight, shadow, header } => Target::Split(Split { weight: *weight, shadow: *shadow, header: *header }),
            Action::Promote => Target::Promoted,
            _ => Target::Stable,
        };
        let reason = format!("rollout {}: {}", record.id, describe(&record.rollout));
        let revision = self.traffic.ensure(state, &record.rollout.plan.to, target, "rollout", &reason, leader).await?;
        if desired == Action::Rollback && state.predictions.get().is_some() {
            match self.traffic.history().await {
                // Only a revision this rollback committed: `ensure` answers with the revision in
                // force when the routing already was what it asks (say, an older promotion).
                Ok(history) => {
                    if let Some(rollback) = history.iter().find(|r| r.revision == revision && r.actor == "rollout" && r.reason == reason) {
                        self.traffic.mark_rolled_back(state, &history, rollback);
                    }
                }
                Err(e) => tracing::warn!(model = %self.model(), error = %e, "cannot read the routing history to mark the rolled-back version's predictions"),
            }
        }
        record.applied = Some(Applied { action: desired.clone(), revision, settled_ms: None });
        record.seq += 1;
        match self.store().save_rollout(&record, Write::Update { leader }, &[]).await {
            Ok(()) => Ok(record),
            // Another replica (the leader, when a rollout is started elsewhere) applied the same
            // state first: its record stands.
            Err(StoreError::Stale(what)) => match self.store().rollout(self.model()).await? {
                Some(stored) if stored.id == record.id && stored.applied.as_ref().is_some_and(|a| a.action == desired) => Ok(stored),
                _ => Err(StoreError::Stale(what).into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The control loop: keeps (or tries to take) the lease, and while this replica leads, one
    /// analysis per interval of the rollout in progress. Gives the lease up on shutdown, so
    /// another replica takes over at once.
    pub async fn run(self: Arc<Self>, state: AppState, stop: tokio_util::sync::CancellationToken) {
        let renew = self.fleet.lease_ttl / 3;
        let mut last_analysis = std::time::Instant::now();
        // Until when the lease is surely still this replica's, by this process's monotonic
        // clock: the time to live counted from before the last renewal that succeeded was sent
        // (the store set it later), so it ends no later than the store's.
        let mut surely_mine_until: Option<std::time::Instant> = None;
        // The lease is tried at once, then every beat.
        let mut first = true;
        loop {
            let interval = {
                let snapshot = self.snapshot();
                snapshot.rollout.filter(|r| !r.phase.is_done()).map(|r| Duration::from_millis(r.interval_ms.max(100)))
            };
            let wait = interval.map_or(renew, |i| i.min(renew)).max(Duration::from_millis(50));
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => break,
                }
            }
            first = false;
            if state.health.is_draining() {
                break;
            }
            let asked = std::time::Instant::now();
            let lease = self.store().lease(self.model(), &self.fleet.replica, self.fleet.lease_ttl).await;
            // A renewal that got no answer (a slow or lossy link) does not end the leadership
            // while the lease it renewed last is surely still its own: giving it up and taking it
            // back a poll later would restart the step's window. It cannot act meanwhile without
            // the store, and what it writes carries the lease, so the store refuses it once the
            // lease has gone elsewhere.
            let leading = match &lease {
                Ok(l) => {
                    surely_mine_until = l.mine.then(|| asked + self.fleet.lease_ttl);
                    l.mine
                }
                Err(_) => self.leading.load(Ordering::Relaxed) && surely_mine_until.is_some_and(|until| std::time::Instant::now() < until),
            };
            if leading != self.leading.swap(leading, Ordering::Relaxed) {
                if leading {
                    self.took_over(&state).await;
                }
                match &lease {
                    Ok(_) if leading => tracing::info!(model = %self.model(), replica = %self.fleet.replica, "this replica now leads the model's rollouts"),
                    Ok(l) => tracing::info!(model = %self.model(), leader = %l.holder, "another replica leads the model's rollouts"),
                    Err(e) => tracing::warn!(model = %self.model(), error = %e, "cannot renew the rollout lease; not leading until the control store answers"),
                }
                self.asked.lock().unwrap_or_else(|p| p.into_inner()).clear();
                self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            if !leading {
                continue;
            }
            let due = interval.is_none_or(|i| last_analysis.elapsed() + Duration::from_millis(20) >= i);
            if due {
                last_analysis = std::time::Instant::now();
                if let Err(e) = self.tick(&state).await {
                    tracing::warn!(model = %self.model(), error = %e, "rollout analysis skipped");
                }
            }
        }
        if self.leading.swap(false, Ordering::Relaxed)
            && let Err(e) = self.store().release(self.model(), &self.fleet.replica).await
        {
            tracing::warn!(model = %self.model(), error = %e, "cannot give the rollout lease up; it expires by itself");
        }
    }

    /// One analysis, as the leader: applies the routing the record asks for if it is not yet,
    /// waits for the fleet to acknowledge it, then judges the fleet's evidence since then.
    async fn tick(self: &Arc<Self>, state: &AppState) -> Result<(), ApiError> {
        let leader = self.fleet.replica.clone();
        let Some(record) = self.store().rollout(self.model()).await? else {
            self.observe(state, None);
            return Ok(());
        };
        if record.is_done() && record.applied.as_ref().is_some_and(|a| a.action == record.rollout.desired()) {
            self.observe(state, Some(&record));
            return Ok(());
        }
        // External queries run before the lock is taken: they may take seconds.
        let external = self.external(&record).await;
        let _one_at_a_time = self.writing.lock().await;
        let Some(mut record) = self.store().rollout(self.model()).await? else { return Ok(()) };
        let applied = match record.applied.clone() {
            Some(a) if a.action == record.rollout.desired() => a,
            _ => {
                let record = self.reconcile(state, record, Some(&leader)).await?;
                self.observe(state, Some(&record));
                return Ok(());
            }
        };
        if record.is_done() {
            return Ok(());
        }
        // The store's clock, not this process's: a hold begun under one leader and judged by
        // another is measured on one clock.
        let now = self.store().now_ms().await?;
        let (evidence, cursor) = self.store().evidence(self.model(), record.evidence_cursor.as_deref()).await?;
        record.evidence_cursor = cursor;
        let decisions = match applied.settled_ms {
            None => {
                let replicas = self.store().replicas(self.model(), self.fleet.live).await?;
                let failed = replicas.iter().find_map(|r| match &r.failed {
                    Some((revision, why)) if *revision >= applied.revision => Some(format!("replica {} cannot apply revision {revision}: {why}", r.replica)),
                    _ => None,
                });
                let behind: Vec<&str> = replicas.iter().filter(|r| r.revision < applied.revision).map(|r| r.replica.as_str()).collect();
                if let Some(reason) = failed {
                    record.rollout.handle(Event::Fault { now, reason })
                } else if !replicas.is_empty() && behind.is_empty() {
                    tracing::info!(
                        model = %self.model(), rollout = record.id, revision = applied.revision, replicas = replicas.len(),
                        "every live replica routes by the step; its window starts now"
                    );
                    record.applied = Some(Applied { settled_ms: Some(now), ..applied.clone() });
                    record.rollout.handle(Event::Settled { now })
                } else {
                    tracing::debug!(model = %self.model(), revision = applied.revision, ?behind, "waiting for the fleet to apply the step's routing");
                    record.rollout.handle(Event::Wait { now })
                }
            }
            Some(_) => {
                let mut window = fleet_window(&record, applied.revision, &evidence);
                if record.rollout.step == external.0 {
                    window.external = external.1;
                }
                record.rollout.handle(Event::Tick { now, window })
            }
        };
        record.seq += 1;
        record.leader = Some(leader.clone());
        self.store().save_rollout(&record, Write::Update { leader: Some(&leader) }, &decisions).await?;
        self.decided(state, &record, &decisions, Cause::Other);
        // Told at the first analysis after the hold ran out (a new leader does not tell it again).
        let interval = record.rollout.plan.interval.0.as_millis() as u64;
        if decisions.is_empty()
            && let Some(reason) = record.rollout.held_inconclusive(now)
            && record.rollout.held_inconclusive(now.saturating_sub(interval)).is_none()
            && self.held.lock().unwrap_or_else(|p| p.into_inner()).insert((record.id, record.rollout.step))
        {
            self.tell(state, Some(&record), EventKind::InconclusiveHeld, 0, &reason, None, None);
        }
        let record = self.reconcile(state, record, Some(&leader)).await?;
        self.ask_gate(state, &record);
        self.observe(state, Some(&record));
        Ok(())
    }

    /// Logs the decisions a write of this replica committed, and tells the notification sinks:
    /// the replica whose write committed a decision is the one that sends it, so each is sent
    /// once in the fleet.
    fn decided(&self, state: &AppState, record: &StoredRollout, decisions: &[Decision], cause: Cause) {
        log_decisions(self.model(), record.id, decisions);
        for (i, d) in decisions.iter().enumerate() {
            // Entering a webhook gate routes, then calls the hook: one event.
            if i > 0 && matches!(d.action, Action::CallWebhook { .. }) && matches!(decisions[i - 1].action, Action::Route { .. }) {
                continue;
            }
            let kind = notify::kind_of(d, cause == Cause::Start && i == 0, cause == Cause::Resume);
            self.tell(state, Some(record), kind, i, &d.reason, Some(d), None);
        }
    }

    /// Hands one event to the notification sinks, when any is configured. `to` names the
    /// version when there is no record (a start refused by a gate).
    #[allow(clippy::too_many_arguments)]
    fn tell(&self, state: &AppState, record: Option<&StoredRollout>, kind: EventKind, index: usize, reason: &str, decision: Option<&Decision>, to: Option<&str>) {
        let Some(notifier) = state.notifier.get().filter(|n| !n.is_empty()) else { return };
        let at_ms = decision.map_or_else(now_ms, |d| d.at);
        let model = self.model();
        let id = match record {
            Some(r) if index > 0 => format!("{model}:{}:{}.{index}:{}", r.id, r.seq, kind.as_str()),
            Some(r) => format!("{model}:{}:{}:{}", r.id, r.seq, kind.as_str()),
            None => format!("{model}:-:{at_ms}:{}", kind.as_str()),
        };
        // Two takeovers of one record are two events.
        let id = if kind == EventKind::LeaderChanged { format!("{id}:{}", self.fleet.replica) } else { id };
        let steps = record.map(|r| r.rollout.plan.steps.len());
        notifier.notify(Notice {
            id,
            kind,
            severity: kind.severity(),
            model: model.to_owned(),
            rollout: record.map(|r| r.id),
            to: record.map(|r| r.rollout.plan.to.clone()).or_else(|| to.map(str::to_owned)),
            stable: record.map(|r| r.stable.clone()),
            step: record.map(|r| (r.rollout.step + 1).min(r.rollout.plan.steps.len())),
            steps,
            action: decision.map(|d| d.action.clone()),
            reason: reason.to_owned(),
            evidence: decision.map(|d| d.evidence.iter().map(|(check, verdict)| json!({"check": check, "verdict": verdict})).collect()).unwrap_or_default(),
            replica: self.fleet.replica.clone(),
            at_ms,
        });
    }

    /// This replica just took the lease: when a rollout is in progress that another replica
    /// drove, the takeover is told (by this replica, once per takeover).
    async fn took_over(&self, state: &AppState) {
        if state.notifier.get().is_none_or(|n| n.is_empty()) {
            return;
        }
        let Ok(Some(record)) = self.store().rollout(self.model()).await else { return };
        let me = self.fleet.replica.as_str();
        if let Some(previous) = record.leader.as_deref().filter(|l| *l != me && !record.is_done()) {
            let reason = format!("replica {me} leads the rollout now (replica {previous} led it before)");
            self.tell(state, Some(&record), EventKind::LeaderChanged, 0, &reason, None, None);
        }
    }

    /// The rollout's Prometheus checks, queried now, for the step it is at.
    async fn external(&self, record: &StoredRollout) -> (usize, std::collections::BTreeMap<String, f64>) {
        let model = self.model().to_owned();
        let queries: Vec<(String, String, String)> = record
            .rollout
            .plan
            .checks
            .iter()
            .filter_map(|check| match (check.promql(&model, &record.stable, &record.rollout.plan.to), check) {
                (Some((url, query)), modelship_rollout::check::Check::Prometheus { query: key, .. }) => Some((key.clone(), url, query)),
                _ => None,
            })
            .collect();
        let mut values = std::collections::BTreeMap::new();
        for (key, url, query) in queries {
            match tokio::task::spawn_blocking(move || prometheus_value(&url, &query)).await {
                Ok(Ok(Some(v))) => {
                    values.insert(key, v);
                }
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(e)) => tracing::warn!(model = %model, error = %e, "Prometheus query failed; the check stays inconclusive"),
            }
        }
        (record.rollout.step, values)
    }

    /// Asks the webhook gate the rollout waits at, once per leader (a new leader asks again:
    /// gates may be asked more than once and must answer the same).
    fn ask_gate(self: &Arc<Self>, state: &AppState, record: &StoredRollout) {
        let r = &record.rollout;
        let Some(modelship_rollout::spec::Step::Webhook { url }) = r.plan.steps.get(r.step).filter(|_| r.phase == Phase::AwaitingWebhook) else {
            return;
        };
        if !self.asked.lock().unwrap_or_else(|p| p.into_inner()).insert((record.id, r.step)) {
            return;
        }
        let (this, app, url, id, step) = (Arc::clone(self), state.clone(), url.clone(), record.id, r.step);
        let body = json!({"model": self.model(), "to": r.plan.to, "rollout": id});
        state.tasks.spawn("rollout-webhook", move |_| async move {
            let (go, detail) = tokio::task::spawn_blocking(move || call_webhook(&url, &body)).await.unwrap_or((false, "webhook task failed".into()));
            if let Err(e) = this.answer_gate(&app, id, step, go, detail).await {
                tracing::error!(model = %this.model(), error = %e, "cannot apply the webhook's answer");
            }
        });
    }

    /// Hands a gate's answer to the engine, if the rollout still waits at that gate.
    async fn answer_gate(&self, state: &AppState, id: i64, step: usize, go: bool, detail: String) -> Result<(), ApiError> {
        let _one_at_a_time = self.writing.lock().await;
        let Some(mut record) = self.store().rollout(self.model()).await?.filter(|r| {
            r.id == id && r.rollout.step == step && r.rollout.phase == Phase::AwaitingWebhook
        }) else {
            return Ok(());
        };
        let refusal = (!go).then(|| format!("the webhook gate said no: {detail}"));
        let decisions = record.rollout.handle(Event::WebhookAnswered { now: self.store().now_ms().await?, go, detail });
        record.seq += 1;
        let leader = self.fleet.replica.clone();
        self.store().save_rollout(&record, Write::Update { leader: Some(&leader) }, &decisions).await?;
        if let Some(reason) = refusal {
            self.tell(state, Some(&record), EventKind::GateRefused, 0, &reason, None, None);
        }
        self.decided(state, &record, &decisions, Cause::Other);
        let record = self.reconcile(state, record, Some(&leader)).await?;
        self.observe(state, Some(&record));
        Ok(())
    }
}

/// The fleet's evidence for the rollout's current step: every replica's, for this rollout,
/// observed while the step's routing (`revision`) or a later one was in force.
fn fleet_window(record: &StoredRollout, revision: u64, evidence: &[crate::control::Evidence]) -> Window {
    let mut rng = fastrand::Rng::new();
    evidence.iter().filter(|e| e.rollout == record.id && e.revision >= revision).fold(Window::default(), |mut all, e| {
        all.merge(&e.window, &mut rng);
        all
    })
}

fn log_decisions(model: &str, rollout: i64, decisions: &[Decision]) {
    for d in decisions {
        tracing::info!(model = %model, rollout, action = ?d.action, reason = %d.reason, "rollout decision");
    }
}

/// Where a rollout is, in words (the reason of the routing revisions it commits).
fn describe(r: &Rollout) -> String {
    match &r.phase {
        Phase::Promoted => "promoted".to_owned(),
        Phase::RolledBack { reason } => format!("rolled back: {reason}"),
        _ => format!("step {} of {}", (r.step + 1).min(r.plan.steps.len()), r.plan.steps.len()),
    }
}

/// The value of an instant PromQL query: a scalar, or the first sample of a vector (`None` for an
/// empty result, e.g. before the first scrape).
pub(crate) fn prometheus_value(url: &str, query: &str) -> Result<Option<f64>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut response = agent
        .get(format!("{}/api/v1/query", url.trim_end_matches('/')))
        .query("query", query)
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    let body: Value = response.body_mut().read_json().map_err(|e| format!("{url}: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{url}: {}", body["error"].as_str().unwrap_or("query failed")));
    }
    let result = &body["data"]["result"];
    let sample = match body["data"]["resultType"].as_str() {
        Some("scalar") => result.get(1),
        Some("vector") => result.get(0).and_then(|s| s["value"].get(1)),
        other => return Err(format!("{url}: a {} result; the query must give a scalar or a vector", other.unwrap_or("?"))),
    };
    Ok(sample.and_then(Value::as_str).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()))
}

/// The rollout's phase, step and check verdicts as metrics.
fn publish(state: &AppState, model: &str, r: &Rollout) {
    let m = &state.metrics;
    for phase in ["progressing", "awaiting_approval", "awaiting_webhook", "paused", "promoted", "rolled_back"] {
        let _ = m.rollout_phase.remove_label_values(&[model, phase]);
    }
    let phase = serde_json::to_value(&r.phase).ok().and_then(|v| v.get("phase").and_then(Value::as_str).map(str::to_owned)).unwrap_or_default();
    m.rollout_phase.with_label_values(&[model, &phase]).set(1);
    m.rollout_step.with_label_values(&[model]).set((r.step + 1).min(r.plan.steps.len()) as i64);
    m.rollout_step_started.with_label_values(&[model]).set(r.step_started as f64 / 1000.0);
    for (check, verdict) in &r.verdicts {
        let (value, code) = match verdict {
            modelship_rollout::check::Verdict::Proven { value, .. } => (Some(*value), 2),
            modelship_rollout::check::Verdict::Pass { value, .. } => (Some(*value), 1),
            modelship_rollout::check::Verdict::Fail { value, .. } => (Some(*value), -1),
            modelship_rollout::check::Verdict::Inconclusive { .. } => (None, 0),
            modelship_rollout::check::Verdict::NotApplicable { .. } => {
                // Nothing judged in this step: no series, rather than a stale value.
                let _ = m.rollout_check_verdict.remove_label_values(&[model, check]);
                let _ = m.rollout_check_value.remove_label_values(&[model, check]);
                continue;
            }
        };
        m.rollout_check_verdict.with_label_values(&[model, check]).set(code);
        if let Some(v) = value {
            m.rollout_check_value.with_label_values(&[model, check]).set(v);
        }
    }
}

/// POSTs the rollout to a gate: 2xx is go, anything else (or no answer in 30 s) is no.
pub(crate) fn call_webhook(url: &str, body: &Value) -> (bool, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    match agent.post(url).send_json(body) {
        Ok(r) if r.status().is_success() => (true, format!("HTTP {}", r.status().as_u16())),
        Ok(r) => (false, format!("HTTP {}", r.status().as_u16())),
        Err(e) => (false, format!("no answer: {e}")),
    }
}

/// Deliveries from several replicas, newest first, at most 20.
fn merge_notifications(all: impl Iterator<Item = modelship_protocol::admin::NotificationRecord>) -> Vec<modelship_protocol::admin::NotificationRecord> {
    let mut all: Vec<_> = all.collect();
    all.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| a.id.cmp(&b.id)).then_with(|| a.sink.cmp(&b.sink)));
    all.dedup_by(|a, b| a.id == b.id && a.sink == b.sink);
    all.truncate(20);
    all
}

/// Where the rollout is. Once it is done there is no current step, and after a promotion the
/// step reached is the last one (the engine's index has moved past it).
fn state_of(record: &StoredRollout) -> RolloutState {
    let r = &record.rollout;
    let steps = r.plan.steps.len();
    RolloutState {
        id: record.id,
        to: r.plan.to.clone(),
        stable: record.stable.clone(),
        phase: r.phase.clone(),
        step: (r.step + 1).min(steps),
        steps,
        current_step: if r.phase.is_done() { None } else { r.plan.steps.get(r.step).cloned() },
        started_ms: r.started,
        step_started_ms: r.step_started,
        consecutive_failures: r.consecutive_failures,
        total_failures: r.total_failures,
        checks: r.verdicts.iter().map(|(check, result)| CheckResult { check: check.clone(), result: result.clone() }).collect(),
        interval_ms: r.plan.interval.0.as_millis() as u64,
        revision: record.applied.as_ref().map(|a| a.revision),
        settled_ms: record.applied.as_ref().and_then(|a| a.settled_ms),
        leader: record.leader.clone(),
        notifications: Vec::new(),
    }
}

/// Reads back from the prediction log what `model` answered since its rollout started `since`
/// (ms), and the feedback already posted, so that labels and rewards posted after a restart (or
/// to a replica that did not answer) still join: delayed ground truth outlives the process.
async fn remember_logged(state: &AppState, log: &modelship_predictions::PredictionLog, model: &str, since: i64) {
    let store = log.store();
    let read = async {
        let predictions = store.predictions_since(model, since, crate::observe::REMEMBERED).await?;
        let feedback = store.feedback_since(since).await?;
        Ok::<_, modelship_predictions::StoreError>((predictions, feedback))
    };
    let (predictions, feedback) = match read.await {
        Ok(read) => read,
        Err(e) => {
            tracing::warn!(model, store = %store.location(), error = %e, "cannot read the prediction log back: labels for answers given before this process started will not join");
            return;
        }
    };
    let mut given: std::collections::HashMap<&str, (bool, bool)> = std::collections::HashMap::new();
    // Only what was joined then: a label posted before its answer was known here (say, while
    // this server was reading the log back) has not counted, and joins when posted again.
    for f in feedback.iter().filter(|f| f.joined != Some(false)) {
        let entry = given.entry(f.request_id.as_str()).or_default();
        entry.0 |= f.label.is_some();
        entry.1 |= f.reward.is_some();
    }
    let answers: Vec<&modelship_predictions::Prediction> =
        predictions.iter().filter(|p| matches!(p.role.as_str(), "stable" | "candidate") && p.status == 200).collect();
    let newest = &answers[..];
    for p in newest {
        let (labelled, rewarded) = given.get(p.request_id.as_str()).copied().unwrap_or_default();
        state.observations.remember(&p.request_id, &p.model, &p.version, p.score, labelled, rewarded);
    }
    let labelled = newest.iter().filter(|p| given.get(p.request_id.as_str()).is_some_and(|g| g.0)).count();
    tracing::info!(model, answers = newest.len(), labelled, scored = newest.iter().filter(|p| p.score.is_some()).count(), "remembered the answers the prediction log kept since the rollout started, for labels that come later");
}
