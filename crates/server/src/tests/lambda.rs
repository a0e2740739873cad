//! The Lambda adapter over the fake backend: every kind of event answers as the same HTTP
//! request does, through the same pipeline, and a bad event is a 4xx answer, never a failure.

use serde_json::{Value, json};

use crate::auth::Credentials;
use crate::lambda::invoke;
use crate::state::{AppState, Limits};
use crate::testing::app_with;

/// Invokes with `event`; returns the status, the parsed body and the headers.
async fn check(state: &AppState, event: Value) -> (u16, Value, std::collections::BTreeMap<String, String>) {
    let answer = invoke(state, event, Some("lambda-request-1")).await;
    assert!(!answer.is_base64_encoded, "{answer:?}");
    let body = serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body));
    (answer.status_code, body, answer.headers)
}

fn rest(path: &str, body: &str) -> Value {
    json!({"resource": path, "path": path, "httpMethod": "POST", "headers": {"Content-Type": "application/json"},
           "requestContext": {"stage": "prod"}, "body": body, "isBase64Encoded": false})
}

fn http_api(method: &str, path: &str, body: &str) -> Value {
    json!({"version": "2.0", "routeKey": "$default", "rawPath": path, "headers": {"content-type": "application/json"},
           "requestContext": {"http": {"method": method, "path": path}, "stage": "$default"}, "body": body, "isBase64Encoded": false})
}

const ROW: &str = r#"{"features": [[1, 0, 0]]}"#;

#[tokio::test]
async fn every_event_answers_like_the_http_request() {
    let (state, backend) = app_with(AppState::new(Limits::default()), "scale=2");
    let want = 0.880797;
    for event in [rest("/predict", ROW), rest("/v1/predict", ROW), http_api("POST", "/v1/predict", ROW), json!({"features": [[1, 0, 0]]}), json!({"body": ROW})] {
        let (status, body, headers) = check(&state, event.clone()).await;
        assert_eq!(status, 200, "{event}: {body}");
        assert_eq!(body["model_version"], "1", "{body}");
        assert!((body["prediction"][0].as_f64().unwrap() - want).abs() < 1e-5, "{body}");
        assert_eq!((headers["x-request-id"].as_str(), headers["x-model-version"].as_str()), ("lambda-request-1", "1"));
    }
    let v2 = json!({"id": "r1", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}).to_string();
    for event in [http_api("POST", "/v2/models/fraud/infer", &v2), rest("/v2/models/fraud/versions/1/infer", &v2), serde_json::from_str(&v2).unwrap()] {
        let (status, body, _) = check(&state, event.clone()).await;
        assert_eq!(status, 200, "{event}: {body}");
        assert_eq!((body["id"].as_str(), body["model_name"].as_str()), (Some("r1"), Some("fraud")), "{body}");
        assert!((body["outputs"][1]["data"][1].as_f64().unwrap() - want).abs() < 1e-5, "{body}");
    }
    assert_eq!(backend.calls.load(std::sync::atomic::Ordering::Relaxed), 8);
    let metrics = String::from_utf8(state.metrics.render()).unwrap();
    assert!(metrics.contains(r#"endpoint="direct""#), "{metrics}");
}

#[tokio::test]
async fn bad_events_are_client_errors_in_json() {
    let (state, _) = app_with(AppState::new(Limits { max_body_bytes: 100, ..Limits::default() }), "scale=2");
    let long = format!(r#"{{"features": [[{}1]]}}"#, "0, ".repeat(40));
    let cases = [
        (json!(["not", "an", "event"]), 400, "the event is an array, not an object"),
        (json!({"feature": [[1, 0, 0]]}), 400, "unknown field `feature`"),
        (rest("/predict", r#"{"features": [[1, 0]]}"#), 400, "shape"),
        (rest("/predict", "not json"), 400, "malformed JSON"),
        (rest("/predict", &long), 413, "larger than the limit of 100 bytes"),
        (http_api("GET", "/predict", ""), 405, "method GET is not allowed on /predict"),
        (http_api("POST", "/admin/v1/models", "{}"), 404, "this function answers POST /predict, /v1/predict and /v2/models/{model}/infer"),
        (rest("/v2/models/other/infer", r#"{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]}]}"#), 404, "unknown model 'other'"),
        (json!({"httpMethod": "POST", "path": "/predict", "body": "%%", "isBase64Encoded": true}), 400, "not base64"),
    ];
    for (event, want_status, want) in cases {
        let (status, body, _) = check(&state, event.clone()).await;
        assert_eq!(status, want_status, "{event}: {body}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{event}: no error in {body}"));
        assert!(error.contains(want), "{event}: {error}");
    }
    // Still serving.
    assert_eq!(check(&state, json!({"features": [[1, 0, 0]]})).await.0, 200);
}

#[tokio::test]
async fn api_keys_guard_every_event_when_configured() {
    let (state, _) = app_with(AppState::with_credentials(Limits::default(), Credentials::new(None, &["k-123456".to_owned()])), "scale=2");
    let (status, body, _) = check(&state, rest("/predict", ROW)).await;
    assert_eq!(status, 401, "{body}");
    let mut event = rest("/predict", ROW);
    event["headers"]["x-api-key"] = json!("k-123456");
    assert_eq!(check(&state, event).await.0, 200);
}
