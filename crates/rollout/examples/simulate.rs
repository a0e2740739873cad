//! The rollout simulator: replays synthetic traffic through the real rollout engine and the real
//! router, with in-process models whose behaviour is set, many times over, and reports how often
//! a rollout rolls back and how fast.
//!
//!   cargo run --release -p modelship-rollout --example simulate -- [RUNS]
//!
//! Each run: 20 requests/s for up to 2 h of simulated time; the plan shadows 100 % for 10 min,
//! then canaries 10 % → 50 % → 100 % (10 min each). Stable is a fixed model: 2 % errors, latency
//! lognormal around 10 ms, a score per request, 80 % accurate on labels that arrive 2 minutes
//! later. Scenarios change one thing about the candidate. Each is run with today's fixed-horizon
//! tests (z test, Mann-Whitney, PSI, thresholds; 3 failures in a row) and with the always-valid
//! ones, analysed every 1 s, 30 s and 5 min, on one server and on a fleet of 3 replicas whose
//! evidence is merged. Two more tables: the error-rate detection race at a 50 % split (against a
//! textbook mSPRT and the Wald SPRT that knows the true rates), and a business-metric experiment.

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
pub struct Behaviour {
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

/// Which statistics judge the rollout.
#[derive(Clone, Copy, PartialEq)]
pub enum Stats {
    /// Today's tests, as the spec gave them before the always-valid ones.
    Fixed,
    /// The always-valid checks, each at α = 0.002 (0.01 over the five checks).
    Sequential,
}

fn spec(stats: Stats, interval: u64) -> RolloutSpec {
    let checks = match stats {
        Stats::Fixed => serde_json::json!([
            {"error_rate": {"alpha": 0.001, "test": "z_test"}},
            {"latency": {"max_ratio": 1.1, "alpha": 0.001, "test": "mann_whitney"}},
            {"agreement": {"min": 0.60, "test": "threshold"}},
            {"drift": {"max_psi": 0.25, "test": "psi"}},
            {"quality": {"metric": "accuracy", "min_delta": -0.08, "min_labels": 150, "test": "difference"}}
        ]),
        Stats::Sequential => serde_json::json!([
            {"error_rate": {"alpha": 0.002, "effect": 0.02}},
            {"latency": {"max_ratio": 1.1, "alpha": 0.002}},
            {"agreement": {"min": 0.60, "alpha": 0.002}},
            {"drift": {"max_shift": 0.05, "alpha": 0.002}},
            {"quality": {"metric": "accuracy", "min_delta": -0.08, "min_labels": 150, "alpha": 0.002}}
        ]),
    };
    serde_json::from_value(serde_json::json!({
        "to": "candidate",
        "steps": [
            {"shadow": {"percent": 100, "hold": "10m"}},
            {"weight": {"weight": "10%", "hold": "10m"}},
            {"weight": {"weight": "50%", "hold": "10m"}},
            {"weight": {"weight": "100%", "hold": "10m"}}
        ],
        "checks": checks,
        // The fixed tests judge the latest 10 windows: 5 min of evidence at 30 s, as before.
        "failure": {"consecutive": 3, "total": 6, "min_samples": 150, "deadline": "2h", "window": (300 / interval).max(1)},
        "interval": format!("{interval}s")
    }))
    .expect("valid spec")
}

struct Outcome {
    rolled_back: bool,
    requests: u64,
}

/// One rollout of `candidate`, analysed every `interval` seconds, with `replicas` replicas each
/// keeping its own window (merged at each analysis, as a fleet's leader does).
fn simulate(candidate: Behaviour, stats: Stats, interval: u64, replicas: usize, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    // Picks which values the windows' reservoirs keep, as the server's observations do.
    let mut keep = fastrand::Rng::with_seed(seed);
    let plan = spec(stats, interval).resolve().expect("valid plan");
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
    let mut pending: std::collections::VecDeque<(u64, bool, f64, bool)> = Default::default();
    let mut requests = 0u64;
    let mut nonce = 0u64;
    for tick in 1..=(2 * 3600 / interval) {
        let now = tick * interval;
        let mut windows = vec![Window::default(); replicas];
        for _ in 0..(20 * interval) {
            nonce += 1;
            let window = &mut windows[(nonce % replicas as u64) as usize];
            requests += 1;
            let x = rng.normal();
            let truth = rng.uniform() < 1.0 / (1.0 + (-(x * 2.0)).exp());
            let user = (rng.next() % 100_000).to_le_bytes();
            let d = table.route("sim", &RouteInput { sticky: Some(&user), nonce, ..Default::default() });
            let on_candidate = d.version == "candidate";
            let served = answer(if on_candidate { candidate } else { STABLE }, x, truth, &mut rng);
            let sample = if on_candidate { &mut window.candidate } else { &mut window.stable };
            sample.observe(served.error, served.latency, Some(served.score), &mut keep);
            pending.push_back((now + 120, on_candidate, served.score, truth));
            if d.shadow.is_some() && !served.error {
                // As in the server: only an answered request is mirrored, and the copy's answer is
                // the candidate's evidence, counted, timed and scored but never labelled (labels
                // join the answer the client got).
                let shadow = answer(candidate, x, truth, &mut rng);
                window.compared += 1;
                window.agreed += u64::from(shadow.class == served.class);
                window.candidate.observe(shadow.error, shadow.latency, Some(shadow.score), &mut keep);
            }
        }
        let mut window = windows.pop().unwrap_or_default();
        for other in &windows {
            window.merge(other, &mut keep);
        }
        // Labels come due in the order their requests were made.
        while pending.front().is_some_and(|&(due, ..)| due <= now) {
            let Some((_, on_candidate, score, truth)) = pending.pop_front() else { break };
            let sample: &mut Sample = if on_candidate { &mut window.candidate } else { &mut window.stable };
            sample.label(score, truth, &mut keep);
        }
        for d in rollout.handle(Event::Tick { now: now * 1000, window }) {
            apply(&mut table, &d.action);
        }
        if rollout.phase.is_done() {
            break;
        }
    }
    Outcome { rolled_back: matches!(rollout.phase, Phase::RolledBack { .. }), requests }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The scenarios: name, the candidate, and whether it should be rolled back.
pub const SCENARIOS: [(&str, Behaviour, bool); 5] = [
    ("A/A: the same model twice", STABLE, false),
    ("+2 points of error rate", Behaviour { error_rate: 0.04, ..STABLE }, true),
    ("scores shifted by +0.15", Behaviour { score_shift: 0.15, ..STABLE }, true),
    ("20% lower accuracy on delayed labels", Behaviour { accuracy: 0.64, ..STABLE }, true),
    ("30% slower", Behaviour { latency_factor: 1.3, ..STABLE }, true),
];

/// What a row of the rollout table says: the share rolled back, and the median requests and
/// seconds to the rollback.
pub struct Row {
    pub rolled_back: f64,
    pub requests: Option<u64>,
}

/// `runs` rollouts of `candidate` (seeds fixed), spread over the machine's cores.
pub fn row(candidate: Behaviour, stats: Stats, interval: u64, replicas: usize, runs: u64) -> Row {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64).min(runs.max(1));
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t..runs).step_by(threads as usize).map(|seed| simulate(candidate, stats, interval, replicas, seed * 7919 + 1)).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a simulation thread panicked")).collect()
    });
    let back: Vec<&Outcome> = outcomes.iter().filter(|o| o.rolled_back).collect();
    let requests = (!back.is_empty()).then(|| median(back.iter().map(|o| o.requests).collect()));
    Row { rolled_back: back.len() as f64 / runs as f64, requests }
}

