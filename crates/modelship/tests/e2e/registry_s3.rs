//! Artifacts in S3-compatible storage, against a real S3 server on loopback: s3s-fs, an S3
//! implementation over a local directory (crates.io, installed by scripts/setup.sh --test).

use std::process::Command;
use std::time::Duration;

use crate::support::{Server, Service, command, fraud_body, free_port, model, tool};

const KEY: &str = "modelship-test";
const SECRET: &str = "modelship-test-secret";

fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ]
}

/// A real S3 server on loopback (s3s-fs over a temporary directory) with one bucket, `models`.
pub struct S3 {
    service: Option<Service>,
    port: u16,
    dir: tempfile::TempDir,
    /// The address it listens on.
    bind: String,
}

impl S3 {
    pub fn start() -> S3 {
        S3::start_on("127.0.0.1")
    }

    /// Listening on `bind` (`0.0.0.0`: loopback and a net's gateway too, for hosts in
    /// namespaces; they reach it with [`S3::env_at`]).
    pub fn start_on(bind: &str) -> S3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("s3/models")).unwrap(); // the bucket
        let mut s3 = S3 { service: None, port: free_port(), dir, bind: bind.to_owned() };
        s3.run();
        s3
    }

    fn run(&mut self) {
        let port = self.port;
        let mut cmd = Command::new(tool(".cache/tools/bin/s3s-fs"));
        cmd.args(["--host", &self.bind, "--port", &port.to_string(), "--access-key", KEY, "--secret-key", SECRET]).arg(self.dir.path().join("s3"));
        let mut service = Service::start("s3s-fs", cmd, self.dir.path().join("s3s.log"));
        service.wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        self.service = Some(service);
    }

    /// Kills the server (its data stays): requests to it are refused until [`S3::restart`].
    pub fn kill(&mut self) {
        self.service = None;
    }

    /// Starts the server again, on the same port and data.
    pub fn restart(&mut self) {
        self.run();
    }

    /// The AWS_* variables that reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        s3_env(self.port)
    }

    /// The AWS_* variables that reach this server at `address` (from another host).
    pub fn env_at(&self, address: &str) -> Vec<(&'static str, String)> {
        let mut env = s3_env(self.port);
        env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL", format!("http://{address}:{}", self.port)));
        env
    }

    /// Where the server keeps `key` of bucket `models`, to look at or damage.
    pub fn object(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join("s3/models").join(key)
    }

    /// `modelship models ARGS` against this server.
    pub fn models(&self, args: &[&str]) -> std::process::Output {
        models(&self.env(), args)
    }
}

