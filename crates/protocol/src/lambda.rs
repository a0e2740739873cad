//! AWS Lambda events and answers: what the function receives and returns when modelship runs as
//! a custom runtime's `bootstrap`.
//!
//! Three kinds of event become one [`LambdaRequest`] (method, path, headers, body), which the
//! server answers exactly as it answers the same HTTP request:
//!
//! - API Gateway REST API proxy events (payload format 1.0: `httpMethod`, `path`,
//!   `headers`/`multiValueHeaders`, `body`, `isBase64Encoded`; HTTP APIs with payload 1.0 send
//!   the same);
//! - HTTP API proxy events and Lambda function URLs (payload format 2.0: `version: "2.0"`,
//!   `rawPath`, `requestContext.http.method`, `headers`, `body`); a named stage's prefix is
//!   taken off `rawPath`;
//! - direct invocations (`aws lambda invoke`, a test event, a traffic hook): the body itself
//!   (`{"features": ...}` is `/v1/predict`, `{"inputs": ...}` is V2 infer of the function's model)
//!   or the seed's `{"body": "{\"features\": ...}"}`.
//!
//! Every answer has one shape, the proxy integration's response, which REST APIs, HTTP APIs and
//! function URLs read and which carries the status for a direct caller too:
//! `{"statusCode", "headers", "body", "isBase64Encoded"}`; bodies that are not UTF-8 JSON (binary
//! tensor outputs) travel base64-encoded.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::DecodeError;

/// Which kind of event a request came as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// API Gateway REST API (payload format 1.0).
    RestApi,
    /// API Gateway HTTP API or a function URL (payload format 2.0).
    HttpApi,
    /// The event is the request body itself.
    Direct,
}

/// The path a direct invocation's body is answered at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectTarget {
    /// `{"features": ...}` or `{"entities": ...}`: the seed's `/v1/predict`.
    Predict,
    /// `{"inputs": [...]}`: Open Inference Protocol V2 infer of the function's only model.
    Infer,
}

/// An event as the HTTP request it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaRequest {
    pub source: Source,
    pub method: String,
    /// The request path, e.g. `/v1/predict`; `None` for a direct invocation (see `direct`).
    pub path: Option<String>,
    /// Set for a direct invocation: what its body asks for.
    pub direct: Option<DirectTarget>,
    /// Header names lowercased; repeated headers joined with `, ` as HTTP allows.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer to any event (the proxy integration's response format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LambdaResponse {
    pub status_code: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub is_base64_encoded: bool,
}

/// The fields of API Gateway's and function URLs' events that a request needs; the rest
/// (identity, authorizer, query strings, cookies) is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventJson {
    version: Option<String>,
    http_method: Option<String>,
    path: Option<String>,
    raw_path: Option<String>,
    headers: Option<Map<String, Value>>,
    multi_value_headers: Option<Map<String, Value>>,
    body: Option<Value>,
    is_base64_encoded: Option<bool>,
    request_context: Option<RequestContextJson>,
}

