//! Every kind of bad request gets a 4xx with a JSON error that names the problem, and the server
//! keeps serving.

use serde_json::json;

use crate::support::{Server, fraud_body, model};

fn v2(inputs: serde_json::Value) -> String {
    json!({"inputs": inputs}).to_string()
}

#[test]
fn each_bad_request_is_named_and_the_server_survives() {
    let server = Server::start(&[&model("fraud"), "--max-body-bytes", "65536"]);
    let row: Vec<f32> = vec![0.5; 30];
    let huge = format!(r#"{{"inputs":[{{"name":"input","shape":[1,30],"datatype":"FP32","data":[{}]}}]}}"#, "1.0,".repeat(20_000));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("malformed JSON", "/v2/models/fraud/infer", "{\"inputs\": [".to_owned(), 400, "malformed JSON"),
        ("empty body", "/v2/models/fraud/infer", String::new(), 400, "empty request body"),
        ("not an object", "/v2/models/fraud/infer", "[1,2]".to_owned(), 400, "invalid request"),
        ("missing inputs", "/v2/models/fraud/infer", "{}".to_owned(), 400, "missing field `inputs`"),
        ("missing data", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 30], "datatype": "FP32"}])), 400, "has no 'data'"),
        ("missing datatype", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 30], "data": row}])), 400, "missing field `datatype`"),
        ("wrong shape", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": vec![0.5; 29]}])), 400, "input 'input' has shape [1, 29] but the model expects [-1, 30]"),
        ("wrong rank", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [30], "datatype": "FP32", "data": row}])), 400, "has shape [30] but the model expects [-1, 30]"),
        ("data length", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": row}])), 400, "shape [2, 30] needs 60 elements but 30 were given"),
        ("wrong datatype", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 30], "datatype": "FP64", "data": row}])), 400, "input 'input' has datatype FP64 but the model expects FP32"),
        ("unknown datatype", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 30], "datatype": "FLOAT", "data": row}])), 400, "unknown datatype 'FLOAT'"),
        ("value of wrong type", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, "x"]}])), 400, "element 1 is a string, which is not a valid FP32 value"),
        ("null value", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, null]}])), 400, "element 1 is null"),
        ("NaN", "/v2/models/fraud/infer", r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[NaN]}]}"#.to_owned(), 400, "NaN and Infinity are not valid JSON numbers"),
        ("out of range", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [1e300]}])), 400, "out of range, which is not a valid FP32 value"),
        ("ragged", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": [row, [1, 2]]}])), 400, "ragged array"),
        ("negative dim", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [-1, 30], "datatype": "FP32", "data": row}])), 400, "negative dimension"),
        ("unknown input", "/v2/models/fraud/infer", v2(json!([{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": row}])), 400, "unknown input 'x'; the model's inputs are: input"),
        ("duplicate input", "/v2/models/fraud/infer", v2(json!([{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}, {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}])), 400, "given more than once"),
        ("unknown output", "/v2/models/fraud/infer", json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}], "outputs": [{"name": "proba"}]}).to_string(), 400, "unknown output 'proba'; the model's outputs are: label, probabilities"),
        ("unknown model", "/v2/models/nope/infer", fraud_body(1), 404, "unknown model 'nope'; this server serves: fraud"),
        ("unknown version", "/v2/models/fraud/versions/2/infer", fraud_body(1), 404, "model 'fraud' has no version '2'; available: 1"),
        ("body too large", "/v2/models/fraud/infer", huge, 413, "larger than the limit of 65536 bytes"),
        ("v1 missing features", "/v1/predict", "{}".to_owned(), 400, "give 'features'"),
        ("v1 entities without a store", "/v1/predict", r#"{"entities": [{"customer_id": "c1"}]}"#.to_owned(), 400, "this model has no feature spec"),
        ("v2 entities not a list", "/v2/models/fraud/infer", r#"{"inputs": [], "parameters": {"entities": 3}}"#.to_owned(), 400, "parameters.entities must be an array of objects"),
        ("v1 unknown field", "/v1/predict", r#"{"feature": [[1]]}"#.to_owned(), 400, "unknown field `feature`"),
        ("v1 wrong width", "/v1/predict", json!({"features": [[1, 2, 3]]}).to_string(), 400, "has shape [1, 3] but the model expects [-1, 30]"),
        ("v1 ragged", "/v1/predict", json!({"features": [row, [1]]}).to_string(), 400, "ragged array"),
        ("v1 NaN", "/v1/predict", r#"{"features": [[NaN]]}"#.to_owned(), 400, "NaN and Infinity"),
        ("unknown route", "/v3/whatever", "{}".to_owned(), 404, "no route for POST /v3/whatever"),
    ];
    for (what, path, body, status, needle) in &cases {
        let reply = server.post(path, body);
        assert_eq!(reply.status, *status, "{what}: {}", reply.text);
        assert!(reply.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{what}");
        let error = reply.json()["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {}", reply.text)).to_owned();
        assert!(error.contains(needle), "{what}: {error:?} does not contain {needle:?}");
    }
    let wrong_method = server.get("/v2/models/fraud/infer");
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["error"].as_str().unwrap().contains("GET is not allowed"));

    // Still serving, and every rejection was counted.
    assert_eq!(server.get("/health/ready").status, 200);
    assert_eq!(server.post("/v2/models/fraud/infer", &fraud_body(1)).status, 200);
    let total: f64 = server
        .get("/metrics")
        .text
        .lines()
        .filter(|l| l.starts_with("modelship_request_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total as usize, cases.len() - 1, "the unknown route is not an inference request");
}
