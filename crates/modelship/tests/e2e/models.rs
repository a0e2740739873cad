//! Every fixture model answers like onnxruntime in Python (reference outputs made by
//! scripts/make_fixtures.py), and every OIP datatype makes the round trip.

use serde_json::{Value, json};

use crate::support::{Server, model, root};

/// Largest absolute difference allowed between modelship's outputs and Python onnxruntime's.
const TOLERANCE: f64 = 1e-5;

fn check_against_reference(reference: &str, model_file: &str) {
    let server = Server::start(&[&model(model_file), "--name", "m", "--workers", "1"]);
    let reply = server.post("/v2/models/m/infer", &reference_request(reference).to_string());
    assert_eq!(reply.status, 200, "{reference}: {}", reply.text);
    assert_matches_reference(reference, &reply.json());
}

/// The reference document `testdata/reference/NAME.json`: an input and onnxruntime's outputs.
fn reference(reference: &str) -> Value {
    let path = root().join(format!("testdata/reference/{reference}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A V2 infer body with the reference's input.
pub fn reference_request(name: &str) -> Value {
    json!({"inputs": [reference(name)["input"]]})
}

/// Every output of a V2 answer equals onnxruntime-in-Python's, within [`TOLERANCE`].
pub fn assert_matches_reference(name: &str, reply: &Value) {
    let doc = reference(name);
    for want in doc["outputs"].as_array().unwrap() {
        let got = reply["outputs"].as_array().unwrap().iter().find(|o| o["name"] == want["name"]).unwrap_or_else(|| {
            panic!("{name}: no output {}", want["name"]);
        });
        assert_eq!(got["datatype"], want["datatype"], "{name} {}", want["name"]);
        assert_eq!(got["shape"], want["shape"], "{name} {}", want["name"]);
        let (got, want_data) = (got["data"].as_array().unwrap(), want["data"].as_array().unwrap());
        assert_eq!(got.len(), want_data.len());
        for (i, (g, w)) in got.iter().zip(want_data).enumerate() {
            let diff = (g.as_f64().unwrap() - w.as_f64().unwrap()).abs();
            assert!(diff <= TOLERANCE, "{name} {}[{i}]: {g} vs {w}", want["name"]);
        }
    }
}

#[test]
fn gradient_boosting_matches_onnxruntime() {
    check_against_reference("gradient_boosting", "fraud");
}

#[test]
fn random_forest_matches_onnxruntime() {
    check_against_reference("random_forest", "random_forest");
}

#[test]
fn xgboost_matches_onnxruntime() {
    check_against_reference("xgboost", "xgboost");
}

#[test]
fn logistic_regression_matches_onnxruntime() {
    check_against_reference("logistic_regression", "logistic_regression");
}

#[test]
fn mlp_with_dynamic_batch_matches_onnxruntime() {
    check_against_reference("mlp", "mlp");
}

#[test]
fn every_datatype_round_trips() {
    let server = Server::start(&[&model("dtypes")]);
    let cases = [
        ("bool", "BOOL", json!([true, false, true])),
        ("uint8", "UINT8", json!([0, 7, 255])),
        ("uint16", "UINT16", json!([0, 7, 65535])),
        ("uint32", "UINT32", json!([0, 7, 4294967295u64])),
        ("uint64", "UINT64", json!([0, 7, u64::MAX])),
        ("int8", "INT8", json!([-128, 0, 127])),
        ("int16", "INT16", json!([-32768, 0, 32767])),
        ("int32", "INT32", json!([-2147483648i64, 0, 2147483647])),
        ("int64", "INT64", json!([i64::MIN, 0, i64::MAX])),
        ("fp16", "FP16", json!([0.5, -2.0, 1024.0])),
        ("fp32", "FP32", json!([0.1, -2.5, 3.0e38])),
        ("fp64", "FP64", json!([0.1, -2.5, 1.0e300])),
        ("bytes", "BYTES", json!(["héllo", "", "wörld"])),
    ];
    let inputs: Vec<Value> = cases
        .iter()
        .map(|(n, dt, data)| json!({"name": format!("in_{n}"), "datatype": dt, "shape": [3], "data": data}))
        .collect();
    let reply = server.post("/v2/models/dtypes/infer", &json!({"inputs": inputs}).to_string());
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = reply.json();
    for (n, dt, data) in &cases {
        let out = reply["outputs"].as_array().unwrap().iter().find(|o| o["name"] == format!("out_{n}")).unwrap();
        assert_eq!(out["datatype"], *dt);
        assert_eq!(out["shape"], json!([3]));
        if *dt == "FP32" {
            // FP32 values come back at f32 precision.
            let got: Vec<f32> = out["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(got, [0.1f32, -2.5, 3.0e38]);
        } else {
            assert_eq!(out["data"], *data, "{dt}");
        }
    }

    // The metadata lists every input with its datatype.
    let meta = server.get("/v2/models/dtypes").json();
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 13);
    assert_eq!(meta["inputs"][9], json!({"name": "in_fp16", "datatype": "FP16", "shape": [-1]}));

    // A missing input is named with its type.
    let partial = server.post("/v2/models/dtypes/infer", &json!({"inputs": [inputs[0]]}).to_string());
    assert_eq!(partial.status, 400);
    assert_eq!(partial.json()["error"], "missing input 'in_uint8' (UINT8 [-1]); every model input must be given");
    // Values outside a datatype's range are refused.
    let mut bad = inputs.clone();
    bad[1]["data"] = json!([0, 7, 256]);
    let reply = server.post("/v2/models/dtypes/infer", &json!({"inputs": bad}).to_string());
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "input 'in_uint8' data: element 2 is 256, out of range, which is not a valid UINT8 value");
}
