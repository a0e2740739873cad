//! A bound on loaded models, in process: the least recently used model rests, a model under
//! rollout never does, and a request for a resting model loads it again (or, past the wait it
//! is allowed, is told to retry while the load goes on).

use std::time::{Duration, Instant};

use modelship_server::residency::ResidencyLimits;
use serde_json::json;

use crate::inproc::Fixtures;
use crate::support::fraud_body;

fn bounded(fixtures: &Fixtures, max_models: usize, load_wait: Duration) -> modelship_server::Settings {
    let mut settings = fixtures.settings();
    settings.residency = ResidencyLimits { max_models: Some(max_models), max_bytes: None, load_wait };
    settings
}

/// The state `GET /admin/v1/models` reports for each model, by name.
fn states(app: &crate::inproc::App) -> Vec<(String, String)> {
    let r = crate::support::agent()
        .get(&format!("{}/admin/v1/models", app.admin_url()))
        .header("authorization", &format!("Bearer {}", crate::inproc::TOKEN))
        .call()
        .map(crate::support::reply)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_owned(), m["state"].as_str().unwrap().to_owned()))
        .collect()
}

fn metric(app: &crate::inproc::App, name: &str, labels: &[&str]) -> f64 {
    app.metric(name, labels).unwrap_or(0.0)
}

/// Three models, two may be loaded: the one used least recently rests, answers metadata and
/// readiness as it is, and loads again for the next request, byte-identical; a model whose
/// traffic is split by a canary is never the one unloaded.
#[test]
fn the_least_recently_used_model_rests_and_a_split_model_never_does() {
    let fixtures = Fixtures::new();
    fixtures.push_as("churn", "fraud", "1");
    fixtures.push_as("churn", "xgboost", "2");
    fixtures.push_as("steady", "fraud", "1");
    let app = fixtures.serve_models(&[("fraud", "1"), ("churn", "1"), ("steady", "1")], bounded(&fixtures, 2, Duration::from_secs(60)));
    // Loaded in order: the first (least recently used) rested when the third arrived.
    let rested = |app: &crate::inproc::App| states(app).into_iter().filter(|(_, s)| s == "RESTING").map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(rested(&app), ["fraud"]);
    assert_eq!(metric(&app, "modelship_models_loaded ", &[]), 2.0);
    // Resting, it still answers metadata and readiness, and the server is ready.
    assert_eq!(app.get("/v2/models/fraud/ready").status, 200);
    assert_eq!(app.get("/v2/models/fraud").json()["versions"], json!(["1"]));
    assert_eq!(app.get("/health/ready").status, 200);
    assert_eq!(metric(&app, "modelship_models_loaded ", &[]), 2.0, "metadata and readiness load nothing");

    // Its next request loads it again; the least recently used of the others rests.
    let before = app.post("/v2/models/steady/infer", &fraud_body(3));
    let r = app.post("/v2/models/fraud/infer", &fraud_body(3));
    assert_eq!((r.status, r.header("x-model-version")), (200, Some("1")), "{}", r.text);
    assert_eq!(r.text, before.text.replace("steady", "fraud"), "fraud:1 and steady:1 are one file: the reloaded model answers the same bytes");
    assert_eq!(rested(&app), ["churn"]);
    assert_eq!(metric(&app, "modelship_model_lazy_loads_total", &[r#"model="fraud""#, r#"result="loaded""#]), 1.0);
    assert_eq!(metric(&app, "modelship_model_evictions_total", &[r#"model="churn""#]), 1.0);

    // churn splits its traffic with a canary: it is pinned in memory from now on.
    let r = app.post("/v2/models/churn/infer", &fraud_body(1));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.admin_of("churn", "POST", "traffic", Some(json!({"change": {"op": "canary", "version": "2", "weight": 5000}, "reason": "test"})));
    assert_eq!(r.status, 200, "{}", r.text);
    for model in ["fraud", "steady", "fraud", "steady", "fraud"] {
        let r = app.post(&format!("/v2/models/{model}/infer"), &fraud_body(1));
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert!(!rested(&app).contains(&"churn".to_owned()), "a split model rested");
    }
    assert!(metric(&app, "modelship_models_loaded ", &[]) <= 2.0);
    let churn_evictions = metric(&app, "modelship_model_evictions_total", &[r#"model="churn""#]);
    assert_eq!(churn_evictions, 1.0, "only before the canary");
    // The routing of a resting model is what it was: its revision unchanged by rest and reload.
    let status = app.admin_of("steady", "GET", "traffic", None).json();
    assert_eq!(status["revision"], json!(0), "{status}");
    app.stop();
}

/// A request whose model takes longer to load than the wait allows is told to retry (503,
/// Retry-After); the load goes on, and the retry is answered.
#[test]
fn a_request_waits_a_bounded_time_for_its_model_to_load() {
    let fixtures = Fixtures::new();
    fixtures.push_as("churn", "fraud", "1");
    // No wait at all: the first request cannot find the model loaded.
    let app = fixtures.serve_models(&[("fraud", "1"), ("churn", "1")], bounded(&fixtures, 1, Duration::ZERO));
    let r = app.post("/v2/models/fraud/infer", &fraud_body(1));
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.text);
    assert!(r.text.contains("not in memory and is loading"), "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let r = app.post("/v2/models/fraud/infer", &fraud_body(1));
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(answered.status, 200, "{}", answered.text);
    assert_eq!(metric(&app, "modelship_model_lazy_loads_total", &[r#"model="fraud""#, r#"result="loaded""#]), 1.0, "one load, however many asked");
    app.stop();
}

/// A model whose rollout waits at an approval gate routes nothing to the candidate yet, and still
/// never rests: the other models take turns in the memory left.
#[test]
fn a_model_under_rollout_stays_loaded_even_at_a_gate() {
    let fixtures = Fixtures::new();
    fixtures.push_as("churn", "fraud", "1");
    fixtures.push_as("steady", "fraud", "1");
    let app = fixtures.serve_models(&[("fraud", "1"), ("churn", "1"), ("steady", "1")], bounded(&fixtures, 2, Duration::from_secs(60)));
    // Loaded in order: fraud, the least recently used, rests.
    let state_of = |model: &str| states(&app).into_iter().find(|(n, _)| n == model).map(|(_, s)| s).unwrap();
    assert_eq!(state_of("fraud"), "RESTING");
    // Starting its rollout loads it (churn rests); the first step only waits for an approval.
    let spec = json!({"to": "2", "steps": [{"approve": {}}, {"weight": {"weight": "100%", "hold": "0s"}}], "interval": "200ms"});
    let r = app.admin_of("fraud", "POST", "rollout", Some(json!({ "spec": spec, "force": true })));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((state_of("fraud"), state_of("churn")), ("READY".to_owned(), "RESTING".to_owned()));
    for _ in 0..3 {
        for model in ["churn", "steady"] {
            let r = app.post(&format!("/v2/models/{model}/infer"), &fraud_body(1));
            assert_eq!(r.status, 200, "{model}: {}", r.text);
            assert_eq!(state_of("fraud"), "READY", "a model under rollout rested");
        }
    }
    assert_eq!(metric(&app, "modelship_model_evictions_total", &[r#"model="fraud""#]), 1.0, "only before its rollout");
    assert!(metric(&app, "modelship_model_evictions_total", &[r#"model="steady""#]) >= 2.0, "the others took turns");
    app.stop();
}
