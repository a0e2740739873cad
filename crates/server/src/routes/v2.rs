//! Open Inference Protocol V2 REST: server and model metadata, readiness, inference.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use modelship_protocol::model_config::ModelConfig;
use modelship_protocol::statistics::StatisticsResponse;
use modelship_protocol::v2::{ModelReady, ServerMetadata};

use crate::api::path::Path;
use crate::api::read_body;
use crate::api::v2::{EXTENSIONS, infer_response, metadata_of};
use crate::error::{ApiError, json};
use crate::pipeline::Endpoint;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v2/models/{name}/versions/{version}/stats", get(model_stats_version))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        &ServerMetadata {
            name: "modelship".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        },
    )
}

async fn model_config(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    // The batching facts are the loaded version's: a resting model is loaded again.
    let model = state.residency.resident(&name).await?.version(&name, &state.models.routing(&name)?.0.stable)?;
    Ok(json(StatusCode::OK, &ModelConfig::new(&model.name, &model.info, &model.batching_facts())))
}

async fn model_config_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let model = state.residency.resident(&name).await?.version(&name, &version)?;
    Ok(json(StatusCode::OK, &ModelConfig::new(&model.name, &model.info, &model.batching_facts())))
}

async fn model_stats(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &StatisticsResponse { model_stats: state.models.statistics(Some(&name), None)? }))
}

async fn model_stats_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &StatisticsResponse { model_stats: state.models.statistics(Some(&name), Some(&version))? }))
}

async fn all_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &StatisticsResponse { model_stats: state.models.statistics(None, None)? }))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &metadata_of(state, name, version)?))
}

async fn model_metadata(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    metadata(&state, &name, None)
}

async fn model_metadata_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata(&state, &name, Some(&version))
}

fn ready(state: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let (name, version) = crate::api::v2::ready_of(state, name, version)?;
    Ok(json(StatusCode::OK, &ModelReady { name, version, ready: true }))
}

async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    ready(&state, &name, None)
}

async fn model_ready_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    ready(&state, &name, Some(&version))
}

// The handlers take the whole request: the `HeaderMap` extractor would copy every header.
async fn infer(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    infer_at(&state, name, None, request).await
}

async fn infer_version(State(state): State<AppState>, Path((name, version)): Path<(String, String)>, request: Request) -> Response {
    infer_at(&state, name, Some(version), request).await
}

async fn infer_at(state: &AppState, name: String, version: Option<String>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let body = read_body(state, &parts.headers, body).await;
    infer_response(state, Endpoint::V2Infer, name, version, &parts.headers, received, body).await
}
