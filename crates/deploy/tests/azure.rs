//! The Azure Functions files, checked without Azure: `host.json` against SchemaStore's host.json
//! schema (vendored in `tests/schemas/`) with unknown keys refused (`json_schema_validate.py`);
//! `function.json`'s bindings against the schema's own HTTP binding definitions, read from the
//! vendored function.json schema (its `bindings` list as a whole cannot be used: its SQL and MySQL
//! alternatives match an HTTP binding too, so `oneOf` refuses every HTTP trigger); and what the
//! custom handler contract needs, here. The forwarding itself runs in the e2e suite (`azure.rs`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{k8s_python, manifest_dir};
use serde_json::Value;


fn golden(file: &str) -> PathBuf {
    manifest_dir().join("tests/golden/azure-functions/azure-functions").join(file)
}

fn schema(name: &str) -> PathBuf {
    manifest_dir().join("tests/schemas").join(name)
}


fn validate(files: &[&Path]) -> (bool, String) {
    let out = Command::new(k8s_python().unwrap())
        .arg(manifest_dir().join("tests/json_schema_validate.py"))
        .arg(schema("azure-functions-host.schema.json"))
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn host_json_passes_the_schema_with_unknown_keys_refused() {
    if k8s_python().is_none() {
        return;
    }
    let (ok, text) = validate(&[&golden("host.json")]);
    assert!(ok, "{text}");
    let host = std::fs::read_to_string(golden("host.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("misspelt.json", host.replace("\"enableForwardingHttpRequest\"", "\"enableForwardingHttpRequests\"")),
        ("unknown.json", host.replace("\"routePrefix\"", "\"routePrefixes\": \"x\",\n      \"routePrefix\"")),
        ("type.json", host.replace("\"maxConcurrentRequests\": 50", "\"maxConcurrentRequests\": \"50\"")),
    ] {
        assert_ne!(text, host, "{name}: the replacement applied");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = validate(&[&path]);
        assert!(!ok, "{name} passed:\n{out}");
    }
}

#[test]
fn the_function_is_one_http_trigger_the_schema_allows() {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema("azure-functions-function.schema.json")).unwrap()).unwrap();
    let definitions = &schema["definitions"];
    let keys = |v: &Value| v["properties"].as_object().map(|o| o.keys().cloned().collect::<BTreeSet<String>>()).unwrap_or_default();
    let base = keys(&definitions["bindingBase"]);
    let alternatives = definitions["httpBinding"]["oneOf"].as_array().unwrap();
    let function: Value = serde_json::from_str(&std::fs::read_to_string(golden("function.json")).unwrap()).unwrap();
    let bindings = function["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 2);
    for binding in bindings {
        let kind = binding["type"].as_str().unwrap();
        let alternative = alternatives.iter().find(|a| a["properties"]["type"]["enum"][0] == kind).unwrap_or_else(|| panic!("{kind} is no HTTP binding"));
        let allowed: BTreeSet<String> = base.union(&keys(alternative)).cloned().collect();
        for (key, value) in binding.as_object().unwrap() {
            assert!(allowed.contains(key), "{kind}: '{key}' is not a key of the schema's binding ({allowed:?})");
            if let Some(options) = alternative["properties"][key]["enum"].as_array() {
                assert!(options.contains(value), "{kind}.{key} = {value} is not one of {options:?}");
            }
        }
        for required in definitions["bindingBase"]["required"].as_array().unwrap() {
            assert!(binding.get(required.as_str().unwrap()).is_some(), "{kind} lacks {required}");
        }
    }
    let trigger = &bindings[0];
    assert_eq!((trigger["type"].as_str(), trigger["authLevel"].as_str(), trigger["route"].as_str()), (Some("httpTrigger"), Some("function"), Some("{*path}")));
    let methods = alternatives[0]["properties"]["methods"]["items"][0]["enum"].as_array().unwrap();
    for m in trigger["methods"].as_array().unwrap() {
        assert!(methods.contains(m), "{m}");
    }
}

/// The handler listens where the host says and strips the prefix the host keeps.
#[test]
fn the_handler_is_started_the_way_the_host_forwards() {
    let host: Value = serde_json::from_str(&std::fs::read_to_string(golden("host.json")).unwrap()).unwrap();
    let handler = &host["customHandler"];
    assert_eq!(handler["enableForwardingHttpRequest"], true);
    assert_eq!(handler["description"]["defaultExecutablePath"], "modelship");
    let args: Vec<&str> = handler["description"]["arguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let prefix = host["extensions"]["http"]["routePrefix"].as_str().unwrap();
    assert!(args.windows(2).any(|w| w == ["--path-prefix", &format!("/{prefix}")]), "{args:?}");
    assert!(!args.contains(&"--port"), "the port comes from FUNCTIONS_CUSTOMHANDLER_PORT: {args:?}");
    assert_eq!(host["functionTimeout"], "00:02:00");
}
