//! Every failure a client can see, and the one table that maps each to an HTTP status and a stable
//! error code (used as a metrics label and in logs).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use modelship_features::FeatureError;
use modelship_inference::InferError;
use modelship_protocol::{DecodeError, ErrorBody};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Infer(#[from] InferError),
    #[error("{0}")]
    Features(#[from] modelship_features::FeatureError),
    #[error("this server has no feature store to look entities up in; send the features themselves, or configure features.store_url and features.features")]
    NoFeatureStore,
    #[error("unknown model '{name}'; this server serves: {}", .available.join(", "))]
    UnknownModel { name: String, available: Vec<String> },
    #[error("model '{name}' has no version '{version}'; available: {}", .available.join(", "))]
    UnknownVersion { name: String, version: String, available: Vec<String> },
    #[error("model '{0}' is not loaded yet; retry when /v2/models/{0}/ready answers 200")]
    NotReady(String),
    #[error("model '{model}' is overloaded: {queued} requests are already waiting; retry later or raise model.max_queue")]
    Overloaded { model: String, queued: usize },
    #[error("request body is larger than the limit of {limit} bytes (server.max_body_bytes)")]
    BodyTooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    Body(String),
    #[error("no route for {method} {path}; see GET /v2 and the README for the API")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A control request that cannot be carried out in the current state.
    #[error("{0}")]
    Conflict(String),
    #[error("missing or wrong admin token: send `Authorization: Bearer <token>` (see `modelship traffic --help`)")]
    Unauthorized,
    /// Something a control request names (a registry model or version) does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and stable code of each error. Exhaustive on purpose: a new variant does
    /// not compile until it has a row here.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Decode(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Infer(e) => match e {
                InferError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid_input"),
                InferError::UnknownInput { .. } => (StatusCode::BAD_REQUEST, "unknown_input"),
                InferError::MissingInput { .. } => (StatusCode::BAD_REQUEST, "missing_input"),
                InferError::DuplicateInput { .. } => (StatusCode::BAD_REQUEST, "duplicate_input"),
                InferError::DatatypeMismatch { .. } => (StatusCode::BAD_REQUEST, "datatype_mismatch"),
                InferError::ShapeMismatch { .. } => (StatusCode::BAD_REQUEST, "shape_mismatch"),
                InferError::UnknownOutput { .. } => (StatusCode::BAD_REQUEST, "unknown_output"),
                InferError::DuplicateOutput { .. } => (StatusCode::BAD_REQUEST, "duplicate_output"),
                InferError::Load(_) => (StatusCode::INTERNAL_SERVER_ERROR, "model_load_failed"),
                InferError::Runtime(_) => (StatusCode::INTERNAL_SERVER_ERROR, "inference_failed"),
            },
            ApiError::Features(e) => match e {
                FeatureError::BadEntity(_) => (StatusCode::BAD_REQUEST, "invalid_entity"),
                FeatureError::EntityNotFound { .. } => (StatusCode::NOT_FOUND, "entity_not_found"),
                FeatureError::MissingFeature { .. } => (StatusCode::NOT_FOUND, "feature_not_found"),
                FeatureError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "feature_store_unavailable"),
                FeatureError::BadStoredValue { .. } => (StatusCode::BAD_GATEWAY, "feature_data_invalid"),
            },
            ApiError::NoFeatureStore => (StatusCode::BAD_REQUEST, "no_feature_store"),
            ApiError::UnknownModel { .. } => (StatusCode::NOT_FOUND, "unknown_model"),
            ApiError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "unknown_version"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "model_not_ready"),
            ApiError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Body(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// A JSON response with a precomputed body.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON response serialized from `body`.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    json_response(status, serde_json::to_vec(body).unwrap_or_default())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        let body = serde_json::to_vec(&ErrorBody { error: self.to_string() }).unwrap_or_default();
        let mut response = json_response(status, body);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