/// The error-rate race at a 50 % split: 1 % on stable, 3 % on the candidate, one request pair at
/// a time, until a test concludes (at most `horizon` pairs). Returns the pairs each needed, or
/// `None` when it never concluded. Tests: modelship's check (effect 2 points, α = 0.01, looked
/// at after every pair), a textbook mSPRT on the paired differences (normal mixture, τ matched
/// to the 2 points, variance known), and the Wald SPRT that knows both true rates (the floor).
pub fn race(seed: u64, horizon: u64, (p_s, p_c): (f64, f64)) -> [Option<u64>; 3] {
    use modelship_rollout::sequential;
    let mut rng = Rng(seed);
    let (alpha, delta) = (0.01f64, p_c - p_s);
    let (mut es, mut ec) = (0u64, 0u64);
    let mut found = [None; 3];
    // Textbook mSPRT: observations d = x_c − x_s with known variance σ² = p_s(1−p_s) + p_c(1−p_c).
    let sigma2 = p_s * (1.0 - p_s) + p_c * (1.0 - p_c);
    let tau2 = delta * delta;
    let mut sum_d = 0.0;
    // Wald SPRT of rates (p_s, p_c) against both at their mean, per pair.
    let p0 = (p_s + p_c) / 2.0;
    let mut llr = 0.0;
    for n in 1..=horizon {
        let (xs, xc) = (rng.uniform() < p_s, rng.uniform() < p_c);
        es += u64::from(xs);
        ec += u64::from(xc);
        if found[0].is_none() && n >= 100 && sequential::rate_difference((es, n), (ec, n), delta, alpha).is_some_and(|i| i.low > 0.0) {
            found[0] = Some(n);
        }
        sum_d += f64::from(u8::from(xc)) - f64::from(u8::from(xs));
        let nf = n as f64;
        let lambda = (sigma2 / (sigma2 + nf * tau2)).sqrt() * (nf * nf * tau2 * (sum_d / nf).powi(2) / (2.0 * sigma2 * (sigma2 + nf * tau2))).exp();
        if found[1].is_none() && sum_d > 0.0 && lambda >= 1.0 / alpha {
            found[1] = Some(n);
        }
        let ll = |x: bool, p: f64| if x { (p / p0).ln() } else { ((1.0 - p) / (1.0 - p0)).ln() };
        llr += ll(xs, p_s) + ll(xc, p_c);
        if found[2].is_none() && llr >= (1.0 / alpha).ln() {
            found[2] = Some(n);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

/// A business-metric experiment: stable converts at `p_s`, the candidate at `p_c`, 50 % each,
/// through the engine's experiment step (reward check, effect 2 points, α = 0.01), at most
/// `horizon` requests per arm (20 requests/s, analysed every 30 s). Returns +1 when the candidate
/// won, −1 when stable won, 0 for no winner.
pub fn experiment(seed: u64, horizon: u64, (p_s, p_c): (f64, f64)) -> i8 {
    let mut rng = Rng(seed);
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "to": "candidate",
        "steps": [{"experiment": {"weight": "50%", "hold": format!("{}s", horizon * 2 / 20), "no_winner": "report"}}],
        "checks": [{"reward": {"effect": 0.02, "alpha": 0.01}}],
        "failure": {"min_samples": 100, "deadline": "24h"},
        "interval": "30s"
    }))
    .expect("valid spec");
    let (mut rollout, _) = Rollout::start(spec.resolve().expect("valid plan"), 0);
    let mut now = 0;
    while !rollout.phase.is_done() && !matches!(rollout.phase, Phase::Paused { .. }) {
        now += 30;
        let mut window = Window::default();
        for _ in 0..(20 * 30) {
            let candidate = rng.uniform() < 0.5;
            let p = if candidate { p_c } else { p_s };
            let reward = f64::from(u8::from(rng.uniform() < p));
            if candidate { window.candidate.reward(reward) } else { window.stable.reward(reward) }
        }
        rollout.handle(Event::Tick { now: now * 1000, window });
    }
    match rollout.phase {
        Phase::Promoted => 1,
        Phase::RolledBack { .. } => -1,
        _ => 0,
    }
}

