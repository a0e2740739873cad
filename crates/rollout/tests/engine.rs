//! Table-driven tests of the rollout engine: a spec, a script of events, the transcript of what
//! the engine decided.

use modelship_rollout::check::{Sample, Verdict, Window};
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
        let now = event.at();
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
    serde_json::json!([{"error_rate": {"test": "z_test"}}, {"latency": {"test": "mann_whitney", "max_ratio": 1.2}}, {"agreement": {"test": "threshold", "min": 0.98}}])
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

/// Scores spread over [0, 1), or squeezed into [0.5, 1) when `shifted`.
fn scores(shifted: bool) -> Vec<f64> {
    (0..1000).map(|i| f64::from(i) / 1000.0).map(|s| if shifted { s * 0.5 + 0.5 } else { s }).collect()
}

/// Labelled scores, right on every one.
fn labels() -> Vec<(f64, bool)> {
    (0..400).map(|i| if i % 2 == 0 { (0.9, true) } else { (0.1, false) }).collect()
}

/// Healthy, with scores and labels on both sides: every check has evidence.
fn evidence() -> Window {
    let mut w = healthy();
    for s in [&mut w.stable, &mut w.candidate] {
        s.scores = scores(false).into();
        s.labelled = labels().into();
    }
    w
}

/// What a shadow step sees: stable's live answers, and the candidate's answers to the mirrored
/// copies (scores, latencies, errors) but no labels (those join the answers clients got).
fn shadowed(shifted: bool) -> Window {
    let mut w = evidence();
    w.candidate.labelled = Default::default();
    w.candidate.scores = scores(shifted).into();
    w
}

fn shadow_identical() -> Window {
    shadowed(false)
}

fn shadow_shifted() -> Window {
    shadowed(true)
}

/// One tick of `window` in the first step of `step` judged by every kind of check: each check's
/// verdict, as `name: verdict (reason)`.
fn verdicts_in(step: serde_json::Value, window: Window) -> Vec<String> {
    let checks = serde_json::json!([
        {"error_rate": {"test": "z_test"}}, {"latency": {"test": "mann_whitney", "max_ratio": 1.2}}, {"agreement": {"test": "threshold", "min": 0.98}}, {"drift": {"test": "psi"}},
        {"quality": {"test": "difference", "metric": "accuracy", "min_delta": -0.01}},
        {"prometheus": {"url": "http://prometheus.local", "query": "up", "max": 1}}
    ]);
    let spec = serde_json::json!({"to": "2", "steps": [step, {"approve": {}}], "checks": checks});
    let (mut rollout, _) = Rollout::start(plan(spec), 0);
    rollout.handle(Event::Tick { now: M, window });
    rollout
        .verdicts
        .iter()
        .map(|(name, v)| match v {
            Verdict::Pass { .. } => format!("{name}: pass"),
            Verdict::Proven { reason, .. } => format!("{name}: proven ({reason})"),
            Verdict::Fail { reason, .. } => format!("{name}: fail ({reason})"),
            Verdict::Inconclusive { reason } => format!("{name}: inconclusive ({reason})"),
            Verdict::NotApplicable { reason } => format!("{name}: not applicable ({reason})"),
        })
        .collect()
}

#[test]
fn which_checks_judge_which_steps() {
    let na = |name: &str, why: &str| format!("{name}: not applicable ({why})");
    let background = "not applicable in a shadow step: mirrored copies run at background priority, so their latency is not what clients would see";
    let unlabelled = "not applicable in a shadow step: labels and rewards join the answers clients got, which came from stable";
    let outside = "not applicable outside a shadow step: no request is mirrored to compare answers";
    let all = "not applicable at 100%: no live request reaches stable to compare with";
    let pass = |name: &str| format!("{name}: pass");
    let no_value = "prometheus: inconclusive (no value from Prometheus yet)".to_owned();
    let live = vec![pass("error_rate"), pass("latency"), na("agreement", outside), pass("drift"), pass("quality"), no_value.clone()];
    let table = [
        (
            serde_json::json!({"shadow": {"percent": 100, "hold": "1h"}}),
            shadow_identical(),
            vec![pass("error_rate"), na("latency", background), pass("agreement"), pass("drift"), na("quality", unlabelled), no_value.clone()],
        ),
        (serde_json::json!({"header": {"hold": "1h"}}), evidence(), live.clone()),
        (serde_json::json!({"weight": {"weight": "50%", "hold": "1h"}}), evidence(), live),
        (
            serde_json::json!({"weight": {"weight": "100%", "hold": "1h"}}),
            evidence(),
            vec![na("error_rate", all), na("latency", all), na("agreement", all), na("drift", all), na("quality", all), no_value],
        ),
    ];
    for (step, window, expected) in table {
        assert_eq!(verdicts_in(step.clone(), window), expected, "{step}");
    }
}

