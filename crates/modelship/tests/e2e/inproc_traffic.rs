//! Routing and rollouts on an in-process server ([`crate::inproc`]): blue-green switches,
//! canaries and rollbacks under load, a failing candidate rolled back by its rollout, a webhook
//! gate that hangs, and keep-warm expiry. The same composition as `modelship serve`; changes go
//! through the admin API over HTTP, as the CLI sends them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::inproc::{App, Fixtures};
use crate::support::{agent, fraud_body, reply};
use crate::traffic::load;

fn version_of(app: &App, headers: &[(&str, &str)]) -> String {
    let r = app.post_with("/v2/models/fraud/infer", &fraud_body(1), headers);
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("x-model-version").unwrap().to_owned()
}

/// Starts a rollout of `spec` (the rollout spec, as JSON).
fn start(app: &App, spec: Value) -> Value {
    let r = app.admin("POST", "rollout", Some(json!({ "spec": spec })));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn rollout_status(app: &App) -> Value {
    let r = app.admin("GET", "rollout", None);
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn wait_phase(app: &App, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = rollout_status(app);
        if status["phase"]["phase"] == phase {
            return status;
        }
        assert!(Instant::now() < deadline, "never reached {phase}: {status}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn switches_and_rollbacks_under_load_fail_no_request() {
    let fixtures = Fixtures::new();
    let app = fixtures.serve("1", fixtures.settings());
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, sent, failed, seen) = (app.url("/v2/models/fraud/infer"), stop.clone(), sent.clone(), failed.clone(), seen.clone());
            thread::spawn(move || {
                let agent = agent();
                let body = fraud_body(1);
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match agent.post(&url).header("content-type", "application/json").send(&body).map(reply) {
                        Ok(r) if r.status == 200 => *seen.lock().unwrap().entry(r.header("x-model-version").unwrap().to_owned()).or_default() += 1,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for round in 0..10 {
        app.change(json!({"op": "canary", "version": "2", "weight": 1000}));
        app.change(json!({"op": "weight", "weight": 6000}));
        app.change(json!({"op": "promote"}));
        // Rollback takes effect for the very next request.
        app.rollback("");
        app.change(json!({"op": "abort"}));
        assert_eq!(version_of(&app, &[]), "1", "round {round}");
        // Blue-green: preview by pin header, switch, and roll back: each visible on the next request.
        app.change(json!({"op": "canary", "version": "2", "weight": 0}));
        assert_eq!(version_of(&app, &[("x-model-version", "2")]), "2");
        assert_eq!(version_of(&app, &[]), "1");
        app.change(json!({"op": "switch", "version": "2"}));
        assert_eq!(version_of(&app, &[]), "2");
        app.rollback("bad latency");
        assert_eq!(version_of(&app, &[]), "1");
        app.change(json!({"op": "abort"}));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("traffic changes under load: {sent} requests over {:?}, {failed} failed, by version {:?}", started.elapsed(), seen.lock().unwrap());
    assert_eq!(failed, 0, "of {sent}");
    assert!(seen.lock().unwrap().len() == 2, "both versions answered");
    let history = app.admin("GET", "traffic/history", None).json();
    assert_eq!(history.as_array().unwrap().len(), 1 + 10 * 9, "{history}");
    assert!(history.as_array().unwrap().iter().any(|r| r["reason"].as_str().unwrap().contains("bad latency")));
}

#[test]
fn a_failing_candidate_is_rolled_back_by_itself() {
    let fixtures = Fixtures::new();
    fixtures.push("faulty", "3");
    let app = fixtures.serve("1", fixtures.settings());
    let (stop, counting, sent, failed, clients) = load(&app, 3);
    counting.store(false, Ordering::Relaxed);
    start(
        &app,
        json!({"to": "3", "canary": {"weights": [20, 100], "every": "1m"}, "checks": [{"error_rate": {}}], "failure": {"consecutive": 2, "min_samples": 20}, "interval": "500ms"}),
    );
    let done = wait_phase(&app, "rolled_back");
    assert!(done["phase"]["reason"].as_str().unwrap().contains("error_rate"), "{done}");
    // From the rollback's routing on (the decision is recorded, then applied), every request
    // succeeds on stable.
    let applied = Instant::now();
    while !app.status()["traffic"]["candidate"].is_null() {
        assert!(applied.elapsed() < Duration::from_secs(30), "the rollback's routing was never applied");
        thread::sleep(Duration::from_millis(50));
    }
    counting.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "of {} requests after the rollback", sent.load(Ordering::Relaxed));
    let status = app.status();
    assert_eq!((status["traffic"]["stable"].as_str(), status["traffic"]["candidate"].is_null()), (Some("1"), true), "{status}");
    // An invalid spec is refused by the server too, with every problem, before anything changes.
    let refused = app.admin("POST", "rollout", Some(json!({"spec": {"to": "2", "canary": {"weights": [50, 10], "every": "1m"}, "failure": {"consecutive": 0}}})));
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("canary.weights must increase") && refused.text.contains("failure.consecutive"), "{}", refused.text);
    assert_eq!(app.status()["revision"], status["revision"]);
}

/// A webhook gate that never answers holds the rollout, not the admin API: status answers and an
/// abort goes through while the hook still holds its connection (it lets go only after).
#[test]
fn status_answers_while_a_webhook_gate_hangs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let hook = format!("http://{}/gate", listener.local_addr().unwrap());
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (accepted, gate_asked) = std::sync::mpsc::channel::<()>();
    let held = thread::spawn(move || {
        // Every wait bounded, so a failing test still ends.
        let deadline = Instant::now() + Duration::from_secs(120);
        let conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break Some(conn),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let _ = accepted.send(());
        // Held, unanswered, until the test has its answers.
        let _ = released.recv_timeout(Duration::from_secs(120));
        drop(conn);
    });
    let fixtures = Fixtures::new();
    let app = fixtures.serve("1", fixtures.settings());
    start(&app, json!({"to": "2", "steps": [{"webhook": {"url": hook}}, {"weight": {"weight": "100%", "hold": "0s"}}], "interval": "200ms"}));
    wait_phase(&app, "awaiting_webhook");
    gate_asked.recv_timeout(Duration::from_secs(120)).expect("the rollout called its webhook");
    for _ in 0..3 {
        assert_eq!(rollout_status(&app)["phase"]["phase"], "awaiting_webhook");
    }
    let aborted = app.admin("POST", "rollout/abort", None);
    assert_eq!(aborted.status, 200, "{}", aborted.text);
    assert_eq!(aborted.json()["phase"]["phase"], "rolled_back", "{}", aborted.text);
    assert!(!held.is_finished(), "the hook still holds its connection");
    release.send(()).unwrap();
    held.join().unwrap();
}

/// A version kept warm after a switch expires while a newer change routes to it again: the newer
/// revision stays in force, with that version loaded.
#[test]
fn keep_warm_expiry_leaves_a_newer_revision_in_force() {
    let fixtures = Fixtures::new();
    let mut settings = fixtures.settings();
    settings.keep_warm = Duration::from_secs(1);
    let app = fixtures.serve("1", settings);
    app.change(json!({"op": "switch", "version": "2"}));
    // Within the second 1 is kept warm: back as a 10 % candidate (no load needed).
    app.change(json!({"op": "canary", "version": "1", "weight": 1000}));
    let newer = app.status();
    thread::sleep(Duration::from_millis(2500));
    let now = app.status();
    assert_eq!(now["revision"], newer["revision"], "{now}");
    assert_eq!(now["traffic"]["candidate"]["version"], "1", "{now}");
    assert!(now["loaded_versions"].as_array().unwrap().iter().any(|v| v == "1"), "{now}");
    assert_eq!(version_of(&app, &[("x-canary", "true")]), "1");
}

/// Per model: requests sent, the failures (with the version that failed), and every distinct
/// answer body with how many times it came.
#[derive(Default)]
struct Seen {
    sent: usize,
    failed: Vec<String>,
    bodies: HashMap<String, usize>,
}

/// Three models on one server, each with its own routing, revisions, rollout and metrics: one
/// rolled back on a candidate that fails every request while another is promoted, and the third's
/// answers byte-identical throughout.
#[test]
fn three_models_roll_out_independently_on_one_server() {
    let fixtures = Fixtures::new();
    fixtures.push("faulty", "3");
    fixtures.push_as("churn", "fraud", "1");
    fixtures.push_as("churn", "xgboost", "2");
    fixtures.push_as("steady", "fraud", "1");
    let app = fixtures.serve_models(&[("fraud", "1"), ("churn", "1"), ("steady", "1")], fixtures.settings());
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<HashMap<&'static str, Seen>>> = Arc::default();
    let clients: Vec<_> = ["fraud", "churn", "steady"]
        .into_iter()
        .flat_map(|m| [m, m])
        .map(|model| {
            let (url, stop, seen) = (app.url(&format!("/v2/models/{model}/infer")), stop.clone(), seen.clone());
            thread::spawn(move || {
                let agent = agent();
                let body = fraud_body(1);
                while !stop.load(Ordering::Relaxed) {
                    let r = agent.post(&url).header("content-type", "application/json").send(&body).map(reply).unwrap();
                    let mut seen = seen.lock().unwrap();
                    let s = seen.entry(model).or_default();
                    s.sent += 1;
                    if r.status == 200 {
                        *s.bodies.entry(r.text).or_default() += 1;
                    } else {
                        s.failed.push(r.header("x-model-version").unwrap_or("?").to_owned());
                    }
                }
            })
        })
        .collect();
    // The third model's answer before anything moves: what it must answer throughout.
    let steady_answer = app.post("/v2/models/steady/infer", &fraud_body(1)).text;
    let start_of = |model: &str, spec: Value| {
        let r = app.admin_of(model, "POST", "rollout", Some(json!({ "spec": spec })));
        assert_eq!(r.status, 200, "{model}: {}", r.text);
    };
    start_of(
        "fraud",
        json!({"to": "3", "canary": {"weights": [20, 100], "every": "1m"}, "checks": [{"error_rate": {}}], "failure": {"consecutive": 2, "min_samples": 20}, "interval": "500ms"}),
    );
    start_of(
        "churn",
        json!({"to": "2", "steps": [{"weight": {"weight": "30%", "hold": "1s"}}, {"weight": {"weight": "70%", "hold": "1s"}}], "checks": [{"error_rate": {}}], "failure": {"min_samples": 10, "deadline": "2m"}, "interval": "300ms"}),
    );
    let phase_of = |model: &str| app.admin_of(model, "GET", "rollout", None).json()["phase"]["phase"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while phase_of("fraud") != "rolled_back" || phase_of("churn") != "promoted" {
        assert!(Instant::now() < deadline, "fraud {}, churn {}", phase_of("fraud"), phase_of("churn"));
        thread::sleep(Duration::from_millis(100));
    }
    // Each decision's routing applied (a decision is recorded, then applied): fraud back on 1,
    // churn on 2 alone.
    let settled = |model: &str, stable: &str| {
        let t = app.admin_of(model, "GET", "traffic", None).json();
        t["traffic"]["stable"] == stable && t["traffic"]["candidate"].is_null()
    };
    while !settled("fraud", "1") || !settled("churn", "2") {
        assert!(Instant::now() < deadline, "the rollouts' routing was never applied");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let seen = seen.lock().unwrap();
    let (fraud, churn, steady) = (&seen["fraud"], &seen["churn"], &seen["steady"]);
    eprintln!(
        "three models: fraud {} requests ({} failed, all on the candidate), churn {} ({} answers), steady {} ({} distinct answers)",
        fraud.sent, fraud.failed.len(), churn.sent, churn.bodies.len(), steady.sent, steady.bodies.len()
    );
    assert!(fraud.failed.iter().all(|v| v == "3"), "only the failing candidate failed: {:?}", fraud.failed);
    assert!(churn.failed.is_empty() && steady.failed.is_empty(), "churn {:?}, steady {:?}", churn.failed, steady.failed);
    assert_eq!(steady.bodies.keys().collect::<Vec<_>>(), [&steady_answer], "the third model answered the same bytes throughout");
    assert!(churn.bodies.len() == 2 && steady.sent > 0, "churn answered from both of its versions");
    // Revisions and metrics, per model.
    let revision = |model: &str| app.admin_of(model, "GET", "traffic", None).json();
    let (fraud_now, churn_now, steady_now) = (revision("fraud"), revision("churn"), revision("steady"));
    assert_eq!((fraud_now["traffic"]["stable"].as_str(), fraud_now["traffic"]["candidate"].is_null()), (Some("1"), true), "{fraud_now}");
    assert_eq!(churn_now["traffic"]["stable"], "2", "{churn_now}");
    assert_eq!(steady_now["revision"], 0, "the third model's routing never moved: {steady_now}");
    for (model, status) in [("fraud", &fraud_now), ("churn", &churn_now), ("steady", &steady_now)] {
        assert_eq!(app.metric("modelship_traffic_revision", &[&format!(r#"model="{model}""#)]), status["revision"].as_f64(), "{model}");
    }
    assert!(app.metric("modelship_requests_total", &[r#"model="fraud""#, r#"version="3""#, r#"code="500""#]).unwrap_or(0.0) > 0.0);
    assert_eq!(app.metric("modelship_requests_total", &[r#"model="steady""#, r#"version="2""#]), None, "the third model never had a version 2");
    // /v1/predict stays the server's own model; /v1/models/NAME/predict names another.
    let rows = json!({"features": [vec![0.5; 30]]}).to_string();
    assert_eq!(app.post("/v1/predict", &rows).header("x-model-version"), Some("1"));
    let other = app.post("/v1/models/churn/predict", &rows);
    assert_eq!((other.status, other.header("x-model-version")), (200, Some("2")), "{}", other.text);
    let unknown = app.post("/v1/models/nope/predict", &rows);
    assert_eq!(unknown.status, 404, "{}", unknown.text);
}

/// Every kind of rollout event reaches a notification sink, in order: a step held past its time
/// on inconclusive evidence (told once), an operator's pause and resume, an abort; then a webhook
/// gate that says no (the refusal, then the rollback it causes).
#[test]
fn every_rollout_event_is_told_to_the_sinks() {
    use modelship_server::notify::{SinkKind, SinkSettings};
    let sink = crate::support::Receiver::start(|_| Some(200));
    let gate = crate::support::Receiver::start(|_| Some(403));
    let fixtures = Fixtures::new();
    let mut settings = fixtures.settings();
    settings.notifications = vec![SinkSettings::new("hook", SinkKind::Webhook { url: format!("{}/events", sink.url), secret: None })];
    let app = fixtures.serve("1", settings);
    let kinds = |n: usize| {
        let got = sink.wait_for(Duration::from_secs(60), &format!("{n} events"), |got| got.len() >= n);
        got.iter().map(|r| r.json()["kind"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    // No traffic: the error-rate check stays inconclusive past the step's 1 s hold.
    start(&app, json!({"to": "2", "steps": [{"weight": {"weight": "10%", "hold": "1s"}}], "checks": [{"error_rate": {}}], "failure": {"min_samples": 100000}, "interval": "200ms"}));
    assert_eq!(kinds(2), ["started", "inconclusive_held"]);
    let held = sink.received()[1].json();
    assert!(held["reason"].as_str().unwrap().contains("still inconclusive"), "{held}");
    assert_eq!(held["severity"], "warning");
    for command in ["pause", "resume", "abort"] {
        let r = app.admin("POST", &format!("rollout/{command}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(kinds(5), ["started", "inconclusive_held", "paused", "resumed", "rolled_back"]);
    // A gate that refuses.
    start(&app, json!({"to": "2", "steps": [{"webhook": {"url": format!("{}/gate", gate.url)}}, {"weight": {"weight": "100%", "hold": "0s"}}], "interval": "200ms"}));
    wait_phase(&app, "rolled_back");
    let all = kinds(8);
    assert_eq!(all[5..], ["started", "gate_refused", "rolled_back"], "{all:?}");
    let refused = sink.received()[6].json();
    assert!(refused["reason"].as_str().unwrap().contains("HTTP 403"), "{refused}");
    // Each once: no event was told twice.
    thread::sleep(Duration::from_secs(2));
    let ids: Vec<String> = sink.received().iter().map(|r| r.header("x-modelship-delivery").unwrap().to_owned()).collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    assert_eq!(ids.len(), 8, "{ids:?}");
}