#[derive(Debug, Default, Deserialize)]
struct RequestContextJson {
    http: Option<HttpContextJson>,
    stage: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HttpContextJson {
    method: Option<String>,
    path: Option<String>,
}

/// Decodes one event. An event of no known shape is an error naming the shapes accepted.
pub fn decode_event(event: Value) -> Result<LambdaRequest, DecodeError> {
    let Value::Object(object) = event else {
        return Err(DecodeError(format!(
            "the event is {}, not an object: send an API Gateway or function URL event, or a body such as {{\"features\": [[...]]}}",
            kind(&event)
        )));
    };
    let is_http = ["httpMethod", "requestContext", "rawPath", "routeKey"].iter().any(|k| object.contains_key(*k));
    if !is_http {
        return direct(object);
    }
    let json: EventJson = serde_json::from_value(Value::Object(object)).map_err(|e| DecodeError(format!("invalid API Gateway event: {e}")))?;
    let context = json.request_context.unwrap_or_default();
    let http = context.http.unwrap_or_default();
    let (source, method, path) = if json.version.as_deref() == Some("2.0") {
        let method = http.method.ok_or_else(|| DecodeError("invalid HTTP API event: no requestContext.http.method".to_owned()))?;
        let raw = json.raw_path.or(http.path).ok_or_else(|| DecodeError("invalid HTTP API event: no rawPath".to_owned()))?;
        (Source::HttpApi, method, strip_stage(raw, context.stage.as_deref()))
    } else {
        let method = json.http_method.ok_or_else(|| DecodeError("invalid API Gateway event: no httpMethod".to_owned()))?;
        let path = json.path.ok_or_else(|| DecodeError("invalid API Gateway event: no path".to_owned()))?;
        (Source::RestApi, method, path)
    };
    let headers = headers(json.headers.as_ref(), json.multi_value_headers.as_ref());
    let body = body(json.body, json.is_base64_encoded.unwrap_or(false))?;
    Ok(LambdaRequest { source, method: method.to_ascii_uppercase(), path: Some(path), direct: None, headers, body })
}

/// A direct invocation: the body itself, or the seed's `{"body": ...}` wrapper.
fn direct(mut object: Map<String, Value>) -> Result<LambdaRequest, DecodeError> {
    let wrapped = object.len() <= 2 && object.contains_key("body") && object.keys().all(|k| k == "body" || k == "isBase64Encoded");
    let body = if wrapped {
        let base64 = object.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false);
        body(object.remove("body"), base64)?
    } else {
        serde_json::to_vec(&Value::Object(object)).map_err(|e| DecodeError(e.to_string()))?
    };
    // Only the top-level keys decide; the body is decoded once, by the endpoint it goes to.
    let target = match serde_json::from_slice::<Map<String, Value>>(&body) {
        Ok(map) if map.contains_key("inputs") => DirectTarget::Infer,
        _ => DirectTarget::Predict,
    };
    Ok(LambdaRequest { source: Source::Direct, method: "POST".to_owned(), path: None, direct: Some(target), headers: Vec::new(), body })
}

/// HTTP APIs put a named stage in front of the path (`/prod/predict`); `$default` has none.
fn strip_stage(path: String, stage: Option<&str>) -> String {
    match stage.filter(|s| !s.is_empty() && *s != "$default") {
        Some(stage) => match path.strip_prefix('/').and_then(|p| p.strip_prefix(stage)) {
            Some("") => "/".to_owned(),
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => path,
        },
        None => path,
    }
}

fn headers(single: Option<&Map<String, Value>>, multi: Option<&Map<String, Value>>) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    // REST APIs send both; the multi-value form has every value of a repeated header.
    for (name, value) in multi.into_iter().flatten() {
        let values: Vec<&str> = value.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !values.is_empty() {
            out.insert(name.to_ascii_lowercase(), values.join(", "));
        }
    }
    for (name, value) in single.into_iter().flatten() {
        if let Some(v) = value.as_str() {
            out.entry(name.to_ascii_lowercase()).or_insert_with(|| v.to_owned());
        }
    }
    out.into_iter().collect()
}

