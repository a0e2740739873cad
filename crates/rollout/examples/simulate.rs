//! The rollout simulator: replays synthetic traffic through the real rollout engine and the real
//! router, with in-process models whose behaviour is set, many times over, and reports how often
//! a rollout rolls back and how fast.
//!
//!   cargo run --release -p modelship-rollout --example simulate -- [RUNS]
//!
//! Each run: 20 requests/s for up to 2 h of simulated time, analysed every 30 s; the plan shadows
//! 100 % for 10 min, then canaries 10 % → 50 % → 100 % (10 min each). Stable is a fixed model:
//! 2 % errors, latency lognormal around 10 ms, a score per request, 80 % accurate on labels that
//! arrive 2 minutes later. Scenarios change one thing about the candidate.

use modelship_rollout::check::{Sample, Window};
use modelship_rollout::engine::{Action, Event, Phase, Rollout};
use modelship_rollout::spec::RolloutSpec;
use modelship_router::{Candidate, RouteInput, Shadow, TrafficTable};

/// SplitMix64: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// How a model behaves.
#[derive(Clone, Copy)]
struct Behaviour {
    error_rate: f64,
    latency_factor: f64,
    score_shift: f64,
    accuracy: f64,
}

const STABLE: Behaviour = Behaviour { error_rate: 0.02, latency_factor: 1.0, score_shift: 0.0, accuracy: 0.80 };

/// What one request did on one model. Scores depend on the request (`x`), so two models see the
/// same inputs; `truth` is the label that arrives later.
struct Answer {
    error: bool,
    latency: f64,
    score: f64,
    class: bool,
}

fn answer(b: Behaviour, x: f64, truth: bool, rng: &mut Rng) -> Answer {
    let error = rng.uniform() < b.error_rate;
    let latency = 0.010 * b.latency_factor * (0.25 * rng.normal()).exp();
    // Correct with probability `accuracy`; the score is confident in the class it gives.
    let correct = rng.uniform() < b.accuracy;
    let class = if correct { truth } else { !truth };
    let base = 1.0 / (1.0 + (-(x * 2.0)).exp());
    let score = if class { 0.5 + 0.5 * base } else { 0.5 * base };
    Answer { error, latency, score: (score + b.score_shift).clamp(0.0, 1.0), class }
}

fn spec() -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "to": "candidate",
        "steps": [
            {"shadow": {"percent": 100, "hold": "10m"}},
            {"weight": {"weight": "10%", "hold": "10m"}},
            {"weight": {"weight": "50%", "hold": "10m"}},
            {"weight": {"weight": "100%", "hold": "10m"}}
        ],
        "checks": [
            {"error_rate": {"alpha": 0.001}},
            {"latency": {"max_ratio": 1.1, "alpha": 0.001}},
            {"agreement": {"min": 0.60}},
            {"drift": {"max_psi": 0.25}},
            {"quality": {"metric": "accuracy", "min_delta": -0.08, "min_labels": 150}}
        ],
        "failure": {"consecutive": 3, "total": 6, "min_samples": 150, "deadline": "2h", "window": 10},
        "interval": "30s"
    }))
    .expect("valid spec")
}

struct Outcome {
    rolled_back: bool,
    requests: u64,
    seconds: u64,
}

