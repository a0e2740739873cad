//! `models import mlflow` against a real MLflow tracking server on loopback (PyPI `mlflow`,
//! installed by scripts/setup.sh --test), with models registered through MLflow's Python API.

use std::process::Command;
use std::time::Duration;

use crate::support::{Server, Service, agent, command, fraud_body, free_port, model, root, tool};

fn models(args: &[&str]) -> std::process::Output {
    command().arg("models").args(args).output().unwrap()
}

#[test]
fn imports_a_version_by_number_and_by_alias() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(tool(".venv/bin/mlflow"));
    // MLflow 3's usage telemetry calls home (unreachable here) and once failed a client request
    // with KeyError '_MLFLOW_TELEMETRY_SESSION_ID'; the tests never want it.
    cmd.env("MLFLOW_DISABLE_TELEMETRY", "true").env("DO_NOT_TRACK", "true");
    cmd.args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.path().join("mlflow.db").display()))
        .arg("--artifacts-destination")
        .arg(dir.path().join("artifacts"))
        .current_dir(dir.path());
    let mut mlflow = Service::start("mlflow server", cmd, dir.path().join("mlflow.log"));
    let health = agent();
    // MLflow's server takes a while to start (database migrations, workers).
    mlflow.wait_until(Duration::from_secs(180), || {
        health.get(format!("{uri}/health")).call().is_ok_and(|r| r.status() == 200)
    });

    let register = |name: &str, file: &str, alias: Option<&str>| -> String {
        let mut cmd = Command::new(tool(".venv/bin/python"));
        cmd.env("MLFLOW_DISABLE_TELEMETRY", "true").env("DO_NOT_TRACK", "true");
        cmd.arg(root().join("testdata/mlflow_register.py")).args([&uri, name, file]);
        if let Some(a) = alias {
            cmd.arg(a);
        }
        let out = cmd.current_dir(dir.path()).stdin(std::process::Stdio::null()).output().unwrap();
        assert!(out.status.success(), "registration failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_owned()
    };
    assert_eq!(register("fraud", &model("fraud"), Some("champion")), "1");
    assert_eq!(register("fraud", &model("xgboost"), None), "2");

    let reg = dir.path().join("registry");
    let reg = reg.to_str().unwrap();
    let out = models(&["--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "fraud", "@champion", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let imported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &imported["version"];
    assert_eq!(v["version"], "1");
    assert_eq!(v["metrics"]["auc"], 0.931);
    assert_eq!(v["labels"]["team"], "risk");
    assert_eq!(v["description"], "gradient boosting, registered from the tests");
    assert_eq!(v["onnx"]["inputs"][0]["name"], "input");
    let pulled = dir.path().join("pulled.onnx");
    assert!(models(&["--registry", reg, "pull", "fraud:1", "-o", pulled.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read(&pulled).unwrap(), std::fs::read(model("fraud")).unwrap());

    // By number, under another name; importing again changes nothing.
    let out = models(&["--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "fraud", "2", "--as", "fraud-xgb"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported MLflow fraud version 2 as fraud-xgb:2"), "{}", String::from_utf8_lossy(&out.stderr));
    let again = models(&["--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "fraud", "2", "--as", "fraud-xgb"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing changed"));

    // Unknown versions and aliases are named.
    let out = models(&["--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "fraud", "9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = models(&["--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "fraud", "@nope"]);
    assert!(!out.status.success());

    // The imported model serves.
    let server = Server::start(&["fraud-xgb:2", "--registry", reg]);
    let reply = server.post("/v2/models/fraud-xgb/infer", &fraud_body(2));
    assert_eq!((reply.status, reply.header("x-model-version")), (200, Some("2")));

    // The sklearn flavour (model.pkl and its MLmodel): converted on import, in the sandbox, by
    // the scikit-learn the MLmodel and the pickle name, and proven equal before it is pushed.
    use crate::convert::{assert_answers_equal, convert_home, expected, file, v2_body};
    let home = convert_home();
    let import = |version: &str| -> serde_json::Value {
        let out = command()
            .args(["models", "--registry", reg, "import", "mlflow", "--tracking-uri", &uri, "credit", version, "--output", "json"])
            .env("MODELSHIP_CONVERT_HOME", home.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let serves_as_the_original = |version: &str| {
        let server = Server::start(&[&format!("credit:{version}"), "--registry", reg]);
        let reply = server.post("/v2/models/credit/infer", &v2_body(&expected("lr")));
        assert_answers_equal(&format!("MLflow's sklearn flavour, version {version}"), &reply.json(), &expected("lr"));
    };
    assert_eq!(register("credit", &file("lr.pkl"), None), "1");
    let imported = import("1");
    let labels = &imported["version"]["labels"];
    assert_eq!(labels["source_format"], "pickle", "{imported}");
    assert_eq!(labels["mlflow.version"], "1", "{imported}");
    assert!(labels["source_model"].as_str().unwrap().starts_with("Pipeline (loaded with scikit-learn "), "{imported}");
    serves_as_the_original("1");
    // MLflow's default for the flavour is skops (model.skops): converted the same way.
    assert_eq!(register("credit", &format!("skops:{}", file("lr.pkl")), None), "2");
    let imported = import("2");
    assert_eq!(imported["version"]["labels"]["source_format"], "skops", "{imported}");
    serves_as_the_original("2");
}
