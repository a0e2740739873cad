//! The REST adapter: HTTP routes. Each module exposes `routes()`; [`app`] composes them with the
//! fallbacks. What they share with the other adapters (bodies, the V1 and V2 encodings, the
//! readiness answer) is in [`crate::api`].

mod feedback;
mod guard;
mod openapi;
mod ops;
mod v1;
mod v2;

pub use crate::api::{BodyBounds, DEFAULT_MIN_BODY_RATE};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};

use crate::api::body_bounds;
use crate::error::ApiError;
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

/// The API also under `prefix` (`/api`: Azure Functions forwards `/api/v1/predict` to a custom
/// handler as it came); without the prefix every path still answers as before.
pub fn under_prefix(app: Router, prefix: &str) -> Router {
    Router::new().nest(prefix, app.clone()).fallback_service(app)
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

async fn no_route(request: Request) -> Response {
    ApiError::NoRoute { method: request.method().to_string(), path: request.uri().path().to_owned() }.into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
        .into_response()
}
