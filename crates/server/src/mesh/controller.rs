//! The mesh controller: one rollout driven through an Istio `VirtualService` or a Gateway API
//! `HTTPRoute` (feature `kubernetes`). The pods of each version serve; the route object splits
//! traffic; Prometheus, scraping every pod, holds the evidence. Each interval the controller asks
//! Prometheus the spec's queries, hands the values to the same engine as in-process rollouts, and
//! patches the route when the engine's routing changes: step by step, weight 0 on a rollback,
//! everything to the candidate on a promotion.
//!
//! State and decisions go to a control store (the same records, history and lease as a fleet's
//! rollouts), so a controller that restarts resumes the rollout at its step, `rollout history`
//! reads the same decisions, and two controllers for one model never both act: only the lease
//! holder patches.
//!
//! Every patch is a JSON merge patch carrying the `resourceVersion` it was computed from, so the
//! API server refuses it (409) when someone changed the object meanwhile; the controller then
//! reads the object again and recomputes. A step counts as applied when the API server accepted
//! the patch (the mesh programs its proxies within seconds; the step's hold is far longer).
//!
//! What it does not do: built-in checks (error rate, latency, drift, agreement, quality) need the
//! replicas' own observations, which reach a fleet's leader through the control store, not this
//! controller; in controller mode every check is a PromQL query, and the spec is refused
//! otherwise, with the query to write instead. Approval gates need a server's admin API; webhook
//! gates work.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use modelship_rollout::check::{Check, Window};
use modelship_rollout::engine::{Action, Decision, Event, Rollout};
use modelship_rollout::spec::{Plan, Step};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Backends, Mesh, MeshError, Split, route, unsupported};
use crate::control::{Applied, ControlStore, StoreError, StoredRollout, Write};

