//! Labels joined to the predictions they are for (`POST /v1/feedback` on the REST API, and the
//! admin API's route), and business rewards to the answers they are for (`POST /v1/rewards`,
//! and the admin API's route): every entry of a batch checked before any is joined.

use axum::response::Response;
use http::StatusCode;
use modelship_protocol::admin::FeedbackAnswer;
use serde::Deserialize;

use crate::control::Feedback;
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
            LabelValue::Bool(b) => Ok((l.request_id, Feedback::Label(b))),
            LabelValue::Number(0) => Ok((l.request_id, Feedback::Label(false))),
            LabelValue::Number(1) => Ok((l.request_id, Feedback::Label(true))),
            LabelValue::Number(n) => Err(ApiError::Invalid(format!("label {n} for {} is not 0 or 1", l.request_id))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    join_all(state, checked).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reward {
    request_id: String,
    /// A conversion as 0 or 1, revenue, any finite number: the experiment compares means.
    value: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Rewards {
    Many { rewards: Vec<Reward> },
    One(Reward),
}

/// Joins a batch of rewards, every one checked first (see [`join_labels`]).
pub(crate) async fn join_rewards(state: &AppState, body: &[u8]) -> Result<Response, ApiError> {
    let parsed: Rewards = serde_json::from_slice(body).map_err(|e| {
        ApiError::Invalid(format!("rewards must be {{\"request_id\": \"...\", \"value\": <number>}} or {{\"rewards\": [...]}}: {e}"))
    })?;
    let rewards = match parsed {
        Rewards::Many { rewards } => rewards,
        Rewards::One(reward) => vec![reward],
    };
    if let Some(bad) = rewards.iter().find(|r| !r.value.is_finite() || r.value.abs() > 1e12) {
        return Err(ApiError::Invalid(format!("reward {} for {} is not a finite number within ±1e12", bad.value, bad.request_id)));
    }
    join_all(state, rewards.into_iter().map(|r| (r.request_id, Feedback::Reward(r.value))).collect()).await
}

/// Joins a checked batch; what this replica cannot join is handed on to the others (in a
/// fleet), and the answer says how much of each.
async fn join_all(state: &AppState, batch: Vec<(String, Feedback)>) -> Result<Response, ApiError> {
    // Kept as data by the replica it was posted to (once, wherever it is joined): the log joins
    // it to its prediction by request id, across restarts and replicas.
    if let Some(log) = state.predictions.get() {
        let time = modelship_predictions::now_ms();
        for (request_id, feedback) in &batch {
            let (label, reward) = match *feedback {
                Feedback::Label(l) => (Some(l), None),
                Feedback::Reward(r) => (None, Some(r)),
            };
            log.feedback(modelship_predictions::Feedback { request_id: request_id.clone(), time, label, reward, joined: None, replica: log.replica().map(str::to_owned) });
        }
    }
    let mut joined = 0usize;
    let mut elsewhere = Vec::new();
    for (request_id, feedback) in batch {
        if state.observations.join(&request_id, feedback) {
            joined += 1;
        } else {
            elsewhere.push((request_id, feedback));
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
