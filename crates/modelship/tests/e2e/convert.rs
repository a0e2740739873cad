//! Models in the formats people have (scikit-learn pickles and joblib files, XGBoost, LightGBM),
//! trained here in the conversion environment's Python, converted in the sandbox, and served:
//! the server's answers over 1,000 held-out rows equal the original's `predict_proba` /
//! `predict` (computed by the training script, not by the converter). Also what must not
//! happen: a hostile pickle reaching outside the sandbox, a pickle loaded by another
//! scikit-learn than wrote it, a conversion that disagrees being served.
//!
//! The conversion environments are shared by every test and kept between runs under
//! `.cache/convert-envs` (a fresh machine creates them from PyPI once); each test has its own
//! conversion home, so its conversion cache starts empty.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, command, root};

/// The environments every test shares.
pub fn shared_envs() -> PathBuf {
    root().join(".cache/convert-envs")
}

/// A conversion home with an empty cache whose environments are the shared ones.
pub fn convert_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(shared_envs()).unwrap();
    std::os::unix::fs::symlink(shared_envs(), home.path().join("envs")).unwrap();
    home
}

/// The default conversion environment's Python (it has scikit-learn, XGBoost, LightGBM and
/// pandas): `modelship convert setup` the first time.
pub fn default_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let home = convert_home();
            let out = command().args(["convert", "setup"]).env("MODELSHIP_CONVERT_HOME", home.path()).output().unwrap();
            assert!(out.status.success(), "modelship convert setup failed:\n{}", String::from_utf8_lossy(&out.stderr));
            shared_envs().join("default/bin/python")
        })
        .clone()
}

/// The models of testdata/convert/train.py, trained once per test run.
fn trained() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(default_python()).arg(root().join("testdata/convert/train.py")).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "training failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
}

pub fn file(name: &str) -> String {
    trained().join(name).to_string_lossy().into_owned()
}

/// `modelship ARGS` converting in `home`.
fn run(home: &Path, args: &[&str]) -> Output {
    command().args(args).env("MODELSHIP_CONVERT_HOME", home).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The held-out rows and the original's answers the training script wrote for `name`.
pub fn expected(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(trained().join(format!("{name}.expected.json"))).unwrap()).unwrap()
}

/// A V2 request with every held-out row: one `[N, 4]` FP32 input, or one `[N, 1]` input per
/// column (FP32, or BYTES for text) for a model fitted on a DataFrame.
pub fn v2_body(expected: &Value) -> String {
    let inputs = expected["inputs"].as_object().unwrap();
    let tensors: Vec<Value> = inputs
        .iter()
        .map(|(name, values)| {
            let values = values.as_array().unwrap();
            if name == "input" {
                let width = values[0].as_array().unwrap().len();
                let flat: Vec<Value> = values.iter().flat_map(|r| r.as_array().unwrap().clone()).collect();
                json!({"name": name, "datatype": "FP32", "shape": [values.len(), width], "data": flat})
            } else if values[0].is_string() {
                json!({"name": name, "datatype": "BYTES", "shape": [values.len(), 1], "data": values})
            } else {
                json!({"name": name, "datatype": "FP32", "shape": [values.len(), 1], "data": values})
            }
        })
        .collect();
    json!({"inputs": tensors}).to_string()
}

fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The server's answer to every held-out row against the original's: probabilities within
/// 1e-5, the same labels; predictions within 1e-5 + 1e-5 x |value|. Returns the largest difference.
pub fn assert_answers_equal(what: &str, reply: &Value, expected: &Value) -> f64 {
    let answer = &expected["answer"];
    let output = |name: &str| -> &Value {
        reply["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("{what}: no output {name} in {reply}"))
    };
    let mut worst = 0.0_f64;
    if let Some(probs) = answer.get("probabilities") {
        let want: Vec<f64> = probs.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap())).collect();
        let got: Vec<f64> = output("probabilities")["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{what}: probabilities");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            worst = worst.max(d);
            assert!(d <= 1e-5, "{what}: probability {i} is {g}, the original's {w}");
        }
        let want: Vec<String> = answer["label"].as_array().unwrap().iter().map(label_text).collect();
        let got: Vec<String> = output("label")["data"].as_array().unwrap().iter().map(label_text).collect();
        assert_eq!(got, want, "{what}: labels");
    } else {
        let want: Vec<f64> = answer["prediction"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got: Vec<f64> = output("prediction")["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{what}: predictions");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            worst = worst.max(d);
            assert!(d <= 1e-5 + 1e-5 * w.abs(), "{what}: prediction {i} is {g}, the original's {w}");
        }
    }
    worst
}

