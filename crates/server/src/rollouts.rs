//! The rollout control loop: feeds the pure engine with what the versions did (from
//! [`crate::observe`] and the shadow comparisons), applies its decisions through
//! [`crate::traffic::Traffic`], and keeps the rollout's state and every decision in SQLite so a
//! restart resumes it (or takes its failure action when its deadline passed).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelship_protocol::admin::{CheckResult, RolloutCommand, RolloutDecision, RolloutState, RolloutStatus};
use modelship_rollout::check::Window;
use modelship_rollout::engine::{Action, Decision, Event, Rollout};
use modelship_rollout::spec::RolloutSpec;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;
use crate::traffic::{Split, Traffic};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn db(e: rusqlite::Error) -> ApiError {
    ApiError::Internal(format!("rollout database: {e}"))
}

struct Active {
    id: i64,
    rollout: Rollout,
    /// The stable version when the rollout started (what the candidate is compared with).
    stable: String,
    /// Shadow comparisons counted so far, to hand the engine only what is new.
    seen: (u64, u64),
}

impl Active {
    /// Shadow comparisons made before the rollout are not its evidence: count from now.
    fn new(state: &AppState, model: &str, id: i64, rollout: Rollout, stable: String) -> Self {
        let agreement = state.shadows.agreement(model, &rollout.plan.to);
        Active { id, rollout, stable, seen: (agreement.compared, agreement.agreed) }
    }
}

/// The rollout of one model. Locking rule: `active` is held only while deciding and applying
/// (engine events, traffic revisions, SQLite writes); Prometheus queries and webhook calls run
/// with no lock held, and `status` reads a snapshot, so it answers at once even while a
/// webhook hangs.
pub struct Rollouts {
    traffic: Arc<Traffic>,
    conn: Mutex<Connection>,
    active: tokio::sync::Mutex<Option<Active>>,
    /// The status as of the last decision, for readers that must never wait.
    snapshot: Mutex<RolloutStatus>,
}

impl Rollouts {
    pub fn open(path: &Path, traffic: Arc<Traffic>) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL,
                 stable TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS rollout_decisions (rollout INTEGER NOT NULL, decision TEXT NOT NULL);",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        let snapshot = Mutex::new(RolloutStatus { model: traffic.spec.name.clone(), rollout: None });
        Ok(Rollouts { traffic, conn: Mutex::new(conn), active: tokio::sync::Mutex::new(None), snapshot })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, ApiError> {
        f(&self.conn.lock().unwrap_or_else(|p| p.into_inner())).map_err(db)
    }

    fn model(&self) -> &str {
        &self.traffic.spec.name
    }

