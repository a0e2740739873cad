//! Table-driven tests of the rollout engine: a spec, a script of events, the transcript of what
//! the engine decided.

use modelship_rollout::check::{Sample, Window};
use modelship_rollout::engine::{Action, Event, Millis, Phase, Rollout};
use modelship_rollout::spec::RolloutSpec;

const S: Millis = 1000;
const M: Millis = 60 * S;

fn plan(spec: serde_json::Value) -> modelship_rollout::spec::Plan {
    serde_json::from_value::<RolloutSpec>(spec).unwrap().resolve().unwrap()
}

fn sample(requests: u64, errors: u64, latency: f64) -> Sample {
    Sample { requests, errors, latencies: (0..requests.min(500)).map(|i| latency * (1.0 + (i % 10) as f64 / 100.0)).collect(), ..Default::default() }
}

/// Both versions healthy and alike.
fn healthy() -> Window {
    Window { stable: sample(1000, 10, 0.010), candidate: sample(1000, 10, 0.010), compared: 1000, agreed: 995, ..Default::default() }
}

fn erroring() -> Window {
    Window { candidate: sample(1000, 60, 0.010), ..healthy() }
}

fn slow() -> Window {
    Window { candidate: sample(1000, 10, 0.014), ..healthy() }
}

fn quiet() -> Window {
    Window { stable: sample(5, 0, 0.010), candidate: sample(5, 0, 0.010), ..Default::default() }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Route { weight, shadow, header } => format!("route {weight}{}{}", if *shadow > Default::default() { format!(" shadow {shadow}") } else { String::new() }, if *header { " +header" } else { "" }),
        Action::Promote => "promote".into(),
        Action::Rollback => "rollback".into(),
        Action::Pause => "pause".into(),
        Action::CallWebhook { url } => format!("webhook {url}"),
    }
}

/// Runs the events; each line of the transcript is `t=<minutes> <actions>`, for events that
/// produced actions.
fn run(spec: serde_json::Value, events: Vec<Event>) -> (Vec<String>, Rollout) {
    let (mut rollout, first) = Rollout::start(plan(spec), 0);
    let mut transcript = vec![format!("t=0 {}", first.iter().map(|d| describe(&d.action)).collect::<Vec<_>>().join(", "))];
    for event in events {
        let now = match &event {
            Event::Tick { now, .. } | Event::Approve { now } | Event::WebhookAnswered { now, .. } | Event::Pause { now, .. } | Event::Resume { now } | Event::Abort { now, .. } => *now,
        };
        let decisions = rollout.handle(event);
        if !decisions.is_empty() {
            transcript.push(format!("t={} {}", now / M, decisions.iter().map(|d| describe(&d.action)).collect::<Vec<_>>().join(", ")));
        }
    }
    (transcript, rollout)
}

fn ticks(from: Millis, to: Millis, every: Millis, window: fn() -> Window) -> Vec<Event> {
    (1..).map(|i| from + i * every).take_while(|t| *t <= to).map(|now| Event::Tick { now, window: window() }).collect()
}

fn checks() -> serde_json::Value {
    serde_json::json!([{"error_rate": {}}, {"latency": {"max_ratio": 1.2}}, {"agreement": {"min": 0.98}}])
}

#[test]
fn a_healthy_canary_walks_every_step_and_promotes() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [5, 25, 50, 100], "every": "5m"}, "checks": checks(), "interval": "1m"});
    let (transcript, rollout) = run(spec, ticks(0, 30 * M, M, healthy));
    assert_eq!(transcript, ["t=0 route 5% +header", "t=5 route 25% +header", "t=10 route 50% +header", "t=15 route 100% +header", "t=20 promote"]);
    assert_eq!(rollout.phase, Phase::Promoted);
}

