//! HTTP routes. Each module exposes `routes()`; [`app`] composes them with the fallbacks.

pub(crate) mod body;
pub(crate) mod feedback;
mod guard;
mod openapi;
pub(crate) mod ops;
pub(crate) mod path;
pub(crate) mod v1;
pub(crate) mod v2;

pub use body::{BodyBounds, DEFAULT_MIN_BODY_RATE};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::error::ApiError;
use crate::model::LoadedModel;
use crate::pipeline::{self, Answer, Outcome};
use crate::request_id;
use crate::state::AppState;

/// The whole HTTP API, ready to serve or to call in tests with `tower::ServiceExt::oneshot`.
///
/// Inference routes (V2 models and `/v1/predict`) need an API key when keys are configured;
/// probes, `/metrics` and `/openapi.json` never do (orchestrators and scrapers call them).
/// Every rejection, from a handler or from the framework, is `{"error": ...}`.
pub fn app(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    let inference = Router::new()
        .merge(v2::routes())
        .merge(v1::routes())
        .route_layer(guard::GuardInference { state: state.clone() });
    Router::new()
        .merge(inference)
        .merge(ops::routes())
        .merge(feedback::routes())
        .merge(openapi::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(guard::GuardAll { max_header_bytes: state.limits.max_header_bytes, body: body_bounds(&state.limits, limit) })
        .with_state(state)
}

/// The bounds every request body of an API is read under.
pub(crate) fn body_bounds(limits: &crate::state::Limits, max_bytes: usize) -> BodyBounds {
    BodyBounds { max_bytes, timeout: limits.body_read_timeout, min_rate: limits.min_body_bytes_per_second }
}

/// Request bodies are JSON (or, with the binary tensor extension, JSON followed by raw bytes).
/// A body declared as something else is refused before it is read. `curl -d` sends
/// `application/x-www-form-urlencoded` unless told otherwise, so that is let through: the body
/// is still decoded as JSON and refused with a clear message when it is not.
#[allow(clippy::result_large_err, reason = "the refusal is the rare path; Ok is ()")]
fn require_json_body(request: &Request) -> Result<(), Response> {
    if request.method() == http::Method::POST
        && let Some(value) = request.headers().get(http::header::CONTENT_TYPE)
    {
        let text = value.to_str().unwrap_or("");
        let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let accepted = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
            || essence == "application/octet-stream"
            || essence == "application/x-www-form-urlencoded";
        if !accepted {
            return Err(ApiError::UnsupportedMediaType {
                got: text.chars().filter(|c| !c.is_control()).take(100).collect(),
                expected: "application/json (or application/octet-stream with the inference-header-content-length header)",
            }
            .into_response());
        }
    }
    Ok(())
}

/// Refuses a request whose line and headers together exceed `limit` bytes, in JSON (hyper's own,
/// larger cap answers without a body).
#[allow(clippy::result_large_err, reason = "the refusal is the rare path; Ok is ()")]
fn limit_headers(limit: usize, request: &Request) -> Result<(), Response> {
    // Measured without building the URI as a string: this runs on every request.
    let uri = request.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len()) + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let size = uri_len + request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
    if size > limit { Err(ApiError::HeadersTooLarge { limit }.into_response()) } else { Ok(()) }
}

/// Whether `response` is an error that is not JSON yet (what [`json_errors`] rewrites).
fn needs_json_error(response: &Response) -> bool {
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

async fn no_route(request: Request) -> Response {
    ApiError::NoRoute { method: request.method().to_string(), path: request.uri().path().to_owned() }.into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
        .into_response()
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
    let Answer { request_id, model, revision, result } = answer;
    let mut response = match (result, &model) {
        (Ok(outcome), Some(m)) => ok(m, outcome),
        (Ok(_), None) => ApiError::Internal("an answer without a model".to_owned()).into_response(),
        (Err(e), _) => e.into_response(),
    };
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
