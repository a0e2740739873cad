//! Path parameters whose rejection is an [`ApiError`] like every other one: axum's own `Path`
//! answers a segment that is not percent-encoded UTF-8 with a plain-text 400.

use axum::extract::FromRequestParts;
use http::request::Parts;
use modelship_protocol::DecodeError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Drop-in for `axum::extract::Path`.
pub(crate) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::Decode(DecodeError(format!(
                "{}; model names and versions in the URL must be percent-encoded UTF-8",
                rejection.body_text()
            )))),
        }
    }
}
