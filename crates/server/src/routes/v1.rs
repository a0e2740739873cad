//! The seed's `POST /v1/predict`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use modelship_protocol::v1;

use super::{Call, body_error, route, score_of};
use crate::error::{ApiError, json_response};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/predict", post(predict))
}

async fn predict(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let mut call = Call::start(&state, "v1_predict", &headers);
    let body = match body {
        Ok(body) => body,
        Err(r) => return call.finish(None, None, Err(body_error(&state, r))),
    };
    let routed = match state.models.single_name().and_then(|name| route(&state, &name, None, &headers, &body)) {
        Ok(routed) => routed,
        Err(e) => return call.finish(None, None, Err(e)),
    };
    let model = &routed.model;
    let result = async {
        let (request, defaults) = match v1::decode_predict(&body, &model.info.signature)? {
            v1::Predict::Rows(request) => (request, None),
            v1::Predict::Entities(entities) => {
                let mut request = v1::entity_request(&model.info.signature);
                let defaults = super::enrich(&state, &mut request, &entities).await?;
                (request, defaults)
            }
        };
        let mirror = routed.shadow.as_ref().filter(|s| state.shadows.admit(&state.metrics, s)).map(|_| request.clone());
        let outputs = model.infer(request).await?;
        if state.observations.is_recording() {
            call.score = score_of(model, &outputs);
        }
        let output = outputs
            .first()
            .ok_or_else(|| ApiError::Internal("the model returned no output".to_owned()))?;
        let body = v1::encode_predict_response(&model.version, output, defaults);
        if let (Some(shadow), Some(copy)) = (routed.shadow.clone(), mirror) {
            state.shadows.mirror(&state.metrics, shadow, copy, outputs);
        }
        Ok(json_response(StatusCode::OK, body))
    }
    .await;
    call.finish(Some(model), Some(routed.role), result)
}
