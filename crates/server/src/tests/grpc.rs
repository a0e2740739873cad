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

/// One `ModelInfer` call: the gRPC status code and message it ends with.
async fn infer(app: &axum::Router, message: modelship_protocol::grpc::pb::ModelInferRequest, metadata: &[(&str, String)]) -> (u32, String) {
    call(app, "ModelInfer", message, metadata).await
}

/// One unary call of `GRPCInferenceService`: the gRPC status code and message it ends with.
async fn call(app: &axum::Router, method: &str, message: impl tonic_prost::prost::Message, metadata: &[(&str, String)]) -> (u32, String) {
    use http_body_util::BodyExt;
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&encoded);
    let mut request = Request::post(format!("/inference.GRPCInferenceService/{method}")).header("content-type", "application/grpc").header("te", "trailers");
    for (k, v) in metadata {
        request = request.header(*k, v.as_str());
    }
    let response = app.clone().oneshot(request.body(Body::from(frame)).unwrap()).await.unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| headers.get(name).or_else(|| trailers.get(name)).map(|v| v.to_str().unwrap().to_owned());
    let code = field("grpc-status").expect("a grpc-status").parse().unwrap();
    let message = field("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default();
    (code, message)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC gets the bounds REST has: metadata as large as REST's headers, shapes of at most 64
/// dimensions, and short messages that never carry what the client sent whole.
#[tokio::test]
async fn grpc_is_bounded_like_rest() {
    use modelship_protocol::grpc::pb::{ModelInferRequest, model_infer_request::InferInputTensor};
    let (state, _backend) = app_with(AppState::new(Limits::default()), "scale=1");
    let app = router(Grpc::new(state.clone(), None));
    let input = |shape: Vec<i64>, name: String| InferInputTensor { name, datatype: "FP32".to_owned(), shape, ..Default::default() };
    let request = |inputs| ModelInferRequest { model_name: "fraud".to_owned(), inputs, ..Default::default() };
    // (what, request, metadata, gRPC code, message fragment)
    type Case = (&'static str, ModelInferRequest, Vec<(&'static str, String)>, u32, &'static str);
    let cases: Vec<Case> = vec![
        ("metadata over the header limit", request(vec![input(vec![1, 3], "x".to_owned())]), vec![("x-big", "a".repeat(70_000))], 8, "headers are larger than the limit"),
        ("a shape of 5000 dimensions", request(vec![input(vec![1; 5000], "x".to_owned())]), vec![], 3, "at most 64 dimensions"),
        ("an input name of 100 000 bytes", request(vec![input(vec![1, 3], "n".repeat(100_000))]), vec![], 3, "name is at most 1024 bytes"),
        ("200 000 empty inputs (2 bytes each on the wire)", request(vec![Default::default(); 200_000]), vec![], 8, "at most 4096 inputs"),
    ];
    for (what, message, metadata, code, fragment) in cases {
        let (got, text) = infer(&app, message, &metadata).await;
        assert_eq!(got, code, "{what}: {text}");
        assert!(text.contains(fragment), "{what}: {text:.300}");
        assert!(text.len() <= crate::error::MAX_MESSAGE_BYTES + 64, "{what}: a message of {} bytes", text.len());
    }
}

/// With API keys on, an operator's admin token alone reaches the repository RPCs (it passes the
/// API-key check too), and a call with neither credential is told which one is missing.
#[tokio::test]
async fn the_admin_token_alone_reaches_the_repository_rpcs() {
    use modelship_protocol::grpc::pb::RepositoryIndexRequest;
    const TOKEN: &str = "grpc-admin-token-0123456789";
    const KEY: &str = "grpc-api-key-0123456789";
    let state = AppState::with_credentials(Limits::default(), crate::auth::Credentials::new(Some(TOKEN), &[KEY.to_owned()]));
    let (state, backend) = app_with(state, "scale=1");
    let backend: std::sync::Arc<dyn modelship_inference::Backend> = backend;
    let repository = std::sync::Arc::new(crate::repository::Repository::new(None, backend, crate::pool::PoolConfig::new(1, 4), Default::default(), vec!["fraud".to_owned()]));
    let app = router(Grpc::new(state, Some(repository)));
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    // (what, metadata, gRPC code, message fragment)
    type Case = (&'static str, Vec<(&'static str, String)>, u32, &'static str);
    let cases: Vec<Case> = vec![
        ("the admin token", bearer(TOKEN), 0, ""),
        ("nothing", vec![], 16, "missing or wrong API key"),
        ("an API key alone", vec![("x-api-key", KEY.to_owned())], 16, "missing or wrong admin token"),
        ("a wrong token", bearer("not-the-admin-token-0123"), 16, "missing or wrong API key"),
    ];
    for (what, metadata, code, fragment) in cases {
        let (got, text) = call(&app, "RepositoryIndex", RepositoryIndexRequest::default(), &metadata).await;
        assert_eq!(got, code, "{what}: {text}");
        assert!(text.contains(fragment), "{what}: {text}");
    }
}

/// A gRPC message that stops arriving is cut off by the body clock, as a REST body is: the call
/// ends with an error instead of holding its stream (and the drain) for ever.
#[tokio::test]
async fn a_stalled_grpc_message_is_cut_off() {
    use http_body_util::BodyExt;
    let limits = Limits { body_read_timeout: std::time::Duration::from_millis(200), ..Limits::default() };
    let (state, _backend) = app_with(AppState::new(limits), "scale=1");
    let app = router(Grpc::new(state, None));
    // A frame header announcing 1000 bytes, three of them, then nothing.
    let start = futures::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&[0, 0, 0, 3, 232, 10, 5, 102])) });
    let stalled = Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending()));
    let request = Request::post("/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(stalled)
        .unwrap();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let response = app.clone().oneshot(request).await.unwrap();
        let headers = response.headers().clone();
        let trailers = response.into_body().collect().await.map(|c| c.trailers().cloned().unwrap_or_default()).unwrap_or_default();
        headers.get("grpc-status").or_else(|| trailers.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned())
    })
    .await
    .expect("the call ended within the body timeout");
    assert!(answered.as_deref().is_some_and(|code| code != "0"), "a stalled message answered {answered:?}");
}
