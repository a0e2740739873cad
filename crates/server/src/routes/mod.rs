//! HTTP routes. Each module exposes `routes()`; [`app`] composes them with the fallbacks.

mod feedback;
pub(crate) mod ops;
mod v1;
pub(crate) mod v2;

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use prometheus::IntGauge;

use crate::error::ApiError;
use crate::model::{LoadedModel, Routed};
use modelship_router::{Role, RouteInput, StickyKey};
use std::sync::atomic::Ordering;
use crate::request_id;
use crate::state::AppState;

/// The whole HTTP API, ready to serve or to call in tests with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .merge(v2::routes())
        .merge(v1::routes())
        .merge(ops::routes())
        .merge(feedback::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn no_route(request: Request) -> Response {
    ApiError::NoRoute { method: request.method().to_string(), path: request.uri().path().to_owned() }.into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }
        .into_response()
}

/// Turns a body that could not be read into the matching error.
fn body_error(state: &AppState, rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit: state.limits.max_body_bytes }
    } else {
        ApiError::Body(rejection.body_text())
    }
}

/// The score a rollout watches for drift: see [`crate::observe::score_of`].
pub(crate) fn score_of(model: &LoadedModel, outputs: &[modelship_inference::Tensor]) -> Option<f64> {
    crate::observe::score_of(model, outputs)
}

/// Where a request goes: the version named in the URL, else the routing table (pin header,
/// canary header, sticky key from a header or a body field, weights) and perhaps a shadow.
fn route(state: &AppState, name: &str, pinned: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Routed, ApiError> {
    route_by(state, name, pinned, headers, &|field| sticky_field(body, field))
}

/// [`route`] with the sticky body field read by `field` (V2 `parameters` over gRPC).
pub(crate) fn route_by(
    state: &AppState,
    name: &str,
    pinned: Option<&str>,
    headers: &HeaderMap,
    field: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<Routed, ApiError> {
    let served = state.models.served(name)?;
    if let Some(version) = pinned {
        return Ok(Routed { model: served.version(name, version)?, role: Role::Pinned, shadow: None });
    }
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let canary = header(CANARY_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let sticky: Option<Vec<u8>> = match &served.table.sticky {
        Some(StickyKey::Header(h)) => headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
        Some(StickyKey::Field(f)) => field(f),
        None => None,
    };
    let input = RouteInput {
        canary,
        pin: header(PIN_HEADER),
        sticky: sticky.as_deref(),
        nonce: state.nonces.fetch_add(1, Ordering::Relaxed),
    };
    served.route(name, &input)
}

/// Adds to `request` the model input the feature store builds from `entities`; returns the
/// entities that got defaults (as a response value), when any did.
pub(crate) async fn enrich(
    state: &AppState,
    request: &mut modelship_inference::InferRequest,
    entities: &[serde_json::Map<String, serde_json::Value>],
) -> Result<Option<serde_json::Value>, ApiError> {
    let service = state.features.get().ok_or(ApiError::NoFeatureStore)?;
    let enriched = service.enrich(entities).await?;
    if request.inputs.iter().any(|t| t.name() == enriched.tensor.name()) {
        return Err(ApiError::Decode(modelship_protocol::DecodeError(format!(
            "input '{}' is both given and built from the request's entities; send one or the other",
            enriched.tensor.name()
        ))));
    }
    request.inputs.push(enriched.tensor);
    Ok((!enriched.defaulted.is_empty()).then(|| serde_json::json!(enriched.defaulted)))
}

/// Sends the request to the candidate (`true`), when there is one.
pub const CANARY_HEADER: &str = "x-canary";
/// Pins a request to a loaded version.
pub const PIN_HEADER: &str = "x-model-version";

/// The sticky key from the body: `parameters.<field>` (V2), else top-level `<field>`.
fn sticky_field(body: &[u8], field: &str) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let found = value.get("parameters").and_then(|p| p.get(field)).or_else(|| value.get(field))?;
    Some(match found {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    })
}

/// One inference call from arrival to response: request id, in-flight gauge, metrics and the log
/// line, the same for every inference endpoint.
pub(crate) struct Call<'a> {
    state: &'a AppState,
    endpoint: &'static str,
    pub(crate) request_id: String,
    started: Instant,
    _in_flight: InFlight,
    /// The model's score for this request (first row), for rollout analysis.
    pub(crate) score: Option<f64>,
}

struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<'a> Call<'a> {
    pub(crate) fn start(state: &'a AppState, endpoint: &'static str, headers: &HeaderMap) -> Self {
        let gauge = state.metrics.in_flight.with_label_values(&[endpoint]);
        gauge.inc();
        Call {
            state,
            endpoint,
            request_id: state.ids.for_request(headers),
            started: Instant::now(),
            _in_flight: InFlight(gauge),
            score: None,
        }
    }

    fn finish(self, model: Option<&LoadedModel>, role: Option<Role>, result: Result<Response, ApiError>) -> Response {
        let (mut response, error) = match result {
            Ok(response) => (response, None),
            Err(e) => {
                let (_, code) = e.status_and_code();
                let message = e.to_string();
                (e.into_response(), Some((code, message)))
            }
        };
        self.record(model, role, response.status(), error);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(request_id::HEADER, v);
        }
        if let Some(m) = model
            && let Ok(v) = HeaderValue::from_str(&m.version)
        {
            headers.insert("x-model-version", v);
        }
        response
    }
}

impl Call<'_> {
    /// Counts, times and logs the call: `status` is the HTTP status it answered with (or, over
    /// gRPC, the HTTP status of its error), `error` its stable code and message.
    pub(crate) fn record(&self, model: Option<&LoadedModel>, role: Option<Role>, status: StatusCode, error: Option<(&'static str, String)>) {
        let elapsed = self.started.elapsed();
        // Unknown model names from clients never become label values.
        let (name, version) = model.map_or(("unknown", ""), |m| (m.name.as_str(), m.version.as_str()));
        let routed_as = role;
        let role = role.map_or("", Role::as_str);
        let metrics = &self.state.metrics;
        if let Some((code, _)) = &error {
            metrics.errors.with_label_values(&[name, version, self.endpoint, code]).inc();
        }
        if let (Some(m), Some(routed_as)) = (model, routed_as)
            && routed_as != Role::Pinned
        {
            self.state.observations.record(&self.request_id, &m.name, &m.version, status.is_server_error(), elapsed.as_secs_f64(), self.score);
        }
        metrics.requests.with_label_values(&[name, version, role, self.endpoint, status.as_str()]).inc();
        metrics.request_duration.with_label_values(&[name, version, role, self.endpoint]).observe(elapsed.as_secs_f64());
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        match &error {
            None => tracing::info!(
                request_id = %self.request_id, model = name, version, role, endpoint = self.endpoint,
                status = status.as_u16(), latency_ms, "inference"
            ),
            Some((code, message)) if status.is_server_error() => tracing::error!(
                request_id = %self.request_id, model = name, version, endpoint = self.endpoint,
                status = status.as_u16(), latency_ms, error = code, message = %message, "inference failed"
            ),
            Some((code, message)) => tracing::info!(
                request_id = %self.request_id, model = name, version, endpoint = self.endpoint,
                status = status.as_u16(), latency_ms, error = code, message = %message, "inference rejected"
            ),
        }
    }
}
