//! Every failure a client can see, and the one table that maps each to an HTTP status and a stable
//! error code (used as a metrics label and in logs).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use modelship_features::FeatureError;
use modelship_inference::InferError;
use modelship_protocol::{DecodeError, ErrorBody};
use modelship_registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A request that decoded but asks for something that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Infer(#[from] InferError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// A rollout spec (or another control document) that is well-formed but not valid.
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Features(#[from] modelship_features::FeatureError),
    #[error("this model has no feature spec to look entities up with; send the features themselves, or configure features.store_url with features.features (the server's first model) or models[].features")]
    NoFeatureStore,
    #[error("unknown model '{name}'; this server serves: {}", .available.join(", "))]
    UnknownModel { name: String, available: Vec<String> },
    #[error("model '{name}' has no version '{version}'; available: {}", .available.join(", "))]
    UnknownVersion { name: String, version: String, available: Vec<String> },
    #[error("model '{0}' is not loaded yet; retry when /v2/models/{0}/ready answers 200")]
    NotReady(String),
    /// Unloaded to save memory, and not loaded again within the wait a request is allowed.
    #[error("model '{0}' is not in memory and is loading now; retry in a moment")]
    Unloaded(String),
    /// A model unloaded to save memory could not be loaded again (the log says why).
    #[error("model '{0}' is not in memory and could not be loaded again (the server's log says why); retry later")]
    LoadFailed(String),
    /// Loading a model would pass the bound on loaded models, and no loaded model may be unloaded.
    #[error("{0}")]
    NoRoom(String),
    #[error("model '{model}' is overloaded: {queued} requests are already waiting; retry later or raise model.max_queue")]
    Overloaded { model: String, queued: usize },
    #[error("request body is larger than the limit of {limit} bytes (server.max_body_bytes)")]
    BodyTooLarge { limit: usize },
    #[error("cannot read request body: {0}")]
    Body(String),
    /// The body stopped coming, or came too slowly ([`crate::api::body`]).
    #[error("{0}; send the whole body without pausing")]
    BodyTimeout(String),
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
    #[error("missing or wrong API key: send `Authorization: Bearer <key>` or `x-api-key: <key>` with a key this server accepts")]
    NoApiKey,
    #[error("the request's headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("{what} of {got} is over the limit of {limit} ({setting})")]
    TooLarge { what: &'static str, got: usize, limit: usize, setting: &'static str },
    /// A message that would cost far more to decode than its size (gRPC's packed repeats).
    #[error("{0}")]
    TooLargeToDecode(String),
    #[error("unsupported content type '{got}'; send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    /// Something a control request names (a registry model or version) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The control store (where routing revisions are committed) did not answer.
    #[error("{0}; the routing in force is unchanged, retry once the store is back")]
    ControlStoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status and stable code of each error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let (class, code) = self.class_and_code();
        (class.http(), code)
    }

    /// The class and stable code of each error. Exhaustive on purpose: a new variant does not
    /// compile until it has a row here, and a class has exactly one HTTP status and gRPC code.
    pub fn class_and_code(&self) -> (Class, &'static str) {
        match self {
            ApiError::Decode(_) => (Class::BadRequest, "invalid_request"),
            ApiError::Invalid(_) => (Class::BadRequest, "invalid_request"),
            ApiError::InvalidSpec(_) => (Class::Unprocessable, "invalid_spec"),
            ApiError::Registry(e) => match e {
                RegistryError::InvalidName { .. } | RegistryError::InvalidReference(_) => (Class::BadRequest, "invalid_name"),
                RegistryError::NotOnnx { .. } => (Class::Unprocessable, "not_onnx"),
                RegistryError::UnknownModel(_) | RegistryError::UnknownVersion { .. } | RegistryError::UnknownAlias { .. } => {
                    (Class::NotFound, "not_found")
                }
                RegistryError::VersionConflict { .. } | RegistryError::AliasedVersion { .. } | RegistryError::AliasMoved { .. } => {
                    (Class::Conflict, "conflict")
                }
                RegistryError::DigestMismatch { .. } | RegistryError::MissingArtifact { .. } => {
                    (Class::Internal, "artifact_corrupt")
                }
                RegistryError::Store(_) | RegistryError::Mlflow(_) => (Class::BadGateway, "registry_unavailable"),
                RegistryError::Database { .. } | RegistryError::Io { .. } | RegistryError::Config(_) => {
                    (Class::Internal, "registry_failed")
                }
            },
            ApiError::Infer(e) => match e {
                InferError::InvalidInput { .. } => (Class::BadRequest, "invalid_input"),
                InferError::UnknownInput { .. } => (Class::BadRequest, "unknown_input"),
                InferError::MissingInput { .. } => (Class::BadRequest, "missing_input"),
                InferError::DuplicateInput { .. } => (Class::BadRequest, "duplicate_input"),
                InferError::DatatypeMismatch { .. } => (Class::BadRequest, "datatype_mismatch"),
                InferError::ShapeMismatch { .. } => (Class::BadRequest, "shape_mismatch"),
                InferError::UnknownOutput { .. } => (Class::BadRequest, "unknown_output"),
                InferError::DuplicateOutput { .. } => (Class::BadRequest, "duplicate_output"),
                InferError::Load(_) => (Class::Internal, "model_load_failed"),
                InferError::Runtime(_) => (Class::Internal, "inference_failed"),
            },
            ApiError::Features(e) => match e {
                FeatureError::BadEntity(_) => (Class::BadRequest, "invalid_entity"),
                FeatureError::EntityNotFound { .. } => (Class::NotFound, "entity_not_found"),
                FeatureError::MissingFeature { .. } => (Class::NotFound, "feature_not_found"),
                FeatureError::StoreUnavailable(_) => (Class::Unavailable, "feature_store_unavailable"),
                FeatureError::BadStoredValue { .. } => (Class::BadGateway, "feature_data_invalid"),
            },
            ApiError::NoFeatureStore => (Class::BadRequest, "no_feature_store"),
            ApiError::UnknownModel { .. } => (Class::NotFound, "unknown_model"),
            ApiError::UnknownVersion { .. } => (Class::NotFound, "unknown_version"),
            ApiError::NotReady(_) => (Class::Unavailable, "model_not_ready"),
            ApiError::Unloaded(_) => (Class::Unavailable, "model_loading"),
            ApiError::NoRoom(_) => (Class::Unavailable, "no_room"),
            ApiError::LoadFailed(_) => (Class::Unavailable, "load_failed"),
            ApiError::Overloaded { .. } => (Class::Overloaded, "overloaded"),
            ApiError::BodyTooLarge { .. } => (Class::TooLarge, "body_too_large"),
            ApiError::Body(_) => (Class::BadRequest, "invalid_body"),
            ApiError::BodyTimeout(_) => (Class::Timeout, "body_timeout"),
            ApiError::NoRoute { .. } => (Class::NotFound, "no_route"),
            ApiError::MethodNotAllowed { .. } => (Class::MethodNotAllowed, "method_not_allowed"),
            ApiError::ShuttingDown => (Class::Unavailable, "shutting_down"),
            ApiError::Conflict(_) => (Class::Conflict, "conflict"),
            ApiError::Unauthorized => (Class::Unauthenticated, "unauthorized"),
            ApiError::NoApiKey => (Class::Unauthenticated, "unauthorized"),
            ApiError::HeadersTooLarge { .. } => (Class::HeadersTooLarge, "headers_too_large"),
            ApiError::TooLarge { .. } => (Class::TooLarge, "too_large"),
            ApiError::TooLargeToDecode(_) => (Class::TooLarge, "too_large"),
            ApiError::UnsupportedMediaType { .. } => (Class::UnsupportedMediaType, "unsupported_media_type"),
            ApiError::NotFound(_) => (Class::NotFound, "not_found"),
            ApiError::ControlStoreUnavailable(_) => (Class::Unavailable, "control_store_unavailable"),
            ApiError::Internal(_) => (Class::Internal, "internal"),
        }
    }
}