fn main() {
    let runs: u64 = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(1000);
    // Today's tests, for comparison: fewer runs (their figures were measured on 200).
    let fixed_runs: u64 = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(200);
    println!("## Rollouts: {runs} runs per always-valid cell, {fixed_runs} per fixed-horizon one\n");
    println!("| scenario | interval | replicas | fixed: rolled back | always valid: rolled back | fixed: median requests | always valid: median requests |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, behaviour, _) in SCENARIOS {
        for (interval, replicas) in [(1, 1), (30, 1), (300, 1), (30, 3)] {
            let fixed = row(behaviour, Stats::Fixed, interval, replicas, fixed_runs);
            let always = row(behaviour, Stats::Sequential, interval, replicas, runs);
            let req = |r: &Row| r.requests.map_or("-".to_owned(), |n| n.to_string());
            println!(
                "| {name} | {interval} s | {replicas} | {:.1} % | {:.1} % | {} | {} |",
                fixed.rolled_back * 100.0, always.rolled_back * 100.0, req(&fixed), req(&always)
            );
        }
    }
    println!("\n## Error rate 1 % → 3 % at a 50 % split: requests per arm to detection ({runs} runs)\n");
    println!("| test | detected | median | 90th percentile |");
    println!("|---|---:|---:|---:|");
    let races: Vec<[Option<u64>; 3]> = (0..runs).map(|seed| race(seed * 31 + 7, 20_000, (0.01, 0.03))).collect();
    for (i, name) in ["modelship error_rate (always valid, effect 2 points, α = 0.01)", "textbook mSPRT (τ = 2 points, known variance)", "Wald SPRT knowing both rates (the floor)"].iter().enumerate() {
        let mut found: Vec<u64> = races.iter().filter_map(|r| r[i]).collect();
        found.sort_unstable();
        let p90 = found.get(found.len() * 9 / 10).copied().unwrap_or(0);
        println!("| {name} | {:.1} % | {} | {p90} |", found.len() as f64 / runs as f64 * 100.0, median(found.clone()));
    }
    let aa: usize = (0..runs).map(|seed| race(seed * 31 + 11, 20_000, (0.01, 0.01))).filter(|r| r[0].is_some()).count();
    println!("\nA/A (1 % and 1 %), looked at after every pair up to 20,000: modelship's check concluded in {:.2} % of runs.", aa as f64 / runs as f64 * 100.0);
    println!("\n## Experiment on a business metric: 50 % split, at most 20,000 requests per arm ({runs} runs)\n");
    println!("| conversion (stable, candidate) | candidate declared winner | stable declared winner | no winner |");
    println!("|---|---:|---:|---:|");
    for rates in [(0.10, 0.12), (0.10, 0.10)] {
        let results: Vec<i8> = (0..runs).map(|seed| experiment(seed * 13 + 5, 20_000, rates)).collect();
        let share = |v: i8| results.iter().filter(|r| **r == v).count() as f64 / runs as f64 * 100.0;
        println!("| {:.0} %, {:.0} % | {:.1} % | {:.1} % | {:.1} % |", rates.0 * 100.0, rates.1 * 100.0, share(1), share(-1), share(0));
    }
}
