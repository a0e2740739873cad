//! Triton's own clients against modelship: tritonclient (HTTP and gRPC) for health, metadata,
//! configuration, inference with JSON, binary and raw tensors, streams, errors and the repository;
//! perf_analyzer over HTTP and gRPC; dynamic batching under concurrent load.

use std::process::Command;
use std::thread;

use serde_json::{Value, json};

use crate::support::{Server, command, model, tool};

/// `rows` rows of 30 features that give the fraud model different scores.
fn rows(n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|r| (0..30).map(|j| (((r * 7 + j * 3) % 17) as f32 - 8.0) / 4.0).collect()).collect()
}

/// Probability of class 1 per row, from the V2 JSON API.
fn v2_scores(server: &Server, name: &str, rows: &[Vec<f32>]) -> Vec<f64> {
    let body = json!({"inputs": [{"name": "input", "shape": [rows.len(), 30], "datatype": "FP32", "data": rows}]});
    let r = server.post(&format!("/v2/models/{name}/infer"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json()["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap().clone();
    out["data"].as_array().unwrap().chunks(2).map(|p| p[1].as_f64().unwrap()).collect()
}

fn assert_close(what: &str, got: &Value, want: &[f64]) {
    let got: Vec<f64> = got.as_array().unwrap_or_else(|| panic!("{what}: {got}")).iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{what}: {got:?} vs V2 JSON {want:?}");
    }
}

fn push(registry: &std::path::Path, name: &str, file: &str) {
    let out = command().args(["models", "push", name, &model(file), "--version", "1", "--registry"]).arg(registry).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tritonclient_over_http_and_grpc_matches_v2_json() {
    let registry = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for (name, file) in [("fraud", "fraud"), ("lr", "logistic_regression"), ("dtypes", "dtypes")] {
        push(registry.path(), name, file);
    }
    let server = Server::start_with(
        &["fraud:1", "--registry", registry.path().to_str().unwrap()],
        &[("MODELSHIP_STATE_DIR", state.path().to_str().unwrap())],
    );
    let lr_server = Server::start(&[&model("logistic_regression"), "--name", "lr"]);
    let rows = rows(4);
    let fraud = v2_scores(&server, "fraud", &rows);
    let lr = v2_scores(&lr_server, "lr", &rows);
    let rows_file = state.path().join("rows.json");
    std::fs::write(&rows_file, serde_json::to_string(&rows).unwrap()).unwrap();

    let out = Command::new(tool(".cache/triton-venv/bin/python"))
        .arg(crate::support::root().join("crates/modelship/tests/e2e/triton_clients.py"))
        .args([server.ready["http"].as_str().unwrap(), server.ready["grpc"].as_str().unwrap(), server.ready["admin"].as_str().unwrap()])
        .arg(state.path().join("admin-token"))
        .arg(&rows_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "triton_clients.py failed:\n{}\nserver:\n{}", String::from_utf8_lossy(&out.stderr), server.stderr());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(got["http_health"], json!([true, true, true]));
    assert_eq!(got["grpc_health"], json!([true, true, true, false]));
    assert_eq!(got["grpc_health_v1"], json!([8, 1]), "grpc.health.v1 answers SERVING");
    assert_eq!(got["http_metadata"]["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]));
    assert_eq!(got["grpc_metadata"]["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": ["-1", "30"]}]));
    assert_eq!(got["server_extensions"], json!(["binary_tensor_data", "model_configuration", "statistics", "model_repository"]));
    for config in [&got["http_config"], &got["grpc_config"]] {
        assert_eq!(config["max_batch_size"], 64, "{config}");
        assert_eq!(config["input"][0]["name"], "input", "{config}");
        assert_eq!(config["input"][0]["data_type"], "TYPE_FP32", "{config}");
        // The fraud model passes the row-independence probe, so requests already waiting are
        // joined: Triton's dynamic batching with no queue delay (gRPC's JSON omits the zero).
        assert!(config["dynamic_batching"].is_object(), "waiting requests are joined by default: {config}");
        let delay = &config["dynamic_batching"]["max_queue_delay_microseconds"];
        assert!(delay.is_null() || delay.as_u64() == Some(0) || delay == "0", "never waits for more: {config}");
    }
    for path in ["http_json", "http_binary", "grpc_raw", "grpc_typed", "grpc_stream"] {
        assert_close(path, &got[path], &fraud);
    }
    assert_eq!(got["grpc_typed_id"], "typed-1");
    assert_eq!(got["grpc_stream_ids"], json!(["0", "1", "2", "3"]));
    let stream_errors = got["grpc_stream_errors"].as_array().unwrap();
    assert_eq!(stream_errors.len(), 1, "{stream_errors:?}");
    assert!(stream_errors[0].as_str().unwrap().contains("shape [1, 3]"), "{stream_errors:?}");
    for (dt, same) in got["dtypes_round_trip"].as_object().unwrap() {
        assert_eq!(same, &json!([true, true]), "{dt} did not round-trip over the binary extension and gRPC raw contents");
    }
    assert_eq!(got["dtypes_round_trip"].as_object().unwrap().len(), 13);
    assert_eq!(
        got["errors"],
        json!({
            "grpc_unknown_model": "StatusCode.NOT_FOUND",
            "grpc_bad_shape": "StatusCode.INVALID_ARGUMENT",
            "http_bad_shape": "400",
            "grpc_repository_without_token": "StatusCode.UNAUTHENTICATED",
            "grpc_repository_wrong_token": "StatusCode.UNAUTHENTICATED",
            "grpc_unload_own_model": "StatusCode.FAILED_PRECONDITION",
            "http_load_unknown": "404",
        })
    );
    assert_eq!(got["index_before"], json!([["dtypes", "UNAVAILABLE"], ["fraud", "READY"], ["lr", "UNAVAILABLE"]]));
    assert_eq!(got["lr_ready_after_load"], json!([true, true]));
    assert_close("lr over gRPC after a repository load", &got["lr_grpc"], &lr);
    assert_eq!(got["index_loaded"], json!([["dtypes", "READY"], ["fraud", "READY"], ["lr", "READY"]]));
    assert_eq!(got["lr_ready_after_unload"], json!([false, false]));
    assert_eq!(got["fraud_stats"]["name"], "fraud");
    assert!(got["fraud_stats"]["inference_count"].as_str().unwrap().parse::<u64>().unwrap() >= 20, "{}", got["fraud_stats"]);

    // The inference port has no repository API: it is a control operation.
    let r = server.post("/v2/repository/index", "{}");
    assert_eq!(r.status, 404, "{}", r.text);
    // The same calls counted under their own endpoint label.
    assert!(server.metric("modelship_requests_total", &["model=\"fraud\"", "role=\"stable\"", "endpoint=\"grpc_infer\"", "code=\"200\""]).unwrap_or(0.0) >= 5.0);
}

/// Triton's perf_analyzer (from the tritonclient wheel) measures modelship over HTTP and gRPC:
/// it needs the configuration and statistics extensions to run at all.
#[test]
fn perf_analyzer_runs_against_http_and_grpc() {
    // A version that is not an integer: perf_analyzer parses the statistics' versions as integers.
    let server = Server::start(&[&model("fraud"), "--model-version", "v1.2.0"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(&input, json!({"data": [{"input": {"content": rows(1)[0], "shape": [30]}}]}).to_string()).unwrap();
    let cudart = std::fs::read_dir(crate::support::root().join(".cache/triton-venv/lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages/nvidia/cuda_runtime/lib"))
        .find(|p| p.exists())
        .expect("nvidia-cuda-runtime-cu12 in .cache/triton-venv (scripts/setup.sh --test)");
    for (protocol, addr) in [("http", &server.ready["http"]), ("grpc", &server.ready["grpc"])] {
        let csv = dir.path().join(format!("{protocol}.csv"));
        let out = Command::new(tool(".cache/triton-venv/bin/perf_analyzer"))
            .env("LD_LIBRARY_PATH", &cudart)
            .args(["-m", "fraud", "-i", protocol, "-u", addr.as_str().unwrap(), "--concurrency-range", "2:2"])
            .args(["--measurement-mode", "time_windows", "-p", "1000", "--stability-percentage", "1000", "--max-trials", "5"])
            .arg("--input-data")
            .arg(&input)
            .arg("-f")
            .arg(&csv)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "perf_analyzer over {protocol} failed:\n{text}");
        let table = std::fs::read_to_string(&csv).unwrap();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split(',').collect();
        let throughput: f64 = row[1].parse().unwrap();
        assert!(throughput > 0.0, "{protocol}: {table}");
    }
    let served = server.metric("modelship_requests_total", &["endpoint=\"grpc_infer\"", "code=\"200\""]).unwrap_or(0.0);
    assert!(served > 0.0, "perf_analyzer's gRPC requests are served and counted");
}

/// Concurrent single-row requests are joined into batches; each client gets its own rows, equal
/// to the unbatched answer.
#[test]
fn dynamic_batching_forms_batches_and_answers_each_request_with_its_rows() {
    let plain = Server::start(&[&model("mlp")]);
    let batched = Server::start(&[&model("mlp"), "--workers", "1", "--max-batch-size", "8", "--max-queue-delay-us", "20000"]);
    let rows = rows(32);
    let want: Vec<f64> = rows.iter().flat_map(|r| v2_scores(&plain, "mlp", std::slice::from_ref(r))).collect();
    let got: Vec<f64> = thread::scope(|s| {
        let handles: Vec<_> = rows.iter().map(|r| s.spawn(|| v2_scores(&batched, "mlp", std::slice::from_ref(r))[0])).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "batched {got:?}\nplain {want:?}");
    }
    let runs = batched.metric("modelship_batch_size_count", &[]).unwrap();
    let rows_run = batched.metric("modelship_batch_size_sum", &[]).unwrap();
    // 32 requests in fewer runtime calls than requests: batches were formed.
    assert!(rows_run >= 32.0 && runs < rows_run, "runs {runs}, rows {rows_run}");
    let config = batched.get("/v2/models/mlp/config").json();
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(config["dynamic_batching"]["max_queue_delay_microseconds"], 20000);
    // A request bigger than a batch still runs, alone.
    assert_eq!(v2_scores(&batched, "mlp", &rows[..12]).len(), 12);
}

#[test]
fn dynamic_batching_refuses_a_model_without_a_batch_dimension() {
    let out = command()
        .args(["serve", &model("slow"), "--host", "127.0.0.1", "--port", "0", "--max-batch-size", "4"])
        .env("MODELSHIP_STATE_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamic batching needs a dynamic first dimension"), "{stderr}");
}

/// A Triton model repository served as it is: one model with a `config.pbtxt` (batching, two
/// instances, declared tensors, fields modelship does not act on), one without (two version
/// directories: the newest is served); Triton's clients list both and infer on both, over HTTP
/// and gRPC. A configuration that does not match its model stops the start, naming the tensor.
#[test]
fn a_triton_model_repository_is_served_as_it_is() {
    let repository = tempfile::tempdir().unwrap();
    let place = |name: &str, version: &str, file: &str| {
        let dir = repository.path().join(name).join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(model(file), dir.join("model.onnx")).unwrap();
    };
    place("fraud", "1", "fraud");
    place("lr", "1", "xgboost");
    place("lr", "2", "logistic_regression");
    let config = r#"
        name: "fraud"
        platform: "onnxruntime_onnx"
        max_batch_size: 16
        input [ { name: "input" data_type: TYPE_FP32 dims: [ 30 ] } ]
        output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 2 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 100 }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        optimization { graph { level: 1 } }
    "#;
    std::fs::write(repository.path().join("fraud/config.pbtxt"), config).unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--model-repository", repository.path().to_str().unwrap()], &[("MODELSHIP_STATE_DIR", state.path().to_str().unwrap())]);
    let models: Vec<&str> = server.ready["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(models, ["fraud", "lr"], "{}", server.ready);
    let rows = rows(3);
    let (fraud, lr) = (v2_scores(&server, "fraud", &rows), v2_scores(&server, "lr", &rows));
    assert_eq!(server.get("/v2/models/lr").json()["versions"], json!(["2"]), "the newest version directory");
    let config = server.get("/v2/models/fraud/config").json();
    assert_eq!((config["max_batch_size"].as_u64(), config["instance_group"][0]["count"].as_u64()), (Some(16), Some(2)), "{config}");

    let script = r#"
import json, sys
import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
http_addr, grpc_addr, admin_addr, token_file, rows = sys.argv[1:6]
auth = {"authorization": "Bearer " + open(token_file).read().strip()}
rows = np.asarray(json.loads(rows), dtype=np.float32)
out = {"index": sorted((m["name"], m["version"], m["state"]) for m in th.InferenceServerClient(admin_addr).get_model_repository_index(headers=auth))}
for kind, module, client in (("http", th, th.InferenceServerClient(http_addr)), ("grpc", tg, tg.InferenceServerClient(grpc_addr))):
    for name in ("fraud", "lr"):
        i = module.InferInput("input", list(rows.shape), "FP32")
        i.set_data_from_numpy(rows)
        result = client.infer(name, [i], outputs=[module.InferRequestedOutput("probabilities")])
        out[kind + "_" + name] = [client.is_model_ready(name), result.as_numpy("probabilities")[:, 1].tolist()]
print(json.dumps(out))
"#;
    let out = Command::new(tool(".cache/triton-venv/bin/python"))
        .args(["-c", script])
        .args([server.ready["http"].as_str().unwrap(), server.ready["grpc"].as_str().unwrap(), server.ready["admin"].as_str().unwrap()])
        .arg(state.path().join("admin-token"))
        .arg(serde_json::to_string(&rows).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "tritonclient failed:\n{}\nserver:\n{}", String::from_utf8_lossy(&out.stderr), server.stderr());
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["index"], json!([["fraud", "1", "READY"], ["lr", "2", "READY"]]));
    for kind in ["http", "grpc"] {
        assert_eq!(got[format!("{kind}_fraud")][0], json!(true));
        assert_close(&format!("{kind} fraud"), &got[format!("{kind}_fraud")][1], &fraud);
        assert_close(&format!("{kind} lr"), &got[format!("{kind}_lr")][1], &lr);
    }

    // A declared input the model does not have: the start fails, naming it and the fix's place.
    let state = tempfile::tempdir().unwrap();
    std::fs::write(repository.path().join("fraud/config.pbtxt"), config_with_input("features")).unwrap();
    let out = command()
        .args(["serve", "--model-repository", repository.path().to_str().unwrap(), "--port", "0"])
        .env("MODELSHIP_STATE_DIR", state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("fraud/config.pbtxt declares input 'features'") && err.contains("its inputs: input"), "{err}");
    // Another platform than ONNX: refused before anything loads, saying what to do.
    std::fs::write(repository.path().join("fraud/config.pbtxt"), "platform: \"pytorch_libtorch\"").unwrap();
    let out = command().args(["serve", "--model-repository", repository.path().to_str().unwrap()]).env("MODELSHIP_STATE_DIR", state.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("export it to ONNX"), "{err}");
}

fn config_with_input(name: &str) -> String {
    format!("platform: \"onnxruntime_onnx\"\nmax_batch_size: 4\ninput [ {{ name: \"{name}\" data_type: TYPE_FP32 dims: [ 30 ] }} ]\n")
}