#[test]
fn shadow_steps_judge_the_candidates_shadow_answers() {
    // Latency and quality have nothing to judge in the shadow step and do not hold it; drift,
    // error rate and agreement judge the shadow answers.
    let checks = serde_json::json!([{"error_rate": {"test": "z_test"}}, {"latency": {"test": "mann_whitney", "max_ratio": 1.2}}, {"agreement": {"test": "threshold", "min": 0.98}}, {"drift": {"test": "psi"}},
        {"quality": {"test": "difference", "metric": "accuracy", "min_delta": -0.01}}]);
    let spec = serde_json::json!({"to": "2", "steps": [{"shadow": {"percent": 100, "hold": "3m"}}, {"weight": {"weight": "50%", "hold": "1m"}}], "checks": checks});
    let mut events = ticks(0, 3 * M, M, shadow_identical);
    events.extend(ticks(3 * M, 10 * M, M, evidence));
    let (t, rollout) = run(spec.clone(), events);
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 route 50% +header", "t=4 promote"]);
    assert_eq!(rollout.phase, Phase::Promoted);
    // The decision that left the shadow step carries its evidence, not-applicable checks included.
    let (mut rollout, _) = Rollout::start(plan(spec.clone()), 0);
    let left = ticks(0, 3 * M, M, shadow_identical).into_iter().flat_map(|e| rollout.handle(e)).next().unwrap();
    let evidence: Vec<(&str, &str)> = left
        .evidence
        .iter()
        .map(|(name, v)| (name.as_str(), match v { Verdict::Pass { .. } => "pass", Verdict::NotApplicable { .. } => "not applicable", _ => "other" }))
        .collect();
    assert_eq!(evidence, [("error_rate", "pass"), ("latency", "not applicable"), ("agreement", "pass"), ("drift", "pass"), ("quality", "not applicable")]);
    // A candidate whose scores shift fails drift in the shadow step, before any client sees it.
    let (t, rollout) = run(spec.clone(), ticks(0, 10 * M, M, shadow_shifted));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 rollback"]);
    let Phase::RolledBack { reason } = rollout.phase else { panic!() };
    assert!(reason.starts_with("drift: prediction drift PSI"), "{reason}");
    // Errors on mirrored copies count against the candidate.
    fn shadow_erroring() -> Window {
        Window { candidate: Sample { errors: 60, ..shadow_identical().candidate }, ..shadow_identical() }
    }
    let (t, rollout) = run(spec.clone(), ticks(0, 10 * M, M, shadow_erroring));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 rollback"]);
    assert!(matches!(rollout.phase, Phase::RolledBack { reason } if reason.starts_with("error_rate")));
    fn disagreeing() -> Window {
        Window { compared: 1000, agreed: 900, ..shadow_identical() }
    }
    let (t, _) = run(spec.clone(), ticks(0, 10 * M, M, disagreeing));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=3 rollback"]);
    // Without the candidate's scores drift has too few and holds: silence never passes.
    fn no_scores() -> Window {
        Window { candidate: Sample { scores: Default::default(), ..shadow_identical().candidate }, ..shadow_identical() }
    }
    let strict = serde_json::json!({"to": "2", "steps": [{"shadow": {"percent": 100, "hold": "3m"}}], "checks": [{"drift": {"test": "psi"}}], "failure": {"deadline": "10m"}});
    let (t, rollout) = run(strict, ticks(0, 12 * M, M, no_scores));
    assert_eq!(t, ["t=0 route 0% shadow 100%", "t=10 rollback"]);
    assert!(matches!(rollout.phase, Phase::RolledBack { reason } if reason.contains("deadline")));
    assert_eq!(rollout.verdicts, [("drift".to_owned(), Verdict::Inconclusive { reason: "0 scores, fewer than 100".into() })]);
}

