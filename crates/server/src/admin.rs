//! The admin (control) API: traffic status, changes, rollback and history. It is served on its
//! own listener (127.0.0.1 by default) and every request needs the admin bearer token, so the
//! inference port can never change traffic. Every request and answer is a type of
//! [`modelship_protocol::admin`], which the CLI reads back.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use crate::api::path::Path;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use modelship_protocol::admin::{
    ChangeRequest, CommandRequest, ModelLoaded, ModelState, ModelUnloaded, RollbackRequest, RolloutCommand, ShadowStatus, StartRequest,
    TrafficStatus, UnknownCommand, Weight,
};
use modelship_router::Role;
use serde::Deserialize;

use crate::error::{ApiError, json};
use crate::state::AppState;
use crate::rollouts::Rollouts;
use crate::repository::Repository;
use crate::traffic::Traffic;

/// The admin API's state; the token is the app's control credential.
#[derive(Clone)]
pub struct AdminState {
    pub app: AppState,
    /// Each model the server was started with: its traffic writer and its rollouts.
    models: Arc<std::collections::BTreeMap<String, Controls>>,
    pub repository: Arc<Repository>,
}

/// What changes one model's routing: its traffic writer and its rollouts.
pub struct Controls {
    pub traffic: Arc<Traffic>,
    pub rollouts: Arc<Rollouts>,
}

impl AdminState {
    /// The admin API of a server of one model.
    pub fn new(app: AppState, traffic: Arc<Traffic>, rollouts: Arc<Rollouts>, repository: Arc<Repository>) -> Self {
        AdminState::serving(app, vec![Controls { traffic, rollouts }], repository)
    }

    /// The admin API of a server of several models, each changed on its own.
    pub fn serving(app: AppState, models: Vec<Controls>, repository: Arc<Repository>) -> Self {
        let models = models.into_iter().map(|c| (c.traffic.spec.name.clone(), c)).collect();
        AdminState { app, models: Arc::new(models), repository }
    }

    /// Model `name`'s controls; an unknown name is 404 naming the models there are.
    fn model(&self, name: &str) -> Result<&Controls, ApiError> {
        self.models.get(name).ok_or_else(|| ApiError::UnknownModel { name: name.to_owned(), available: self.models.keys().cloned().collect() })
    }
}

/// The admin API, with bearer-token authentication on every route.
pub fn app(state: AdminState) -> Router {
    let bounds = crate::api::body_bounds(&state.app.limits, ADMIN_BODY_LIMIT);
    Router::new()
        .route("/admin/v1/models", get(served_models))
        .route("/admin/v1/models/{name}/traffic", get(status).post(change))
        .route("/admin/v1/models/{name}/traffic/rollback", post(rollback))
        .route("/admin/v1/models/{name}/traffic/history", get(history))
        .route("/admin/v1/models/{name}/rollout", get(rollout_status).post(rollout_start))
        .route("/admin/v1/models/{name}/rollout/history", get(rollout_history))
        .route("/admin/v1/models/{name}/rollout/{command}", post(rollout_command))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route("/v2/repository/models/{name}/unload", post(repository_unload))
        .fallback(|request: Request| async move {
            ApiError::NoRoute { method: request.method().to_string(), path: request.uri().path().to_owned() }
        })
        .route("/admin/v1/models/{name}/feedback", post(feedback))
        .route("/admin/v1/models/{name}/rewards", post(rewards))
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .layer(middleware::from_fn(move |request: Request, next: Next| async move {
            match crate::api::body::bound(request, bounds) {
                Ok(request) => next.run(request).await,
                Err(refused) => refused,
            }
        }))
        .layer(middleware::map_response(crate::api::json_errors))
        .with_state(state)
}

/// Control requests are small: a change, a spec, a batch of labels.
const ADMIN_BODY_LIMIT: usize = 4 * 1024 * 1024;

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let given = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if state.app.credentials.is_control(given) { next.run(request).await } else { ApiError::Unauthorized.into_response() }
}

/// Labels for the rollout's quality check, on the admin listener (the same as `/v1/feedback`
/// with the admin token on the inference port).
async fn feedback(State(state): State<AdminState>, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    state.model(&name)?;
    crate::api::feedback::join_labels(&state.app, &body).await
}

/// Business rewards for an experiment, on the admin listener (the same as `/v1/rewards` with the
/// admin token on the inference port).
async fn rewards(State(state): State<AdminState>, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    state.model(&name)?;
    crate::api::feedback::join_rewards(&state.app, &body).await
}

/// Every model served: what it holds loaded (with the memory each version took), its routing
/// revision and its rollout's phase.
async fn served_models(State(state): State<AdminState>) -> Response {
    use modelship_protocol::admin::{LoadedVersion, ServedModel, ServedModels};
    let errors = state.app.models.reload_errors();
    let models = state
        .app
        .models
        .snapshot()
        .iter()
        .map(|(name, slot)| {
            let controls = state.models.get(name);
            let rollout = controls.and_then(|c| c.rollouts.snapshot().rollout).and_then(|r| {
                serde_json::to_value(&r.phase).ok().and_then(|p| p.get("phase").and_then(|p| p.as_str()).map(str::to_owned))
            });
            let mut model = ServedModel {
                name: name.clone(),
                state: String::new(),
                stable: None,
                revision: None,
                versions: Vec::new(),
                configured: controls.is_some(),
                rollout,
                error: errors.get(name).cloned(),
            };
            match slot {
                crate::model::ModelSlot::Ready(served) => {
                    model.state = "READY".to_owned();
                    model.stable = Some(served.table.stable.clone());
                    model.revision = Some(served.revision);
                    model.versions = served
                        .versions
                        .values()
                        .map(|m| LoadedVersion { version: m.version.clone(), model_bytes: m.model_bytes, memory_bytes: m.memory_bytes, load_seconds: m.load_seconds })
                        .collect();
                }
                crate::model::ModelSlot::Resting(r) => {
                    // Unloaded to save memory: loads again on its next request.
                    model.state = "RESTING".to_owned();
                    model.stable = Some(r.table.stable.clone());
                    model.revision = Some(r.revision);
                }
                crate::model::ModelSlot::Loading { .. } => model.state = "LOADING".to_owned(),
                crate::model::ModelSlot::Failed { error, .. } => {
                    model.state = "UNAVAILABLE".to_owned();
                    model.error = Some(error.clone());
                }
            }
            model
        })
        .collect();
    json(StatusCode::OK, &ServedModels { models })
}

