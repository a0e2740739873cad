//! Bounds on a request body: a declared length over the limit is refused before the body is read
//! (so `Expect: 100-continue` is never answered "continue" for it), and the body is read under
//! a clock: a pause longer than the body timeout, or an average slower than the
//! minimum rate once that timeout has passed, ends the request with 408 and the connection with
//! it. A stalled upload therefore holds neither a connection nor the drain for long.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

pub use crate::state::DEFAULT_MIN_BODY_RATE;

/// What a body must keep to.
#[derive(Debug, Clone, Copy)]
pub struct BodyBounds {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub min_rate: u64,
}

/// The refusal of a request whose declared `Content-Length` is over `max_bytes`: checked before
/// a byte of the body is read, so `Expect: 100-continue` is never answered "continue" for it
/// (hyper sends that only once the body is polled). The response closes the connection.
pub(crate) fn declared_too_large(headers: &http::HeaderMap, max_bytes: usize) -> Option<ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    declared.is_some_and(|n| n > max_bytes as u64).then_some(ApiError::BodyTooLarge { limit: max_bytes })
}

/// Puts the clock on the request's body, when it has one.
pub(crate) fn clock(request: Request, bounds: BodyBounds) -> Request {
    // No clock where there is no body (a GET; an HTTP/2 stream ended with its headers).
    if http_body::Body::is_end_stream(request.body()) {
        return request;
    }
    request.map(|body| Body::new(TimedBody::new(body, bounds.timeout, bounds.min_rate)))
}

/// [`declared_too_large`], then [`clock`]: for routes that read bodies without [`super::read_body`].
#[allow(clippy::result_large_err, reason = "the refusal is the rare path")]
pub(crate) fn bound(request: Request, bounds: BodyBounds) -> Result<Request, Response> {
    match declared_too_large(request.headers(), bounds.max_bytes) {
        Some(refused) => Err(refused.into_response()),
        None => Ok(clock(request, bounds)),
    }
}

/// A body that stopped coming, or came too slowly.
#[derive(Debug)]
pub struct BodyTimeout {
    pub received: u64,
    pub waited: Duration,
    /// True when the average rate, not a single pause, was the problem.
    pub slow: bool,
    pub min_rate: u64,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.slow {
            write!(
                f,
                "the request body arrived slower than {} bytes/s ({} bytes in {:.1} s; server.min_body_bytes_per_second)",
                self.min_rate,
                self.received,
                self.waited.as_secs_f64()
            )
        } else {
            write!(
                f,
                "the request body stopped arriving: no bytes for {:.1} s after {} bytes (server.body_read_timeout_seconds)",
                self.waited.as_secs_f64(),
                self.received
            )
        }
    }
}

impl std::error::Error for BodyTimeout {}

/// The body timeout somewhere in `error`'s chain, if that is what it is.
pub(crate) fn timeout_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(t);
        }
        current = e.source();
    }
    None
}

pin_project! {
    /// A body read under a clock (see the module's documentation).
    pub struct TimedBody {
        #[pin]
        inner: Body,
        timeout: Duration,
        min_rate: u64,
        started: Instant,
        last_bytes: Instant,
        received: u64,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl TimedBody {
    pub fn new(inner: Body, timeout: Duration, min_rate: u64) -> Self {
        let now = Instant::now();
        TimedBody { inner, timeout, min_rate: min_rate.max(1), started: now, last_bytes: now, received: 0, sleep: None }
    }
}

impl TimedBody {
    /// When the body runs out of time, given what has arrived: `timeout` after the last bytes,
    /// and no later than `timeout` plus the time the bytes so far are allowed at the minimum rate.
    fn deadline(started: Instant, last_bytes: Instant, received: u64, timeout: Duration, min_rate: u64) -> (Instant, bool) {
        let idle = last_bytes + timeout;
        let by_rate = started + timeout + Duration::from_secs_f64(received as f64 / min_rate as f64);
        if by_rate < idle { (by_rate, true) } else { (idle, false) }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                    *this.last_bytes = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (deadline, slow) = TimedBody::deadline(*this.started, *this.last_bytes, *this.received, *this.timeout, *this.min_rate);
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                let now = Instant::now();
                let waited = if slow { now - *this.started } else { now - *this.last_bytes };
                Poll::Ready(Some(Err(Box::new(BodyTimeout { received: *this.received, waited, slow, min_rate: *this.min_rate }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_pause_or_the_rate_whichever_comes_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (last bytes at, received, expected deadline from t0, by rate)
        let cases = [
            (0, 0, 10, false),           // nothing yet: the first timeout, both ways
            (9, 1, 10, true),            // a trickle: the rate's deadline comes first
            (2, 1_000_000, 12, false),   // a fast body pausing: 10 s after its last bytes
            (30, 1_000_000, 40, false),  // well within the rate: the pause decides
            (60, 800_000, 58, true),     // behind the rate: 10 s + 800 kB at 16 KiB/s = 58.8 s
        ];
        for (last, received, expected, by_rate) in cases {
            let (deadline, slow) = TimedBody::deadline(t0, t0 + s(last), received, s(10), DEFAULT_MIN_BODY_RATE);
            assert_eq!((deadline - t0).as_secs(), expected, "last {last} s, {received} bytes");
            assert_eq!(slow, by_rate, "last {last} s, {received} bytes");
        }
    }
}