/// Serves `path` converting in `home`, and checks its answers over the held-out rows of `name`.
fn serve_and_compare(home: &Path, path: &str, name: &str) -> Server {
    let server = Server::start_with(&[path], &[("MODELSHIP_CONVERT_HOME", home.to_str().unwrap())]);
    let model = server.ready["model"].as_str().unwrap().to_owned();
    let reply = server.post(&format!("/v2/models/{model}/infer"), &v2_body(&expected(name)));
    assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    let worst = assert_answers_equal(path, &reply.json(), &expected(name));
    eprintln!("{path}: 1000 rows, largest difference from the original {worst:.3e}");
    server
}

#[test]
fn scikit_learn_pipelines_forests_boosting_and_column_transformers_serve_as_the_original() {
    let home = convert_home();
    // StandardScaler + LogisticRegression, pickled; a three-class forest, joblib-compressed;
    // histogram gradient boosting; a ColumnTransformer one-hot encoding text columns.
    for (file_name, name) in [("lr.pkl", "lr"), ("rf.joblib", "rf"), ("hgb.pkl", "hgb"), ("ct.pkl", "ct")] {
        let server = serve_and_compare(home.path(), &file(file_name), name);
        let log = server.stderr();
        assert!(log.contains("converted to ONNX and proven equal"), "{log}");
        assert!(log.contains("\"isolation\":\"bubblewrap"), "the conversion ran in the sandbox: {log}");
    }
    // The server never unpickled: the conversion ran in another process (its pid is logged).
    // A second start of the same file takes the cached conversion: no Python at all.
    let again = Server::start_with(&[&file("lr.pkl")], &[("MODELSHIP_CONVERT_HOME", home.path().to_str().unwrap())]);
    let log = again.stderr();
    assert!(log.contains("conversion taken from the cache") && !log.contains("the converter process ended"), "{log}");
    // /v1/predict answers the probability of class 1, as for any binary classifier.
    let reply = again.post("/v1/predict", r#"{"features": [[0.5, 1.0, -1.0, 50.0]]}"#);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let p = reply.json()["prediction"][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{}", reply.text);
}

#[test]
fn xgboost_models_pushed_to_the_registry_keep_their_original_and_serve_as_it() {
    let home = convert_home();
    let registry = tempfile::tempdir().unwrap();
    let reg = registry.path().to_str().unwrap();
    for (version, file_name, name) in [("1", "xgb.pkl", "xgb"), ("2", "xgb_booster.json", "xgb_booster"), ("3", "xgb_booster.ubj", "xgb_booster")] {
        let out = run(home.path(), &["models", "--registry", reg, "push", "xgb", &file(file_name), "--version", version, "--output", "json"]);
        assert!(out.status.success(), "push {file_name}: {}", stderr(&out));
        let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let labels = &pushed["version"]["labels"];
        let original = std::fs::read(file(file_name)).unwrap();
        let digest = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&original))
        };
        assert_eq!(labels["source_digest"], format!("sha256:{digest}"), "{pushed}");
        assert_eq!(labels["conversion_sandbox"].as_str().map(|s| s.starts_with("bubblewrap")), Some(true), "{pushed}");
        assert!(labels["converter"].as_str().unwrap().starts_with(if file_name.ends_with(".pkl") { "skl2onnx" } else { "onnxmltools" }), "{pushed}");
        assert_eq!(labels["equality_rows"], "1000 drawn", "{pushed}");
        // The original is kept beside the ONNX model, by its digest: `models fetch` returns it.
        let fetched = tempfile::NamedTempFile::new().unwrap();
        let out = command()
            .args(["models", "fetch", &format!("sha256:{digest}"), "-o", fetched.path().to_str().unwrap(), "--artifacts", &format!("{reg}/artifacts")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(std::fs::read(fetched.path()).unwrap(), original);
        let server = Server::start(&[&format!("xgb:{version}"), "--registry", reg]);
        let reply = server.post("/v2/models/xgb/infer", &v2_body(&expected(name)));
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_answers_equal(file_name, &reply.json(), &expected(name));
    }
    // A regressor, pushed too.
    let out = run(home.path(), &["models", "--registry", reg, "push", "xgb-reg", &file("xgb_reg.pkl"), "--version", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Server::start(&["xgb-reg:1", "--registry", reg]);
    let reply = server.post("/v2/models/xgb-reg/infer", &v2_body(&expected("xgb_reg")));
    assert_answers_equal("xgb_reg.pkl", &reply.json(), &expected("xgb_reg"));
    // Garbage collection keeps the originals: versions reference them.
    let out = command().args(["models", "--registry", reg, "gc", "--unreferenced", "--older-than", "0s", "--dry-run", "--output", "json"]).output().unwrap();
    let gc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["files"], 0, "{gc}");
}

#[test]
fn lightgbm_models_serve_as_the_original() {
    let home = convert_home();
    for (file_name, name) in [("lgbm.joblib", "lgbm"), ("lgbm_booster.txt", "lgbm_booster"), ("lgbm_reg.pkl", "lgbm_reg")] {
        let server = serve_and_compare(home.path(), &file(file_name), name);
        // LightGBM splits on float64 thresholds; written as float32 they would send inputs equal
        // to a threshold the other way. The conversion moves them so none does.
        assert!(server.stderr().contains("converted to ONNX and proven equal"));
    }
    let out = run(home.path(), &["convert", &file("lgbm_booster.txt"), "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(record["options"]["thresholds"]["moved"].as_u64().unwrap() > 0, "{record}");
    assert_eq!(record["cached"], true, "served before, so converted before: {record}");
}

#[test]
fn a_conversion_that_disagrees_is_refused_showing_the_worst_rows() {
    let home = convert_home();
    // The converters' own rounding of LightGBM's float64 thresholds to the nearest float32:
    // rows on a threshold go the other way, and the proof finds them.
    let out = run(home.path(), &["convert", &file("lgbm_booster.txt"), "--thresholds", "as-converted"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not answer as the original") && err.contains("Worst rows:") && err.contains("inputs ["), "{err}");
    assert!(err.lines().filter(|l| l.trim_start().starts_with("row ")).count() >= 3, "{err}");
    // Nothing was cached, and serving it refuses to start.
    let served = command().args(["serve", &file("lgbm_booster.txt"), "--thresholds", "as-converted", "--port", "0", "--admin-port", "0", "--grpc-port", "0"]).env("MODELSHIP_CONVERT_HOME", home.path()).output().unwrap();
    assert!(!served.status.success() && served.stdout.is_empty(), "a version serves only after it answered as the original");
    // A tolerance can be given; rows then may differ up to it.
    let loose = run(home.path(), &["convert", &file("lgbm_booster.txt"), "--thresholds", "as-converted", "--tolerance", "1"]);
    assert!(loose.status.success(), "{}", stderr(&loose));
}

#[test]
fn a_hostile_pickle_reaches_nothing_outside_the_sandbox() {
    let home = convert_home();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Where it writes: the test's directory (not shown in the sandbox), the repository (not shown
    // either), the conversion environment (shown read-only); what it reads: a secret in the
    // repository's target directory.
    let pid = std::process::id();
    let targets = [
        dir.path().join("written-by-the-pickle"),
        root().join(format!("target/written-by-the-pickle-{pid}")),
        shared_envs().join(format!("default/written-by-the-pickle-{pid}")),
    ];
    let secret = root().join(format!("target/convert-test-secret-{pid}"));
    std::fs::write(&secret, "the user's secret").unwrap();
    let out = Command::new(default_python())
        .arg(root().join("testdata/convert/train.py"))
        .arg(dir.path())
        .args(["--only", "evil"])
        .env("EVIL_FILES", targets.iter().map(|t| t.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","))
        .env("EVIL_PORT", port.to_string())
        .env("EVIL_SECRET", &secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let evil = dir.path().join("evil.pkl");
    // Served: the conversion fails (the file holds no model), the server never starts.
    let mut cmd = command();
    cmd.args(["serve", evil.to_str().unwrap(), "--port", "0", "--admin-port", "0", "--grpc-port", "0"]).env("MODELSHIP_CONVERT_HOME", home.path()).env("MODELSHIP_STATE_DIR", dir.path().join("state"));
    let served = cmd.output().unwrap();
    let err = stderr(&served);
    assert!(!served.status.success() && served.stdout.is_empty(), "{err}");
    assert!(err.contains("not a scikit-learn, XGBoost or LightGBM model"), "{err}");
    // The payload ran, in another process, and changed nothing here.
    assert!(err.contains("the converter process ended") && err.contains("bubblewrap"), "{err}");
    for target in &targets {
        assert!(!target.exists(), "the pickle wrote {} outside the sandbox", target.display());
    }
    assert!(!err.contains("the user's secret"), "the pickle read the secret: {err}");
    let _ = std::fs::remove_file(&secret);
    match listener.accept() {
        Ok((_, from)) => panic!("the pickle connected to the listener from {from}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    // The same payload naming no model library is refused before it is loaded.
    let plain = run(home.path(), &["convert", dir.path().join("evil_plain.pkl").to_str().unwrap()]);
    let err = stderr(&plain);
    assert!(!plain.status.success() && err.contains("a pickle of none of scikit-learn, XGBoost or LightGBM (it names the modules builtins)"), "{err}");
    assert!(targets.iter().all(|t| !t.exists()));
}

#[test]
fn without_a_working_sandbox_a_pickle_is_refused_unless_trusted() {
    let home = convert_home();
    let out = command().args(["convert", &file("lr.pkl")]).env("MODELSHIP_CONVERT_HOME", home.path()).env("MODELSHIP_BWRAP", "/nonexistent/bwrap").output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("apt-get install bubblewrap") && err.contains("--trust-pickle"), "{err}");
    // A data format runs no code of its own: converted, with a warning.
    let json = command().args(["convert", &file("xgb_booster.json"), "--output", "json"]).env("MODELSHIP_CONVERT_HOME", home.path()).env("MODELSHIP_BWRAP", "/nonexistent/bwrap").output().unwrap();
    assert!(json.status.success() && stderr(&json).contains("warning:"), "{}", stderr(&json));
    let record: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(record["isolation"], "none (bubblewrap unavailable; a data format)");
    // Trusted by the user, in so many words: converted, said so, and recorded.
    let trusted = command()
        .args(["convert", &file("lr.pkl"), "--trust-pickle", "--output", "json"])
        .env("MODELSHIP_CONVERT_HOME", home.path())
        .env("MODELSHIP_BWRAP", "/nonexistent/bwrap")
        .output()
        .unwrap();
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    assert!(stderr(&trusted).contains("warning: converting without a sandbox (--trust-pickle)"), "{}", stderr(&trusted));
    let record: Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(record["isolation"], "none (--trust-pickle)");
    // Where the sandbox works, --trust-pickle changes nothing: the sandbox is used.
    let sandboxed = run(convert_home().path(), &["convert", &file("lr.pkl"), "--trust-pickle", "--output", "json"]);
    assert!(sandboxed.status.success(), "{}", stderr(&sandboxed));
    let record: Value = serde_json::from_slice(&sandboxed.stdout).unwrap();
    assert!(record["isolation"].as_str().unwrap().starts_with("bubblewrap"), "{record}");
}

/// A scikit-learn older than the default environment's, with pip's own wheels.
const OLDER_SKLEARN: &str = "1.5.2";

#[test]
fn a_pickle_from_an_older_scikit_learn_is_loaded_by_that_version_or_refused_naming_it() {
    default_python();
    // Its environment, made by the command the refusal names (kept between runs).
    let home = convert_home();
    let setup = run(home.path(), &["convert", "setup", "--scikit-learn", OLDER_SKLEARN]);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let old_python = shared_envs().join(format!("scikit-learn-{OLDER_SKLEARN}/bin/python"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&old_python).arg(root().join("testdata/convert/train.py")).arg(dir.path()).args(["--only", "lr"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pickle = dir.path().join("lr.pkl");

    // Where that environment is not there and may not be created: refused, naming the version
    // found and the command.
    let bare = tempfile::tempdir().unwrap();
    let refused = run(bare.path(), &["convert", pickle.to_str().unwrap(), "--no-install"]);
    let err = stderr(&refused);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains(&format!("written by scikit-learn {OLDER_SKLEARN}")) && err.contains(&format!("modelship convert setup --scikit-learn {OLDER_SKLEARN}")), "{err}");

    // With it: converted by that version, and equal.
    let out = run(home.path(), &["convert", pickle.to_str().unwrap(), "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["environment"], format!("scikit-learn-{OLDER_SKLEARN}"), "{record}");
    assert_eq!(record["libraries"]["scikit-learn"], OLDER_SKLEARN, "{record}");
    assert_eq!(record["verdict"]["rows_outside"], 0, "{record}");

    // --python pointing at an interpreter with another scikit-learn is refused, naming both.
    let other = run(bare.path(), &["convert", pickle.to_str().unwrap(), "--python", default_python().to_str().unwrap()]);
    let err = stderr(&other);
    assert!(!other.status.success() && err.contains(&format!("needs scikit-learn {OLDER_SKLEARN}")) && err.contains("has scikit-learn 1.9.1"), "{err}");
}

#[test]
fn formats_are_told_by_their_content_not_their_name() {
    let home = convert_home();
    let dir = tempfile::tempdir().unwrap();
    // ONNX named .pkl is served as ONNX, with no conversion.
    let renamed = dir.path().join("fraud.pkl");
    std::fs::copy(root().join("examples/models/fraud.onnx"), &renamed).unwrap();
    let server = Server::start_with(&[renamed.to_str().unwrap()], &[("MODELSHIP_CONVERT_HOME", home.path().to_str().unwrap())]);
    assert_eq!(server.ready["model"], "fraud");
    assert!(!server.stderr().contains("converter"), "{}", server.stderr());
    // A pickle named .onnx is converted.
    let disguised = dir.path().join("lr.onnx");
    std::fs::copy(file("lr.pkl"), &disguised).unwrap();
    let out = run(home.path(), &["convert", disguised.to_str().unwrap(), "-o", dir.path().join("out.onnx").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // What is no model says what is taken and how to export.
    for (name, bytes, says) in [
        ("model.pt", &b"PK\x03\x04\x14\x00\x00\x00archive/data.pkl"[..], "torch.onnx.export"),
        ("model.h5", &b"\x89HDF\r\n\x1a\nrest"[..], "tf2onnx"),
        ("notes.txt", &b"hello, not a model"[..], "modelship takes ONNX; scikit-learn estimators"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for args in [vec!["convert", path.to_str().unwrap()], vec!["models", "--registry", dir.path().join("reg").to_str().unwrap(), "push", "m", path.to_str().unwrap(), "--version", "1"]] {
            let out = run(home.path(), &args);
            let err = stderr(&out);
            assert!(!out.status.success() && err.contains(says) && err.lines().count() <= 3, "{args:?}: {err}");
        }
    }
}

#[test]
fn validate_proves_a_conversion_on_its_own_data() {
    let home = convert_home();
    let dir = tempfile::tempdir().unwrap();
    let e = expected("lr");
    let mut csv = String::from("f0,f1,f2,f3,label\n");
    for (row, label) in e["inputs"]["input"].as_array().unwrap().iter().zip(e["answer"]["label"].as_array().unwrap()) {
        let r: Vec<String> = row.as_array().unwrap().iter().map(|v| v.to_string()).collect();
        csv.push_str(&format!("{},{}\n", r.join(","), label.as_str().unwrap()));
    }
    let data = dir.path().join("holdout.csv");
    std::fs::write(&data, csv).unwrap();
    let out = run(home.path(), &["validate", &file("lr.pkl"), "--data", data.to_str().unwrap(), "--label", "label", "--min", "accuracy=0.99", "--output", "json"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("equal to the original on 1000 rows"), "the proof ran on the data's 1000 rows: {err}");
}

#[test]
fn a_served_pickle_that_changes_is_converted_again_and_swapped_in() {
    let home = convert_home();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("model.pkl");
    std::fs::copy(file("lr.pkl"), &served).unwrap();
    let server = Server::start_with(&[served.to_str().unwrap(), "--poll-interval", "0.2"], &[("MODELSHIP_CONVERT_HOME", home.path().to_str().unwrap())]);
    let body = v2_body(&expected("lr"));
    assert_answers_equal("before", &server.post("/v2/models/model/infer", &body).json(), &expected("lr"));
    // Replaced by another model (written beside it, renamed into place).
    let staged = dir.path().join("model.pkl.new");
    std::fs::copy(file("hgb.pkl"), &staged).unwrap();
    std::fs::rename(&staged, &served).unwrap();
    let started = Instant::now();
    loop {
        let reply = server.post("/v2/models/model/infer", &body);
        if reply.header("x-model-version").is_some_and(|v| v.starts_with("1-")) {
            assert_answers_equal("after", &reply.json(), &expected("hgb"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the new contents were not served: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.stderr().contains("the model file changed; now serving its new contents"));
}
