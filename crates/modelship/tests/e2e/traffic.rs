//! Several versions at once through the real binary: canary weights, sticky users, pinned and
//! canary headers, shadow, the admin API's protection, and the history across a restart. Tests
//! that need no process of their own (changes under load, rollbacks by the rollout itself, gates
//! that hang, keep-warm expiry) run on an in-process server: [`crate::inproc_traffic`].

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, agent, command, fraud_body, model, reply};

pub(crate) struct Fleet {
    pub(crate) registry: tempfile::TempDir,
    pub(crate) state: tempfile::TempDir,
}

/// A registry with fraud:1 (gradient boosting) and fraud:2 (xgboost).
pub(crate) fn fleet() -> Fleet {
    let fleet = Fleet { registry: tempfile::tempdir().unwrap(), state: tempfile::tempdir().unwrap() };
    fleet.push("fraud", "1");
    fleet.push("xgboost", "2");
    fleet
}

impl Fleet {
    /// Pushes fixture `file` as version `version` of model fraud.
    pub(crate) fn push(&self, file: &str, version: &str) {
        let out = command()
            .args(["models", "push", "fraud", &model(file), "--version", version, "--registry"])
            .arg(self.registry.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub(crate) fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec!["fraud:1", "--registry", self.registry.path().to_str().unwrap(), "--keep-warm", "60"];
        args.extend_from_slice(extra);
        Server::start_with(&args, &[("MODELSHIP_STATE_DIR", self.state.path().to_str().unwrap())])
    }

    fn traffic(&self, server: &Server, args: &[&str]) -> Output {
        command()
            .arg("traffic")
            .args(args)
            .args(["--admin", &format!("http://{}", server.ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_STATE_DIR", self.state.path())
            .output()
            .unwrap()
    }

    pub(crate) fn ok(&self, server: &Server, args: &[&str]) -> String {
        let out = self.traffic(server, args);
        assert!(out.status.success(), "traffic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, server: &Server) -> Value {
        serde_json::from_str(&self.ok(server, &["status", "fraud", "--output", "json"])).unwrap()
    }
}

fn version_of(server: &Server, headers: &[(&str, &str)]) -> String {
    let r = server.post_with("/v2/models/fraud/infer", &fraud_body(1), headers);
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("x-model-version").unwrap().to_owned()
}

#[test]
fn the_admin_api_needs_its_token_and_the_inference_port_has_none() {
    let fleet = fleet();
    let server = fleet.serve(&[]);
    let admin = format!("http://{}/admin/v1/models/fraud/traffic", server.ready["admin"].as_str().unwrap());
    let change = r#"{"change": {"op": "canary", "version": "2", "weight": 5000}}"#;
    for auth in [None, Some("Bearer wrong-token-000000000000"), Some("Basic abc")] {
        // A client of its own per refusal: the server may close a connection whose body it
        // refused unread, and a pooled one would then fail the next request before it is sent.
        let mut req = agent().post(&admin).header("content-type", "application/json");
        if let Some(v) = auth {
            req = req.header("authorization", v);
        }
        let r = reply(req.send(change).unwrap());
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("admin token"));
    }
    // The same request on the inference port: no such route.
    let r = server.post("/admin/v1/models/fraud/traffic", change);
    assert_eq!(r.status, 404);
    assert_eq!(fleet.status(&server)["revision"], 0, "nothing changed");
    // The token file the server wrote is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fleet.state.path().join("admin-token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!server.stderr().contains(std::fs::read_to_string(fleet.state.path().join("admin-token")).unwrap().trim()), "token logged");
}

#[test]
fn canary_weights_headers_and_sticky_users() {
    let fleet = fleet();
    let server = fleet.serve(&[]);
    assert!(fleet.ok(&server, &["set", "fraud", "--candidate", "2", "--weight", "30%"]).contains("2 30% (candidate)"));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1_000 {
        *counts.entry(version_of(&server, &[])).or_default() += 1;
    }
    let share = counts.get("2").copied().unwrap_or(0) as f64 / 1_000.0;
    assert!((share - 0.30).abs() < 0.06, "{counts:?}");
    // Headers: the canary header goes to the candidate, the pin header to any loaded version.
    assert!((0..20).all(|_| version_of(&server, &[("x-canary", "true")]) == "2"));
    assert!((0..20).all(|_| version_of(&server, &[("x-model-version", "1")]) == "1"));
    let r = server.post_with("/v2/models/fraud/infer", &fraud_body(1), &[("x-model-version", "9")]);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("available: 1, 2"));
    // Sticky: the same user always gets the same version, and users spread by the weight.
    fleet.ok(&server, &["set", "fraud", "--sticky-header", "x-user-id", "--weight", "50%"]);
    let mut per_user = HashMap::new();
    for user in 0..200 {
        let id = format!("user-{user}");
        let first = version_of(&server, &[("x-user-id", &id)]);
        for _ in 0..3 {
            assert_eq!(version_of(&server, &[("x-user-id", &id)]), first, "{id}");
        }
        per_user.insert(id, first);
    }
    let on_candidate = per_user.values().filter(|v| *v == "2").count();
    assert!((60..=140).contains(&on_candidate), "{on_candidate} of 200 users on the candidate at 50%");
    // Raising the weight only moves users to the candidate.
    fleet.ok(&server, &["set", "fraud", "--weight", "80%"]);
    for (id, before) in &per_user {
        if before == "2" {
            assert_eq!(version_of(&server, &[("x-user-id", id)]), "2", "{id} moved back");
        }
    }
    let metrics = server.get("/metrics").text;
    assert!(metrics.contains(r#"modelship_traffic_weight_bp{model="fraud",role="candidate",version="2"} 8000"#), "{metrics}");
    assert!(metrics.contains(r#"role="candidate""#) && metrics.contains(r#"role="pinned""#));
}

#[test]
fn shadow_compares_answers_and_never_returns_them() {
    let fleet = fleet();
    let server = fleet.serve(&[]);
    fleet.ok(&server, &["shadow", "fraud", "--version", "2", "--percent", "100"]);
    for i in 0..200 {
        let body = crate::support::fraud_body(1 + i % 3);
        let r = server.post("/v2/models/fraud/infer", &body);
        assert_eq!((r.status, r.header("x-model-version")), (200, Some("1")));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = fleet.status(&server);
        if status["shadow"]["compared"].as_u64().unwrap_or(0) + status["shadow"]["dropped"].as_u64().unwrap_or(0) >= 200 {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        thread::sleep(Duration::from_millis(50));
    };
    let shadow = &status["shadow"];
    assert!(shadow["compared"].as_u64().unwrap() > 0);
    // Two different models: scores differ, so the mean difference is above zero.
    assert!(shadow["mean_abs_diff"].as_f64().unwrap() > 0.0, "{shadow}");
    let agreement = shadow["agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    let text = fleet.ok(&server, &["status", "fraud"]);
    assert!(text.contains("shadow 2:") && text.contains("agreement"), "{text}");
    let metrics = server.get("/metrics").text;
    assert!(metrics.contains("modelship_shadow_comparisons_total{"), "{metrics}");
    // The stable version never shadows itself: refused, and nothing changes.
    let out = fleet.traffic(&server, &["shadow", "fraud", "--version", "1", "--percent", "100"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is the stable version"));
    // The same model under another version agrees fully.
    fleet.ok(&server, &["shadow", "fraud", "--off"]);
    fleet.push("fraud", "3");
    fleet.ok(&server, &["shadow", "fraud", "--version", "3", "--percent", "100"]);
    for _ in 0..50 {
        assert_eq!(server.post("/v2/models/fraud/infer", &fraud_body(1)).status, 200);
    }
    thread::sleep(Duration::from_millis(300));
    let same = &fleet.status(&server)["shadow"];
    assert_eq!(same["agreed"], same["compared"], "{same}");
}

#[test]
fn the_routing_and_its_history_survive_a_restart() {
    let fleet = fleet();
    let mut server = fleet.serve(&[]);
    fleet.ok(&server, &["set", "fraud", "--candidate", "2", "--weight", "25%", "--reason", "before restart"]);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).code(), Some(0));
    let server = fleet.serve(&[]);
    let status = fleet.status(&server);
    assert_eq!(status["revision"], 1);
    assert_eq!(status["traffic"]["candidate"]["version"], "2");
    assert_eq!(status["traffic"]["candidate"]["weight"], 2500);
    assert_eq!(status["loaded_versions"], serde_json::json!(["1", "2"]));
    let history = fleet.ok(&server, &["history", "fraud"]);
    assert!(history.contains("before restart") && history.contains("initial routing"), "{history}");
    // A file-served model cannot route to other versions, and says why.
    let other = fleet.state.path().join("other");
    let plain = Server::start_with(&[&model("fraud")], &[("MODELSHIP_STATE_DIR", other.to_str().unwrap())]);
    let out = command()
        .args(["traffic", "set", "fraud", "--candidate", "2", "--weight", "5%", "--admin"])
        .arg(format!("http://{}", plain.ready["admin"].as_str().unwrap()))
        .env("MODELSHIP_STATE_DIR", &other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("serves a file") && err.contains("HTTP 409"), "{err}");
}

/// Runs `clients` threads posting single rows until the returned flag is set; counts failures
/// (status other than 200) that happen while `counting` is set.
pub(crate) fn load(server: &crate::support::Client, clients: usize) -> (Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>, Vec<thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(true));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handles = (0..clients)
        .map(|_| {
            let (url, stop, counting, sent, failed) = (server.url("/v2/models/fraud/infer"), stop.clone(), counting.clone(), sent.clone(), failed.clone());
            thread::spawn(move || {
                let agent = agent();
                let body = fraud_body(1);
                while !stop.load(Ordering::Relaxed) {
                    // Counted by when it was sent: a request sent before the counting starts (say,
                    // to a candidate just rolled back) is not one of those counted after.
                    let counted = counting.load(Ordering::Relaxed);
                    let answer = agent.post(&url).header("content-type", "application/json").send(&body).map(reply);
                    let ok = answer.as_ref().is_ok_and(|r| r.status == 200);
                    if counted {
                        sent.fetch_add(1, Ordering::Relaxed);
                        // The first few failures say why, for the test that finds them.
                        if !ok && failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            match &answer {
                                Ok(r) => eprintln!("load: a request failed: {} {}", r.status, r.text),
                                Err(e) => eprintln!("load: a request failed: {e}"),
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (stop, counting, sent, failed, handles)
}

pub(crate) fn rollout(fleet: &Fleet, server: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&rollout_text(fleet, server, &[args, &["--output", "json"]].concat())).unwrap()
}

/// What `modelship rollout ARGS` prints (for people, unless ARGS ask for JSON).
fn rollout_text(fleet: &Fleet, server: &Server, args: &[&str]) -> String {
    let out = command()
        .arg("rollout")
        .args(args)
        .args(["--admin", &format!("http://{}", server.ready["admin"].as_str().unwrap())])
        .env("MODELSHIP_STATE_DIR", fleet.state.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "rollout {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn wait_phase(fleet: &Fleet, server: &Server, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = rollout(fleet, server, &["status", "fraud"]);
        if status["phase"]["phase"] == phase {
            return status;
        }
        assert!(Instant::now() < deadline, "never reached {phase}: {status}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rollout_promotes_a_healthy_version_under_load() {
    let fleet = fleet();
    let server = fleet.serve(&["--workers", "1"]);
    let spec = fleet.state.path().join("canary.yaml");
    std::fs::write(
        &spec,
        "rollout:\n  model: fraud\n  linear: {step: 50%, every: 2s}\n  checks:\n    - error_rate: {}\n    - latency: {max_ratio: 3.0}\n  failure: {min_samples: 20, deadline: 2m}\n  interval: 500ms\n",
    )
    .unwrap();
    let (stop, _, sent, failed, clients) = load(&server, 3);
    let started = rollout(&fleet, &server, &["start", "fraud", "--to", "2", "--spec", spec.to_str().unwrap()]);
    assert_eq!(started["phase"]["phase"], "progressing");
    let done = wait_phase(&fleet, &server, "promoted");
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "of {} requests: {done}", sent.load(Ordering::Relaxed));
    assert_eq!(fleet.status(&server)["traffic"]["stable"], "2");
    assert_eq!(version_of(&server, &[]), "2");
    let history = rollout(&fleet, &server, &["history", "fraud"]);
    let actions: Vec<&str> = history.as_array().unwrap().iter().map(|d| d["action"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["route", "route", "promote"], "{history}");
    // The traffic history shows the rollout's own revisions.
    let revisions = fleet.ok(&server, &["history", "fraud"]);
    assert!(revisions.contains("rollout 1:"), "{revisions}");
}

#[test]
fn an_invalid_spec_is_refused_with_every_problem_before_anything_changes() {
    let fleet = fleet();
    let server = fleet.serve(&[]);
    let spec = fleet.state.path().join("canary.yaml");
    std::fs::write(&spec, "to: 2\ncanary: {weights: [50, 10], every: 1m}\nfailure: {consecutive: 0}\n").unwrap();
    let out = command()
        .args(["rollout", "start", "fraud", "--spec", spec.to_str().unwrap(), "--admin", &format!("http://{}", server.ready["admin"].as_str().unwrap())])
        .env("MODELSHIP_STATE_DIR", fleet.state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("canary.weights must increase") && err.contains("failure.consecutive"), "{err}");
    assert_eq!(fleet.status(&server)["revision"], 0, "nothing changed");
}

#[test]
fn quality_from_feedback_metrics_and_resume_after_restart() {
    let fleet = fleet();
    let mut server = fleet.serve(&[]);
    let spec = fleet.state.path().join("quality.yaml");
    std::fs::write(
        &spec,
        "to: '2'\nsteps:\n  - weight: {weight: 50%, hold: 1h}\nchecks:\n  - quality: {metric: accuracy, min_delta: -1.0, min_labels: 10}\nfailure: {min_samples: 5, deadline: 3h}\ninterval: 300ms\n",
    )
    .unwrap();
    rollout(&fleet, &server, &["start", "fraud", "--spec", spec.to_str().unwrap()]);
    // The step's evidence counts once the step's routing is in force (on every replica of a
    // fleet; here, the one).
    let deadline = Instant::now() + Duration::from_secs(30);
    while rollout(&fleet, &server, &["status", "fraud"])["settled_ms"].is_null() {
        assert!(Instant::now() < deadline, "the step never settled");
        thread::sleep(Duration::from_millis(50));
    }
    // Predictions, then their labels, joined by the request id each response carried.
    let mut labels = Vec::new();
    for i in 0..80 {
        let r = server.post("/v2/models/fraud/infer", &fraud_body(1 + i % 2));
        assert_eq!(r.status, 200);
        labels.push(serde_json::json!({"request_id": r.header("x-request-id").unwrap(), "label": i % 3 == 0}));
    }
    // Labels decide the rollout, so the inference port alone cannot post them: without the admin
    // token (or with an inference-side guess) they are refused and nothing is joined.
    let batch = serde_json::json!({"labels": labels}).to_string();
    let refused = server.post("/v1/feedback", &batch);
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(server.post_with("/v1/feedback", &batch, &[("authorization", "Bearer not-the-token")]).status, 401);
    let token = std::fs::read_to_string(fleet.state.path().join("admin-token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let post_labels = |body: &str| server.post_with("/v1/feedback", body, &[("authorization", &auth)]);
    let joined = post_labels(&batch).json();
    assert_eq!(joined["joined"], 80, "all 80 join: the refused attempts took none of them");
    let unknown = post_labels(r#"{"request_id": "never-seen", "label": 1}"#).json();
    assert_eq!((unknown["joined"].as_u64(), unknown["unknown"][0].as_str()), (Some(0), Some("never-seen")));
    assert_eq!(post_labels(r#"{"request_id": "x", "label": 7}"#).status, 400);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = rollout(&fleet, &server, &["status", "fraud"]);
        // Judged: passing, or shown always-validly no worse than the margin.
        if matches!(status["checks"][0]["result"]["verdict"].as_str(), Some("pass" | "proven")) {
            break status;
        }
        assert!(Instant::now() < deadline, "quality never judged: {status}");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["checks"][0]["check"], "quality");
    let metrics = server.get("/metrics").text;
    assert!(metrics.contains(r#"modelship_rollout_phase{model="fraud",phase="progressing"} 1"#), "{metrics}");
    let code = if status["checks"][0]["result"]["verdict"] == "proven" { 2 } else { 1 };
    assert!(metrics.contains(&format!(r#"modelship_rollout_check_verdict{{check="quality",model="fraud"}} {code}"#)), "{metrics}");

    // A restart resumes the rollout at its step, with its routing.
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).code(), Some(0));
    let server = fleet.serve(&[]);
    let status = rollout(&fleet, &server, &["status", "fraud"]);
    assert_eq!((status["rollout"].as_i64(), status["phase"]["phase"].as_str(), status["step"].as_i64()), (Some(1), Some("progressing"), Some(1)), "{status}");
    assert_eq!(fleet.status(&server)["traffic"]["candidate"]["weight"], 5000);
    let aborted = rollout(&fleet, &server, &["abort", "fraud", "--reason", "enough"]);
    assert_eq!(aborted["phase"]["phase"], "rolled_back");
    assert!(fleet.status(&server)["traffic"]["candidate"].is_null());
}

#[test]
fn a_promql_check_against_a_real_prometheus_rolls_back() {
    let fleet = fleet();
    fleet.push("faulty", "3");
    let server = fleet.serve(&[]);
    let prometheus = crate::support::Prometheus::scraping(&[&server.addr]);
    let url = &prometheus.url;

    let spec = fleet.state.path().join("promql.yaml");
    std::fs::write(
        &spec,
        format!(
            "to: '3'\ncanary: {{weights: [30, 100], every: 5m}}\nchecks:\n  - prometheus:\n      url: {url}\n      query: 'sum(modelship_requests_total{{model=\"{{{{model}}}}\",version=\"{{{{candidate}}}}\",code=\"500\"}}) or vector(0)'\n      max: 0\nfailure: {{consecutive: 2, min_samples: 5, deadline: 5m}}\ninterval: 1s\n"
        ),
    )
    .unwrap();
    let (stop, _, _, _, clients) = load(&server, 2);
    rollout(&fleet, &server, &["start", "fraud", "--spec", spec.to_str().unwrap()]);
    let done = wait_phase(&fleet, &server, "rolled_back");
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let reason = done["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("prometheus") && reason.contains("above 0"), "{done}");
    assert!(fleet.status(&server)["traffic"]["candidate"].is_null());
}

#[test]
fn approval_and_webhook_gates() {
    // A webhook that says go, and records that it was asked.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/gate", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let fleet = fleet();
    let server = fleet.serve(&[]);
    let spec = fleet.state.path().join("gates.yaml");
    std::fs::write(
        &spec,
        format!("to: '2'\nsteps:\n  - weight: {{weight: 10%, hold: 0s}}\n  - approve: {{}}\n  - webhook: {{url: '{hook}'}}\n  - weight: {{weight: 100%, hold: 0s}}\ninterval: 200ms\n"),
    )
    .unwrap();
    rollout(&fleet, &server, &["start", "fraud", "--spec", spec.to_str().unwrap()]);
    let waiting = wait_phase(&fleet, &server, "awaiting_approval");
    assert_eq!(waiting["step"], 2);
    assert_eq!(waiting["current_step"], serde_json::json!({"approve": {}}));
    let text = rollout_text(&fleet, &server, &["status", "fraud"]);
    assert!(text.contains("awaiting approval (modelship rollout approve fraud)") && text.contains("2/4: approval"), "{text}");
    assert_eq!(asked.load(Ordering::Relaxed), 0, "the webhook waits for the approval");
    rollout(&fleet, &server, &["approve", "fraud"]);
    let done = wait_phase(&fleet, &server, "promoted");
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    // Done: the last step, and no current one.
    assert_eq!((done["step"].as_u64(), done["steps"].as_u64(), done["current_step"].is_null()), (Some(4), Some(4), true), "{done}");
    let text = rollout_text(&fleet, &server, &["status", "fraud"]);
    assert!(text.contains("promoted to 2 after 4 steps") && !text.lines().any(|l| l.starts_with("step")) && !text.contains("null"), "{text}");
    // An unknown command is a route that does not exist, and says which ones do.
    let token = std::fs::read_to_string(fleet.state.path().join("admin-token")).unwrap();
    let url = format!("http://{}/admin/v1/models/fraud/rollout/promote", server.ready["admin"].as_str().unwrap());
    let r = reply(agent().post(&url).header("authorization", &format!("Bearer {}", token.trim())).send("").unwrap());
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("use approve, pause, resume or abort"), "{}", r.text);
    assert_eq!(fleet.status(&server)["traffic"]["stable"], "2");
}

/// The body of request `r` of a fixed set of 300 distinct rows (spread over [-3, 3)), so that the
/// models' scores have a distribution to compare.
fn varied_body(r: u64) -> String {
    let data: Vec<f32> = (0..30u64).map(|j| ((r * 7919 + j * 104_729 + r * j * 13) % 1009) as f32 / 1009.0 * 6.0 - 3.0).collect();
    serde_json::json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": data}]}).to_string()
}

/// Runs a rollout of fixture `file` (pushed as version `to`) whose only step shadows every
/// request, judged by drift (and by checks that do not apply to a shadow step), under load of
/// varied rows; returns the final status, the decisions, and the versions clients got.
fn shadow_drift_rollout(file: &str, to: &str, phase: &str) -> (Value, Vec<Value>, HashMap<String, usize>) {
    let fleet = fleet();
    fleet.push(file, to);
    let server = fleet.serve(&[]);
    let spec = fleet.state.path().join("shadow.yaml");
    std::fs::write(
        &spec,
        format!(
            "to: '{to}'\nsteps:\n  - shadow: {{percent: 100, hold: 2s}}\nchecks:\n  - drift: {{max_psi: 0.2}}\n  - error_rate: {{}}\n  - latency: {{}}\n  - quality: {{metric: auc}}\nfailure: {{consecutive: 2, min_samples: 200, deadline: 60s}}\ninterval: 300ms\n"
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let (url, stop, seen) = (server.url("/v2/models/fraud/infer"), stop.clone(), seen.clone());
            thread::spawn(move || {
                let agent = agent();
                let bodies: Vec<String> = (0..300).map(varied_body).collect();
                let mut i = c as usize * 150;
                while !stop.load(Ordering::Relaxed) {
                    let r = reply(agent.post(&url).header("content-type", "application/json").send(&bodies[i % 300]).unwrap());
                    assert_eq!(r.status, 200, "{}", r.text);
                    *seen.lock().unwrap().entry(r.header("x-model-version").unwrap().to_owned()).or_default() += 1;
                    i += 1;
                    // Leave the CPU some room: mirrored copies run at background priority.
                    thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let started = Instant::now();
    rollout(&fleet, &server, &["start", "fraud", "--spec", spec.to_str().unwrap()]);
    let done = wait_phase(&fleet, &server, phase);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let history = rollout(&fleet, &server, &["history", "fraud"]).as_array().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    let drift = history.last().map(|d| evidence(d)["drift"].clone()).unwrap_or_default();
    eprintln!("shadow rollout of {file} as {to}: {phase} after {took:?}, drift {drift}, answers by version {seen:?}");
    let traffic = fleet.status(&server)["traffic"].clone();
    (serde_json::json!({"rollout": done, "traffic": traffic}), history, seen)
}

/// Each check's verdict in a decision's evidence, by name.
fn evidence(decision: &Value) -> HashMap<String, Value> {
    decision["evidence"].as_array().unwrap().iter().map(|e| (e[0].as_str().unwrap().to_owned(), e[1].clone())).collect()
}

#[test]
fn a_shadow_step_with_drift_promotes_an_identical_candidate() {
    // Version 3 is the same model as stable: its shadow answers have stable's score distribution.
    let (status, history, _) = shadow_drift_rollout("fraud", "3", "promoted");
    let actions: Vec<&str> = history.iter().map(|d| d["action"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["route", "promote"], "{history:?}");
    assert_eq!(history[0]["action"]["shadow"], 10_000);
    let promote = &history[1];
    assert!(promote["reason"].as_str().unwrap().contains("with every applicable check passing"), "{promote}");
    let verdicts = evidence(promote);
    assert_eq!(verdicts["drift"]["verdict"], "pass", "{promote}");
    assert!(verdicts["drift"]["value"].as_f64().unwrap() < 0.2, "{promote}");
    assert!(matches!(verdicts["error_rate"]["verdict"].as_str(), Some("pass" | "proven")), "{promote}");
    for check in ["latency", "quality"] {
        assert_eq!(verdicts[check]["verdict"], "not_applicable", "{promote}");
        assert!(verdicts[check]["reason"].as_str().unwrap().contains("shadow step"), "{promote}");
    }
    assert_eq!(status["traffic"]["stable"], "3", "{status}");
}

#[test]
fn a_shadow_step_with_drift_rolls_back_a_shifted_candidate() {
    // A random forest on the same features: its scores are spread quite differently from the
    // gradient-boosting stable's (PSI above 1 on these rows).
    let (status, history, seen) = shadow_drift_rollout("random_forest", "4", "rolled_back");
    let reason = status["rollout"]["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("drift: prediction drift PSI"), "{status}");
    let actions: Vec<&str> = history.iter().map(|d| d["action"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["route", "rollback"], "{history:?}");
    assert!(evidence(&history[1])["drift"]["value"].as_f64().unwrap() > 0.2);
    // It was judged on mirrored copies only: no client ever got its answers.
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["1"], "{seen:?}");
    assert!(status["traffic"]["candidate"].is_null() && status["traffic"]["shadow"].is_null(), "{status}");
}

/// `serve` of three registry models: each answers under its own name, has its own routing (a
/// switch of one leaves the others as they were) and metrics; `/v1/predict` is the first's.
#[test]
fn serve_takes_several_models_each_with_its_own_routing() {
    let fleet = fleet();
    for (name, file, version) in [("churn", "fraud", "1"), ("churn", "xgboost", "2"), ("steady", "fraud", "1")] {
        let out = command()
            .args(["models", "push", name, &model(file), "--version", version, "--registry"])
            .arg(fleet.registry.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let server = fleet.serve(&["churn:1", "steady:1"]);
    assert_eq!(server.ready["models"].as_array().map(Vec::len), Some(3), "{}", server.ready);
    let steady = server.post("/v2/models/steady/infer", &fraud_body(1)).text;
    fleet.ok(&server, &["switch", "churn", "2"]);
    let churn = server.post("/v2/models/churn/infer", &fraud_body(1));
    assert_eq!((churn.status, churn.header("x-model-version")), (200, Some("2")), "{}", churn.text);
    assert_eq!(version_of(&server, &[]), "1", "fraud did not move");
    assert_eq!(server.post("/v2/models/steady/infer", &fraud_body(1)).text, steady, "steady answers the same bytes");
    let rows = serde_json::json!({"features": [vec![0.5; 30]]}).to_string();
    assert_eq!(server.post("/v1/models/churn/predict", &rows).header("x-model-version"), Some("2"));
    assert_eq!(server.post("/v1/predict", &rows).header("x-model-version"), Some("1"));
    for (model, revision) in [("fraud", 0.0), ("churn", 1.0), ("steady", 0.0)] {
        assert_eq!(server.metric("modelship_traffic_revision", &[&format!(r#"model="{model}""#)]), Some(revision), "{model}");
    }
    // What the server holds: each model, its versions, the memory each took, its revision.
    let admin = format!("http://{}", server.ready["admin"].as_str().unwrap());
    let ls = |args: &[&str]| command().args(["models", "ls", "--admin", &admin]).args(args).env("MODELSHIP_STATE_DIR", fleet.state.path()).output().unwrap();
    let out = ls(&["--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let served: Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary: Vec<(String, String, Vec<String>, u64)> = served["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let versions = m["versions"].as_array().unwrap();
            (
                m["name"].as_str().unwrap().to_owned(),
                m["stable"].as_str().unwrap().to_owned(),
                versions.iter().map(|v| v["version"].as_str().unwrap().to_owned()).collect(),
                versions.iter().map(|v| v["model_bytes"].as_u64().unwrap()).sum(),
            )
        })
        .collect();
    assert_eq!(summary.iter().map(|(n, s, _, _)| (n.as_str(), s.as_str())).collect::<Vec<_>>(), [("churn", "2"), ("fraud", "1"), ("steady", "1")], "{served}");
    assert!(summary.iter().all(|(_, _, versions, bytes)| !versions.is_empty() && *bytes > 0), "{served}");
    let table = String::from_utf8_lossy(&ls(&[]).stdout).into_owned();
    assert!(table.contains("NAME") && table.contains("MEMORY") && table.lines().any(|l| l.trim_start().starts_with("steady")), "{table}");
    let one = ls(&["churn", "--output", "json"]);
    assert_eq!(serde_json::from_slice::<Value>(&one.stdout).unwrap()["models"].as_array().map(Vec::len), Some(1));
    // Two models of one name are refused before anything starts, naming the fix.
    let out = command().args(["serve", "fraud:1", "fraud:2", "--registry"]).arg(fleet.registry.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("two models are named 'fraud'") && err.contains("models[].name"), "{err}");
}

/// A model of the config file's `models` list with workers and batching of its own: its
/// configuration says so, and the server's own model keeps the server's.
#[test]
fn a_listed_model_runs_with_its_own_workers_and_batching() {
    let fleet = fleet();
    let out = command().args(["models", "push", "churn", &model("fraud"), "--version", "1", "--registry"]).arg(fleet.registry.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = fleet.state.path().join("serving.yaml");
    std::fs::write(&config, "models:\n  - {path: 'churn:1', workers: 2, dynamic_batching: {max_batch_size: 8}}\n").unwrap();
    let server = fleet.serve(&["--config", config.to_str().unwrap(), "--workers", "1"]);
    let shape = |name: &str| {
        let c = server.get(&format!("/v2/models/{name}/config")).json();
        (c["max_batch_size"].as_u64(), c["instance_group"][0]["count"].as_u64(), c["dynamic_batching"]["max_queue_delay_microseconds"].as_u64())
    };
    assert_eq!(shape("churn"), (Some(8), Some(2), Some(500)), "churn's own");
    assert_ne!(shape("fraud").1, Some(2), "fraud keeps the server's one worker");
    let r = server.post("/v2/models/churn/infer", &fraud_body(3));
    assert_eq!(r.status, 200, "{}", r.text);
}
