//! Azure Functions: the binary as the function app's custom handler. `host.json` starts it
//! (`customHandler.description`) and forwards every HTTP request to it as it came
//! (`enableForwardingHttpRequest`): the Functions host gives the process its port in
//! `FUNCTIONS_CUSTOMHANDLER_PORT`, which the server listens on, and requests keep their
//! `/api/` route prefix, which the server strips (`--path-prefix /api`). One HTTP-triggered
//! function (`predict/function.json`) takes every path and method the API has, behind a function
//! key by default. The `Makefile` lays out and zips the package: the binary, ONNX Runtime's
//! library, the model, `host.json` and the function.

use serde::Serialize;
use serde_json::json;

use crate::description::{Deployment, MODEL_DIR};
use crate::{GeneratedFile, Provenance};

pub const HOST: &str = "host.json";
pub const FUNCTION: &str = "function.json";
/// The function's folder in the package (its name in the app).
pub const FUNCTION_DIR: &str = "predict";
pub const MAKEFILE: &str = "Makefile";

/// The package's layout, relative to the app's root (the handler's working directory).
pub const EXECUTABLE: &str = "modelship";
pub const LIBRARY_DIR: &str = "lib";

fn library(d: &Deployment) -> String {
    format!("{LIBRARY_DIR}/libonnxruntime.so.{}", d.image.ort_version)
}

fn model(d: &Deployment) -> String {
    format!("{}/{}", MODEL_DIR.trim_start_matches('/'), d.model_file_name().unwrap_or("model.onnx"))
}

/// `functionTimeout` as host.json writes it (`hh:mm:ss`).
fn timeout(d: &Deployment) -> String {
    let s = humantime::parse_duration(&d.azure_functions.timeout).map_or(300, |t| t.as_secs());
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The handler's command line: the model in the package, the library beside it, the state in
/// /tmp (the package is read-only), gRPC and the admin API on ports of their own choosing.
pub fn arguments(d: &Deployment) -> Vec<String> {
    let a = &d.azure_functions;
    let mut args: Vec<String> = ["serve", &model(d), "--ort-lib", &library(d), "--state-dir", "/tmp/modelship", "--grpc-port", "0", "--admin-port", "0"].map(str::to_owned).to_vec();
    if let Some(name) = &d.model.name {
        args.extend(["--name".to_owned(), name.clone()]);
    }
    if let Some(version) = &d.model.version {
        args.extend(["--model-version".to_owned(), version.clone()]);
    }
    if !a.route_prefix.is_empty() {
        args.extend(["--path-prefix".to_owned(), format!("/{}", a.route_prefix)]);
    }
    args
}

fn host(d: &Deployment) -> serde_json::Value {
    let a = &d.azure_functions;
    json!({
        "version": "2.0",
        "functionTimeout": timeout(d),
        "logging": {"logLevel": {"default": "Information"}},
        "extensions": {"http": {"routePrefix": a.route_prefix, "maxConcurrentRequests": a.max_concurrent_requests}},
        "customHandler": {
            "description": {"defaultExecutablePath": EXECUTABLE, "workingDirectory": "", "arguments": arguments(d)},
            "enableForwardingHttpRequest": true
        }
    })
}

fn function(d: &Deployment) -> serde_json::Value {
    json!({
        "bindings": [
            {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": d.azure_functions.auth_level, "methods": ["get", "post"], "route": "{*path}"},
            {"type": "http", "direction": "out", "name": "res"}
        ]
    })
}

fn pretty<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    text
}

fn makefile(d: &Deployment, header: &str) -> String {
    let source = d.model.file.clone().unwrap_or_default();
    let ort = &d.image.ort_version;
    format!(
        "{header}# The function app's package: the binary (the custom handler), ONNX Runtime's library from the\n\
         # onnxruntime wheel, the model, host.json and the function. From the modelship repository:\n\
         #   make -f DIR/Makefile package          (writes DIR/app.zip)\n\
         #   az functionapp deployment source config-zip -g RESOURCE_GROUP -n APP --src DIR/app.zip\n\
         # on a Linux function app (FUNCTIONS_WORKER_RUNTIME=custom). BINARY=path/to/modelship packages a\n\
         # binary built elsewhere; without it, cargo builds one (incrementally).\n\
         HERE := $(dir $(lastword $(MAKEFILE_LIST)))\n\
         ORT_VERSION := {ort}\n\
         ORT_PLATFORM := manylinux_2_27_x86_64\n\
         CARGO_TARGET_DIR ?= target\n\
         ifndef BINARY\n\
         BINARY := $(CARGO_TARGET_DIR)/release/modelship\n\
         BUILD := binary\n\
         endif\n\
         ORT_DIR ?= $(HERE).ort-$(ORT_PLATFORM)\n\
         ORT_LIB ?= $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)\n\
         STRIP ?= strip\n\
         MODEL ?= $(HERE){source}\n\
         PACKAGE := $(HERE)package\n\n\
         .PHONY: package binary\n\
         package: $(BUILD) $(ORT_LIB)\n\
         \trm -rf $(PACKAGE) $(HERE)app.zip\n\
         \tmkdir -p $(PACKAGE)/{LIBRARY_DIR} $(PACKAGE)/{models} $(PACKAGE)/{FUNCTION_DIR}\n\
         \tcp $(BINARY) $(PACKAGE)/{EXECUTABLE}\n\
         \t$(STRIP) --strip-all $(PACKAGE)/{EXECUTABLE}\n\
         \tcp $(ORT_LIB) $(PACKAGE)/{library}\n\
         \tcp $(MODEL) $(PACKAGE)/{model_path}\n\
         \tcp $(HERE){HOST} $(PACKAGE)/{HOST}\n\
         \tcp $(HERE){FUNCTION} $(PACKAGE)/{FUNCTION_DIR}/{FUNCTION}\n\
         \tcd $(PACKAGE) && python3 -m zipfile -c ../app.zip .\n\n\
         binary:\n\
         \tcargo build --release --locked -p modelship --target-dir $(CARGO_TARGET_DIR)\n\n\
         $(ORT_LIB):\n\
         \tpython3 -m pip download --quiet --no-deps --only-binary=:all: --platform $(ORT_PLATFORM) --python-version 3.11 onnxruntime==$(ORT_VERSION) -d $(ORT_DIR)\n\
         \tunzip -o -j -q $(ORT_DIR)/onnxruntime-$(ORT_VERSION)-*.whl 'onnxruntime/capi/libonnxruntime.so.*' -d $(ORT_DIR)\n",
        models = MODEL_DIR.trim_start_matches('/'),
        library = library(d),
        model_path = model(d),
    )
}

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    // JSON has no comments: the provenance is in the Makefile, and host.json's own `version`
    // key is the only one it may carry.
    vec![
        GeneratedFile { path: HOST, contents: pretty(&host(d)) },
        GeneratedFile { path: FUNCTION, contents: pretty(&function(d)) },
        GeneratedFile { path: MAKEFILE, contents: makefile(d, &provenance.header()) },
    ]
}