fn simulate(candidate: Behaviour, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    // Picks which values the windows' reservoirs keep, as the server's observations do.
    let mut keep = fastrand::Rng::with_seed(seed);
    let plan = spec().resolve().expect("valid plan");
    let interval = plan.interval.0.as_secs();
    let (mut rollout, decisions) = Rollout::start(plan, 0);
    let mut table = TrafficTable::new("stable");
    let apply = |table: &mut TrafficTable, action: &Action| {
        if let Action::Route { weight, shadow, .. } = action {
            table.candidate = Some(Candidate { version: "candidate".into(), weight: *weight });
            table.shadow = (shadow.get() > 0).then(|| Shadow { version: "candidate".into(), percent: *shadow });
        }
    };
    for d in &decisions {
        apply(&mut table, &d.action);
    }
    // Labels arrive two minutes after the request: (due time, version is candidate, score, truth).
    let mut pending: Vec<(u64, bool, f64, bool)> = Vec::new();
    let mut requests = 0u64;
    let mut nonce = 0u64;
    let mut ended = 0u64;
    for tick in 1..=(2 * 3600 / interval) {
        let now = tick * interval;
        let mut window = Window::default();
        for _ in 0..(20 * interval) {
            nonce += 1;
            requests += 1;
            let x = rng.normal();
            let truth = rng.uniform() < 1.0 / (1.0 + (-(x * 2.0)).exp());
            let user = format!("user-{}", rng.next() % 100_000);
            let d = table.route("sim", &RouteInput { sticky: Some(user.as_bytes()), nonce, ..Default::default() });
            let on_candidate = d.version == "candidate";
            let served = answer(if on_candidate { candidate } else { STABLE }, x, truth, &mut rng);
            let sample = if on_candidate { &mut window.candidate } else { &mut window.stable };
            sample.requests += 1;
            sample.errors += u64::from(served.error);
            sample.latencies.offer(served.latency, &mut keep);
            sample.scores.offer(served.score, &mut keep);
            pending.push((now + 120, on_candidate, served.score, truth));
            if d.shadow.is_some() && !served.error {
                // As in the server: only an answered request is mirrored, and the copy's answer is
                // the candidate's evidence, counted, timed and scored but never labelled (labels
                // join the answer the client got).
                let shadow = answer(candidate, x, truth, &mut rng);
                window.compared += 1;
                window.agreed += u64::from(shadow.class == served.class);
                let c = &mut window.candidate;
                c.requests += 1;
                c.errors += u64::from(shadow.error);
                c.latencies.offer(shadow.latency, &mut keep);
                c.scores.offer(shadow.score, &mut keep);
            }
        }
        pending.retain(|&(due, on_candidate, score, truth)| {
            if due > now {
                return true;
            }
            let sample: &mut Sample = if on_candidate { &mut window.candidate } else { &mut window.stable };
            sample.labelled.offer((score, truth), &mut keep);
            false
        });
        for d in rollout.handle(Event::Tick { now: now * 1000, window }) {
            apply(&mut table, &d.action);
        }
        if rollout.phase.is_done() {
            ended = now;
            break;
        }
    }
    Outcome { rolled_back: matches!(rollout.phase, Phase::RolledBack { .. }), requests, seconds: ended }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let runs: u64 = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(200);
    let scenarios = [
        ("A/A: the same model twice", STABLE, false),
        ("+2 points of error rate", Behaviour { error_rate: 0.04, ..STABLE }, true),
        ("scores shifted by +0.15", Behaviour { score_shift: 0.15, ..STABLE }, true),
        ("20% lower accuracy on delayed labels", Behaviour { accuracy: 0.64, ..STABLE }, true),
        ("30% slower", Behaviour { latency_factor: 1.3, ..STABLE }, true),
    ];
    println!("| scenario | runs | rolled back | median requests to rollback | median seconds to rollback |");
    println!("|---|---:|---:|---:|---:|");
    for (name, behaviour, bad) in scenarios {
        let outcomes: Vec<Outcome> = (0..runs).map(|seed| simulate(behaviour, seed * 7919 + 1)).collect();
        let back: Vec<&Outcome> = outcomes.iter().filter(|o| o.rolled_back).collect();
        let share = back.len() as f64 / runs as f64 * 100.0;
        let (req, sec) = if back.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (median(back.iter().map(|o| o.requests).collect()).to_string(), median(back.iter().map(|o| o.seconds).collect()).to_string())
        };
        let target = if bad { "target ≥ 99 %" } else { "target ≤ 1 %" };
        println!("| {name} | {runs} | {share:.1} % ({target}) | {req} | {sec} |");
    }
}
