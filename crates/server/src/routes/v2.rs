//! Open Inference Protocol V2 REST: server and model metadata, readiness, inference.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use modelship_protocol::v2::{self, ModelMetadata, ModelReady, ServerMetadata};

use super::{Call, body_error, route, score_of};
use crate::error::{ApiError, json, json_response};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        &ServerMetadata { name: "modelship".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned(), extensions: vec![] },
    )
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let served = state.models.served(name)?;
    let model = served.version(name, version.unwrap_or(&served.table.stable))?;
    let versions = match version {
        Some(v) => vec![v.to_owned()],
        None => std::iter::once(served.table.stable.clone())
            .chain(served.versions.keys().filter(|v| **v != served.table.stable).cloned())
            .collect(),
    };
    Ok(json(StatusCode::OK, &ModelMetadata::new(&model.name, versions, &model.info)))
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
    let model = state.models.get(name, version)?;
    Ok(json(StatusCode::OK, &ModelReady { name: model.name.clone(), version: model.version.clone(), ready: true }))
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

async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(&state, &name, None, &headers, body).await
}

async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_at(&state, &name, Some(&version), &headers, body).await
}

async fn infer_at(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut call = Call::start(state, "v2_infer", headers);
    let body = match body {
        Ok(body) => body,
        Err(r) => return call.finish(None, None, Err(body_error(state, r))),
    };
    let routed = match route(state, name, version, headers, &body) {
        Ok(routed) => routed,
        Err(e) => return call.finish(None, None, Err(e)),
    };
    let model = &routed.model;
    let result = async {
        let mut request = v2::decode_infer_request(&body)?;
        let id = request.id.take();
        let mirror = routed.shadow.as_ref().filter(|s| state.shadows.admit(&state.metrics, s)).map(|_| request.clone());
        let outputs = model.infer(request).await?;
        if state.observations.is_recording() {
            call.score = score_of(model, &outputs);
        }
        let body = v2::encode_infer_response(&model.name, &model.version, id.as_deref(), &outputs);
        if let (Some(shadow), Some(copy)) = (routed.shadow.clone(), mirror) {
            state.shadows.mirror(&state.metrics, shadow, copy, outputs);
        }
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    call.finish(Some(model), Some(routed.role), result)
}
