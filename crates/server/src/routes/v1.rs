//! The seed's `POST /v1/predict`.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;

use crate::api::read_body;
use crate::api::v1::predict_response;
use crate::pipeline::Endpoint;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/predict", post(predict))
}

// The whole request, not the `HeaderMap` extractor, which would copy every header.
async fn predict(State(state): State<AppState>, request: Request) -> Response {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body).await;
    predict_response(&state, Endpoint::V1Predict, &parts.headers, received, body).await
}
