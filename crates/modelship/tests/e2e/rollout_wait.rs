//! `modelship rollout start --wait` and `rollout wait` against a real server: exit 0 when the
//! rollout promotes, 3 when it rolls back by itself, 4 when --timeout passes first, with a line
//! per decision for CI logs (this process is no terminal) and the final status as JSON.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::Value;

use crate::support::{Server, agent, command, fraud_body, model, reply};

struct Setup {
    _registry: tempfile::TempDir,
    state: tempfile::TempDir,
    server: Server,
}

/// A server of fraud:1 with fraud:2 (xgboost) and fraud:3 (fails every request) in its registry.
fn setup() -> Setup {
    let registry = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for (file, version) in [("fraud", "1"), ("xgboost", "2"), ("faulty", "3")] {
        let out = command().args(["models", "push", "fraud", &model(file), "--version", version, "--registry"]).arg(registry.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let server = Server::start_with(&["fraud:1", "--registry", registry.path().to_str().unwrap(), "--workers", "1"], &[("MODELSHIP_STATE_DIR", state.path().to_str().unwrap())]);
    Setup { _registry: registry, state, server }
}

impl Setup {
    fn rollout(&self, args: &[&str], spec: Option<&str>) -> Output {
        let mut cmd = command();
        cmd.arg("rollout").args(args).args(["--admin", &format!("http://{}", self.server.ready["admin"].as_str().unwrap())]).env("MODELSHIP_STATE_DIR", self.state.path());
        if let Some(text) = spec {
            let file = self.state.path().join("spec.yaml");
            std::fs::write(&file, text).unwrap();
            cmd.args(["--spec", file.to_str().unwrap()]);
        }
        cmd.output().unwrap()
    }

    /// Requests to the model until the returned flag is set.
    fn load(&self) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<()>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..2)
            .map(|_| {
                let (url, stop) = (self.server.url("/v2/models/fraud/infer"), stop.clone());
                thread::spawn(move || {
                    let agent = agent();
                    while !stop.load(Ordering::Relaxed) {
                        let _ = agent.post(&url).header("content-type", "application/json").send(&fraud_body(1)).map(reply);
                    }
                })
            })
            .collect();
        (stop, clients)
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn start_wait_exits_0_when_the_rollout_promotes() {
    let s = setup();
    let out = s.rollout(&["start", "fraud", "--to", "2", "--wait", "--timeout", "60s"], Some("steps:\n  - weight: {weight: 50%, hold: 1s}\ninterval: 200ms\n"));
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // A line per decision, and the verdict at the end.
    assert!(log.lines().any(|l| l.contains(" route 50%") && l.ends_with("rollout started; step 1 of 1")) && log.contains(" promote: "), "{log}");
    assert!(log.trim_end().ends_with("rollout 1 of fraud promoted to 2 after 1 step"), "{log}");
    assert_eq!(s.server.post("/v2/models/fraud/infer", &fraud_body(1)).header("x-model-version"), Some("2"));
    // `rollout wait` on a rollout already done answers at once, by its outcome; JSON on stdout.
    let out = s.rollout(&["wait", "fraud", "--output", "json"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status["rollout"].as_i64(), status["phase"]["phase"].as_str()), (Some(1), Some("promoted")), "{status}");
}

#[test]
fn start_wait_exits_3_when_the_rollout_rolls_back_by_itself() {
    let s = setup();
    let (stop, clients) = s.load();
    let spec = "canary: {weights: [50, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 1, min_samples: 10}\ninterval: 300ms\n";
    let out = s.rollout(&["start", "fraud", "--to", "3", "--wait", "--timeout", "60s"], Some(spec));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let log = text(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.lines().any(|l| l.contains("rollback: ") && l.contains("error_rate")), "{log}");
    assert!(log.contains("rollout 1 of fraud rolled back at step 1/2"), "{log}");
    assert_eq!(s.rollout(&["wait", "fraud"], None).status.code(), Some(3));
}

#[test]
fn wait_exits_4_when_its_timeout_passes_first() {
    let s = setup();
    let out = s.rollout(&["start", "fraud", "--to", "2"], Some("steps:\n  - weight: {weight: 10%, hold: 1h}\n"));
    assert!(out.status.success(), "{}", text(&out));
    let out = s.rollout(&["wait", "fraud", "--timeout", "2s"], None);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(4), "{log}");
    assert!(log.contains("step 1/1 weight 10% for 1h") && log.contains("stopped waiting after 2s: rollout 1 of fraud is still progressing"), "{log}");
    // Bad input: a duration that is none, a model with no rollout.
    let out = s.rollout(&["wait", "fraud", "--timeout", "soon"], None);
    assert!(out.status.code() == Some(1) && text(&out).contains("--timeout soon: give a duration"), "{}", text(&out));
    let out = s.rollout(&["wait", "other"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
