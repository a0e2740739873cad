//! A replica's part in the fleet, whichever replica leads: every beat it
//!
//! - reports the routing revision it serves, or the newer one it cannot apply and why (the
//!   acknowledgement the rollout leader waits for before a step's window starts);
//! - reads the model's rollout record: observations are recorded only while a rollout runs, and
//!   the status snapshot and rollout metrics follow the record whichever replica wrote it;
//! - drains what it observed, and every half analysis interval sends it to the store's evidence
//!   log as one entry, stamped with the revision in force over the whole period (so the leader
//!   drops what straddles a step change);
//! - joins the labels other replicas handed on for predictions it made.
//!
//! Evidence goes through the store rather than from the leader pulling from its peers because
//! the replicas may not reach each other (admin ports stay on loopback by default, and replicas
//! behind a load balancer have no stable addresses), while every one of them reaches the store;
//! and a log with a cursor kept in the rollout record lets a new leader read on exactly where
//! the old one stopped.
//!
//! When the store cannot be reached, nothing here blocks serving: the beat fails, readiness
//! reports the store, and the next beat tries again.

use std::sync::Arc;
use std::time::Duration;

use modelship_rollout::check::Window;

use crate::control::{Evidence, ReplicaReport, StoreError};
use crate::rollouts::Rollouts;
use crate::state::AppState;
use crate::traffic::Traffic;

/// Values kept per reservoir in one replica's evidence (a uniform sample of its sample: the
/// leader merges many of these per window, weighted by what each stands for).
const EVIDENCE_VALUES: usize = 500;

/// What a beat carries over to the next one.
#[derive(Default)]
struct Beat {
    /// The revision in force when the current observation period began.
    revision: Option<u64>,
    /// Observations not sent yet, for (rollout, the revision stamped on them), and when the
    /// first of them was drained: a replica sends one entry per half analysis interval (at
    /// least every beat), so the log holds a few entries per replica per analysis whatever the
    /// interval, and the leader reads them all.
    pending: Option<(i64, u64, Window, std::time::Instant)>,
    /// The rollout, and its shadow comparisons counted at the last beat.
    agreement: Option<(i64, u64, u64)>,
    labels: Option<String>,
}

/// The beat loop, until shutdown. `admin` is this replica's admin address, for the reports.
pub async fn run(state: AppState, traffic: Arc<Traffic>, rollouts: Arc<Rollouts>, admin: Option<String>) {
    let mut beat = Beat::default();
    // The first report goes out at once: a replica the leader has not heard from does not count
    // among the live ones, so a step could settle without a replica that just started.
    let mut first = true;
    loop {
        let period = match rollouts.snapshot().rollout.filter(|r| !r.phase.is_done()) {
            // Several reports per analysis, so the leader's windows are never a beat short.
            Some(r) => Duration::from_millis(r.interval_ms / 2).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            None => Duration::from_secs(1),
        };
        if !first {
            tokio::time::sleep(period).await;
        }
        first = false;
        if state.health.is_draining() {
            return;
        }
        let outcome = one_beat(&state, &traffic, &rollouts, admin.as_deref(), &mut beat).await;
        if let Err(e) = &outcome {
            tracing::debug!(model = %traffic.spec.name, error = %e, "fleet beat failed");
        }
        if traffic.store.is_shared() {
            state.metrics.control_store_up.with_label_values(&[traffic.store.kind()]).set(i64::from(outcome.is_ok()));
            state.health.set_control_store(traffic.store.kind(), outcome.err().map(|e| e.to_string()));
        }
    }
}

async fn one_beat(state: &AppState, traffic: &Traffic, rollouts: &Rollouts, admin: Option<&str>, beat: &mut Beat) -> Result<(), StoreError> {
    let (store, model) = (traffic.store.as_ref(), traffic.spec.name.as_str());
    let revision = state.models.routing(model).map_or(0, |(_, revision)| revision);
    let notifications = state.notifier.get().map(|n| n.recent(model)).unwrap_or_default();
    let report = ReplicaReport { replica: rollouts.fleet.replica.clone(), revision, failed: traffic.failure(), admin: admin.map(str::to_owned), notifications };
    store.report(model, &report).await?;
    let record = store.rollout(model).await?;
    rollouts.observe(state, record.as_ref());
    let since = beat.revision.replace(revision).unwrap_or(revision);
    if let Some(r) = record.as_ref().filter(|r| !r.is_done()) {
        let to = &r.rollout.plan.to;
        let agreement = state.shadows.agreement(model, to);
        let (compared, agreed) = match beat.agreement {
            // Counts restart from zero when the shadow pair changes.
            Some((id, c, a)) if id == r.id && agreement.compared >= c => (agreement.compared - c, agreement.agreed.saturating_sub(a)),
            Some((id, _, _)) if id == r.id => (agreement.compared, agreement.agreed),
            _ => (0, 0),
        };
        beat.agreement = Some((r.id, agreement.compared, agreement.agreed));
        let window = Window {
            stable: state.observations.drain(model, &r.stable),
            candidate: state.observations.drain(model, to),
            compared,
            agreed,
            external: Default::default(),
        };
        let stamp = since.min(revision);
        // Observations under another revision (or rollout) are sent apart, first.
        if beat.pending.as_ref().is_some_and(|(id, rev, _, _)| *id != r.id || *rev != stamp) {
            flush(store, model, &rollouts.fleet.replica, beat.pending.take()).await?;
        }
        if !window.is_empty() {
            match &mut beat.pending {
                Some((_, _, pending, _)) => pending.merge(&window, &mut fastrand::Rng::new()),
                None => beat.pending = Some((r.id, stamp, window, std::time::Instant::now())),
            }
        }
        let every = Duration::from_millis(r.rollout.plan.interval.0.as_millis() as u64 / 2);
        if beat.pending.as_ref().is_some_and(|(_, _, _, since)| since.elapsed() + Duration::from_millis(20) >= every) {
            flush(store, model, &rollouts.fleet.replica, beat.pending.take()).await?;
        }
    } else {
        beat.agreement = None;
        beat.pending = None;
    }
    let (labels, cursor) = store.labels(model, beat.labels.as_deref()).await?;
    beat.labels = cursor;
    let joined = labels.iter().filter(|(id, feedback)| state.observations.join(id, *feedback)).count();
    if joined > 0 {
        tracing::debug!(model, joined, "joined labels handed on by other replicas");
    }
    Ok(())
}

/// Sends pending observations to the evidence log (thinned to a bounded size).
async fn flush(store: &dyn crate::control::ControlStore, model: &str, replica: &str, pending: Option<(i64, u64, Window, std::time::Instant)>) -> Result<(), StoreError> {
    let Some((rollout, revision, mut window, _)) = pending else { return Ok(()) };
    window.thin(EVIDENCE_VALUES, &mut fastrand::Rng::new());
    store.push_evidence(model, &Evidence { rollout, revision, replica: replica.to_owned(), window }).await
}
