//! `/v1/predict`'s encoding of a pipeline answer.

use std::time::Instant;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use modelship_protocol::v1;

use super::respond;
use crate::error::{ApiError, json_response};
use crate::pipeline::{self, Endpoint, Inputs};
use crate::state::AppState;

/// `/v1/predict` of one body, from decoding to the encoded response: the HTTP routes' and the
/// Lambda adapter's (which has no listener, so `endpoint` says where the request came in).
/// `model` is the one a route names (`/v1/models/{model}/predict`); `None` is the server's own.
pub(crate) async fn predict_response(
    state: &AppState,
    endpoint: Endpoint,
    model: Option<String>,
    headers: &HeaderMap,
    received: Instant,
    body: Result<Bytes, ApiError>,
) -> Response {
    let decoded = body.and_then(|body| decode(&body, model));
    let answer = pipeline::run(state, endpoint, headers, received, decoded).await;
    respond(answer, |model, outcome| match outcome.outputs.first() {
        Some(output) => json_response(StatusCode::OK, v1::encode_predict_response(&model.version, output, outcome.feature_defaults)),
        None => ApiError::Internal("the model returned no output".to_owned()).into_response(),
    })
}

fn decode(body: &[u8], model: Option<String>) -> Result<pipeline::Request, ApiError> {
    let v1::DecodedPredict { predict, parameters } = v1::decode_predict(body)?;
    let (inputs, entities) = match predict {
        v1::Predict::Rows(rows) => (Inputs::Rows(rows), None),
        v1::Predict::Entities(entities) => (Inputs::Prediction, Some(entities)),
    };
    Ok(pipeline::Request { model, version: None, parameters, inputs, entities })
}