    fn save(&self, active: &Active) -> Result<(), ApiError> {
        let state = serde_json::to_string(&active.rollout).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "UPDATE rollouts SET state = ?1, done = ?2, updated_ms = ?3 WHERE id = ?4",
                params![state, active.rollout.phase.is_done(), now_ms() as i64, active.id],
            )
            .map(|_| ())
        })
    }

    /// Starts a rollout of `spec.to` against the current stable version.
    pub async fn start(self: &Arc<Self>, state: &AppState, spec: RolloutSpec, actor: &str) -> Result<RolloutStatus, ApiError> {
        let plan = spec.resolve().map_err(|problems| ApiError::InvalidSpec(format!("invalid rollout spec: {}", problems.join("; "))))?;
        let mut active = self.active.lock().await;
        if active.as_ref().is_some_and(|a| !a.rollout.phase.is_done()) {
            return Err(ApiError::Conflict(format!("model '{}' already has a rollout in progress; abort it first", self.model())));
        }
        let served = state.models.served(self.model())?;
        if plan.to == served.table.stable {
            return Err(ApiError::Conflict(format!("version {} is already the stable version", plan.to)));
        }
        let now = now_ms();
        let (rollout, decisions) = Rollout::start(plan, now);
        let stable = served.table.stable.clone();
        let id = self.with(|c| {
            c.execute(
                "INSERT INTO rollouts (model, stable, state, done, updated_ms) VALUES (?1, ?2, ?3, 0, ?4)",
                params![self.model(), stable, serde_json::to_string(&rollout).unwrap_or_default(), now as i64],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        let mut new = Active::new(state, self.model(), id, rollout, stable);
        state.observations.set_recording(true);
        tracing::info!(model = %self.model(), to = %new.rollout.plan.to, actor, "rollout started");
        self.apply(state, &mut new, decisions).await?;
        let status = self.status_of(&new);
        *active = Some(new);
        Ok(status)
    }

    /// An operator's command to the rollout in progress.
    pub async fn command(self: &Arc<Self>, state: &AppState, command: RolloutCommand, reason: &str) -> Result<RolloutStatus, ApiError> {
        let mut guard = self.active.lock().await;
        let active = guard.as_mut().filter(|a| !a.rollout.phase.is_done()).ok_or_else(|| {
            ApiError::Conflict(format!("model '{}' has no rollout in progress", self.model()))
        })?;
        let now = now_ms();
        let reason = if reason.is_empty() { "by an operator".to_owned() } else { reason.to_owned() };
        let event = match command {
            RolloutCommand::Approve => Event::Approve { now },
            RolloutCommand::Pause => Event::Pause { now, reason },
            RolloutCommand::Resume => Event::Resume { now },
            RolloutCommand::Abort => Event::Abort { now, reason },
        };
        let decisions = active.rollout.handle(event);
        self.apply(state, active, decisions).await?;
        Ok(self.status_of(active))
    }

    /// The rollout's status as of its last decision; never waits for the control loop.
    pub fn status(&self) -> RolloutStatus {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn status_of(&self, active: &Active) -> RolloutStatus {
        RolloutStatus { model: self.model().to_owned(), rollout: Some(state_of(active)) }
    }

    pub fn history(&self) -> Result<Vec<RolloutDecision>, ApiError> {
        let rows: Vec<(i64, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT d.rollout, d.decision FROM rollout_decisions d JOIN rollouts r ON r.id = d.rollout WHERE r.model = ?1 ORDER BY d.rowid",
            )?;
            let rows = stmt.query_map([self.model()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows.into_iter().filter_map(|(rollout, d)| Some(RolloutDecision { rollout, decision: serde_json::from_str(&d).ok()? })).collect())
    }

    /// At startup: the unfinished rollout, if any, resumes at its step or takes its failure action.
    pub async fn recover(self: &Arc<Self>, state: &AppState) -> Result<(), ApiError> {
        let row: Option<(i64, String, String)> = self.with(|c| {
            c.query_row(
                "SELECT id, stable, state FROM rollouts WHERE model = ?1 AND done = 0 ORDER BY id DESC LIMIT 1",
                [self.model()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        let Some((id, stable, saved)) = row else { return Ok(()) };
        let mut rollout: Rollout = serde_json::from_str(&saved).map_err(|e| ApiError::Internal(format!("unreadable rollout state: {e}")))?;
        let decisions = rollout.recover(now_ms());
        let mut active = Active::new(state, self.model(), id, rollout, stable);
        state.observations.set_recording(!active.rollout.phase.is_done());
        tracing::info!(model = %self.model(), rollout = id, "resuming a rollout after a restart");
        self.apply(state, &mut active, decisions).await?;
        *self.active.lock().await = Some(active);
        Ok(())
    }

    /// The control loop: one analysis per interval while a rollout is in progress, until `stop`
    /// (a step being applied is finished first).
    pub async fn run(self: Arc<Self>, state: AppState, stop: tokio_util::sync::CancellationToken) {
        loop {
            let interval = {
                let active = self.active.lock().await;
                active.as_ref().filter(|a| !a.rollout.phase.is_done()).map(|a| a.rollout.plan.interval.0)
            };
            tokio::select! {
                () = tokio::time::sleep(interval.unwrap_or(Duration::from_millis(500))) => {}
                () = stop.cancelled() => return,
            }
            if state.health.is_draining() {
                return;
            }
            if interval.is_some()
                && let Err(e) = self.tick(&state).await
            {
                tracing::error!(model = %self.model(), error = %e, "rollout analysis failed");
            }
        }
    }

    /// One analysis: the window and the PromQL queries are read under the lock, the queries run
    /// without it, and the engine's decision is taken and applied under it again, provided the
    /// same rollout is still at the same step.
    async fn tick(self: &Arc<Self>, state: &AppState) -> Result<(), ApiError> {
        let model = self.model().to_owned();
        let (id, step, mut window, queries) = {
            let mut guard = self.active.lock().await;
            let Some(active) = guard.as_mut().filter(|a| !a.rollout.phase.is_done()) else { return Ok(()) };
            let agreement = state.shadows.agreement(&model, &active.rollout.plan.to);
            let window = Window {
                stable: state.observations.drain(&model, &active.stable),
                candidate: state.observations.drain(&model, &active.rollout.plan.to),
                compared: agreement.compared.saturating_sub(active.seen.0),
                agreed: agreement.agreed.saturating_sub(active.seen.1),
                external: Default::default(),
            };
            active.seen = (agreement.compared, agreement.agreed);
            let queries: Vec<(String, String, String)> = active
                .rollout
                .plan
                .checks
                .iter()
                .filter_map(|check| match (check.promql(&model, &active.stable, &active.rollout.plan.to), check) {
                    (Some((url, query)), modelship_rollout::check::Check::Prometheus { query: key, .. }) => Some((key.clone(), url, query)),
                    _ => None,
                })
                .collect();
            (active.id, active.rollout.step, window, queries)
        };
        for (key, url, query) in queries {
            match tokio::task::spawn_blocking(move || prometheus_value(&url, &query)).await {
                Ok(Ok(Some(v))) => {
                    window.external.insert(key, v);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(model = %model, error = %e, "Prometheus query failed; the check stays inconclusive"),
                Err(_) => {}
            }
        }
        let mut guard = self.active.lock().await;
        let Some(active) = guard.as_mut().filter(|a| a.id == id && a.rollout.step == step && !a.rollout.phase.is_done()) else {
            return Ok(());
        };
        let decisions = active.rollout.handle(Event::Tick { now: now_ms(), window });
        self.apply(state, active, decisions).await
    }

    /// Calls a webhook gate with no lock held; its answer is handed to the engine if the rollout
    /// is still waiting on that same gate.
    fn call_gate(self: &Arc<Self>, state: &AppState, id: i64, step: usize, to: &str, url: String) {
        let (this, app) = (Arc::clone(self), state.clone());
        let body = json!({"model": self.model(), "to": to, "rollout": id});
        state.tasks.spawn("rollout-webhook", move |_| async move {
            let (go, detail) = tokio::task::spawn_blocking(move || call_webhook(&url, &body)).await.unwrap_or((false, "webhook task failed".into()));
            let mut guard = this.active.lock().await;
            let Some(active) = guard.as_mut().filter(|a| {
                a.id == id && a.rollout.step == step && a.rollout.phase == modelship_rollout::engine::Phase::AwaitingWebhook
            }) else {
                return;
            };
            let more = active.rollout.handle(Event::WebhookAnswered { now: now_ms(), go, detail });
            if let Err(e) = this.apply(&app, active, more).await {
                tracing::error!(model = %this.model(), error = %e, "cannot apply the webhook's answer");
            }
        });
    }

    async fn apply(self: &Arc<Self>, state: &AppState, active: &mut Active, decisions: Vec<Decision>) -> Result<(), ApiError> {
        let to = active.rollout.plan.to.clone();
        let mut webhooks = Vec::new();
        for d in decisions {
            let reason = format!("rollout {}: {}", active.id, d.reason);
            tracing::info!(model = %self.model(), action = ?d.action, reason = %reason, "rollout decision");
            match &d.action {
                Action::Route { weight, shadow, header } => {
                    let split = Split { weight: *weight, shadow: *shadow, header: *header };
                    self.traffic.route_to(state, &to, split, "rollout", &reason).await?;
                }
                Action::Promote => {
                    let all = Split { weight: modelship_router::BasisPoints::ALL, shadow: Default::default(), header: true };
                    self.traffic.route_to(state, &to, all, "rollout", &reason).await?;
                    self.traffic.change(state, modelship_router::Change::Promote, "rollout", &reason).await?;
                }
                Action::Rollback => {
                    self.traffic.to_stable(state, "rollout", &reason).await?;
                }
                Action::Pause => {}
                Action::CallWebhook { url } => {
                    // The answer comes back as an event, later; the rollout waits meanwhile.
                    webhooks.push(url.clone());
                }
            }
            self.record(active.id, &d)?;
        }
        if active.rollout.phase.is_done() {
            state.observations.set_recording(false);
        }
        publish(state, self.model(), &active.rollout);
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = self.status_of(active);
        self.save(active)?;
        for url in webhooks {
            self.call_gate(state, active.id, active.rollout.step, &to, url);
        }
        Ok(())
    }

    fn record(&self, rollout: i64, d: &Decision) -> Result<(), ApiError> {
        let json = serde_json::to_string(d).unwrap_or_default();
        self.with(|c| c.execute("INSERT INTO rollout_decisions (rollout, decision) VALUES (?1, ?2)", params![rollout, json]).map(|_| ()))
    }
}

/// The value of an instant PromQL query: a scalar, or the first sample of a vector (`None` for an
/// empty result, e.g. before the first scrape).
fn prometheus_value(url: &str, query: &str) -> Result<Option<f64>, String> {
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
    for (check, verdict) in &r.verdicts {
        let (value, code) = match verdict {
            modelship_rollout::check::Verdict::Pass { value } => (Some(*value), 1),
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
fn call_webhook(url: &str, body: &Value) -> (bool, String) {
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

/// Where the rollout is. Once it is done there is no current step, and after a promotion the
/// step reached is the last one (the engine's index has moved past it).
fn state_of(a: &Active) -> RolloutState {
    let r = &a.rollout;
    let steps = r.plan.steps.len();
    RolloutState {
        id: a.id,
        to: r.plan.to.clone(),
        stable: a.stable.clone(),
        phase: r.phase.clone(),
        step: (r.step + 1).min(steps),
        steps,
        current_step: if r.phase.is_done() { None } else { r.plan.steps.get(r.step).cloned() },
        started_ms: r.started,
        step_started_ms: r.step_started,
        consecutive_failures: r.consecutive_failures,
        total_failures: r.total_failures,
        checks: r.verdicts.iter().map(|(check, result)| CheckResult { check: check.clone(), result: result.clone() }).collect(),
    }
}
