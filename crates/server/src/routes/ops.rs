//! Probes (the seed's `/health/*` and V2's `/v2/health/*`) and `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::api::ops::readiness;
use crate::error::json;
use crate::model::ModelSlot;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/metrics", get(metrics))
}

async fn live() -> Response {
    json(StatusCode::OK, &json!({"status": "alive"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let (ready, checks) = readiness(&state);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let label = if ready { "ready" } else if state.health.is_draining() { "shutting down" } else { "not ready" };
    let mut body = json!({"status": label, "checks": checks});
    // Failed loads, and failed replacements of a model that keeps serving its previous version.
    let mut failures: Vec<String> = state
        .models
        .snapshot()
        .iter()
        .filter_map(|(name, slot)| match slot {
            ModelSlot::Failed { version, error } => Some(format!("{name}:{version}: {error}")),
            _ => None,
        })
        .collect();
    failures.extend(state.models.reload_errors().into_iter().map(|(name, e)| format!("{name}: {e}")));
    // Probes are open to anyone: each reason clipped (the log has it whole).
    let mut failures: Vec<String> = failures.iter().map(|f| crate::error::clip(f, crate::error::MAX_MESSAGE_BYTES).into_owned()).collect();
    if let Some((kind, Some(problem))) = state.health.control_store() {
        match state.health.unready_by_store_policy() {
            Some(why) => failures.push(format!("control store ({kind}): {problem}; not ready: {why}")),
            None => failures.push(format!("control store ({kind}): {problem}; serving the last routing applied, rollouts hold until it answers")),
        }
    }
    if !failures.is_empty() {
        body["errors"] = json!(failures);
    }
    json(status, &body)
}

async fn startup(State(state): State<AppState>) -> Response {
    match state.health.startup_seconds() {
        Some(seconds) => json(StatusCode::OK, &json!({"status": "started", "startup_time_seconds": seconds})),
        None => json(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "starting"})),
    }
}

async fn v2_live() -> Response {
    json(StatusCode::OK, &json!({"live": true}))
}

async fn v2_ready(State(state): State<AppState>) -> Response {
    let (ready, _) = readiness(&state);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, &json!({"ready": ready}))
}

async fn metrics(State(state): State<AppState>) -> Response {
    for slot in state.models.snapshot().values() {
        if let ModelSlot::Ready(served) = slot {
            for model in served.versions.values() {
                let queued = i64::try_from(model.queued()).unwrap_or(i64::MAX);
                state.metrics.queue_length.with_label_values(&[&model.name, &model.version]).set(queued);
                let capacity = i64::try_from(model.queue_capacity()).unwrap_or(i64::MAX);
                state.metrics.queue_capacity.with_label_values(&[&model.name, &model.version]).set(capacity);
            }
        }
    }
    state.metrics.ready.set(i64::from(crate::api::ops::readiness(&state).0));
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