#[test]
fn a_step_no_check_applies_to_is_a_plain_hold() {
    // Even with on_no_data: fail, a check that does not apply is no missing data.
    let spec = serde_json::json!({"to": "2", "steps": [{"shadow": {"percent": 10, "hold": "2m"}}, {"weight": {"weight": "100%", "hold": "1m"}}],
        "checks": [{"latency": {"test": "mann_whitney"}}, {"quality": {"test": "difference", "metric": "auc"}}], "failure": {"on_no_data": "fail", "consecutive": 1}});
    let (mut rollout, _) = Rollout::start(plan(spec), 0);
    let mut reasons = Vec::new();
    for minute in 1..=4 {
        for d in rollout.handle(Event::Tick { now: minute * M, window: quiet() }) {
            reasons.push(format!("t={minute} {}: {}", describe(&d.action), d.reason));
        }
    }
    assert_eq!(
        reasons,
        [
            "t=2 route 100% +header: step 1 held 2m; no check applies to it; step 2 of 2",
            "t=3 promote: step 2 held 1m; no check applies to it; every step done",
        ]
    );
    assert!(rollout.verdicts.iter().all(|(_, v)| matches!(v, Verdict::NotApplicable { .. })), "{:?}", rollout.verdicts);
    // A judged step says its checks passed.
    let spec = serde_json::json!({"to": "2", "steps": [{"weight": {"weight": "10%", "hold": "1m"}}], "checks": checks()});
    let (mut rollout, _) = Rollout::start(plan(spec), 0);
    let d = rollout.handle(Event::Tick { now: M, window: healthy() });
    assert_eq!(d[0].reason, "step 1 held 1m with every applicable check passing; every step done");
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
        "checks": [{"agreement": {"test": "threshold", "min": 1.5}}, {"latency": {"test": "mann_whitney", "max_ratio": 0.5}}]
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
        "checks": [{"quality": {"test": "difference", "metric": "auc", "min_labels": 0}}]
    }))
    .unwrap();
    assert_eq!(
        spec.resolve().unwrap_err(),
        ["failure.min_samples must be at least 1: no check can judge an empty window", "quality.min_labels must be at least 1"]
    );
    let err = serde_json::from_value::<RolloutSpec>(serde_json::json!({"to": "2", "canary": {"weights": [5], "every": "soon"}})).unwrap_err();
    assert!(err.to_string().contains("'soon' is not a duration"), "{err}");
}

/// In a fleet a step's hold counts from the moment every replica routes by it: time spent
/// waiting for the fleet to settle is not hold time, but the deadline still runs.
#[test]
fn the_hold_counts_from_when_the_fleet_settled() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "checks": checks(), "interval": "1m", "failure": {"deadline": "30m"}});
    let mut events: Vec<Event> = (1..=4).map(|i| Event::Wait { now: i * M }).collect();
    events.push(Event::Settled { now: 4 * M });
    events.extend(ticks(4 * M, 12 * M, M, healthy));
    let (t, _) = run(spec.clone(), events);
    // Settled at t=4: the 5-minute hold ends at t=9, not t=5.
    assert_eq!(t, ["t=0 route 10% +header", "t=9 route 100% +header"]);

    // Never settled: waiting alone ends at the deadline, by the failure policy.
    let (t, rollout) = run(spec, (1..=31).map(|i| Event::Wait { now: i * M }).collect());
    assert_eq!(t, ["t=0 route 10% +header", "t=30 rollback"]);
    assert!(matches!(&rollout.phase, Phase::RolledBack { reason } if reason.contains("deadline")), "{:?}", rollout.phase);
}

