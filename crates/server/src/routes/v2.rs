//! Open Inference Protocol V2 REST: server and model metadata, readiness, inference.

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use modelship_protocol::model_config::ModelConfig;
use modelship_protocol::statistics::StatisticsResponse;
use modelship_protocol::v2::{self, ModelMetadata, ModelReady, ServerMetadata};

use super::path::Path;
use super::{read_body, respond};
use crate::error::{ApiError, json, json_response};
use crate::pipeline::{self, Endpoint, Inputs};
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

/// The protocol extensions this server implements (Triton's names). The repository extension is
/// served on the admin listener only.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics", "model_repository"];

async fn model_config(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let model = state.models.get(&name, None)?;
    Ok(json(StatusCode::OK, &ModelConfig::new(&model.name, &model.info, &model.batching_facts())))
}

async fn model_config_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let model = state.models.get(&name, Some(&version))?;
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

/// Model metadata: the stable version's signature and the loaded versions (stable first).
pub(crate) fn metadata_of(state: &AppState, name: &str, version: Option<&str>) -> Result<ModelMetadata, ApiError> {
    let served = state.models.served(name)?;
    let model = served.version(name, version.unwrap_or(&served.table.stable))?;
    let versions = match version {
        Some(v) => vec![v.to_owned()],
        None => std::iter::once(served.table.stable.clone())
            .chain(served.versions.keys().filter(|v| **v != served.table.stable).cloned())
            .collect(),
    };
    Ok(ModelMetadata::new(&model.name, versions, &model.info))
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

/// V2 infer of one body, from decoding to the encoded response: the HTTP route's and the Lambda
/// adapter's (which has no listener, so `endpoint` says where the request came in).
pub(crate) async fn infer_response(
    state: &AppState,
    endpoint: Endpoint,
    name: String,
    version: Option<String>,
    headers: &HeaderMap,
    received: Instant,
    body: Result<Bytes, ApiError>,
) -> Response {
    let mut binary_outputs = v2::BinaryOutputs::default();
    let decoded = body.and_then(|body| {
        let json_length = json_length(headers)?;
        let decoded = v2::decode_request(&body, json_length)?;
        binary_outputs = decoded.binary_outputs;
        Ok(pipeline::Request {
            model: Some(name),
            version,
            parameters: decoded.parameters,
            inputs: Inputs::Tensors(decoded.request),
            entities: decoded.entities,
        })
    });
    let answer = pipeline::run(state, endpoint, headers, received, decoded).await;
    respond(answer, |model, outcome| {
        let parameters = outcome.feature_defaults.map(|d| serde_json::json!({ "feature_defaults": d }));
        let (body, json_length) =
            v2::encode_response(&model.name, &model.version, outcome.id.as_deref(), &outcome.outputs, &binary_outputs, parameters.as_ref());
        match json_length {
            None => json_response(StatusCode::OK, body),
            Some(n) => {
                let mut response = Response::new(axum::body::Body::from(body));
                let h = response.headers_mut();
                h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
                h.insert(JSON_LENGTH, http::HeaderValue::from(n));
                response
            }
        }
    })
}

const JSON_LENGTH: http::HeaderName = http::HeaderName::from_static(v2::HEADER_CONTENT_LENGTH);

/// The binary tensor extension's JSON length, when the header is there.
fn json_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    match headers.get(&JSON_LENGTH) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
            ApiError::Invalid(format!("the {} header must be the byte length of the JSON part of the body", v2::HEADER_CONTENT_LENGTH))
        }),
    }
}
