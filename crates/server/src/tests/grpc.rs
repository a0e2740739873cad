//! The gRPC router in-process: `grpc.health.v1` follows readiness at the moment it is asked.

use axum::body::Body;
use http::{Request, StatusCode};
use tower::ServiceExt;

use crate::grpc::{Grpc, router};
use crate::state::{AppState, Limits};
use crate::testing::app_with;

/// `grpc.health.v1.Health/Check` for the server as a whole: the `status` field of the answer
/// (1 SERVING, 2 NOT_SERVING).
async fn check(app: &axum::Router) -> u8 {
    // One uncompressed frame holding an empty HealthCheckRequest.
    let request = Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    // Frame header (flag, length 2), then field 1 as a varint: 0x08, status.
    assert_eq!(bytes[..6], [0, 0, 0, 0, 2, 0x08], "{bytes:?}");
    bytes[6]
}

#[tokio::test]
async fn health_answers_what_readiness_says_now_not_at_the_last_poll() {
    // Built before startup completes, as the server does: the poll saw "not serving".
    let state = AppState::new(Limits::default());
    let app = router(Grpc::new(state.clone(), None));
    assert_eq!(check(&app).await, 2, "not started yet");
    // Ready, then asked at once: no poll has run in between.
    let (state, _backend) = app_with(state, "scale=1");
    assert_eq!(check(&app).await, 1, "SERVING as soon as readiness passes");
    state.health.begin_drain();
    assert_eq!(check(&app).await, 2, "NOT_SERVING as soon as the drain begins");
}
