//! Every endpoint of a healthy server, with the fraud example model.

use serde_json::json;

use crate::support::{Server, fraud_body, model};

#[test]
fn v2_metadata_and_readiness() {
    let server = Server::start(&[&model("fraud"), "--name", "fraud", "--model-version", "v1.2.0", "--workers", "2"]);
    assert_eq!(server.ready["model"], "fraud");
    assert_eq!(server.ready["version"], "v1.2.0");

    let meta = server.get("/v2");
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["name"], "modelship");

    let expected = json!({
        "name": "fraud", "versions": ["v1.2.0"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}
        ]
    });
    assert_eq!(server.get("/v2/models/fraud").json(), expected);
    assert_eq!(server.get("/v2/models/fraud/versions/v1.2.0").json(), expected);

    let ready = server.get("/v2/models/fraud/ready");
    assert_eq!((ready.status, ready.json()["ready"].clone()), (200, json!(true)));
    assert_eq!(server.get("/v2/models/fraud/versions/v1.2.0/ready").status, 200);
    assert_eq!(server.get("/v2/health/live").json(), json!({"live": true}));
    assert_eq!(server.get("/v2/health/ready").json(), json!({"ready": true}));

    let unknown = server.get("/v2/models/fraud/versions/v9/ready");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "model 'fraud' has no version 'v9'; available: v1.2.0");
}