/// A fault (a replica cannot load the candidate) takes the failure action: roll back, or pause
/// when the spec says so; a paused rollout ignores further faults.
#[test]
fn a_fault_takes_the_failure_action() {
    let fault = |now| Event::Fault { now, reason: "replica b cannot load version 2".into() };
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}});
    let (t, rollout) = run(spec, vec![fault(M)]);
    assert_eq!(t, ["t=0 route 10% +header", "t=1 rollback"]);
    assert!(matches!(&rollout.phase, Phase::RolledBack { reason } if reason.contains("cannot load")));
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "on_failure": "pause"});
    let (t, rollout) = run(spec, vec![fault(M), fault(2 * M)]);
    assert_eq!(t, ["t=0 route 10% +header", "t=1 pause"]);
    assert!(matches!(rollout.phase, Phase::Paused { .. }));
}

/// The routing a rollout's state asks for, whatever decisions were applied before.
#[test]
fn the_desired_routing_follows_the_state() {
    let spec = serde_json::json!({"to": "2", "steps": [{"shadow": {"percent": 100, "hold": "1m"}}, {"approve": {}}, {"weight": {"weight": "50%", "hold": "1m"}}]});
    let (_, mut rollout) = run(spec, vec![]);
    assert_eq!(describe(&rollout.desired()), "route 0% shadow 100%");
    rollout.handle(Event::Tick { now: 2 * M, window: healthy() });
    assert_eq!((rollout.phase.clone(), describe(&rollout.desired())), (Phase::AwaitingApproval, "route 0% shadow 100%".to_owned()), "a gate keeps the step before's routing");
    rollout.handle(Event::Approve { now: 3 * M });
    assert_eq!(describe(&rollout.desired()), "route 50% +header");
    rollout.handle(Event::Tick { now: 5 * M, window: healthy() });
    assert_eq!((rollout.phase.clone(), describe(&rollout.desired())), (Phase::Promoted, "promote".to_owned()));
    rollout.handle(Event::Abort { now: 6 * M, reason: "late".into() });
    assert_eq!(describe(&rollout.desired()), "promote", "a finished rollout stays finished");
}

/// A window of `n` requests per side built as the server builds them, one answer at a time:
/// `errors` errors in every 100 on the candidate (1 on stable), latencies around 10 ms times
/// `slower`, and, when `rewards` is given, a reward of 1 for that share of each side's answers.
fn observed(n: u64, errors: u64, slower: f64, rewards: Option<(f64, f64)>) -> Window {
    let mut rng = fastrand::Rng::with_seed(n + errors);
    let mut w = Window::default();
    for i in 0..n {
        let jitter = 1.0 + (i % 10) as f64 / 100.0;
        w.stable.observe(i % 100 == 0, 0.010 * jitter, Some((i % 7) as f64 / 7.0), &mut rng);
        w.candidate.observe(i % 100 < errors, 0.010 * slower * jitter, Some((i % 7) as f64 / 7.0), &mut rng);
        if let Some((stable, candidate)) = rewards {
            let share = |p: f64| f64::from(u8::from(((i * 37) % 100) as f64 / 100.0 < p));
            w.stable.reward(share(stable));
            w.candidate.reward(share(candidate));
        }
    }
    w
}

fn sequential_checks() -> serde_json::Value {
    serde_json::json!([{"error_rate": {"effect": 0.02}}, {"latency": {"max_ratio": 1.2}}])
}

#[test]
fn an_always_valid_conclusion_ends_the_step_at_once() {
    // The same evidence that took 3 failed analyses in a row with the z test: the confidence
    // sequence's first conclusion is final.
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "checks": [{"error_rate": {"effect": 0.02}}], "failure": {"consecutive": 3}});
    let (t, rollout) = run(spec, ticks(0, 10 * M, M, || observed(1000, 6, 1.0, None)));
    assert_eq!(t, ["t=0 route 10% +header", "t=1 rollback"]);
    let Phase::RolledBack { reason } = rollout.phase else { panic!() };
    assert!(reason.starts_with("error_rate: error rate 0.0600 vs stable 0.0100: difference +5.00 points (between +") && reason.contains("always valid, α = 0.01"), "{reason}");
    assert!(!reason.contains("in a row"), "{reason}");
    // Slower by 40 %, against a tolerance of 20 %.
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "5m"}, "checks": sequential_checks()});
    let (t, rollout) = run(spec, ticks(0, 10 * M, M, || observed(1000, 1, 1.4, None)));
    assert_eq!(t, ["t=0 route 10% +header", "t=1 rollback"]);
    let Phase::RolledBack { reason } = rollout.phase else { panic!() };
    assert!(reason.starts_with("latency: slower than 1.2x stable's in ") && reason.ends_with("typical latency 1.400x stable's: slower in most pairs"), "{reason}");
}

