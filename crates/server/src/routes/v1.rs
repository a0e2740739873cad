//! The seed's `POST /v1/predict`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use modelship_protocol::v1;

use super::{Call, body_error};
use crate::error::{ApiError, json_response};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/predict", post(predict))
}

async fn predict(State(state): State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let call = Call::start(&state, "v1_predict", &headers);
    let model = match state.models.single() {
        Ok(model) => model,
        Err(e) => return call.finish(None, Err(e)),
    };
    let result = async {
        let body = body.map_err(|r| body_error(&state, r))?;
        let request = v1::decode_predict_request(&body, &model.info.signature)?;
        let outputs = model.infer(request).await?;
        let output = outputs
            .first()
            .ok_or_else(|| ApiError::Internal("the model returned no output".to_owned()))?;
        Ok(json_response(StatusCode::OK, v1::encode_predict_response(&model.version, output)))
    }
    .await;
    call.finish(Some(&model), result)
}
