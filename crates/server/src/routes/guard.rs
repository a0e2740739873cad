//! The two checks every request passes before a handler, as tower layers whose futures are
//! plain enums: an `axum::middleware::from_fn` layer clones and boxes the inner service and boxes
//! its future on every request, which on the inference path cost more than the checks themselves.
//!
//! - [`GuardAll`] wraps the whole API: the head-size limit and the body's clock on the way in,
//!   `{"error": ...}` for every error response on the way out.
//! - [`GuardInference`] wraps the inference routes: a JSON (or binary-extension) body, then the
//!   API key when keys are configured.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::state::AppState;

/// The whole API's guard: requests whose line and headers exceed `max_header_bytes` are refused
/// in JSON, and error responses that are not JSON (the framework's own rejections) are rewritten
/// as `{"error": ...}`.
#[derive(Clone, Copy)]
pub struct GuardAll {
    pub max_header_bytes: usize,
    /// The body's size and clock ([`crate::api::body`]).
    pub body: crate::api::BodyBounds,
}

impl<S> Layer<S> for GuardAll {
    type Service = GuardAllService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardAllService { inner, max_header_bytes: self.max_header_bytes, body: self.body }
    }
}

#[derive(Clone)]
pub struct GuardAllService<S> {
    inner: S,
    max_header_bytes: usize,
    body: crate::api::BodyBounds,
}

impl<S> Service<Request> for GuardAllService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardAllFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Err(refused) = super::limit_headers(self.max_header_bytes, &request) {
            return GuardAllFuture::Answered { response: Some(refused) };
        }
        GuardAllFuture::Inner { future: self.inner.call(crate::api::body::clock(request, self.body)) }
    }
}

pin_project! {
    /// The handler's future, then (only for an error response that is not JSON yet) the rewrite.
    #[project = GuardAllProjection]
    pub enum GuardAllFuture<F> {
        Answered { response: Option<Response> },
        Inner { #[pin] future: F },
        Rewriting { future: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F> Future for GuardAllFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                GuardAllProjection::Answered { response } => {
                    return Poll::Ready(Ok(response.take().unwrap_or_else(|| ApiError::Internal("a response polled twice".to_owned()).into_response())));
                }
                GuardAllProjection::Inner { future } => {
                    let Ok(response) = ready!(future.poll(cx));
                    if !crate::api::needs_json_error(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    self.set(GuardAllFuture::Rewriting { future: Box::pin(crate::api::json_errors(response)) });
                }
                GuardAllProjection::Rewriting { future } => return future.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

/// The inference routes' guard (see the module's documentation).
#[derive(Clone)]
pub struct GuardInference {
    pub state: AppState,
}

impl<S> Layer<S> for GuardInference {
    type Service = GuardInferenceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardInferenceService { inner, state: self.state.clone() }
    }
}

#[derive(Clone)]
pub struct GuardInferenceService<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for GuardInferenceService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Either<std::future::Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use futures::future::Either;
        if let Err(refused) = super::require_json_body(&request) {
            return Either::Left(std::future::ready(Ok(refused)));
        }
        if !self.state.credentials.allows_inference(request.headers()) {
            return Either::Left(std::future::ready(Ok(ApiError::NoApiKey.into_response())));
        }
        Either::Right(self.inner.call(request))
    }
}