/// What kind of failure an error is: the one place that fixes its HTTP status and gRPC code,
/// both by exhaustive matches, so the two protocols cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    BadRequest,
    Unauthenticated,
    NotFound,
    MethodNotAllowed,
    Conflict,
    TooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    Timeout,
    Overloaded,
    Unavailable,
    BadGateway,
    Internal,
}

impl Class {
    pub const ALL: [Class; 14] = [
        Class::BadRequest,
        Class::Unauthenticated,
        Class::NotFound,
        Class::MethodNotAllowed,
        Class::Conflict,
        Class::TooLarge,
        Class::HeadersTooLarge,
        Class::UnsupportedMediaType,
        Class::Unprocessable,
        Class::Timeout,
        Class::Overloaded,
        Class::Unavailable,
        Class::BadGateway,
        Class::Internal,
    ];

    pub fn http(self) -> StatusCode {
        match self {
            Class::BadRequest => StatusCode::BAD_REQUEST,
            Class::Unauthenticated => StatusCode::UNAUTHORIZED,
            Class::NotFound => StatusCode::NOT_FOUND,
            Class::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Class::Conflict => StatusCode::CONFLICT,
            Class::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Class::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Class::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Class::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Class::Timeout => StatusCode::REQUEST_TIMEOUT,
            Class::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Class::BadGateway => StatusCode::BAD_GATEWAY,
            Class::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc(self) -> GrpcCode {
        match self {
            Class::BadRequest | Class::UnsupportedMediaType | Class::Unprocessable => GrpcCode::InvalidArgument,
            Class::Unauthenticated => GrpcCode::Unauthenticated,
            Class::NotFound => GrpcCode::NotFound,
            Class::MethodNotAllowed => GrpcCode::Unimplemented,
            Class::Conflict => GrpcCode::FailedPrecondition,
            Class::TooLarge | Class::HeadersTooLarge => GrpcCode::ResourceExhausted,
            Class::Timeout => GrpcCode::DeadlineExceeded,
            Class::Overloaded | Class::Unavailable | Class::BadGateway => GrpcCode::Unavailable,
            Class::Internal => GrpcCode::Internal,
        }
    }
}

/// gRPC status codes (the subset errors use), named as gRPC names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    InvalidArgument,
    Unauthenticated,
    NotFound,
    Unimplemented,
    FailedPrecondition,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl GrpcCode {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::Internal => "INTERNAL",
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

/// The longest error message a client is sent: past it, the message is cut with a note of how
/// much was left out (a message may quote what the client sent).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The longest error message a log line carries.
pub const MAX_LOGGED_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes (at a character boundary), with the length left out noted.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} more bytes not shown)", &text[..end], text.len() - end))
}

