//! The HTTP app: one pipeline for V2 and /v1/predict, and every rejection in JSON.

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::Credentials;
use crate::state::{AppState, Limits};
use crate::testing::app_with;

pub(super) async fn call(state: &AppState, request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let response = crate::routes::app(state.clone()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

const V2: &str = "/v2/models/fraud/infer";

fn v2_body() -> Value {
    json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 0, 0], [-1, 0, 0]]}]})
}

#[tokio::test]
async fn v2_and_v1_answer_through_the_same_pipeline() {
    let (state, backend) = app_with(AppState::new(Limits::default()), "scale=2");
    let (status, headers, body) = call(&state, post(V2, v2_body())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "r1");
    assert_eq!(body["model_version"], "1");
    assert_eq!(headers["x-model-version"], "1");
    assert_eq!(headers["x-modelship-revision"], "0");
    let p = body["outputs"][1]["data"].as_array().unwrap();
    assert!((p[1].as_f64().unwrap() - 0.880797).abs() < 1e-5, "{p:?}");

    let (status, _, body) = call(&state, post("/v1/predict", json!({"features": [[1, 0, 0]]}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!((body["prediction"][0].as_f64().unwrap() - 0.880797).abs() < 1e-5, "{body}");
    assert_eq!(backend.calls.load(std::sync::atomic::Ordering::Relaxed), 2);

    let metrics = call(&state, Request::get("/metrics").body(Body::empty()).unwrap()).await.2;
    let text = metrics.as_str().unwrap();
    assert!(text.contains(r#"endpoint="v2_infer""#) && text.contains(r#"endpoint="v1_predict""#), "{text}");
}

#[tokio::test]
async fn every_rejection_is_json() {
    let limits = Limits { max_body_bytes: 2048, max_header_bytes: 1024, max_rows: 4, ..Limits::default() };
    let (state, _) = app_with(AppState::new(limits), "");
    let big = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": vec![0.0; 1000]}]});
    let rows = json!({"inputs": [{"name": "x", "shape": [5, 3], "datatype": "FP32", "data": vec![0.0; 15]}]});
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (Request::get("/nowhere").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, "no route for GET /nowhere"),
        (Request::get(V2).body(Body::empty()).unwrap(), StatusCode::METHOD_NOT_ALLOWED, "method GET is not allowed"),
        (post(V2, json!({"inputs": 5})), StatusCode::BAD_REQUEST, "invalid request"),
        (Request::post(V2).body(Body::from("{")).unwrap(), StatusCode::BAD_REQUEST, "malformed JSON"),
        (post(V2, big), StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit of 2048 bytes"),
        (post(V2, rows), StatusCode::PAYLOAD_TOO_LARGE, "rows of 5 is over the limit of 4"),
        (Request::post(V2).header("content-type", "text/csv").body(Body::from("1,2,3")).unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported content type 'text/csv'"),
        (Request::get("/health/live").header("x-big", "a".repeat(2000)).body(Body::empty()).unwrap(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers are larger"),
        (post("/v2/models/nope/infer", v2_body()), StatusCode::NOT_FOUND, "unknown model 'nope'"),
        (post("/v2/models/fraud/versions/9/infer", v2_body()), StatusCode::NOT_FOUND, "has no version '9'"),
        (Request::get("/v2/models/%FF").body(Body::empty()).unwrap(), StatusCode::BAD_REQUEST, ""),
    ];
    for (request, want, text) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, headers, body) = call(&state, request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{what}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field in {body}"));
        assert!(error.contains(text), "{what}: {error}");
    }
}

#[tokio::test]
async fn api_keys_guard_inference_but_not_probes() {
    let credentials = Credentials::new(Some("control-token-0123456789"), &["inference-key-0123456789".to_owned()]);
    let (state, _) = app_with(AppState::with_credentials(Limits::default(), credentials), "");
    let (status, _, body) = call(&state, post(V2, v2_body())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!body["error"].as_str().unwrap().contains("inference-key"), "keys never appear in errors");
    let mut with_key = post(V2, v2_body());
    with_key.headers_mut().insert("x-api-key", "inference-key-0123456789".parse().unwrap());
    assert_eq!(call(&state, with_key).await.0, StatusCode::OK);
    let mut bearer = post("/v1/predict", json!({"features": [[1, 2, 3]]}));
    bearer.headers_mut().insert("authorization", "Bearer inference-key-0123456789".parse().unwrap());
    assert_eq!(call(&state, bearer).await.0, StatusCode::OK);
    for probe in ["/health/live", "/health/ready", "/v2/health/ready", "/metrics"] {
        assert_eq!(call(&state, Request::get(probe).body(Body::empty()).unwrap()).await.0, StatusCode::OK, "{probe}");
    }
}

#[tokio::test]
async fn labels_need_the_control_token() {
    let credentials = Credentials::new(Some("control-token-0123456789"), &[]);
    let (state, _) = app_with(AppState::with_credentials(Limits::default(), credentials), "");
    state.observations.set_recording("fraud", true);
    let (status, headers, _) = call(&state, post(V2, v2_body())).await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    let label = json!({"request_id": id, "label": 1});
    let (status, _, body) = call(&state, post("/v1/feedback", label.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let mut wrong = post("/v1/feedback", label.clone());
    wrong.headers_mut().insert("authorization", "Bearer inference-key-0123456789".parse().unwrap());
    assert_eq!(call(&state, wrong).await.0, StatusCode::UNAUTHORIZED);
    assert!(state.observations.drain("fraud", "1").labelled.seen() == 0, "a refused label changes nothing");

    let mut right = post("/v1/feedback", label);
    right.headers_mut().insert("authorization", "Bearer control-token-0123456789".parse().unwrap());
    let (status, _, body) = call(&state, right).await;
    assert_eq!((status, body["joined"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
}

#[tokio::test]
async fn a_full_queue_is_429_not_a_backlog() {
    let state = AppState::new(Limits::default());
    let backend = std::sync::Arc::new(crate::testing::FakeBackend::default());
    let model = crate::testing::load(&backend, "run_ms=300", &crate::testing::spec("fraud", "1", 1, 1), &state.metrics);
    state.models.publish("fraud", crate::model::Served::single(model));
    state.health.mark_started();
    let requests = (0..6).map(|_| call(&state, post(V2, v2_body())));
    let statuses: Vec<StatusCode> = futures::future::join_all(requests).await.into_iter().map(|r| r.0).collect();
    let overloaded = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(overloaded >= 3, "one running, one queued, the rest refused at once: {statuses:?}");
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
}

