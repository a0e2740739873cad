//! The Lambda adapter: one invocation, from the event to the answer, through the same decoding,
//! pipeline and encoding as the HTTP routes. No listener, no runtime client: the binary's
//! `lambda` command polls the Runtime API (the `lambda_runtime` crate) and hands each event here.
//!
//! ```text
//! event (protocol::lambda) → method + path + headers + body
//!   POST /predict | /v1/predict | direct {"features"}  → api::v1::predict_response ────┐
//!   POST /v2/models/{m}[/versions/{v}]/infer | direct {"inputs"} → api::v2::infer_response ────┤
//!                                   pipeline::run (Endpoint::Direct) ◀──────────────────────┘
//! HTTP response → status, headers, body → protocol::lambda::LambdaResponse
//! ```
//!
//! Whatever the event, the answer is a response: a bad event is a 4xx `{"error": ...}` like a bad
//! HTTP request, never a function error, so one caller's mistake neither crashes the function nor
//! counts as a Lambda error (which would trip the deployment's rollback alarm).

use std::time::Instant;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue};
use modelship_protocol::lambda::{self, DirectTarget, LambdaRequest, LambdaResponse};
use serde_json::Value;

use crate::api::{v1, v2};
use crate::error::ApiError;
use crate::pipeline::Endpoint;
use crate::state::AppState;

/// Answers one event. `request_id` (the Lambda request id) becomes the request's id unless the
/// event's headers carry one, so the log line and the CloudWatch invocation agree.
pub async fn invoke(state: &AppState, event: Value, request_id: Option<&str>) -> LambdaResponse {
    let received = Instant::now();
    let response = match lambda::decode_event(event) {
        Ok(request) => answer(state, request, request_id, received).await,
        Err(e) => {
            // Recorded like any request that failed to decode.
            let headers = id_headers(request_id);
            v1::predict_response(state, Endpoint::Direct, None, &headers, received, Err(ApiError::Decode(e))).await
        }
    };
    encode(response).await
}

async fn answer(state: &AppState, request: LambdaRequest, request_id: Option<&str>, received: Instant) -> Response {
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        // API Gateway passes only valid header names; a hand-written event may not.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(crate::request_id::HEADER)
        && let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(crate::request_id::HEADER, id);
    }
    if !state.credentials.allows_inference(&headers) {
        return ApiError::NoApiKey.into_response();
    }
    let limit = state.limits.max_body_bytes;
    let body = if request.body.len() > limit { Err(ApiError::BodyTooLarge { limit }) } else { Ok(Bytes::from(request.body)) };
    let route = match (&request.path, request.direct) {
        (_, Some(DirectTarget::Predict)) => Route::Predict,
        (_, Some(DirectTarget::Infer)) => match state.models.single_name() {
            Ok(name) => Route::Infer { name, version: None },
            Err(e) => return e.into_response(),
        },
        (Some(path), None) => match route(path) {
            Some(route) if request.method == "POST" => route,
            Some(_) => return ApiError::MethodNotAllowed { method: request.method, path: path.clone() }.into_response(),
            None => return no_route(&request.method, path),
        },
        (None, None) => return ApiError::Internal("an event with neither a path nor a direct body".to_owned()).into_response(),
    };
    match route {
        Route::Predict => v1::predict_response(state, Endpoint::Direct, None, &headers, received, body).await,
        Route::Infer { name, version } => v2::infer_response(state, Endpoint::Direct, name, version, &headers, received, body).await,
    }
}

enum Route {
    Predict,
    Infer { name: String, version: Option<String> },
}

/// The inference paths a function answers: the seed's `/predict`, `/v1/predict`, and V2 infer.
fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["predict"] | ["v1", "predict"] => Some(Route::Predict),
        ["v2", "models", name, "infer"] if !name.is_empty() => Some(Route::Infer { name: (*name).to_owned(), version: None }),
        ["v2", "models", name, "versions", version, "infer"] if !name.is_empty() && !version.is_empty() => {
            Some(Route::Infer { name: (*name).to_owned(), version: Some((*version).to_owned()) })
        }
        _ => None,
    }
}

fn no_route(method: &str, path: &str) -> Response {
    ApiError::NotFound(format!(
        "no route for {method} {path}; this function answers POST /predict, /v1/predict and /v2/models/{{model}}/infer"
    ))
    .into_response()
}

fn id_headers(request_id: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(crate::request_id::HEADER, id);
    }
    headers
}

/// The HTTP response as the proxy integration's answer.
async fn encode(response: Response) -> LambdaResponse {
    let (parts, body) = response.into_parts();
    let (status, body) = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => (parts.status.as_u16(), bytes.to_vec()),
        Err(e) => (500, serde_json::to_vec(&modelship_protocol::ErrorBody { error: format!("cannot encode the answer: {e}") }).unwrap_or_default()),
    };
    let headers = parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    lambda::encode_response(status, headers, body)
}