#[test]
fn evidence_adds_up_over_the_step_and_survives_a_restart() {
    let spec = serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1h"}, "checks": [{"error_rate": {"effect": 0.02}}]});
    // 40 requests a minute, 3 % errors against 1 %: no single minute says anything, the step does.
    let window = || observed(40, 3, 1.0, None);
    let (mut rollout, _) = Rollout::start(plan(spec), 0);
    let mut minute = 0;
    while !rollout.phase.is_done() && minute < 60 {
        minute += 1;
        rollout.handle(Event::Tick { now: minute * M, window: window() });
        // Stored and read back (a restart, a new leader) at every minute: nothing is lost.
        rollout = serde_json::from_str(&serde_json::to_string(&rollout).unwrap()).unwrap();
    }
    assert!(matches!(rollout.phase, Phase::RolledBack { .. }), "{:?}", rollout.phase);
    assert!((3..60).contains(&minute), "concluded after {minute} minutes");
    assert_eq!(rollout.evidence.candidate.requests, 40 * minute);
    // A rollout stored before the evidence existed reads with none.
    let mut stored = serde_json::to_value(&rollout).unwrap();
    stored.as_object_mut().unwrap().remove("evidence");
    assert_eq!(serde_json::from_value::<Rollout>(stored).unwrap().evidence, Default::default());
}

#[test]
fn a_step_may_end_early_on_evidence_but_never_for_lack_of_it() {
    let spec = |early: bool| serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1h"}, "checks": sequential_checks(), "advance_on_evidence": early});
    let (t, _) = run(spec(true), ticks(0, 10 * M, M, || observed(5000, 1, 1.0, None)));
    assert_eq!(t[..2], ["t=0 route 10% +header", "t=1 route 100% +header"]);
    // Without the option, the hold is kept.
    let (t, _) = run(spec(false), ticks(0, 10 * M, M, || observed(5000, 1, 1.0, None)));
    assert_eq!(t, ["t=0 route 10% +header"]);
    // Too little evidence proves nothing: the step holds, whatever the option.
    let (t, _) = run(spec(true), ticks(0, 10 * M, M, quiet));
    assert_eq!(t, ["t=0 route 10% +header"]);
}

#[test]
fn an_experiment_ends_when_a_winner_is_declared() {
    let spec = |no_winner: &str| {
        serde_json::json!({"to": "2", "steps": [{"experiment": {"weight": "50%", "hold": "30m", "no_winner": no_winner}}, {"weight": {"weight": "100%", "hold": "1m"}}],
            "checks": [{"reward": {"effect": 0.02}}], "interval": "1m"})
    };
    // The candidate converts at 12 %, stable at 10 %.
    let (t, rollout) = run(spec("keep"), ticks(0, 40 * M, M, || observed(2000, 1, 1.0, Some((0.10, 0.12)))));
    assert_eq!(t[0], "t=0 route 50% +header");
    assert!(t[1].ends_with("route 100% +header") && t[2].ends_with("promote"), "{t:?}");
    assert_eq!(rollout.phase, Phase::Promoted);
    // Stable converts better: the experiment keeps it.
    let (_, rollout) = run(spec("keep"), ticks(0, 40 * M, M, || observed(2000, 1, 1.0, Some((0.12, 0.10)))));
    assert!(matches!(&rollout.phase, Phase::RolledBack { reason } if reason.starts_with("the experiment's winner is stable: reward: mean reward")), "{:?}", rollout.phase);
    // No difference: no winner by the end, and `no_winner` decides.
    let same = || observed(2000, 1, 1.0, Some((0.10, 0.10)));
    let (t, rollout) = run(spec("keep"), ticks(0, 40 * M, M, same));
    assert_eq!(t, ["t=0 route 50% +header", "t=30 rollback"]);
    assert!(matches!(&rollout.phase, Phase::RolledBack { reason } if reason == "no winner after 30m of experiment: stable kept (no_winner: keep)"));
    let (t, _) = run(spec("promote"), ticks(0, 40 * M, M, same));
    assert_eq!(t, ["t=0 route 50% +header", "t=30 route 100% +header", "t=31 promote"]);
    let (t, rollout) = run(spec("report"), ticks(0, 40 * M, M, same));
    assert_eq!(t, ["t=0 route 50% +header", "t=30 pause"]);
    assert!(matches!(rollout.phase, Phase::Paused { .. }));
}

