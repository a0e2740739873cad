//! The seed's `POST /v1/predict` (the server's own model), and `POST /v1/models/{model}/predict`
//! for any model it serves.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;

use crate::api::path::Path;
use crate::api::read_body;
use crate::api::v1::predict_response;
use crate::pipeline::Endpoint;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/predict", post(predict)).route("/v1/models/{name}/predict", post(predict_model))
}

// The whole request, not the `HeaderMap` extractor, which would copy every header.
async fn predict(State(state): State<AppState>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body).await;
    predict_response(&state, Endpoint::V1Predict, None, &parts.headers, received, body).await
}

async fn predict_model(State(state): State<AppState>, Path(name): Path<String>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body).await;
    predict_response(&state, Endpoint::V1Predict, Some(name), &parts.headers, received, body).await
}