#[test]
fn linear_and_blue_green_shorthands() {
    let linear = serde_json::json!({"to": "2", "linear": {"step": "25%", "every": "1m"}});
    let (t, _) = run(linear, ticks(0, 10 * M, M, healthy));
    assert_eq!(t, ["t=0 route 25% +header", "t=1 route 50% +header", "t=2 route 75% +header", "t=3 route 100% +header", "t=4 promote"]);
    let bg = serde_json::json!({"to": "2", "blue_green": {"preview": "10m"}});
    let (t, _) = run(bg, ticks(0, 20 * M, M, healthy));
    assert_eq!(t, ["t=0 route 0% +header", "t=10 route 100% +header", "t=11 promote"]);
}

#[test]
fn errors_roll_back_after_consecutive_failures() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "checks": checks(), "failure": {"consecutive": 3}});
    let (t, rollout) = run(spec, ticks(0, 10 * M, M, erroring));
    assert_eq!(t, ["t=0 route 10% +header", "t=3 rollback"]);
    let Phase::RolledBack { reason } = rollout.phase else { panic!() };
    assert!(reason.contains("error_rate: error rate 0.0600 vs stable 0.0100"), "{reason}");
    assert!(reason.contains("3 failed analyses in a row"), "{reason}");
}

#[test]
fn a_slower_candidate_rolls_back_and_pause_is_an_option() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "checks": checks(), "on_failure": "pause", "failure": {"consecutive": 2}});
    let (t, rollout) = run(spec, ticks(0, 5 * M, M, slow));
    assert_eq!(t, ["t=0 route 10% +header", "t=2 pause"]);
    assert!(matches!(rollout.phase, Phase::Paused { .. }));
}

#[test]
fn total_failures_count_even_when_not_in_a_row() {
    // Judging one interval at a time (window 1), so a healthy interval ends a run of failures.
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1h"}, "checks": checks(), "failure": {"consecutive": 3, "total": 3, "window": 1}});
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(Event::Tick { now: (2 * i + 1) * M, window: erroring() });
        events.push(Event::Tick { now: (2 * i + 2) * M, window: healthy() });
    }
    let (t, _) = run(spec, events);
    assert_eq!(t, ["t=0 route 10% +header", "t=5 rollback"]);
}

#[test]
fn too_few_samples_hold_and_never_pass() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1m"}, "checks": checks(), "failure": {"deadline": "10m"}});
    let (t, rollout) = run(spec, ticks(0, 12 * M, M, quiet));
    assert_eq!(t, ["t=0 route 10% +header", "t=10 rollback"]);
    let Phase::RolledBack { reason } = rollout.phase else { panic!() };
    assert!(reason.contains("deadline"), "{reason}");
    // on_no_data: fail counts silence as failure.
    let strict = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1m"}, "checks": checks(), "failure": {"on_no_data": "fail", "consecutive": 2}});
    let (t, _) = run(strict, ticks(0, 5 * M, M, quiet));
    assert_eq!(t, ["t=0 route 10% +header", "t=2 rollback"]);
}

#[test]
fn shadow_steps_judge_agreement_only() {
    let spec = serde_json::json!({"to": "2", "steps": [{"shadow": {"percent": 100, "hold": "3m"}}, {"weight": {"weight": "50%", "hold": "1m"}}], "checks": checks()});
    let (t, _) = run(spec.clone(), ticks(0, 10 * M, M, healthy));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 route 50% +header", "t=4 promote"]);
    fn disagreeing() -> Window {
        Window { compared: 1000, agreed: 900, ..healthy() }
    }
    let (t, _) = run(spec, ticks(0, 10 * M, M, disagreeing));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 rollback"]);
}

