//! Delayed ground truth: `POST /v1/feedback` joins labels to the predictions the server made
//! (by the `x-request-id` each response carried), so rollouts can judge quality per version.
//! Only predictions this server made during a rollout can be labelled.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::post;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, json};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/feedback", post(feedback))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    request_id: String,
    /// true / 1 for the positive class.
    label: LabelValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LabelValue {
    Bool(bool),
    Number(u8),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Many { labels: Vec<Label> },
    One(Label),
}

async fn feedback(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|r| super::body_error(&state, r))?;
    let parsed: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Decode(modelship_protocol::DecodeError(format!(
            "feedback must be {{\"request_id\": \"...\", \"label\": 0|1|true|false}} or {{\"labels\": [...]}}: {e}"
        )))
    })?;
    let labels = match parsed {
        Body::Many { labels } => labels,
        Body::One(label) => vec![label],
    };
    let mut joined = 0usize;
    let mut unknown = Vec::new();
    for l in labels {
        let label = match l.label {
            LabelValue::Bool(b) => b,
            LabelValue::Number(0) => false,
            LabelValue::Number(1) => true,
            LabelValue::Number(n) => {
                return Err(ApiError::Decode(modelship_protocol::DecodeError(format!("label {n} for {} is not 0 or 1", l.request_id))));
            }
        };
        if state.observations.label(&l.request_id, label) {
            joined += 1;
        } else if unknown.len() < 100 {
            unknown.push(l.request_id);
        }
    }
    Ok(json(StatusCode::OK, &json!({"joined": joined, "unknown": unknown})))
}