fn body(body: Option<Value>, base64: bool) -> Result<Vec<u8>, DecodeError> {
    match body {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if base64 => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| DecodeError(format!("the event's body is marked isBase64Encoded but is not base64 ({e})"))),
        Some(Value::String(text)) => Ok(text.into_bytes()),
        // A test event written by hand may carry the body as an object rather than a string.
        Some(other @ (Value::Object(_) | Value::Array(_))) if !base64 => Ok(other.to_string().into_bytes()),
        Some(other) => Err(DecodeError(format!("the event's body is {}; it must be a string (the request body)", kind(&other)))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The answer for `status`, `headers` and `body`: text as it is when it is UTF-8 and not
/// declared binary, else base64.
pub fn encode_response(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> LambdaResponse {
    let binary = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("application/octet-stream"));
    let (body, is_base64_encoded) = match String::from_utf8(body) {
        Ok(text) if !binary => (text, false),
        Ok(text) => (base64::engine::general_purpose::STANDARD.encode(text.as_bytes()), true),
        Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.as_bytes()), true),
    };
    LambdaResponse { status_code: status, headers: headers.into_iter().collect(), body, is_base64_encoded }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(event: Value) -> String {
        match decode_event(event) {
            Ok(r) => format!(
                "{:?} {} {} {:?} headers={:?} body={}",
                r.source,
                r.method,
                r.path.as_deref().unwrap_or("-"),
                r.direct,
                r.headers,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn every_kind_of_event_is_one_request() {
        let body = r#"{"features": [[1, 2, 3, 4]]}"#;
        let cases = [
            (
                json!({"resource": "/predict", "path": "/predict", "httpMethod": "POST", "headers": {"Content-Type": "application/json"},
                       "multiValueHeaders": {"Content-Type": ["application/json"], "X-Many": ["a", "b"]},
                       "requestContext": {"stage": "prod", "path": "/prod/predict"}, "body": body, "isBase64Encoded": false}),
                r#"RestApi POST /predict None headers=[("content-type", "application/json"), ("x-many", "a, b")] body={"features": [[1, 2, 3, 4]]}"#,
            ),
            (
                json!({"version": "2.0", "routeKey": "POST /v1/predict", "rawPath": "/prod/v1/predict", "headers": {"x-request-id": "r1"},
                       "requestContext": {"http": {"method": "POST", "path": "/prod/v1/predict"}, "stage": "prod"},
                       "body": "eyJmZWF0dXJlcyI6IFtbMSwgMiwgMywgNF1dfQ==", "isBase64Encoded": true}),
                r#"HttpApi POST /v1/predict None headers=[("x-request-id", "r1")] body={"features": [[1, 2, 3, 4]]}"#,
            ),
            (
                // A function URL: payload 2.0, the $default stage.
                json!({"version": "2.0", "routeKey": "$default", "rawPath": "/v2/models/nepse/infer", "headers": {},
                       "requestContext": {"domainName": "abc.lambda-url.eu-west-1.on.aws", "http": {"method": "post"}, "stage": "$default"},
                       "body": "{\"inputs\": []}"}),
                r#"HttpApi POST /v2/models/nepse/infer None headers=[] body={"inputs": []}"#,
            ),
            (json!({"features": [[1, 2, 3, 4]]}), r#"Direct POST - Some(Predict) headers=[] body={"features":[[1,2,3,4]]}"#),
            (json!({"body": body}), r#"Direct POST - Some(Predict) headers=[] body={"features": [[1, 2, 3, 4]]}"#),
            (json!({"body": {"inputs": [{"name": "x"}]}}), r#"Direct POST - Some(Infer) headers=[] body={"inputs":[{"name":"x"}]}"#),
            (json!({"inputs": [], "id": "7"}), r#"Direct POST - Some(Infer) headers=[] body={"id":"7","inputs":[]}"#),
        ];
        for (event, want) in cases {
            assert_eq!(check(event.clone()), want, "{event}");
        }
    }

    #[test]
    fn a_bad_event_is_an_error_that_says_what_is_accepted() {
        let cases = [
            (json!("hello"), "error: the event is a string, not an object: send an API Gateway or function URL event, or a body such as {\"features\": [[...]]}"),
            (json!({"httpMethod": "POST"}), "error: invalid API Gateway event: no path"),
            (json!({"version": "2.0", "rawPath": "/x", "requestContext": {}}), "error: invalid HTTP API event: no requestContext.http.method"),
            (json!({"httpMethod": 7, "path": "/predict"}), "error: invalid API Gateway event: invalid type: integer `7`, expected a string"),
            (json!({"httpMethod": "POST", "path": "/p", "body": "%%%", "isBase64Encoded": true}), "error: the event's body is marked isBase64Encoded but is not base64 (Invalid symbol 37, offset 0.)"),
            (json!({"body": 12}), "error: the event's body is a number; it must be a string (the request body)"),
        ];
        for (event, want) in cases {
            assert_eq!(check(event.clone()), want, "{event}");
        }
    }

    #[test]
    fn answers_are_text_unless_binary() {
        let json_answer = encode_response(400, vec![("content-type".into(), "application/json".into())], br#"{"error":"x"}"#.to_vec());
        assert_eq!(
            serde_json::to_value(&json_answer).unwrap(),
            json!({"statusCode": 400, "headers": {"content-type": "application/json"}, "body": "{\"error\":\"x\"}", "isBase64Encoded": false})
        );
        let binary = encode_response(200, vec![("content-type".into(), "application/octet-stream".into())], vec![0, 159, 146, 150]);
        assert_eq!((binary.body.as_str(), binary.is_base64_encoded), ("AJ+Slg==", true));
    }
}
