//! `modelship validate` on the fixture models and the held-out rows the fixture script made
//! (`testdata/validate/`): a model that passes, one below an AUC floor, a renamed input, a
//! latency budget the slow model misses, a drifted distribution; table, JSON and Markdown; the
//! exit codes; results recorded on a registry version. Expected metrics are scikit-learn's and
//! NumPy's on the same rows (scripts/make_fixtures.py's models, onnxruntime 1.31.1 in Python).

use std::process::Output;

use serde_json::Value;

use crate::support::{command, model, root};

fn holdout(ext: &str) -> String {
    root().join(format!("testdata/validate/holdout.{ext}")).to_string_lossy().into_owned()
}

fn validate(args: &[&str]) -> Output {
    command().arg("validate").args(args).output().unwrap()
}

/// The JSON report, and the exit code it came with.
fn report(args: &[&str]) -> (Value, i32) {
    let out = validate(&[args, &["--output", "json", "--runs", "20", "--warmup", "2"]].concat());
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (json, out.status.code().unwrap())
}

/// The check `id` of `gate`.
fn check<'a>(report: &'a Value, gate: &str, id: &str) -> &'a Value {
    let gate = report["gates"].as_array().unwrap().iter().find(|g| g["gate"] == gate).unwrap_or_else(|| panic!("no gate {gate}: {report}"));
    gate["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("no check {id}: {gate}"))
}

fn value(report: &Value, gate: &str, id: &str) -> f64 {
    check(report, gate, id)["value"].as_f64().unwrap()
}