/// Patches lost to a concurrent change in a row before the controller gives up for this interval.
const PATCH_ATTEMPTS: usize = 5;
/// How long one call to the API server may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The route object a controller drives.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub mesh: Mesh,
    pub namespace: String,
    pub name: String,
    pub backends: Backends,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    Spec(String),
    #[error("{kind} {namespace}/{name}: {reason}")]
    Route { kind: &'static str, namespace: String, name: String, reason: String },
    #[error("control store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// What a controller reports as the rollout moves: each decision (with the record after it).
pub trait Progress: Send + Sync {
    fn decided(&self, record: &StoredRollout, decisions: &[Decision]);
    fn patched(&self, record: &StoredRollout, split: Split);
}

pub struct Controller {
    api: Api<DynamicObject>,
    target: RouteTarget,
    store: Arc<dyn ControlStore>,
    model: String,
    /// This controller's name in the lease.
    holder: String,
    lease_ttl: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    pub fn new(client: kube::Client, target: RouteTarget, store: Arc<dyn ControlStore>, model: &str, holder: &str, lease_ttl: Duration) -> Self {
        let resource = match target.mesh {
            Mesh::Istio => ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"), "virtualservices"),
            Mesh::Gateway => ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"), "httproutes"),
        };
        Controller {
            api: Api::namespaced_with(client, &target.namespace, &resource),
            target,
            store,
            model: model.to_owned(),
            holder: holder.to_owned(),
            lease_ttl,
        }
    }

    /// A controller through the in-cluster service account, else KUBECONFIG.
    pub async fn connect(target: RouteTarget, store: Arc<dyn ControlStore>, model: &str, holder: &str, lease_ttl: Duration) -> Result<Self, ControllerError> {
        let client = kube::Client::try_default().await.map_err(|e| ControllerError::Route {
            kind: target.mesh.kind(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            reason: format!("no Kubernetes configuration (in-cluster service account or KUBECONFIG): {e}"),
        })?;
        Ok(Controller::new(client, target, store, model, holder, lease_ttl))
    }

    fn route_error(&self, reason: impl std::fmt::Display) -> ControllerError {
        ControllerError::Route {
            kind: self.target.mesh.kind(),
            namespace: self.target.namespace.clone(),
            name: self.target.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Starts a rollout of `plan` from `stable` (or resumes the model's rollout in progress, when
    /// `plan` is `None` or the stored one is not done) and drives it until it ends or `stop`.
    /// Returns the record as it ended (or stood at `stop`).
    ///
    /// Starting is idempotent: when the model's last rollout took the same candidate from the
    /// same stable version and has ended, its record is returned and nothing starts (a Job's pod
    /// retried after the rollout ended must not run it again); `again` starts anew regardless.
    pub async fn run(&self, start: Option<(Plan, String)>, again: bool, progress: &dyn Progress, stop: CancellationToken) -> Result<StoredRollout, ControllerError> {
        let stored = self.store.rollout(&self.model).await?;
        match (&stored, start) {
            (Some(r), _) if !r.is_done() => {
                tracing::info!(model = %self.model, rollout = r.id, step = r.rollout.step, "resuming the rollout in progress");
            }
            (Some(r), Some((plan, stable))) if !again && r.rollout.plan.to == plan.to && r.stable == stable => {
                tracing::info!(model = %self.model, rollout = r.id, to = %plan.to, "this rollout has already ended; not starting it again");
                return Ok(r.clone());
            }
            (_, Some((plan, stable))) => {
                let problems = unsupported(&plan, self.target.mesh);
                if !problems.is_empty() {
                    return Err(ControllerError::Spec(problems.join("; ")));
                }
                // The route must be ours before anything is recorded.
                self.read().await?;
                let (rollout, decisions) = Rollout::start(plan, now_ms());
                let record = StoredRollout {
                    id: stored.as_ref().map_or(1, |s| s.id + 1),
                    seq: 0,
                    model: self.model.clone(),
                    stable,
                    rollout,
                    applied: None,
                    evidence_cursor: None,
                    leader: Some(self.holder.clone()),
                };
                self.store.save_rollout(&record, Write::Create, &decisions).await?;
                progress.decided(&record, &decisions);
            }
            (Some(r), None) => return Ok(r.clone()),
            (None, None) => return Err(ControllerError::Spec(format!("model '{}' has no rollout to resume; give a spec", self.model))),
        }
        let mut first = true;
        loop {
            let record = self.store.rollout(&self.model).await?.expect("recorded above");
            let interval = Duration::from_millis((record.rollout.plan.interval.0.as_millis() as u64).max(100));
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(interval.min(self.lease_ttl / 3)) => {}
                    () = stop.cancelled() => return Ok(record),
                }
            }
            first = false;
            match self.store.lease(&self.model, &self.holder, self.lease_ttl).await {
                Ok(lease) if lease.mine => {}
                Ok(lease) => {
                    tracing::debug!(model = %self.model, holder = %lease.holder, "another controller leads this model's rollout");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(model = %self.model, error = %e, "cannot take the rollout lease; waiting for the control store");
                    continue;
                }
            }
            match self.step(record, progress).await {
                Ok(record) if record.is_done() && record.applied.as_ref().is_some_and(|a| a.action == record.rollout.desired()) => {
                    let _ = self.store.release(&self.model, &self.holder).await;
                    return Ok(record);
                }
                // A decision moved the rollout on: its routing is applied at once, not an interval later.
                Ok(record) => first = record.applied.as_ref().is_none_or(|a| a.action != record.rollout.desired()),
                // Nothing was decided blind: the next interval tries again.
                Err(e @ (ControllerError::Store(_) | ControllerError::Route { .. })) => {
                    tracing::warn!(model = %self.model, error = %e, "rollout step skipped");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One interval as the lease holder: apply the routing the rollout asks for if it is not,
    /// else judge the Prometheus evidence and record the decisions.
    async fn step(&self, mut record: StoredRollout, progress: &dyn Progress) -> Result<StoredRollout, ControllerError> {
        let leader = Some(self.holder.as_str());
        let desired = record.rollout.desired();
        if record.applied.as_ref().is_none_or(|a| a.action != desired) {
            let split = split_for(&desired, record.applied.as_ref());
            self.apply(split).await?;
            progress.patched(&record, split);
            let now = now_ms();
            let revision = record.applied.as_ref().map_or(1, |a| a.revision + 1);
            record.applied = Some(Applied { action: desired, revision, settled_ms: Some(now) });
            // The API server took the patch: the step's clock starts now.
            let decisions = if record.is_done() { vec![] } else { record.rollout.handle(Event::Settled { now }) };
            record.seq += 1;
            record.leader = Some(self.holder.clone());
            self.store.save_rollout(&record, Write::Update { leader }, &decisions).await?;
            progress.decided(&record, &decisions);
            return Ok(record);
        }
        if record.is_done() {
            return Ok(record);
        }
        let step = record.rollout.step;
        let window = Window { external: self.query(&record).await, ..Window::default() };
        if record.rollout.step != step {
            return Ok(record);
        }
        let decisions = if let Some(Step::Webhook { url }) = record.rollout.plan.steps.get(step).filter(|_| record.rollout.phase == modelship_rollout::engine::Phase::AwaitingWebhook) {
            let (url, body) = (url.clone(), json!({"model": self.model, "to": record.rollout.plan.to, "rollout": record.id}));
            let (go, detail) = tokio::task::spawn_blocking(move || crate::rollouts::call_webhook(&url, &body)).await.unwrap_or((false, "webhook task failed".into()));
            record.rollout.handle(Event::WebhookAnswered { now: now_ms(), go, detail })
        } else {
            record.rollout.handle(Event::Tick { now: now_ms(), window })
        };
        record.seq += 1;
        record.leader = Some(self.holder.clone());
        self.store.save_rollout(&record, Write::Update { leader }, &decisions).await?;
        progress.decided(&record, &decisions);
        Ok(record)
    }

    /// The rollout's PromQL checks, asked now.
    async fn query(&self, record: &StoredRollout) -> std::collections::BTreeMap<String, f64> {
        let mut values = std::collections::BTreeMap::new();
        for check in &record.rollout.plan.checks {
            let (Some((url, query)), Check::Prometheus { query: key, .. }) = (check.promql(&self.model, &record.stable, &record.rollout.plan.to), check) else {
                continue;
            };
            let key = key.clone();
            match tokio::task::spawn_blocking(move || crate::rollouts::prometheus_value(&url, &query)).await {
                Ok(Ok(Some(v))) => {
                    values.insert(key, v);
                }
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(e)) => tracing::warn!(model = %self.model, error = %e, "Prometheus query failed; the check stays inconclusive"),
            }
        }
        values
    }

    async fn read(&self) -> Result<DynamicObject, ControllerError> {
        match tokio::time::timeout(TIMEOUT, self.api.get(&self.target.name)).await {
            Ok(Ok(object)) => Ok(object),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Err(self.route_error(format!(
                "not found; create it first (`modelship deploy k8s` with kubernetes.mesh: {})",
                match self.target.mesh {
                    Mesh::Istio => "istio",
                    Mesh::Gateway => "gateway",
                }
            ))),
            Ok(Err(e)) => Err(self.route_error(e)),
            Err(_) => Err(self.route_error(format!("the API server did not answer within {TIMEOUT:?}"))),
        }
    }

    /// Makes the route split as `split` says: reads it, edits its spec, and patches it with the
    /// `resourceVersion` read; a 409 reads again. An object already split so is not patched.
    pub async fn apply(&self, split: Split) -> Result<(), ControllerError> {
        let field = match self.target.mesh {
            Mesh::Istio => "http",
            Mesh::Gateway => "rules",
        };
        for _ in 0..PATCH_ATTEMPTS {
            let object = self.read().await?;
            let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
            let edited = route(self.target.mesh, &spec, &self.target.backends, split)?;
            if edited == spec {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": object.metadata.resource_version},
                "spec": {field: edited[field]},
            });
            let sent = tokio::time::timeout(TIMEOUT, self.api.patch(&self.target.name, &PatchParams::default(), &Patch::Merge(&patch))).await;
            match sent {
                Ok(Ok(_)) => {
                    tracing::info!(
                        model = %self.model, route = %self.target.name, weight_bp = split.weight.get(), shadow_bp = split.shadow.get(), header = split.header,
                        "route patched"
                    );
                    return Ok(());
                }
                Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                    tracing::debug!(route = %self.target.name, "the route changed since it was read; reading it again");
                }
                Ok(Err(e)) => return Err(self.route_error(e)),
                Err(_) => return Err(self.route_error(format!("the API server did not answer within {TIMEOUT:?}"))),
            }
        }
        Err(self.route_error(format!("changed under {PATCH_ATTEMPTS} patches in a row; is another controller writing it?")))
    }
}

/// The route's split for the engine's routing action. `Pause` (and a webhook call) hold what
/// was applied.
fn split_for(action: &Action, applied: Option<&Applied>) -> Split {
    match action {
        Action::Route { weight, shadow, header } => Split { weight: *weight, shadow: *shadow, header: *header },
        Action::Promote => Split::CANDIDATE,
        Action::Rollback => Split::STABLE,
        Action::Pause | Action::CallWebhook { .. } => applied.map_or(Split::STABLE, |a| split_for(&a.action, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_split() {
        use modelship_router::BasisPoints;
        let route = Action::Route { weight: BasisPoints::new(2_500).unwrap(), shadow: BasisPoints::ZERO, header: true };
        assert_eq!(split_for(&route, None), Split { weight: BasisPoints::new(2_500).unwrap(), shadow: BasisPoints::ZERO, header: true });
        assert_eq!(split_for(&Action::Promote, None), Split::CANDIDATE);
        assert_eq!(split_for(&Action::Rollback, None), Split::STABLE);
        let applied = Applied { action: route.clone(), revision: 3, settled_ms: None };
        assert_eq!(split_for(&Action::Pause, Some(&applied)), split_for(&route, None), "a pause holds what was applied");
    }
}