async fn status(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    state.model(&name)?;
    // A resting model's routing is in force with nothing loaded.
    let (table, revision) = state.app.models.routing(&name)?;
    let loaded_versions = state.app.models.served(&name).map(|s| s.versions.keys().cloned().collect()).unwrap_or_default();
    let weights = table.weights().into_iter().map(|(version, role, bp)| Weight::new(version, role, bp)).collect();
    let shadow = table.shadow.as_ref().map(|s| {
        let a = state.app.shadows.agreement(&name, &s.version);
        ShadowStatus {
            version: s.version.clone(),
            percent_bp: s.percent,
            percent: s.percent.to_string(),
            compared: a.compared,
            agreed: a.agreed,
            dropped: a.dropped,
            failed: a.failed,
            agreement: a.rate(),
            mean_abs_diff: a.mean_abs_diff(),
        }
    });
    let applied = state.app.models.applied(&name);
    let status = TrafficStatus {
        model: name,
        revision,
        traffic: table.clone(),
        weights,
        shadow,
        loaded_versions,
        roles: vec![Role::Stable, Role::Candidate, Role::Shadow],
        applied,
    };
    Ok(json(StatusCode::OK, &status))
}

fn actor(given: Option<String>, headers: &HeaderMap) -> String {
    given
        .or_else(|| headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned))
        .map(|a| a.chars().filter(|c| !c.is_control()).take(128).collect())
        .unwrap_or_else(|| "admin-api".to_owned())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Decode(modelship_protocol::DecodeError::from_json(&e, body)))
}

async fn change(State(state): State<AdminState>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    let request: ChangeRequest = parse(&body)?;
    let actor = actor(request.actor, &headers);
    let revision = controls.traffic.change(&state.app, request.change, &actor, &request.reason).await?;
    Ok(json(StatusCode::OK, &revision))
}

async fn rollback(State(state): State<AdminState>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) { RollbackRequest::default() } else { parse(&body)? };
    let actor = actor(request.actor, &headers);
    let revision = controls.traffic.rollback(&state.app, request.to_revision, &actor, &request.reason).await?;
    Ok(json(StatusCode::OK, &revision))
}

async fn history(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    Ok(json(StatusCode::OK, &controls.traffic.history().await?))
}

async fn rollout_start(State(state): State<AdminState>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    let request: StartRequest = parse(&body)?;
    let actor = actor(request.actor, &headers);
    Ok(json(StatusCode::OK, &controls.rollouts.start(&state.app, request.spec, &actor, request.force).await?))
}

async fn rollout_status(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    Ok(json(StatusCode::OK, &controls.rollouts.status(&state.app).await))
}

async fn rollout_history(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    Ok(json(StatusCode::OK, &controls.rollouts.history().await?))
}

/// `approve`, `pause`, `resume` or `abort`; any other segment is a route that does not exist.
async fn rollout_command(
    State(state): State<AdminState>,
    Path((name, command)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let controls = state.model(&name)?;
    let command: RolloutCommand = command.parse().map_err(|e: UnknownCommand| ApiError::NotFound(e.to_string()))?;
    let request: CommandRequest = if body.iter().all(u8::is_ascii_whitespace) { CommandRequest::default() } else { parse(&body)? };
    Ok(json(StatusCode::OK, &controls.rollouts.command(&state.app, command, &request.reason).await?))
}

/// `POST /v2/repository/index` body: `{"ready": true}` lists only the models being served.
#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    #[allow(dead_code)]
    repository_name: Option<String>,
}

/// `POST /v2/repository/models/{m}/load` body; `parameters.version` picks a registry version.
#[derive(Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

async fn repository_index(State(state): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) { IndexRequest::default() } else { parse(&body)? };
    Ok(json(StatusCode::OK, &state.repository.index(&state.app, request.ready).await?))
}

async fn repository_load(State(state): State<AdminState>, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let request: LoadRequest = if body.iter().all(u8::is_ascii_whitespace) { LoadRequest::default() } else { parse(&body)? };
    let version = match request.parameters.get("version") {
        None => None,
        Some(serde_json::Value::String(v)) => Some(v.clone()),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "parameters.version must be a string naming a registry version, not {other}"
            )));
        }
    };
    crate::repository::refuse_overrides(request.parameters.keys().map(String::as_str))?;
    let version = state.repository.load(&state.app, &name, version.as_deref()).await?;
    Ok(json(StatusCode::OK, &ModelLoaded { model: name, version, state: ModelState::Ready }))
}

async fn repository_unload(State(state): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    state.repository.unload(&state.app, &name).await?;
    Ok(json(StatusCode::OK, &ModelUnloaded { model: name, state: ModelState::Unavailable }))
}
