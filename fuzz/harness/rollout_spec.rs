//! `rollout_spec`: a rollout spec as text, read the way the admin API reads one (JSON), or the way
//! the CLI reads a spec file (YAML into a JSON value, which it sends), resolved into a plan, and a
//! plan that resolves run through the engine.
//!
//! The input's own bytes, one per event, also script the engine: ticks with an empty, a healthy,
//! an erroring or a slow window, approvals, webhook answers, pause, resume, abort, and restarts
//! (the state persisted as JSON, read back and recovered, as the server does). After a restart
//! and at the end the state must read back.

use modelship_rollout::check::{Check, Sample, Window};
use modelship_rollout::engine::{Event, Millis, Rollout};
use modelship_rollout::spec::{Plan, RolloutSpec};
use serde_json::Value;

/// Events per run: enough to walk a few steps, few enough to keep each run fast.
const EVENTS: usize = 32;

pub fn run(data: &[u8]) {
    let value = match serde_json::from_slice::<Value>(data) {
        Ok(value) => value,
        Err(_) => match std::str::from_utf8(data).map(serde_yaml_ng::from_str::<Value>) {
            Ok(Ok(value)) => value,
            _ => return,
        },
    };
    let Ok(spec) = serde_json::from_value::<RolloutSpec>(value) else { return };
    if let Ok(plan) = spec.resolve() {
        drive(plan, data);
    }
}

fn drive(plan: Plan, script: &[u8]) {
    let interval = u64::try_from(plan.interval.0.as_millis()).unwrap_or(u64::MAX);
    let windows = [Window::default(), window(&plan, 1, 1.0, 0.0), window(&plan, 20, 1.0, 1.0), window(&plan, 1, 1.5, 0.0)];
    let mut now: Millis = 0;
    let (mut rollout, _) = Rollout::start(plan, now);
    for &b in script.iter().take(EVENTS) {
        now = now.saturating_add(interval.saturating_mul(1 + u64::from(b >> 5)));
        let event = match b % 8 {
            k @ 0..=3 => Event::Tick { now, window: windows[usize::from(k)].clone() },
            4 => Event::Approve { now },
            5 => Event::WebhookAnswered { now, go: b & 0x80 == 0, detail: "200".to_owned() },
            6 => match (b >> 3) % 3 {
                0 => Event::Pause { now, reason: "operator".to_owned() },
                1 => Event::Resume { now },
                _ => Event::Abort { now, reason: "operator".to_owned() },
            },
            _ => {
                rollout = restarted(&rollout);
                rollout.recover(now);
                continue;
            }
        };
        rollout.handle(event);
    }
    restarted(&rollout);
}

/// The rollout as the server finds it after a restart: persisted as JSON and read back.
fn restarted(rollout: &Rollout) -> Rollout {
    let saved = serde_json::to_string(rollout).expect("a rollout serializes");
    serde_json::from_str(&saved).unwrap_or_else(|e| panic!("a persisted rollout reads back ({e}): {saved}"))
}

/// One interval's observations: stable healthy, the candidate with `errors` errors in 100
/// requests and `slower` times stable's latency; each Prometheus query reads `external`.
fn window(plan: &Plan, errors: u64, slower: f64, external: f64) -> Window {
    let latencies = |scale: f64| -> Vec<f64> { (0..25).map(|i| scale * 0.010 * (1.0 + f64::from(i % 10) / 100.0)).collect() };
    let scores: Vec<f64> = (0..25).map(|i| f64::from(i) / 25.0).collect();
    let labelled: Vec<(f64, bool)> = scores.iter().map(|&s| (s, s >= 0.5)).collect();
    let sample = |errors, scale| Sample { requests: 100, errors, latencies: latencies(scale).into(), scores: scores.clone().into(), labelled: labelled.clone().into(), ..Default::default() }.with_sums();
    let external = plan
        .checks
        .iter()
        .filter_map(|c| match c {
            Check::Prometheus { query, .. } => Some((query.clone(), external)),
            _ => None,
        })
        .collect();
    Window { stable: sample(1, 1.0), candidate: sample(errors, slower), compared: 100, agreed: 99, external }
}
