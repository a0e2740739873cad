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
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s3");
    std::fs::create_dir_all(data.join("models")).unwrap(); // the bucket
    let port = free_port();
    let mut cmd = Command::new(tool(".cache/tools/bin/s3s-fs"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", KEY, "--secret-key", SECRET]).arg(&data);
    let mut s3 = Service::start("s3s-fs", cmd, dir.path().join("s3s.log"));
    s3.wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let env = s3_env(port);
    let reg = dir.path().join("registry");
    let reg = reg.to_str().unwrap();
    let out = models(&env, &["--registry", reg, "--artifacts", "s3://models/team-a", "push", "fraud", &model("fraud"), "--version", "1", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = pushed["version"]["digest"].as_str().unwrap().to_owned();
    // The object is in the bucket, under its digest; nothing under the registry directory.
    let object = data.join("models/team-a/sha256").join(&digest);
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
