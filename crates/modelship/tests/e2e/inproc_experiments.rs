//! Always-valid judgement and experiments on an in-process server ([`crate::inproc`]): an A/A
//! rollout judged every second for 100 seconds never rolls back, and an experiment fed rewards
//! by its client declares the better version, either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::inproc::{App, Fixtures};
use crate::support::{agent, fraud_body, reply};

fn start(app: &App, spec: Value) {
    let r = app.admin("POST", "rollout", Some(json!({ "spec": spec })));
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Waits (at most `limit`) for the rollout to end; its final status.
fn finished(app: &App, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = app.admin("GET", "rollout", None);
        assert_eq!(r.status, 200, "{}", r.text);
        let status = r.json();
        if matches!(status["phase"]["phase"].as_str(), Some("promoted" | "rolled_back")) {
            return status;
        }
        assert!(Instant::now() < deadline, "the rollout did not end: {status}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Clients sending requests until stopped; with `conversion`, each answer's client posts a
/// reward of 1 with that version's probability (else 0), in batches, as a shop's backend would.
/// Returns the stop flag, the count of failed requests, and the threads.
fn clients(app: &App, count: usize, conversion: Option<fn(&str) -> f64>) -> (Arc<AtomicBool>, Arc<AtomicUsize>, Vec<thread::JoinHandle<()>>) {
    let (stop, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let threads = (0..count)
        .map(|c| {
            let (url, rewards_url, stop, failed) = (app.url("/v2/models/fraud/infer"), format!("{}/admin/v1/models/fraud/rewards", app.admin_url()), stop.clone(), failed.clone());
            thread::spawn(move || {
                let agent = agent();
                // xorshift64: reproducible draws, no dependency.
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                let mut draw = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 11) as f64 / (1u64 << 53) as f64
                };
                let mut batch = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match agent.post(&url).header("content-type", "application/json").send(&fraud_body(1)).map(reply) {
                        Ok(r) if r.status == 200 => {
                            if let Some(rate) = conversion {
                                let (id, version) = (r.header("x-request-id").unwrap().to_owned(), r.header("x-model-version").unwrap().to_owned());
                                batch.push(json!({"request_id": id, "value": u8::from(draw() < rate(&version))}));
                            }
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if batch.len() >= 10 {
                        let body = json!({ "rewards": std::mem::take(&mut batch) }).to_string();
                        let posted = agent.post(&rewards_url).header("authorization", format!("Bearer {}", crate::inproc::TOKEN)).header("content-type", "application/json").send(body.as_str()).map(reply);
                        assert_eq!(posted.map(|r| r.status).unwrap_or(0), 200);
                    }
                }
            })
        })
        .collect();
    (stop, failed, threads)
}

fn stop(handles: (Arc<AtomicBool>, Arc<AtomicUsize>, Vec<thread::JoinHandle<()>>)) -> usize {
    let (stop, failed, threads) = handles;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    failed.load(Ordering::Relaxed)
}

#[test]
fn an_aa_rollout_judged_every_second_for_100_seconds_never_rolls_back() {
    let fixtures = Fixtures::new();
    // The same model twice: whatever differs between the two versions is noise.
    fixtures.push("fraud", "3");
    let app = fixtures.serve("1", fixtures.settings());
    let load = clients(&app, 2, None);
    let started = Instant::now();
    start(
        &app,
        json!({"to": "3", "steps": [{"weight": {"weight": "50%", "hold": "100s"}}],
            "checks": [{"error_rate": {}}, {"latency": {"max_ratio": 1.2}}, {"drift": {}}],
            "failure": {"min_samples": 50, "deadline": "10m"}, "interval": "1s"}),
    );
    let done = finished(&app, Duration::from_secs(400));
    let failed = stop(load);
    let history = app.admin("GET", "rollout/history", None).json();
    eprintln!("A/A: {:?} to the end; {failed} requests failed; last decision {}", started.elapsed(), history.as_array().and_then(|h| h.last()).cloned().unwrap_or_default());
    assert_eq!(done["phase"]["phase"], "promoted", "{done}");
    assert!(started.elapsed() >= Duration::from_secs(100), "held its 100 s");
    // The step ended on its hold, every check judged (never inconclusive) all along.
    let last = history.as_array().unwrap().iter().rev().find(|d| d["action"]["action"] == "promote").unwrap();
    assert!(last["reason"].as_str().unwrap().starts_with("step 1 held 1m 40s with every applicable check passing"), "{last}");
    let evidence: Vec<&str> = last["evidence"].as_array().unwrap().iter().map(|e| e[1]["verdict"].as_str().unwrap()).collect();
    assert!(evidence.iter().all(|v| *v == "pass" || *v == "proven"), "{last}");
    assert_eq!(failed, 0);
}

#[test]
fn an_experiment_fed_rewards_by_its_client_declares_the_better_version() {
    let fixtures = Fixtures::new();
    fixtures.push("fraud", "3");
    let app = fixtures.serve("1", fixtures.settings());
    // Version 3 converts at 50 %, version 1 at 20 %.
    let load = clients(&app, 2, Some(|version| if version == "3" { 0.5 } else { 0.2 }));
    let experiment = |to: &str| {
        json!({"to": to, "steps": [{"experiment": {"weight": "50%", "hold": "5m", "no_winner": "keep"}}],
            "checks": [{"reward": {"effect": 0.1}}, {"error_rate": {}}], "failure": {"min_samples": 30}, "interval": "500ms"})
    };
    start(&app, experiment("3"));
    let done = finished(&app, Duration::from_secs(240));
    assert_eq!(done["phase"]["phase"], "promoted", "{done}");
    let history = app.admin("GET", "rollout/history", None).json();
    let won = history.as_array().unwrap().iter().find(|d| d["reason"].as_str().unwrap().starts_with("the candidate won the experiment: ")).cloned();
    let won = won.unwrap_or_else(|| panic!("no winner declared: {history}"));
    eprintln!("experiment: {}", won["reason"]);
    // Now 3 is stable; an experiment with version 1, which converts worse, keeps 3.
    start(&app, experiment("1"));
    let done = finished(&app, Duration::from_secs(240));
    let failed = stop(load);
    let reason = done["phase"]["reason"].as_str().unwrap_or_default().to_owned();
    eprintln!("experiment the other way: {reason}");
    assert_eq!(done["phase"]["phase"], "rolled_back", "{done}");
    assert!(reason.starts_with("the experiment's winner is stable: reward: mean reward"), "{reason}");
    assert_eq!(failed, 0);
}
