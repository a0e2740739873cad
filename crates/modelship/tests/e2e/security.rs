//! TLS on every listener, inference API keys, and labels that need the control token.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{Server, fraud_body, model};

/// A self-signed certificate for localhost, made for this test.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

fn tls_agent(cert_pem: &str) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let root = Certificate::from_pem(cert_pem.as_bytes()).unwrap().to_owned();
    let tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(vec![root]))).build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into()
}

fn port(addr: &serde_json::Value) -> u16 {
    addr.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn tls_on_http_grpc_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path());
    let server = Server::start(&[&model("fraud"), "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let agent = tls_agent(&pem);
    let base = format!("https://localhost:{}", port(&server.ready["http"]));
    let mut r = agent.post(&format!("{base}/v2/models/fraud/infer")).header("content-type", "application/json").send(fraud_body(1)).unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    // Plain HTTP to the TLS port gets no answer.
    assert!(crate::support::agent().get(&format!("http://127.0.0.1:{}/health/live", port(&server.ready["http"]))).call().is_err());
    // The admin listener is TLS too (and still wants its token).
    let admin = format!("https://localhost:{}/admin/v1/models/fraud/traffic", port(&server.ready["admin"]));
    assert_eq!(agent.get(&admin).call().unwrap().status().as_u16(), 401);

    #[cfg(feature = "grpc")]
    {
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pem).unwrap();
        let script = format!(
            "import numpy as np, tritonclient.grpc as g\n\
             c = g.InferenceServerClient('localhost:{}', ssl=True, root_certificates='{}')\n\
             print('live', c.is_server_live(), 'ready', c.is_model_ready('fraud'))",
            port(&server.ready["grpc"]),
            ca.display()
        );
        let out = std::process::Command::new(crate::support::tool(".cache/triton-venv/bin/python")).args(["-c", &script]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("live True ready True"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn api_keys_from_a_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "# team fraud\nfile-key-0123456789abcdef\n").unwrap();
    let server = Server::start_with(
        &[&model("fraud"), "--api-keys-file", keys.to_str().unwrap()],
        &[("MODELSHIP_API_KEYS", "env-key-0123456789abcdef")],
    );
    let agent = crate::support::agent();
    let infer = server.url("/v2/models/fraud/infer");
    let send = |key: Option<(&str, &str)>| {
        let mut request = agent.post(&infer).header("content-type", "application/json");
        if let Some((h, v)) = key {
            request = request.header(h, v);
        }
        let mut r = request.send(fraud_body(1)).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, body) = send(None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("API key"), "{body}");
    assert_eq!(send(Some(("x-api-key", "wrong-key-0123456789abcdef"))).0, 401);
    assert_eq!(send(Some(("x-api-key", "file-key-0123456789abcdef"))).0, 200);
    assert_eq!(send(Some(("authorization", "Bearer env-key-0123456789abcdef"))).0, 200);
    assert_eq!(server.get("/health/ready").status, 200, "probes need no key");
    assert_eq!(server.get("/metrics").status, 200, "metrics need no key");
    assert!(!server.stderr().contains("key-0123456789abcdef"), "keys never reach the logs");

    #[cfg(feature = "grpc")]
    {
        let script = format!(
            "import tritonclient.grpc as g\n\
             c = g.InferenceServerClient('{}')\n\
             try:\n    c.is_model_ready('fraud'); print('open')\n\
             except Exception as e: print('refused', e.status())\n\
             print('keyed', c.is_model_ready('fraud', headers={{'x-api-key': 'file-key-0123456789abcdef'}}))",
            server.ready["grpc"].as_str().unwrap()
        );
        let out = std::process::Command::new(crate::support::tool(".cache/triton-venv/bin/python")).args(["-c", &script]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("refused StatusCode.UNAUTHENTICATED") && stdout.contains("keyed True"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_bad_key_file_stops_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, "short\n").unwrap();
    let out = crate::support::command().args(["serve", &model("fraud"), "--port", "0", "--api-keys-file", keys.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 1: an API key must be at least 16") && !stderr.contains("short\n"), "{stderr}");
}

/// An admin token shorter than 16 characters is refused from the environment and from the token
/// file, each naming its source; a good one is logged by where it came from, never shown.
#[test]
fn a_short_admin_token_is_refused_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let short_file = dir.path().join("admin-token");
    std::fs::write(&short_file, "shortfile\n").unwrap();
    let serve = |env: &[(&str, &str)], token_file: &std::path::Path| {
        let mut cmd = crate::support::command();
        cmd.args(["serve", &model("fraud"), "--host", "127.0.0.1", "--port", "0", "--admin-token-file"]).arg(token_file);
        cmd.env("MODELSHIP_STATE_DIR", dir.path()).env_remove("MODELSHIP_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A server that accepted the token would run until stopped: give it 30 s to refuse.
        let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    let unused = dir.path().join("unused-token");
    for (env, file, names) in [
        (&[("MODELSHIP_ADMIN_TOKEN", "a")][..], unused.as_path(), "MODELSHIP_ADMIN_TOKEN is shorter than 16 characters"),
        (&[][..], short_file.as_path(), "is shorter than 16 characters"),
    ] {
        let out = serve(env, file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(names), "{stderr}");
        assert!(!stderr.contains("shortfile"), "the token is never shown: {stderr}");
        assert!(out.stdout.is_empty(), "no ready line");
    }
    assert!(String::from_utf8_lossy(&serve(&[], &short_file).stderr).contains(&short_file.display().to_string()), "the file is named");

    let token = "env-admin-token-0123456789";
    let server = Server::start_with(&[&model("fraud"), "--log-format", "text"], &[("MODELSHIP_ADMIN_TOKEN", token)]);
    let listening = wait_for_log(&server, "admin API listening");
    assert!(listening.contains("token_source=MODELSHIP_ADMIN_TOKEN"), "{listening}");
    assert!(!server.stderr().contains(token), "the token is never logged");
}

/// Text logs to a file or a pipe carry no colour codes (they are for terminals only).
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let server = Server::start(&[&model("fraud"), "--log-format", "text"]);
    wait_for_log(&server, "admin API listening");
    let logs = server.stderr();
    assert!(!logs.contains("\x1b["), "ANSI escape codes in piped logs: {logs:?}");
    assert!(logs.contains(" INFO "), "{logs}");
}

/// The line of the server's log that contains `needle`, once it has arrived.
fn wait_for_log(server: &Server, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = server.stderr().lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no log line with '{needle}': {}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}