#[test]
fn seed_probes() {
    let server = Server::start(&[&model("fraud")]);
    assert_eq!(server.get("/health/live").json(), json!({"status": "alive"}));
    let ready = server.get("/health/ready");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready", "checks": {"model_loaded": true, "startup_complete": true}}));
    let startup = server.get("/health/startup");
    assert_eq!(startup.status, 200);
    let body = startup.json();
    assert_eq!(body["status"], "started");
    let seconds = body["startup_time_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 60.0, "{seconds}");
}

#[test]
fn v2_infer_echoes_id_and_selects_outputs() {
    let server = Server::start(&[&model("fraud"), "--model-version", "7"]);
    let body = fraud_body(3);
    let all = server.post("/v2/models/fraud/infer", &body);
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.header("x-model-version"), Some("7"));
    assert!(all.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let all = all.json();
    assert_eq!(all["model_name"], "fraud");
    assert_eq!(all["model_version"], "7");
    assert!(all.get("id").is_none());
    let names: Vec<&str> = all["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["label", "probabilities"]);
    assert_eq!(all["outputs"][1]["shape"], json!([3, 2]));
    assert_eq!(all["outputs"][1]["datatype"], "FP32");
    assert_eq!(all["outputs"][0]["datatype"], "INT64");

    let mut one: serde_json::Value = serde_json::from_str(&body).unwrap();
    one["id"] = json!("req-42");
    one["outputs"] = json!([{"name": "probabilities"}]);
    let reply = server.post_with("/v2/models/fraud/versions/7/infer", &one.to_string(), &[("x-request-id", "trace-abc")]);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-request-id"), Some("trace-abc"));
    let reply = reply.json();
    assert_eq!(reply["id"], "req-42");
    assert_eq!(reply["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(reply["outputs"][0], all["outputs"][1]);
}

#[test]
fn v1_predict_single_row_and_batch() {
    let server = Server::start(&[&model("fraud"), "--model-version", "v1.2.0"]);
    let v2 = server.post("/v2/models/fraud/infer", &fraud_body(2)).json();
    let p1: Vec<f64> = v2["outputs"][1]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    let rows: Vec<Vec<f32>> = (0..2).map(|r| (0..30).map(|c| (((r * 30 + c) % 17) as f32 - 8.0) / 4.0).collect()).collect();
    let batch = server.post("/v1/predict", &json!({"features": rows}).to_string());
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(batch.json(), json!({"prediction": [p1[1], p1[3]], "model_version": "v1.2.0"}));

    let single = server.post("/v1/predict", &json!({"features": rows[0]}).to_string());
    assert_eq!(single.json(), json!({"prediction": [p1[1]], "model_version": "v1.2.0"}));
}

#[test]
fn metrics_count_requests_errors_and_latency() {
    let server = Server::start(&[&model("fraud"), "--model-version", "3"]);
    for _ in 0..3 {
        assert_eq!(server.post("/v2/models/fraud/infer", &fraud_body(1)).status, 200);
    }
    assert_eq!(server.post("/v1/predict", r#"{"features": [[1]]}"#).status, 400);
    assert_eq!(server.post("/v2/models/nope/infer", &fraud_body(1)).status, 404);

    let m = |prefix: &str, labels: &[&str]| server.metric(prefix, labels);
    assert_eq!(m("modelship_requests_total", &[r#"model="fraud""#, r#"version="3""#, r#"endpoint="v2_infer""#, r#"code="200""#]), Some(3.0));
    assert_eq!(m("modelship_requests_total", &[r#"endpoint="v1_predict""#, r#"code="400""#]), Some(1.0));
    assert_eq!(m("modelship_request_errors_total", &[r#"endpoint="v1_predict""#, r#"error="shape_mismatch""#]), Some(1.0));
    // A model name sent by a client never becomes a label value.
    assert_eq!(m("modelship_requests_total", &[r#"model="unknown""#, r#"code="404""#]), Some(1.0));
    assert!(!server.get("/metrics").text.contains("nope"));
    assert_eq!(m("modelship_request_duration_seconds_count", &[r#"model="fraud""#, r#"endpoint="v2_infer""#]), Some(3.0));
    assert_eq!(m("modelship_inference_duration_seconds_count", &[r#"model="fraud""#]), Some(3.0));
    assert_eq!(m("modelship_requests_in_flight", &[r#"endpoint="v2_infer""#]), Some(0.0));
    assert!(m("modelship_model_load_seconds", &[r#"model="fraud""#, r#"version="3""#]).unwrap() > 0.0);
    assert_eq!(m("modelship_model_info", &[r#"model="fraud""#, r#"version="3""#, r#"platform="onnxruntime_onnx""#]), Some(1.0));
    let text = server.get("/metrics");
    assert!(text.header("content-type").unwrap().starts_with("text/plain"));
}

#[test]
fn json_logs_carry_request_and_pod_identity() {
    let server = Server::start_with(
        &[&model("fraud"), "--model-version", "v5"],
        &[("POD_NAME", "fraud-7d9f"), ("POD_NAMESPACE", "ml"), ("LOG_LEVEL", "INFO")],
    );
    let reply = server.post_with("/v2/models/fraud/infer", &fraud_body(1), &[("x-request-id", "log-test-1")]);
    assert_eq!(reply.status, 200);
    // The log line is written after the response; give the pipe a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let stderr = server.stderr();
        if let Some(line) = stderr.lines().find(|l| l.contains("log-test-1")) {
            break line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no log line for the request:\n{stderr}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["request_id"], "log-test-1");
    assert_eq!(log["model"], "fraud");
    assert_eq!(log["version"], "v5");
    assert_eq!(log["status"], 200);
    assert_eq!(log["level"], "INFO");
    assert_eq!(log["pod_name"], "fraud-7d9f");
    assert_eq!(log["pod_namespace"], "ml");
    assert!(log["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(log["timestamp"].as_str().unwrap().ends_with('Z'));
    // Every line is JSON.
    for line in server.stderr().lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not JSON: {line}");
    }
}

#[test]
fn config_file_in_the_seed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serving.yaml");
    std::fs::write(
        &config,
        format!(
            "model:\n  name: fraud-detection\n  version: v1.2.0\n  path: {}\nserver:\n  host: 0.0.0.0\n  port: 8000\n  workers: 2\nfeatures:\n  store_url: redis://redis:6379\n  cache_ttl: 300\nlogging:\n  level: INFO\n  format: json\n",
            model("fraud")
        ),
    )
    .unwrap();
    // CONFIG_PATH names the file; the flags added by `start` (host, port) win over it.
    let server = Server::start_with(&[], &[("CONFIG_PATH", config.to_str().unwrap()), ("MODEL_VERSION", "v1.2.1")]);
    assert_eq!(server.ready["model"], "fraud-detection");
    assert_eq!(server.ready["version"], "v1.2.1");
    assert_eq!(server.post("/v2/models/fraud-detection/infer", &fraud_body(1)).status, 200);
}
