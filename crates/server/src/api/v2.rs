//! Open Inference Protocol V2: the encoding of an infer answer (REST's and Lambda's), and what
//! REST and gRPC both answer (extensions, model metadata).

use std::time::Instant;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use modelship_protocol::v2::{self, ModelMetadata};

use super::respond;
use crate::error::{ApiError, json_response};
use crate::pipeline::{self, Endpoint, Inputs};
use crate::state::AppState;

/// The protocol extensions this server implements (Triton's names). The repository extension is
/// served on the admin listener only.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics", "model_repository"];

/// Whether `name` (at `version`, else its stable version) can answer now: loaded, or resting
/// and loaded again by the request that needs it. The model's own name and version.
pub(crate) fn ready_of(state: &AppState, name: &str, version: Option<&str>) -> Result<(String, String), ApiError> {
    if let Some(crate::model::ModelSlot::Resting(r)) = state.models.slot(name) {
        let stable = &r.table.stable;
        return match version {
            Some(v) if v != stable => Err(ApiError::UnknownVersion { name: name.to_owned(), version: v.to_owned(), available: vec![stable.clone()] }),
            _ => Ok((name.to_owned(), stable.clone())),
        };
    }
    let model = state.models.get(name, version)?;
    Ok((model.name.clone(), model.version.clone()))
}
/// Model metadata: the stable version's signature and the loaded versions (stable first).
pub(crate) fn metadata_of(state: &AppState, name: &str, version: Option<&str>) -> Result<ModelMetadata, ApiError> {
    // A model resting to save memory answers from what it kept, without loading again.
    if let Some(crate::model::ModelSlot::Resting(r)) = state.models.slot(name) {
        let stable = &r.table.stable;
        if let Some(v) = version.filter(|v| v != stable) {
            return Err(ApiError::UnknownVersion { name: name.to_owned(), version: v.to_owned(), available: vec![stable.clone()] });
        }
        return Ok(ModelMetadata::new(name, vec![stable.clone()], &r.info));
    }
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
