//! Delayed ground truth: `POST /v1/feedback` joins labels to the predictions the server made
//! (by the `x-request-id` each response carried), so rollouts can judge quality per version;
//! `POST /v1/rewards` joins business rewards (a conversion, revenue) the same way, for
//! experiments.
//! Only predictions made during a rollout can be labelled. In a fleet, labels for predictions
//! another replica made are handed on through the control store, and that replica joins them.
//!
//! Labels decide promotions and rollbacks, so this endpoint needs the control (admin) token even
//! though it is served on the inference port: reaching the data port is not enough to steer a
//! rollout.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;

use crate::api::feedback::{join_labels, join_rewards};
use crate::api::read_body;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/feedback", post(feedback)).route("/v1/rewards", post(rewards))
}

async fn feedback(State(state): State<AppState>, headers: http::HeaderMap, body: axum::body::Body) -> Result<Response, ApiError> {
    let body = controlled_body(&state, &headers, body).await?;
    join_labels(&state, &body).await
}

/// Rewards decide experiments, so they need the control token too.
async fn rewards(State(state): State<AppState>, headers: http::HeaderMap, body: axum::body::Body) -> Result<Response, ApiError> {
    let body = controlled_body(&state, &headers, body).await?;
    join_rewards(&state, &body).await
}

async fn controlled_body(state: &AppState, headers: &http::HeaderMap, body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    let authorization = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !state.credentials.is_control(authorization) {
        return Err(ApiError::Unauthorized);
    }
    read_body(state, headers, body).await
}
