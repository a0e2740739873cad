//! Labels joined to the predictions they are for (`POST /v1/feedback` on the REST API, and the
//! admin API's route): every label of a batch checked before any is joined.

use axum::response::Response;
use http::StatusCode;
use modelship_protocol::admin::FeedbackAnswer;
use serde::Deserialize;

use crate::error::{ApiError, json};
use crate::state::AppState;

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

/// Joins a batch of labels: every label is checked before any is joined, so a bad one refuses
/// the whole batch rather than leaving half of it applied.
pub(crate) async fn join_labels(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        ApiError::Invalid(format!(
            "feedback must be {{\"request_id\": \"...\", \"label\": 0|1|true|false}} or {{\"labels\": [...]}}: {e}"
        ))
    })?;
    let labels = match parsed {
        Body::Many { labels } => labels,
        Body::One(label) => vec![label],
    };
    let checked = labels
        .into_iter()
        .map(|l| match l.label {
            LabelValue::Bool(b) => Ok((l.request_id, b)),
            LabelValue::Number(0) => Ok((l.request_id, false)),
            LabelValue::Number(1) => Ok((l.request_id, true)),
            LabelValue::Number(n) => Err(ApiError::Invalid(format!("label {n} for {} is not 0 or 1", l.request_id))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut joined = 0usize;
    let mut elsewhere = Vec::new();
    for (request_id, label) in checked {
        if state.observations.label(&request_id, label) {
            joined += 1;
        } else {
            elsewhere.push((request_id, label));
        }
    }
    let mut forwarded = 0;
    if let Some((store, model)) = state.fleet.get().filter(|_| !elsewhere.is_empty()) {
        store.push_labels(model, &elsewhere).await?;
        forwarded = elsewhere.len();
    }
    let unknown = elsewhere.into_iter().take(100).map(|(id, _)| id).collect();
    Ok(json(StatusCode::OK, &FeedbackAnswer { joined, unknown, forwarded }))
}