#[test]
fn approve_and_webhook_gates() {
    let spec = serde_json::json!({"to": "2", "steps": [
        {"weight": {"weight": "10%", "hold": "1m"}}, {"approve": {}},
        {"webhook": {"url": "http://gate.local/ok"}}, {"weight": {"weight": "100%", "hold": "1m"}}
    ]});
    let mut events = ticks(0, 5 * M, M, healthy);
    events.push(Event::Approve { now: 6 * M });
    events.push(Event::WebhookAnswered { now: 7 * M, go: true, detail: "200".into() });
    events.extend(ticks(7 * M, 9 * M, M, healthy));
    let (t, rollout) = run(spec.clone(), events);
    assert_eq!(
        t,
        ["t=0 route 10% +header", "t=1 route 10% +header", "t=6 route 10% +header, webhook http://gate.local/ok", "t=7 route 100% +header", "t=8 promote"]
    );
    assert_eq!(rollout.phase, Phase::Promoted);
    let mut events = ticks(0, 2 * M, M, healthy);
    events.push(Event::Approve { now: 3 * M });
    events.push(Event::WebhookAnswered { now: 4 * M, go: false, detail: "HTTP 503".into() });
    let (t, rollout) = run(spec, events);
    assert_eq!(t.last().unwrap(), "t=4 rollback");
    assert!(matches!(rollout.phase, Phase::RolledBack { reason } if reason.contains("webhook said no: HTTP 503")));
}

#[test]
fn operators_pause_resume_and_abort() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "2m"}});
    let events = vec![
        Event::Tick { now: M, window: healthy() },
        Event::Pause { now: M + 1, reason: "investigating".into() },
        Event::Tick { now: 5 * M, window: healthy() },
        Event::Resume { now: 6 * M },
        Event::Tick { now: 7 * M, window: healthy() },
        Event::Abort { now: 8 * M, reason: "changed my mind".into() },
    ];
    let (t, rollout) = run(spec, events);
    assert_eq!(t, ["t=0 route 10% +header", "t=1 pause", "t=6 route 10% +header", "t=8 rollback"]);
    assert!(matches!(rollout.phase, Phase::RolledBack { reason } if reason == "aborted: changed my mind"));
}

#[test]
fn a_restart_resumes_the_step_or_fails_past_the_deadline() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 50, 100], "every": "5m"}, "failure": {"deadline": "1h"}});
    let (_, rollout) = run(spec, ticks(0, 6 * M, M, healthy));
    // Persisted as JSON, read back after a restart.
    let saved = serde_json::to_string(&rollout).unwrap();
    let mut back: Rollout = serde_json::from_str(&saved).unwrap();
    let d = back.recover(7 * M);
    assert_eq!(d.iter().map(|d| describe(&d.action)).collect::<Vec<_>>(), ["route 50% +header"]);
    let mut late: Rollout = serde_json::from_str(&saved).unwrap();
    let d = late.recover(2 * 60 * M);
    assert_eq!(d.iter().map(|d| describe(&d.action)).collect::<Vec<_>>(), ["rollback"]);
    assert!(d[0].reason.contains("deadline passed while the server was down"));
}

#[test]
fn invalid_specs_list_every_problem() {
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "to": "", "canary": {"weights": [50, 10], "every": "1m"}, "steps": [{"approve": {}}],
        "failure": {"consecutive": 0}, "interval": "10ms",
        "checks": [{"agreement": {"min": 1.5}}, {"latency": {"max_ratio": 0.5}}]
    }))
    .unwrap();
    let problems = spec.resolve().unwrap_err();
    assert_eq!(
        problems,
        [
            "'to' names no version",
            "give either steps or one shorthand (canary, linear, blue_green)",
            "failure.consecutive and failure.total must be at least 1",
            "interval must be at least 100ms",
            "agreement.min 1.5 is not between 0 and 1",
            "latency.max_ratio 0.5 is below 1",
        ]
    );
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "to": "2", "canary": {"weights": [5], "every": "1m"}, "failure": {"min_samples": 0},
        "checks": [{"quality": {"metric": "auc", "min_labels": 0}}]
    }))
    .unwrap();
    assert_eq!(
        spec.resolve().unwrap_err(),
        ["failure.min_samples must be at least 1: no check can judge an empty window", "quality.min_labels must be at least 1"]
    );
    let err = serde_json::from_value::<RolloutSpec>(serde_json::json!({"to": "2", "canary": {"weights": [5], "every": "soon"}})).unwrap_err();
    assert!(err.to_string().contains("'soon' is not a duration"), "{err}");
}