fn models(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = command();
    cmd.arg("models").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn artifacts_live_in_s3_and_are_verified() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let env = s3.env();
    let reg = dir.path().join("registry");
    let reg = reg.to_str().unwrap();
    let out = models(&env, &["--registry", reg, "--artifacts", "s3://models/team-a", "push", "fraud", &model("fraud"), "--version", "1", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = pushed["version"]["digest"].as_str().unwrap().to_owned();
    // The object is in the bucket, under its digest; nothing under the registry directory.
    let object = s3.object(&format!("team-a/sha256/{digest}"));
    assert_eq!(std::fs::read(&object).unwrap(), std::fs::read(model("fraud")).unwrap());
    assert!(!dir.path().join("registry/artifacts").exists());

    // The registry remembers where its artifacts are.
    let out = models(&env, &["--registry", reg, "show", "fraud:1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("s3://models/team-a"), "{}", String::from_utf8_lossy(&out.stdout));
    let other = models(&env, &["--registry", reg, "--artifacts", "s3://other", "ls"]);
    assert!(String::from_utf8_lossy(&other.stderr).contains("keeps its artifacts in s3://models/team-a"));

    let pulled = dir.path().join("pulled.onnx");
    let out = models(&env, &["--registry", reg, "pull", "fraud:1", "-o", pulled.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&pulled).unwrap(), std::fs::read(model("fraud")).unwrap());

    // Served straight from S3.
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&["fraud:1", "--registry", reg], &env_refs);
    assert_eq!(server.post("/v2/models/fraud/infer", &fraud_body(1)).status, 200);
    drop(server);

    // A tampered object is caught.
    std::fs::write(&object, b"not the model").unwrap();
    let out = models(&env, &["--registry", reg, "pull", "fraud:1", "-o", pulled.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is corrupt"), "{}", String::from_utf8_lossy(&out.stderr));

    // Wrong credentials are an error that does not echo the secret.
    let mut bad = env.clone();
    bad[1].1 = "wrong-secret-value".to_owned();
    let out = models(&bad, &["--registry", reg, "pull", "fraud:1", "-o", pulled.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-secret-value"));
}

/// A registry wholly in the bucket: hosts that share no disk (here, CLI calls and servers with
/// no registry directory and each its own home) push, move aliases and serve from it.
#[test]
fn a_registry_in_a_bucket_needs_no_shared_disk() {
    let s3 = S3::start();
    let registry = "s3://models/fleet";
    let host = |name: &str| {
        let home = tempfile::tempdir().unwrap();
        eprintln!("host {name}: home {}", home.path().display());
        home
    };
    let (ci, laptop) = (host("ci"), host("laptop"));
    let run = |home: &tempfile::TempDir, args: &[&str]| {
        let mut env = s3.env();
        env.push(("HOME", home.path().to_str().unwrap().to_owned()));
        let mut all = vec!["--registry", registry];
        all.extend_from_slice(args);
        let out = models(&env, &all);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, _, err) = run(&ci, &["push", "fraud", &model("fraud"), "--version", "1", "--metric", "auc=0.93"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&ci, &["alias", "fraud", "production", "1"]);
    assert!(ok, "{err}");
    // The catalog is a document in the bucket, beside the artifact; nothing on either host.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(s3.object("fleet/catalog/fraud.json")).unwrap()).unwrap();
    assert_eq!(doc["aliases"]["production"], "1", "{doc}");
    let digest = doc["versions"][0]["digest"].as_str().unwrap();
    assert_eq!(std::fs::read(s3.object(&format!("fleet/sha256/{digest}"))).unwrap(), std::fs::read(model("fraud")).unwrap());
    for home in [&ci, &laptop] {
        assert!(std::fs::read_dir(home.path()).unwrap().next().is_none(), "a bucket registry writes nothing at home");
    }

    // Another host sees it, and the rules hold across hosts: versions are immutable.
    let (ok, out, _) = run(&laptop, &["ls", "--output", "json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((listed[0]["version"].as_str(), listed[0]["aliases"][0].as_str()), (Some("1"), Some("production")), "{listed}");
    let (ok, _, err) = run(&laptop, &["push", "fraud", &model("xgboost"), "--version", "1"]);
    assert!(!ok && err.contains("already exists with different content"), "{err}");
    let (ok, _, err) = run(&laptop, &["--artifacts", "s3://models/other", "ls"]);
    assert!(!ok && err.contains("same bucket and prefix"), "{err}");

    // A server with no registry directory follows the alias; a push and alias move from the CI
    // host reach it.
    let state = tempfile::tempdir().unwrap();
    let mut env = s3.env();
    env.push(("HOME", state.path().to_str().unwrap().to_owned()));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&["fraud@production", "--registry", registry, "--poll-interval", "0.2"], &env_refs);
    let served = |s: &Server| s.post("/v2/models/fraud/infer", &fraud_body(1)).json()["model_version"].as_str().map(str::to_owned);
    assert_eq!(served(&server).as_deref(), Some("1"));
    let (ok, _, err) = run(&ci, &["push", "fraud", &model("xgboost"), "--version", "2"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&ci, &["alias", "fraud", "production", "2"]);
    assert!(ok, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while served(&server).as_deref() != Some("2") {
        assert!(std::time::Instant::now() < deadline, "the alias move never reached the server:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, _) = run(&laptop, &["history", "fraud", "--output", "json"]);
    assert!(ok);
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");

    // A damaged catalog document is an error naming it, never a crash or an empty registry.
    std::fs::write(s3.object("fleet/catalog/fraud.json"), b"{ not json").unwrap();
    let (ok, _, err) = run(&laptop, &["show", "fraud@production"]);
    assert!(!ok && err.contains("s3://models/fleet/catalog/fraud.json"), "{err}");
    assert_eq!(served(&server).as_deref(), Some("2"), "the server keeps serving what it loaded");
}