#[test]
fn a_good_model_passes_every_gate_with_the_metrics_scikit_learn_computes() {
    let fraud = model("fraud");
    let csv = holdout("csv");
    let args = ["--data", &csv, "--label", "is_fraud", "--min", "auc=0.92", "--min", "accuracy=0.9", "--max", "log_loss=0.3"];
    let (json, code) = report(&[&[fraud.as_str()][..], &args].concat());
    assert_eq!((code, json["passed"].as_bool(), json["rows"].as_u64()), (0, Some(true), Some(500)), "{json}");
    for (id, want) in [("auc", 0.945_693), ("accuracy", 0.958), ("log_loss", 0.130_241)] {
        assert!((value(&json, "quality", id) - want).abs() < 1e-4, "{id}: {}", check(&json, "quality", id));
        assert_eq!(check(&json, "quality", id)["verdict"], "pass");
    }
    assert!(value(&json, "latency", "p99_batch_1") > 0.0 && value(&json, "resources", "memory_loaded") > 1e6, "{json}");
    let skipped: Vec<&str> = json["skipped"].as_array().unwrap().iter().map(|s| s["gate"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["contract", "distribution"]);
    // The same as a table for people.
    let out = validate(&[&[fraud.as_str()][..], &args, &["--runs", "20"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("on 500 rows of") && text.contains("passed: quality, latency, resources") && text.contains("not run: contract"), "{text}");
    assert!(text.lines().any(|l| l.contains("quality") && l.contains("auc") && l.contains("0.9457") && l.contains(">= 0.9200") && l.contains("pass")), "{text}");
}

#[test]
fn a_model_below_the_auc_floor_fails_with_exit_1_and_says_so_in_markdown() {
    let lr = model("logistic_regression");
    let parquet = holdout("parquet");
    let args = [lr.as_str(), "--data", &parquet, "--label", "is_fraud", "--min", "auc=0.92", "--gate", "quality"];
    let (json, code) = report(&args);
    assert_eq!((code, json["passed"].as_bool()), (1, Some(false)), "{json}");
    let auc = check(&json, "quality", "auc");
    assert!((auc["value"].as_f64().unwrap() - 0.908_072).abs() < 1e-4 && auc["verdict"] == "fail", "{auc}");
    assert_eq!(auc["limit"], serde_json::json!({"op": ">=", "value": 0.92}));
    let out = validate(&[&args[..], &["--output", "markdown"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.starts_with("### ❌ modelship validate: quality failed\n"), "{md}");
    assert!(md.contains("| quality | `auc` | 0.9081 | >= 0.9200 | ❌ fail |"), "{md}");
}

#[test]
fn a_renamed_input_breaks_the_contract_unless_the_version_is_a_new_major() {
    let (renamed, lr) = (model("renamed_input"), model("logistic_regression"));
    let (json, code) = report(&[&renamed, "--against", &lr, "--gate", "contract"]);
    assert_eq!(code, 1, "{json}");
    let change = check(&json, "contract", "input.input");
    assert_eq!(change["verdict"], "fail");
    assert!(change["detail"].as_str().unwrap().contains("input 'input' renamed 'features' (same FP32 [N, 30])"), "{change}");
    // Against itself nothing changed; marked a new major, the break is allowed.
    let (json, code) = report(&[&lr, "--against", &lr, "--gate", "contract"]);
    assert_eq!((code, check(&json, "contract", "signature")["verdict"].as_str()), (0, Some("pass")));
    let (json, code) = report(&[&renamed, "--against", &lr, "--gate", "contract", "--major"]);
    assert_eq!((code, check(&json, "contract", "input.input")["verdict"].as_str()), (0, Some("pass")), "{json}");
}

#[test]
fn the_slow_model_misses_its_latency_budget() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("slow.csv");
    // 200 rounds of a 128x128 matrix product: several milliseconds a run.
    std::fs::write(&rows, "iterations\n200\n").unwrap();
    let (json, code) = report(&[&model("slow"), "--data", rows.to_str().unwrap(), "--max-p99", "1ms", "--gate", "latency"]);
    assert_eq!(code, 1, "{json}");
    let p99 = check(&json, "latency", "p99_batch_1");
    assert!(p99["verdict"] == "fail" && p99["value"].as_f64().unwrap() > 1.0, "{p99}");
    // The fraud model meets a budget at batch 1 and at batch 32.
    let (json, code) = report(&[&model("fraud"), "--max-p99", "50ms", "--max-p99", "32=100ms", "--gate", "latency"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(check(&json, "latency", "p99_batch_32")["verdict"], "pass");
}

#[test]
fn a_drifted_distribution_fails_while_quality_holds() {
    let csv = holdout("csv");
    let (json, code) = report(&[&model("xgboost"), "--against", &model("fraud"), "--data", &csv, "--label", "is_fraud", "--min", "auc=0.92", "--max-drop", "auc=0.005"]);
    assert_eq!(code, 1, "{json}");
    let psi = check(&json, "distribution", "psi");
    assert!((psi["value"].as_f64().unwrap() - 0.913_144).abs() < 1e-3 && psi["verdict"] == "fail", "{psi}");
    // Better than the reference on the same rows (0.9524 against 0.9457), and the same contract.
    assert!((value(&json, "quality", "auc_drop") + 0.006_749).abs() < 1e-4, "{}", check(&json, "quality", "auc_drop"));
    for (gate, verdict) in [("quality", "pass"), ("contract", "pass"), ("distribution", "fail")] {
        assert_eq!(json["gates"].as_array().unwrap().iter().find(|g| g["gate"] == gate).unwrap()["verdict"], verdict, "{gate}");
    }
}

#[test]
fn usage_errors_exit_2_naming_the_problem() {
    let fraud = model("fraud");
    let csv = holdout("csv");
    let cases: [(&[&str], &str); 5] = [
        (&[&fraud, "--data", &csv, "--label", "fraud"], "has no column 'fraud'; its columns are: f0, f1"),
        (&[&fraud, "--data", &csv], "cannot take 31 values a row; give --label and --ignore"),
        (&[&fraud, "--min", "auc=0.9"], "give --data FILE and --label COLUMN"),
        (&[&fraud, "--data", &csv, "--label", "is_fraud", "--max", "rmse=1"], "rmse is a regression metric and this model is judged as classification"),
        (&[&fraud, "--record"], "--record writes on a registry version"),
    ];
    for (args, want) in cases {
        let out = validate(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(2) && err.contains(want), "{args:?}: {:?} {err}", out.status);
    }
    // clap's own usage errors are 2 as well.
    assert_eq!(validate(&[&fraud, "--gate", "speed"]).status.code(), Some(2));
}

#[test]
fn results_are_recorded_on_the_registry_version() {
    let registry = tempfile::tempdir().unwrap();
    let r = registry.path().to_str().unwrap();
    for (file, version) in [("fraud", "1.0.0"), ("xgboost", "2.0.0")] {
        let out = command().args(["models", "push", "fraud", &model(file), "--version", version, "--registry", r]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(command().args(["models", "alias", "fraud", "production", "1.0.0", "--registry", r]).status().unwrap().success());
    let csv = holdout("csv");
    let (json, code) = report(&["fraud:2.0.0", "--against", "fraud@production", "--registry", r, "--data", &csv, "--label", "is_fraud", "--gate", "quality", "--gate", "contract", "--record"]);
    assert_eq!((code, json["against"]["version"].as_str()), (0, Some("1.0.0")), "{json}");
    let out = command().args(["models", "show", "fraud:2.0.0", "--output", "json", "--registry", r]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!((shown["metrics"]["validate.auc"].as_f64().unwrap() - 0.952_442).abs() < 1e-4, "{shown}");
    assert_eq!((shown["labels"]["validate"].as_str(), shown["labels"]["validate.against"].as_str()), (Some("pass"), Some("fraud@production")));
    // A file marked as a new major version over the registry's may break the contract.
    assert!(command().args(["models", "push", "lr", &model("logistic_regression"), "--version", "1.0.0", "--registry", r]).status().unwrap().success());
    let renamed = model("renamed_input");
    let contract = |version: &str| report(&[&renamed, "--model-version", version, "--against", "lr:1.0.0", "--registry", r, "--gate", "contract"]);
    assert_eq!(contract("1.1.0").1, 1);
    let (json, code) = contract("2.0.0");
    assert_eq!(code, 0, "{json}");
    assert!(check(&json, "contract", "input.input")["detail"].as_str().unwrap().contains("allowed: 2.0.0 is a new major version over 1.0.0"), "{json}");
}
