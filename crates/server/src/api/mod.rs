//! What the adapters share, below all of them: request bodies read under their bounds, the
//! V1 and V2 JSON encodings of a pipeline answer (the REST routes' and Lambda's), errors as JSON,
//! labels joined (the REST and admin APIs'), and the readiness and metadata answers (REST's and
//! gRPC's). The adapters ([`crate::routes`], `grpc`, [`crate::admin`], [`crate::lambda`]) depend on
//! this module and the pipeline, never on each other.

pub(crate) mod body;
pub(crate) mod feedback;
pub(crate) mod ops;
pub(crate) mod path;
pub(crate) mod v1;
pub(crate) mod v2;

pub use body::{BodyBounds, DEFAULT_MIN_BODY_RATE};

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::error::ApiError;
use crate::model::LoadedModel;
use crate::pipeline::{self, Answer, Outcome};
use crate::request_id;
use crate::state::AppState;

/// The bounds every request body of an API is read under.
pub(crate) fn body_bounds(limits: &crate::state::Limits, max_bytes: usize) -> BodyBounds {
    BodyBounds { max_bytes, timeout: limits.body_read_timeout, min_rate: limits.min_body_bytes_per_second }
}

/// Whether `response` is an error that is not JSON yet (what [`json_errors`] rewrites).
pub(crate) fn needs_json_error(response: &Response) -> bool {
    let status = response.status();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

/// Makes every error response `{"error": ...}`: the framework's own rejections (a path that is
/// not UTF-8, a failed extractor) come as plain text, and clients must not need two parsers.
pub(crate) async fn json_errors(response: Response) -> Response {
    if !needs_json_error(&response) {
        return response;
    }
    let status = response.status();
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.ok().map(|b| String::from_utf8_lossy(&b).trim().to_owned()).filter(|t| !t.is_empty());
    let message = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("request refused").to_owned());
    let mut fixed = crate::error::json(status, &modelship_protocol::ErrorBody { error: message });
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

/// Reads a request's body up to the body limit. Handlers take the whole [`Request`] and read its
/// body with this, so its headers are borrowed, not copied as the `HeaderMap` extractor does.
pub(crate) async fn read_body(state: &AppState, headers: &http::HeaderMap, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limit = state.limits.max_body_bytes;
    if let Some(refused) = body::declared_too_large(headers, limit) {
        return Err(refused);
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::BodyTooLarge { limit }
        } else if let Some(timeout) = body::timeout_in(inner.as_ref()) {
            ApiError::BodyTimeout(timeout.to_string())
        } else {
            ApiError::Body(format!("cannot read the request body: {inner}"))
        }
    })
}

/// The HTTP response for a pipeline answer: `ok` encodes a success; every answer carries the
/// request id, and once routed the version and the routing revision.
pub(crate) fn respond(answer: Answer, ok: impl FnOnce(&LoadedModel, Outcome) -> Response) -> Response {
    let Answer { trace, request_id, model, revision, result } = answer;
    let encoding = std::time::Instant::now();
    let mut response = match (result, &model) {
        (Ok(outcome), Some(m)) => ok(m, outcome),
        (Ok(_), None) => ApiError::Internal("an answer without a model".to_owned()).into_response(),
        (Err(e), _) => e.into_response(),
    };
    if let Some(trace) = &trace {
        trace.encoded(encoding);
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(request_id::NAME, v);
    }
    if let Some(v) = model.as_ref().and_then(|m| m.version_header.clone()) {
        headers.insert(pipeline::PIN, v);
    }
    if let Some(r) = revision {
        headers.insert(pipeline::REVISION, HeaderValue::from(r));
    }
    response
}
