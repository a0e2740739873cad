//! Batch scoring (`modelship predict`): a file's rows, chunk by chunk, through the one pipeline
//! as `/v1/predict` rows ([`pipeline::run`] with [`Endpoint::Batch`]): the same validation,
//! feature enrichment and batching as a request over HTTP (no prediction log: the output file is
//! the record).

use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::pipeline::{self, Endpoint, Inputs};
use crate::state::AppState;

/// What one chunk got: the version that answered and one prediction per row, as `/v1/predict`
/// gives them.
pub struct Scored {
    pub version: String,
    pub predictions: Vec<Value>,
}

/// Scores `rows`, a JSON array of feature rows, as one request with id `request_id`.
pub async fn score_rows(state: &AppState, rows: Box<RawValue>, request_id: &str) -> Result<Scored, ApiError> {
    score(state, Inputs::Rows(rows), None, request_id).await
}

/// Scores `entities` (one object of key fields per row) with the features the feature store
/// holds for them, as `/v1/predict` by entities does.
pub async fn score_entities(state: &AppState, entities: Vec<serde_json::Map<String, Value>>, request_id: &str) -> Result<Scored, ApiError> {
    score(state, Inputs::Prediction, Some(entities), request_id).await
}

async fn score(state: &AppState, inputs: Inputs, entities: Option<Vec<serde_json::Map<String, Value>>>, request_id: &str) -> Result<Scored, ApiError> {
    let mut headers = HeaderMap::new();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(crate::request_id::HEADER, id);
    }
    let request = pipeline::Request { model: None, version: None, parameters: serde_json::Map::new(), inputs, entities };
    let answer = pipeline::run(state, Endpoint::Batch, &headers, Instant::now(), Ok(request)).await;
    let outcome = answer.result?;
    let version = answer.model.map(|m| m.version.clone()).unwrap_or_default();
    let output = outcome.outputs.first().ok_or_else(|| ApiError::Internal("the model returned no output".to_owned()))?;
    let predictions = match modelship_protocol::v1::prediction_value(output) {
        Value::Array(values) => values,
        other => vec![other],
    };
    Ok(Scored { version, predictions })
}