#[test]
fn sequential_specs_are_checked() {
    let problems = |spec: serde_json::Value| serde_json::from_value::<RolloutSpec>(spec).unwrap().resolve().unwrap_err();
    let found = problems(serde_json::json!({"to": "2", "steps": [{"experiment": {"weight": "100%", "hold": "1m"}}],
        "checks": [{"error_rate": {"test": "mann_whitney"}}, {"latency": {"effect": 1.3}}, {"reward": {"effect": 0}}, {"quality": {"metric": "auc", "test": "sequential"}}, {"drift": {"alpha": 0.5}}]}));
    assert_eq!(
        found,
        [
            "steps[0].experiment.weight must be between 0% and 100%: both versions need traffic",
            "error_rate.test 'mann_whitney' is not one of its tests: sequential, z_test",
            "latency.effect 1.3 is not a share of pairs between 0.5 and 1 (0.6: the candidate slower in 60 % of them)",
            "reward.effect 0 must be above 0: the smallest difference of mean reward worth finding, in the reward's units (0.01 for a point of conversion)",
            "quality.test 'sequential' is not one of its tests: difference",
            "drift.alpha 0.5 is not a false-alarm rate between 0 and 0.25",
        ]
    );
    let found = problems(serde_json::json!({"to": "2", "steps": [{"experiment": {"weight": "50%", "hold": "1m"}}], "checks": [{"error_rate": {}}]}));
    assert_eq!(found, ["steps[0] is an experiment but no check is a reward: add `reward: {effect: ...}` to checks"]);
    // New specs get the sequential test; a drift check that gives only max_psi keeps PSI.
    let plan = plan(serde_json::json!({"to": "2", "canary": {"weights": [10, 100], "every": "1m"}, "checks": [{"error_rate": {}}, {"drift": {"max_psi": 0.2}}, {"drift": {}}]}));
    let tests: Vec<_> = plan.checks.iter().map(|c| c.test()).collect();
    use modelship_rollout::check::Test;
    assert_eq!(tests, [Some(Test::Sequential), Some(Test::Psi), Some(Test::Sequential)]);
}

/// Every rollout spec the docs show (heredocs of `.yaml` files and ```yaml blocks) reads and
/// resolves: a documented spec that the engine refuses is a bug.
#[test]
fn every_documented_spec_resolves() {
    let pages = [
        ("tutorial/rollouts.md", include_str!("../../../docs/src/tutorial/rollouts.md")),
        ("guides/rollouts.md", include_str!("../../../docs/src/guides/rollouts.md")),
    ];
    let mut found = 0;
    for (page, text) in pages {
        let mut specs = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.contains(".yaml <<'YAML'") || line.trim() == "```yaml" {
                let end = if line.trim() == "```yaml" { "```" } else { "YAML" };
                specs.push(lines.by_ref().take_while(|l| l.trim() != end).collect::<Vec<_>>().join("\n"));
            }
        }
        for spec in specs {
            // As `rollout start` reads it: through JSON, `to` given by `--to` when absent.
            let mut value: serde_json::Value = serde_yaml_ng::from_str(&spec).unwrap_or_else(|e| panic!("{page}: {e}\n{spec}"));
            value.as_object_mut().unwrap().entry("to").or_insert("2".into());
            let parsed: RolloutSpec = serde_json::from_value(value).unwrap_or_else(|e| panic!("{page}: {e}\n{spec}"));
            parsed.resolve().unwrap_or_else(|e| panic!("{page}: {e:?}\n{spec}"));
            found += 1;
        }
    }
    assert!(found >= 4, "only {found} specs found in the docs");
}
