//! `GET /openapi.json`: the OpenAPI 3.1 document of this listener's REST API.
//!
//! The document is written by hand (`src/openapi.json`) rather than derived from the handlers:
//! it states the contract, including the error bodies and statuses that no type signature shows.
//! The tests below keep it in step with the router, and the end-to-end suite runs schemathesis
//! against a live server to check that every answer matches it.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

use crate::state::AppState;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(document))
}

async fn document() -> Response {
    let mut response = (StatusCode::OK, DOCUMENT).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::error::ApiError;
    use crate::state::{AppState, Limits};

    /// The methods whose presence or absence the document states for each path.
    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("src/openapi.json is not valid JSON")
    }

    fn documented_paths(doc: &Value) -> BTreeSet<String> {
        doc["paths"].as_object().expect("the document has paths").keys().cloned().collect()
    }

    /// The path of every `.route("...", ...)` in `src/routes/`: the paths this listener serves.
    /// Read from the source because a `Router` cannot list its routes (a `.route(` without a
    /// string literal is another `route` method).
    fn routed_paths() -> BTreeSet<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes");
        let mut paths = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            // Tests (this one included) route nothing.
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            for (at, _) in source.match_indices(".route(") {
                let rest = source[at + ".route(".len()..].trim_start();
                if let Some((route, _)) = rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
                    paths.insert(route.to_owned());
                }
            }
        }
        paths
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")), "{}", doc["openapi"]);
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version follows the crate version");
        // Every reference resolves.
        for (at, _) in DOCUMENT.match_indices("\"$ref\": \"#/") {
            let target = &DOCUMENT[at + "\"$ref\": \"#".len()..];
            let target = &target[..target.find('"').unwrap()];
            assert!(doc.pointer(target).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn every_routed_path_is_documented_and_every_documented_path_routed() {
        let documented = documented_paths(&document());
        let routed = routed_paths();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "src/openapi.json and the .route(\"...\") paths in src/routes/ disagree: routed but not documented {undocumented:?}, documented but not routed {unrouted:?}"
        );
    }

    /// Serves the app with no model loaded on a loopback port, for the rest of the test process.
    fn serve(limits: Limits) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, super::super::app(AppState::new(limits))).await.unwrap();
            });
        });
        addr
    }

    struct Answer {
        status: u16,
        content_type: String,
        body: String,
    }

    impl Answer {
        /// The message of an `{"error": "..."}` body.
        fn error(&self) -> Option<String> {
            let value: Value = serde_json::from_str(&self.body).ok()?;
            if self.content_type != "application/json" || value.as_object()?.len() != 1 {
                return None;
            }
            value["error"].as_str().map(str::to_owned)
        }
    }

    fn send(addr: std::net::SocketAddr, method: &str, path: &str, body: Vec<u8>) -> Answer {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
        let request = ureq::http::Request::builder().method(method).uri(format!("http://{addr}{path}")).body(body).unwrap();
        let mut response = agent.run(request).unwrap();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Answer { status: response.status().as_u16(), content_type, body: response.body_mut().read_to_string().unwrap_or_default() }
    }

    /// Asks every method on every documented path: the documented ones reach a handler, the
    /// others are 405.
    #[test]
    fn documented_methods_are_served_and_the_others_refused() {
        let doc = document();
        let addr = serve(Limits::default());
        let mut wrong = Vec::new();
        for (template, item) in doc["paths"].as_object().unwrap() {
            let path = template.replace("{name}", "m").replace("{version}", "1");
            for method in METHODS {
                let documented = item.get(method).is_some();
                let method = method.to_uppercase();
                let answer = send(addr, &method, &path, Vec::new());
                let no_route = ApiError::NoRoute { method: method.clone(), path: path.clone() }.to_string();
                let not_allowed = ApiError::MethodNotAllowed { method: method.clone(), path: path.clone() }.to_string();
                let error = answer.error();
                let fine = if documented {
                    error.as_ref() != Some(&no_route) && error.as_ref() != Some(&not_allowed)
                } else {
                    answer.status == 405 && error.as_ref() == Some(&not_allowed)
                };
                if !fine {
                    let documented = if documented { "documented" } else { "not documented" };
                    wrong.push(format!("{method} {path} ({documented}): {} {}", answer.status, answer.body));
                }
            }
        }
        assert!(wrong.is_empty(), "the router does not answer as src/openapi.json says:\n{}", wrong.join("\n"));
    }

    /// Rejections that axum's own extractors would answer in plain text.
    #[test]
    fn every_rejection_is_a_json_error() {
        let doc = document();
        let addr = serve(Limits { max_body_bytes: 64, ..Limits::default() });
        let mut cases = vec![("GET", "/nowhere".to_owned(), Vec::new())];
        for (template, item) in doc["paths"].as_object().unwrap() {
            let method = if item.get("post").is_some() { "POST" } else { "GET" };
            if template.contains('{') {
                cases.push((method, template.replace("{name}", "%FF").replace("{version}", "%FE"), Vec::new()));
            }
            if method == "POST" {
                cases.push((method, template.replace("{name}", "m").replace("{version}", "1"), vec![b' '; 65]));
            }
        }
        let wrong: Vec<String> = cases
            .into_iter()
            .filter_map(|(method, path, body)| {
                let answer = send(addr, method, &path, body);
                let fine = answer.status >= 400 && answer.error().is_some();
                (!fine).then(|| format!("{method} {path}: {} {} {}", answer.status, answer.content_type, answer.body))
            })
            .collect();
        assert!(wrong.is_empty(), "rejections that are not {{\"error\": ...}} JSON:\n{}", wrong.join("\n"));
    }
}