impl ApiError {
    /// What a client is told: the message, clipped to [`MAX_MESSAGE_BYTES`]; for a failure inside
    /// the server (500) no internals (a runtime's source paths, a database's file), only its
    /// code and where the detail is: the server's log, under the response's `x-request-id`.
    pub fn public_message(&self) -> String {
        let (class, code) = self.class_and_code();
        if class != Class::Internal {
            return clip(&self.to_string(), MAX_MESSAGE_BYTES).into_owned();
        }
        let what = match self {
            ApiError::Infer(InferError::Runtime(_)) => "the model failed to run this request",
            ApiError::Infer(InferError::Load(_)) => "the model could not be loaded",
            ApiError::Registry(_) => "the model registry failed",
            _ => "internal error",
        };
        format!("{what} ({code}); the detail is in the server's log, under this request's id (the x-request-id header) where the response carries one")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status == StatusCode::INTERNAL_SERVER_ERROR && !matches!(self, ApiError::Infer(_)) {
            // The pipeline logs inference failures with their request id; these are the others.
            tracing::error!(error = code, message = %clip(&self.to_string(), MAX_LOGGED_BYTES), "request failed inside the server");
        }
        let body = serde_json::to_vec(&ErrorBody { error: self.public_message() }).unwrap_or_default();
        let mut response = json_response(status, body);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::BodyTimeout(_) | ApiError::BodyTooLarge { .. } | ApiError::Unauthorized | ApiError::NoApiKey) {
            // The rest of the body is never read (a refused credential is answered before its
            // body): the connection cannot carry another request, and a client that reused it
            // would see its next request fail unsent. Said, so that it opens another.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_cuts_at_a_character_boundary_and_says_how_much_is_left_out() {
        // (text, limit, expected)
        let cases = [
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("0123456789abc", 10, "0123456789… (3 more bytes not shown)"),
            ("ééééé", 3, "é… (8 more bytes not shown)"),
        ];
        for (text, limit, expected) in cases {
            assert_eq!(clip(text, limit), expected, "{text} at {limit}");
        }
    }
}
