//! Azure Functions' custom handler contract, without Azure: `modelship deploy azure-functions`,
//! `make package` (this test binary as the handler), then a test host that does what the
//! Functions host does with the package: reads host.json, starts `defaultExecutablePath` with its
//! `arguments` in the app's root with `FUNCTIONS_CUSTOMHANDLER_PORT` set, and forwards HTTP
//! requests as they came (enableForwardingHttpRequest): method, `/api/` path, query string (the
//! function key in `code`), headers and body. Every answer must equal the same request's answer
//! without the prefix.

use std::process::Command;

use serde_json::Value;

use crate::lambda::modelship_library;
use crate::support::{Server, agent, command, fraud_body, free_port, model, reply, root};

#[test]
fn the_functions_host_forwards_and_the_answers_are_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    let deployed = command().args(["deploy", "azure-functions", "--name", "fraud", "--model", &model("fraud"), "--out"]).arg(&out).output().unwrap();
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let made = Command::new("make")
        .arg("-f")
        .arg(out.join("Makefile"))
        .arg("package")
        .arg(format!("BINARY={}", env!("CARGO_BIN_EXE_modelship")))
        .arg(format!("ORT_LIB={}", modelship_library().display()))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(made.status.success(), "make package: {}{}", String::from_utf8_lossy(&made.stdout), String::from_utf8_lossy(&made.stderr));
    let listing = Command::new("python3").args(["-m", "zipfile", "-l"]).arg(out.join("app.zip")).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for entry in ["host.json", "predict/function.json", "modelship", "lib/libonnxruntime.so.", "models/fraud.onnx"] {
        assert!(listing.contains(entry), "app.zip lacks {entry}:\n{listing}");
    }

    // The host: host.json's handler, started in the app's root on the port it chose.
    let app = out.join("package");
    let host: Value = serde_json::from_str(&std::fs::read_to_string(app.join("host.json")).unwrap()).unwrap();
    let description = &host["customHandler"]["description"];
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    let port = free_port();
    let mut handler = Command::new(app.join(description["defaultExecutablePath"].as_str().unwrap()));
    handler.current_dir(&app).args(description["arguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()));
    handler.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()).env("FUNCTIONS_WORKER_RUNTIME", "custom").env_remove("ORT_DYLIB_PATH");
    let server = Server::spawn(handler, None);
    let prefix = format!("/{}", host["extensions"]["http"]["routePrefix"].as_str().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    assert!(server.ready["http"].as_str().unwrap().ends_with(&format!(":{port}")), "{:?}", server.ready);

    let agent = agent();
    let forward = |method: &str, path: &str, body: Option<String>| {
        // What the Functions host adds to a forwarded request; the original's headers stay.
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", "203.0.113.7:51234")
            .header("x-forwarded-proto", "https")
            .header("x-original-url", path)
            .header("x-ms-client-request-id", "d4f0c0de-5a1e-4c3e-9e51-2a3b4c5d6e7f")
            .header("x-functions-key", "ZmFrZS1mdW5jdGlvbi1rZXk=");
        let response = match body {
            Some(body) => agent.run(request.body(body).unwrap()),
            None => agent.run(request.body(()).unwrap()),
        };
        reply(response.unwrap())
    };
    for (method, path, body) in [
        ("POST", "/v1/predict", Some(serde_json::json!({"features": [vec![0.5; 30], vec![-1.25; 30], vec![2.0; 30]]}).to_string())),
        ("GET", "/v2/models/fraud", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/v2/models/fraud/infer", Some(fraud_body(3))),
    ] {
        let direct = forward(method, path, body.clone());
        let query = if path.contains('?') { "&code=abc" } else { "?code=abc" };
        let forwarded = forward(method, &format!("{prefix}{path}{query}"), body);
        assert_eq!(forwarded.status, 200, "{method} {prefix}{path}: {}", forwarded.text);
        assert_eq!(forwarded.json(), direct.json(), "{method} {path}");
    }
    // A path outside the API is a JSON 404 through the prefix too; a bad body a JSON 400.
    assert_eq!(forward("GET", &format!("{prefix}/nowhere"), None).status, 404);
    let bad = forward("POST", &format!("{prefix}/v1/predict"), Some("{\"features\": [[1, 2]]}".to_owned()));
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.json()["error"].is_string());
}
