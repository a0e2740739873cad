//! Hostile input, in process: every request a client can send is answered with a short 4xx that
//! names the problem (never the attacker's bytes whole, never a 5xx the client caused), bodies
//! are bounded in size and time, and a model that cannot answer is never installed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::error::MAX_MESSAGE_BYTES;
use crate::state::{AppState, Limits};
use super::app::call;
use crate::testing::{FakeBackend, app_with, spec};

fn post(path: &str, body: String) -> Request<Body> {
    Request::post(path).header("content-type", "application/json").body(Body::from(body)).unwrap()
}

const V2: &str = "/v2/models/fraud/infer";

/// A V2 body whose first input is `input` (JSON text), and whose request parameters are `parameters`.
fn v2_with(input: &str, parameters: &str) -> String {
    format!(r#"{{"inputs":[{input}],"parameters":{parameters}}}"#)
}

const ROW: &str = r#"{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}"#;

#[tokio::test]
async fn hostile_requests_get_short_client_errors() {
    let (state, _) = app_with(AppState::new(Limits::default()), "");
    let long_name = "n".repeat(200_000);
    let deep = format!("{{\"x\":{}1{}}}", "[".repeat(20), "]".repeat(20));
    let nested_empties = format!("{{\"x\":[{}]}}", vec!["[[[[[]]]]]"; 100_000].join(","));
    let big_shape = format!(r#"{{"name":"x","shape":[{}],"datatype":"FP32","data":[1]}}"#, vec!["1"; 100_000].join(","));
    // (what, body, status, error fragment)
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("a shape of 100 000 dimensions", format!(r#"{{"inputs":[{big_shape}]}}"#), StatusCode::BAD_REQUEST, "at most 64 dimensions"),
        ("parameters 20 levels deep", v2_with(ROW, &deep), StatusCode::BAD_REQUEST, "nest 21 levels deep; the limit is 8"),
        ("1 MB of nested empty arrays in parameters", v2_with(ROW, &nested_empties), StatusCode::BAD_REQUEST, "the limit is 1048576"),
        ("input parameters over 4 KiB", format!(r#"{{"inputs":[{{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3],"parameters":{{"p":"{}"}}}}]}}"#, "a".repeat(5000)), StatusCode::BAD_REQUEST, "the limit is 4096"),
        ("an input name of 200 000 bytes", format!(r#"{{"inputs":[{{"name":"{long_name}","shape":[1,3],"datatype":"FP32","data":[1,2,3]}}]}}"#), StatusCode::BAD_REQUEST, "name is at most 1024 bytes"),
        ("UINT64 one past the largest", r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT64","data":[18446744073709551616]}]}"#.to_owned(), StatusCode::BAD_REQUEST, "not a valid UINT64 value"),
        ("INT64 one past the largest", r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[9223372036854775808]}]}"#.to_owned(), StatusCode::BAD_REQUEST, "not a valid INT64 value"),
        ("INT64 one below the smallest", r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[-9223372036854775809]}]}"#.to_owned(), StatusCode::BAD_REQUEST, "not a valid INT64 value"),
    ];
    for (what, body, status, fragment) in cases {
        let (got, _, answer) = call(&state, post(V2, body)).await;
        assert_eq!(got, status, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("{what}: {answer}"));
        assert!(error.contains(fragment), "{what}: {error:.300}");
        assert!(error.len() <= MAX_MESSAGE_BYTES + 64, "{what}: an error of {} bytes", error.len());
    }
    // A name the client put in the path is quoted back, clipped.
    let (status, _, answer) = call(&state, post(&format!("/v2/models/{}/infer", "m".repeat(50_000)), format!(r#"{{"inputs":[{ROW}]}}"#))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer:.300}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("unknown model 'mmm") && error.contains("more bytes not shown"), "{error:.2000}");
    assert!(error.len() <= MAX_MESSAGE_BYTES + 64, "an error of {} bytes", error.len());
    // None of these counted as a failure of the model: no 5xx code in the metrics.
    let metrics = call(&state, Request::get("/metrics").body(Body::empty()).unwrap()).await.2;
    assert!(!metrics.as_str().unwrap().contains(r#"code="500""#), "a client's mistake counted as a server error");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_from_its_declared_length_before_it_is_read() {
    let limits = Limits { max_body_bytes: 4096, ..Limits::default() };
    let (state, _) = app_with(AppState::new(limits), "");
    // The body never comes: were it read, the call would wait on it for ever.
    let never = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
    let request = Request::post(V2)
        .header("content-type", "application/json")
        .header("content-length", "100000000000")
        .header("expect", "100-continue")
        .body(never)
        .unwrap();
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), call(&state, request)).await.expect("answered without reading");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(headers["connection"], "close");
    assert!(body["error"].as_str().unwrap().contains("larger than the limit of 4096 bytes"), "{body}");
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_by_the_body_timeout() {
    let limits = Limits { body_read_timeout: Duration::from_millis(200), ..Limits::default() };
    let (state, _) = app_with(AppState::new(limits), "");
    let start = futures::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"inputs\": [")) });
    let stalled = Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending()));
    let request = Request::post(V2).header("content-type", "application/json").header("content-length", "1000").body(stalled).unwrap();
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(30), call(&state, request)).await.expect("the timeout ends the request");
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stopped arriving"), "{body}");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_model_failure_tells_the_client_its_code_and_request_id_not_its_internals() {
    let (state, _) = app_with(AppState::new(Limits::default()), "fail=1");
    let (status, headers, body) = call(&state, post(V2, format!(r#"{{"inputs":[{ROW}]}}"#))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("inference_failed") && error.contains("x-request-id"), "{error}");
    assert!(!error.contains("told to fail"), "the runtime's own message reached the client: {error}");
    assert!(headers.contains_key("x-request-id"));
}

/// Every path that installs a version goes through `load_warm`: one that loads but cannot
/// answer is refused with the reason, whatever asked for it.
#[tokio::test]
async fn a_version_that_cannot_answer_is_refused_at_load() {
    let state = AppState::new(Limits::default());
    let backend: Arc<dyn modelship_inference::Backend> = Arc::new(FakeBackend::default());
    let load = |settings: &'static str| {
        crate::model::LoadedModel::load_warm(Arc::clone(&backend), Arc::from(settings.as_bytes()), spec("fraud", "2", 1, 4), Arc::clone(&state.metrics), "version 2")
    };
    let refused = load("fail=1").await.err().expect("refused");
    assert_eq!(refused.status_and_code().0, StatusCode::CONFLICT);
    let message = refused.to_string();
    assert!(message.contains("version 2 cannot answer") && message.contains("warm-up request 1 of 1 (zeros) failed"), "{message}");
    let warmed = load("scale=1").await.expect("a model that answers is installed");
    // Its warm-up's made-up inputs measured nothing: a model whose cost depends on its inputs
    // (iterations, sequence length) is never put on the calling thread by zeros.
    assert!(!warmed.runs_inline(1), "the warm-up fed the time estimate");
}

/// `/v1/predict` answers for the server's own model when the repository serves others beside it.
#[tokio::test]
async fn v1_predict_keeps_the_primary_model_beside_others() {
    let (state, backend) = app_with(AppState::new(Limits::default()), "scale=1");
    let other = crate::testing::load(&backend, "scale=1", &spec("other", "1", 1, 4), &state.metrics);
    state.models.publish("other", crate::model::Served::single(other));
    let (status, _, body) = call(&state, post("/v1/predict", json!({"features": [[1, 0, 0]]}).to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "without a primary model there is no telling: {body}");
    state.models.set_primary("fraud");
    let (status, headers, body) = call(&state, post("/v1/predict", json!({"features": [[1, 0, 0]]}).to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-model-version"], "1");
}

/// The admin API against bad control requests: each a 4xx naming the problem, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_are_refused_and_change_nothing() {
    const TOKEN: &str = "hostile-admin-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let (served, traffic) = super::control::two_versions(dir.path(), Duration::from_secs(60));
    let state = AppState::with_credentials(Limits::default(), crate::auth::Credentials::new(Some(TOKEN), &[]));
    state.models.publish("fraud", served.models.served("fraud").unwrap());
    state.health.mark_started();
    traffic.resume(&state).await.unwrap();
    let rollouts = Arc::new(crate::rollouts::Rollouts::new(Arc::clone(&traffic), crate::rollouts::FleetConfig::single("test")));
    let backend: Arc<dyn modelship_inference::Backend> = Arc::new(FakeBackend::default());
    let repository = Arc::new(crate::repository::Repository::new(None, backend, crate::pool::PoolConfig::new(1, 4), Default::default(), vec!["fraud".to_owned()]));
    let admin = crate::admin::app(crate::admin::AdminState::new(state.clone(), traffic, rollouts, repository));
    let traffic_url = "/admin/v1/models/fraud/traffic";
    let request = |body: &str, token: Option<&str>, length: Option<&str>| {
        let mut r = Request::post(traffic_url).header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(n) = length {
            r = r.header("content-length", n);
        }
        r.body(Body::from(body.to_owned())).unwrap()
    };
    let change = |json: &str| format!(r#"{{"change": {json}}}"#);
    // (what, request, status, error fragment)
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        ("no token", request(&change(r#"{"op": "abort"}"#), None, None), StatusCode::UNAUTHORIZED, "admin token"),
        ("a wrong token", request(&change(r#"{"op": "abort"}"#), Some("not-the-token-0123456789"), None), StatusCode::UNAUTHORIZED, "admin token"),
        ("a sticky header with CR LF", request(&change(r#"{"op": "sticky", "key": {"header": "x-user\r\nx-evil: 1"}}"#), Some(TOKEN), None), StatusCode::BAD_REQUEST, "is not a header name"),
        ("not JSON", request("{", Some(TOKEN), None), StatusCode::BAD_REQUEST, ""),
        ("an unknown operation", request(&change(r#"{"op": "explode"}"#), Some(TOKEN), None), StatusCode::BAD_REQUEST, "explode"),
        ("a version that is not loaded", request(&change(r#"{"op": "switch", "version": "9"}"#), Some(TOKEN), None), StatusCode::CONFLICT, "version 9 is not loaded"),
        ("a declared length of 100 GB", request("", Some(TOKEN), Some("100000000000")), StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit"),
    ];
    for (what, request, status, fragment) in cases {
        let response = tokio::time::timeout(Duration::from_secs(10), admin.clone().oneshot(request)).await.expect(what).unwrap();
        let got = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{what}: {text}");
        let error: Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert!(error["error"].as_str().is_some_and(|e| e.contains(fragment)), "{what}: {text}");
    }
    let now = state.models.served("fraud").unwrap();
    assert_eq!((now.revision, now.table.stable.as_str(), now.table.sticky.clone()), (0, "1", None), "a refused change changed the routing");
}
