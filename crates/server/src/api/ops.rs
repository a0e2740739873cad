//! Readiness: the REST probes' and gRPC's `ServerReady` answer.

use serde_json::json;

use crate::state::AppState;

/// Each readiness check by name, and whether all pass.
pub(crate) fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let model_loaded = state.models.all_ready();
    let startup_complete = state.health.startup_seconds().is_some();
    let draining = state.health.is_draining();
    let mut ready = model_loaded && startup_complete && !draining;
    let mut checks = json!({"model_loaded": model_loaded, "startup_complete": startup_complete});
    if let Some(features) = state.features.get() {
        // As the seed's probe: not ready while the feature store is unreachable. (Before the
        // model loads there is no store yet, and no readiness either.)
        let connected = features.store.is_connected();
        checks["feature_store_connected"] = json!(connected);
        ready &= connected;
    }
    if let Some((_, problem)) = state.health.control_store() {
        // Reported, not required unless a policy says so: a replica that cannot reach the
        // fleet's store keeps serving the last routing it applied (and rollouts hold until the
        // store is back), so taking it out of the load balancer would by default only turn a
        // store outage into a serving outage. A fleet that would rather not serve stale routing
        // for long sets `server.unready_without_store_seconds`.
        checks["control_store_reachable"] = json!(problem.is_none());
        if state.health.unready_by_store_policy().is_some() {
            checks["control_store_policy"] = json!("unready");
            ready = false;
        }
    }
    if draining {
        checks["shutting_down"] = json!(true);
    }
    (ready, checks)
}
