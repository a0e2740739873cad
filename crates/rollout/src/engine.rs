//! The rollout state machine. Events (time passing with a window of observations, approvals,
//! webhook answers, operator commands) go in; actions come out, each with its reason and the
//! check verdicts that led to it. The state is plain data: persisted by the caller after every
//! event. Whoever takes a persisted rollout over makes the routing [`Rollout::desired`] and goes
//! on handing it events (the deadline is checked by `Tick` and `Wait`), as the server's control
//! loop does; [`Rollout::recover`] does both at once for a caller that replays decisions instead.

use std::collections::VecDeque;
use std::time::Duration;

use modelship_router::BasisPoints;
use serde::{Deserialize, Serialize};

use crate::check::{Check, Evidence, Verdict, Window};
use crate::spec::{NoWinner, OnFailure, OnNoData, Plan, Step};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Running step `step`.
    Progressing,
    AwaitingApproval,
    AwaitingWebhook,
    Paused { reason: String },
    /// Done: the candidate is the new stable version.
    Promoted,
    RolledBack { reason: String },
}

impl Phase {
    pub fn is_done(&self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack { .. })
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Route: `weight` of live traffic to the candidate, `shadow` of requests mirrored to it,
    /// and the canary header reaching it when `header` is true.
    Route { weight: BasisPoints, shadow: BasisPoints, header: bool },
    /// Make the candidate the stable version.
    Promote,
    /// Send all traffic back to stable and drop the candidate.
    Rollback,
    /// Hold the current routing until resumed.
    Pause,
    /// POST the rollout's state to `url`; answer with [`Event::WebhookAnswered`].
    CallWebhook { url: String },
}

/// An action with why it was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: Millis,
    pub action: Action,
    pub reason: String,
    /// The latest verdict of each check, when checks led to the decision.
    pub evidence: Vec<(String, Verdict)>,
}

#[derive(Debug, Clone, PartialEq)]
// Events are handled one at a time and never stored in bulk: boxing the window would only add an
// allocation per tick.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// Time has passed; `window` is what happened since the last tick.
    Tick { now: Millis, window: Window },
    Approve { now: Millis },
    WebhookAnswered { now: Millis, go: bool, detail: String },
    Pause { now: Millis, reason: String },
    Resume { now: Millis },
    Abort { now: Millis, reason: String },
    /// Every replica now serves the current step's routing (it acknowledged the revision): the
    /// step's clock and its evidence start now, so a hold never counts time spent before the
    /// whole fleet routed by the step.
    Settled { now: Millis },
    /// Time has passed with nothing to judge yet (the fleet has not settled on the step's
    /// routing): only the deadline is checked.
    Wait { now: Millis },
    /// Something outside the checks makes the step fail: a replica cannot load the candidate.
    /// Handled by the failure policy (`on_failure`), like a failed analysis past its limits.
    Fault { now: Millis, reason: String },
}

impl Event {
    /// When the event happened.
    pub fn at(&self) -> Millis {
        match self {
            Event::Tick { now, .. }
            | Event::Approve { now }
            | Event::WebhookAnswered { now, .. }
            | Event::Pause { now, .. }
            | Event::Resume { now }
            | Event::Abort { now, .. }
            | Event::Settled { now }
            | Event::Wait { now }
            | Event::Fault { now, .. } => *now,
        }
    }
}

/// A rollout in progress, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub plan: Plan,
    pub phase: Phase,
    pub step: usize,
    pub started: Millis,
    pub step_started: Millis,
    pub consecutive_failures: u32,
    pub total_failures: u32,
    /// The last verdict of each check.
    pub verdicts: Vec<(String, Verdict)>,
    /// The last `failure.window` intervals observed in the current step: checks judge them
    /// together, so evidence accumulates across intervals instead of one noisy interval at a
    /// time, and old evidence ages out.
    #[serde(default)]
    pub observed: VecDeque<Window>,
    /// Everything observed since the current step began, as sufficient statistics: what the
    /// always-valid checks judge.
    #[serde(default)]
    pub evidence: Evidence,
}

impl Rollout {
    /// Starts `plan` at `now`: the first step's routing.
    pub fn start(plan: Plan, now: Millis) -> (Rollout, Vec<Decision>) {
        let mut rollout = Rollout {
            plan,
            phase: Phase::Progressing,
            step: 0,
            started: now,
            step_started: now,
            consecutive_failures: 0,
            total_failures: 0,
            verdicts: vec![],
            observed: VecDeque::new(),
            evidence: Evidence::default(),
        };
        let decisions = rollout.enter(0, now, "rollout started");
        (rollout, decisions)
    }

    /// After a restart at `now`: the failure action if the deadline passed, else the current
    /// step's routing again (so a rollout never sits at a half-way weight unattended).
    pub fn recover(&mut self, now: Millis) -> Vec<Decision> {
        if self.phase.is_done() {
            return vec![];
        }
        if self.past_deadline(now) {
            return self.fail(now, "the deadline passed while the server was down".to_owned());
        }
        let mut decisions = vec![self.decide(now, self.route_for(self.step), "resumed after a restart")];
        if let Some(Step::Webhook { url }) = self.plan.steps.get(self.step)
            && self.phase == Phase::AwaitingWebhook
        {
            decisions.push(self.decide(now, Action::CallWebhook { url: url.clone() }, "asking the webhook again after a restart"));
        }
        decisions
    }

    pub fn handle(&mut self, event: Event) -> Vec<Decision> {
        if self.phase.is_done() {
            return vec![];
        }
        match event {
            Event::Abort { now, reason } => self.end_rolled_back(now, format!("aborted: {reason}")),
            Event::Pause { now, reason } => {
                self.phase = Phase::Paused { reason: reason.clone() };
                vec![self.decide(now, Action::Pause, &format!("paused: {reason}"))]
            }
            Event::Resume { now } => match self.phase {
                Phase::Paused { .. } => {
                    self.phase = Phase::Progressing;
                    self.consecutive_failures = 0;
                    self.enter(self.step, now, "resumed")
                }
                _ => vec![],
            },
            Event::Approve { now } => match self.phase {
                Phase::AwaitingApproval => self.enter(self.step + 1, now, "approved"),
                _ => vec![],
            },
            Event::WebhookAnswered { now, go, detail } => match (&self.phase, go) {
                (Phase::AwaitingWebhook, true) => self.enter(self.step + 1, now, &format!("webhook said go: {detail}")),
                (Phase::AwaitingWebhook, false) => self.fail(now, format!("webhook said no: {detail}")),
                _ => vec![],
            },
            Event::Tick { now, window } => self.tick(now, &window),
            Event::Settled { now } => {
                self.step_started = now;
                self.observed.clear();
                self.evidence = Evidence::default();
                vec![]
            }
            Event::Wait { now } if self.past_deadline(now) => {
                self.fail(now, format!("the deadline of {} passed", humantime::format_duration(self.plan.failure.deadline.0)))
            }
            Event::Wait { .. } => vec![],
            Event::Fault { now, reason } => match self.phase {
                Phase::Paused { .. } => vec![],
                _ => self.fail(now, reason),
            },
        }
    }

    /// What the routing must be for the rollout as it stands: the current step's routing while
    /// it runs (paused or waiting at a gate included), the promotion or the rollback once done.
    /// Applying it again is harmless, so whoever takes over a rollout can make the routing match
    /// its state without knowing which decisions were already applied.
    pub fn desired(&self) -> Action {
        match self.phase {
            Phase::Promoted => Action::Promote,
            Phase::RolledBack { .. } => Action::Rollback,
            _ => self.route_for(self.step.min(self.plan.steps.len().saturating_sub(1))),
        }
    }

    fn tick(&mut self, now: Millis, window: &Window) -> Vec<Decision> {
        if self.past_deadline(now) {
            return self.fail(now, format!("the deadline of {} passed", humantime::format_duration(self.plan.failure.deadline.0)));
        }
        if self.phase != Phase::Progressing {
            return vec![];
        }
        let step = self.plan.steps[self.step].clone();
        let policy = self.plan.failure.clone();
        self.observed.push_back(window.clone());
        while self.observed.len() > policy.window.max(1) {
            self.observed.pop_front();
        }
        self.evidence.add(window);
        {
            // Latency pairs are drawn from this window alone, seeded by the tick's time.
            let mut rng = fastrand::Rng::with_seed(now ^ 0x5eed);
            for check in self.plan.checks.iter().filter(|c| c.is_sequential() && not_applicable(c, &step).is_none()) {
                if let Check::Latency { max_ratio, .. } = check {
                    self.evidence.pair_latencies(window, *max_ratio, &mut rng);
                }
            }
        }
        // The latest windows merged, for the fixed-horizon checks only (the always-valid ones read
        // the step's evidence). Seeded by the tick's time, so the same events always give the
        // same decisions.
        let observed = if self.plan.checks.iter().any(|c| !c.is_sequential()) {
            let mut rng = fastrand::Rng::with_seed(now);
            self.observed.iter().fold(Window::default(), |mut all, w| {
                all.merge(w, &mut rng);
                all
            })
        } else {
            Window::default()
        };
        let judged: Vec<(&Check, Verdict)> = self
            .plan
            .checks
            .iter()
            .map(|c| {
                let verdict = match not_applicable(c, &step) {
                    Some(why) => Verdict::NotApplicable { reason: why.to_owned() },
                    None => c.judge(&observed, &self.evidence, policy.min_samples),
                };
                (c, verdict)
            })
            .collect();
        let failed = |sequential: bool| -> Vec<String> {
            judged
                .iter()
                .filter(|(c, _)| c.is_sequential() == sequential)
                .filter_map(|(c, v)| match v {
                    Verdict::Fail { reason, .. } => Some(format!("{}: {reason}", c.name())),
                    _ => None,
                })
                .collect()
        };
        let (concluded, failed) = (failed(true), failed(false));
        let inconclusive = judged.iter().any(|(_, v)| matches!(v, Verdict::Inconclusive { .. }));
        let rewards: Vec<&Verdict> = judged.iter().filter(|(c, v)| matches!(c, Check::Reward { .. }) && !matches!(v, Verdict::NotApplicable { .. })).map(|(_, v)| v).collect();
        let proven = judged.iter().filter(|(_, v)| !matches!(v, Verdict::NotApplicable { .. })).all(|(_, v)| matches!(v, Verdict::Proven { .. }));
        let any_judged = judged.iter().any(|(_, v)| !matches!(v, Verdict::NotApplicable { .. }));
        self.verdicts = judged.iter().map(|(c, v)| (c.name().to_owned(), v.clone())).collect();
        // An always-valid conclusion is final: its false-alarm rate already holds at α over every
        // look, so no "N failures in a row" is needed (or allowed: it would only delay).
        if !concluded.is_empty() {
            let lost = matches!(step, Step::Experiment { .. }) && rewards.iter().any(|v| matches!(v, Verdict::Fail { .. }));
            let why = concluded.join("; ");
            return self.fail(now, if lost { format!("the experiment's winner is stable: {why}") } else { why });
        }
        if !failed.is_empty() || (inconclusive && policy.on_no_data == OnNoData::Fail) {
            self.consecutive_failures += 1;
            self.total_failures += 1;
            let why = if failed.is_empty() { "too few samples (on_no_data: fail)".to_owned() } else { failed.join("; ") };
            if self.consecutive_failures >= policy.consecutive || self.total_failures >= policy.total {
                return self.fail(
                    now,
                    format!(
                        "{why} ({} failed analyses in a row, {} in all; limits {} and {})",
                        self.consecutive_failures, self.total_failures, policy.consecutive, policy.total
                    ),
                );
            }
            return vec![];
        }
        self.consecutive_failures = 0;
        let hold = match step {
            Step::Shadow { hold, .. } | Step::Header { hold } | Step::Weight { hold, .. } | Step::Experiment { hold, .. } => hold.0,
            Step::Approve {} | Step::Webhook { .. } => Duration::ZERO,
        };
        let held_out = now.saturating_sub(self.step_started) >= hold.as_millis() as u64;
        if let Step::Experiment { no_winner, .. } = step {
            if !rewards.is_empty() && rewards.iter().all(|v| matches!(v, Verdict::Proven { .. })) {
                let why = rewards.iter().filter_map(|v| if let Verdict::Proven { reason, .. } = v { Some(reason.as_str()) } else { None }).collect::<Vec<_>>().join("; ");
                return self.enter(self.step + 1, now, &format!("the candidate won the experiment: {why}"));
            }
            if !held_out {
                return vec![];
            }
            let report = format!("no winner after {} of experiment", humantime::format_duration(hold));
            return match no_winner {
                NoWinner::Keep => self.end_rolled_back(now, format!("{report}: stable kept (no_winner: keep)")),
                NoWinner::Promote => self.enter(self.step + 1, now, &format!("{report}: going on (no_winner: promote)")),
                NoWinner::Report => {
                    let reason = format!("{report}: waiting for a person (no_winner: report)");
                    self.phase = Phase::Paused { reason: reason.clone() };
                    vec![self.decide(now, Action::Pause, &reason)]
                }
            };
        }
        if inconclusive {
            // Never pass by default: wait for enough samples (the deadline still applies).
            return vec![];
        }
        if self.plan.advance_on_evidence && any_judged && proven && !held_out {
            return self.enter(self.step + 1, now, &format!("step {} shown safe before its hold: every check that judges it proved the candidate no worse", self.step + 1));
        }
        if !held_out {
            return vec![];
        }
        let held = format!("step {} held {}", self.step + 1, humantime::format_duration(hold));
        let why = if any_judged { format!("{held} with every applicable check passing") } else { format!("{held}; no check applies to it") };
        self.enter(self.step + 1, now, &why)
    }

    /// The reason the rollout stays at its step past the step's hold, when it does because a
    /// check that judges the step is still inconclusive (it waits for samples; the deadline
    /// still applies): what a person should hear about once.
    pub fn held_inconclusive(&self, now: Millis) -> Option<String> {
        if self.phase != Phase::Progressing {
            return None;
        }
        let hold = match self.plan.steps.get(self.step)? {
            Step::Shadow { hold, .. } | Step::Header { hold } | Step::Weight { hold, .. } => hold.0,
            Step::Experiment { .. } | Step::Approve {} | Step::Webhook { .. } => return None,
        };
        if now.saturating_sub(self.step_started) < hold.as_millis() as u64 {
            return None;
        }
        let waiting: Vec<String> = self
            .verdicts
            .iter()
            .filter_map(|(check, v)| match v {
                Verdict::Inconclusive { reason } => Some(format!("{check}: {reason}")),
                _ => None,
            })
            .collect();
        (!waiting.is_empty()).then(|| format!("step {} held {} and still inconclusive: {}", self.step + 1, humantime::format_duration(hold), waiting.join("; ")))
    }

    fn past_deadline(&self, now: Millis) -> bool {
        now.saturating_sub(self.started) >= self.plan.failure.deadline.0.as_millis() as u64
    }

    /// Moves to step `index` (or promotes past the last one).
    fn enter(&mut self, index: usize, now: Millis, why: &str) -> Vec<Decision> {
        self.step = index;
        self.step_started = now;
        self.consecutive_failures = 0;
        self.observed.clear();
        self.evidence = Evidence::default();
        let Some(step) = self.plan.steps.get(index).cloned() else {
            self.phase = Phase::Promoted;
            return vec![self.decide(now, Action::Promote, &format!("{why}; every step done"))];
        };
        let route = self.decide(now, self.route_for(index), &format!("{why}; step {} of {}", index + 1, self.plan.steps.len()));
        match step {
            Step::Approve {} => {
                self.phase = Phase::AwaitingApproval;
                vec![route]
            }
            Step::Webhook { url } => {
                self.phase = Phase::AwaitingWebhook;
                vec![route, self.decide(now, Action::CallWebhook { url }, "waiting for the webhook's go")]
            }
            _ => {
                self.phase = Phase::Progressing;
                vec![route]
            }
        }
    }

    /// The routing of step `index`: gates (approve, webhook) keep the routing of the step before.
    fn route_for(&self, index: usize) -> Action {
        let (mut weight, mut shadow, mut header) = (BasisPoints::ZERO, BasisPoints::ZERO, false);
        for step in self.plan.steps.iter().take(index + 1) {
            match step {
                Step::Shadow { percent, .. } => (shadow, weight, header) = (percent.0, BasisPoints::ZERO, false),
                Step::Header { .. } => (shadow, weight, header) = (BasisPoints::ZERO, BasisPoints::ZERO, true),
                Step::Weight { weight: w, .. } | Step::Experiment { weight: w, .. } => (shadow, weight, header) = (BasisPoints::ZERO, w.0, true),
                Step::Approve {} | Step::Webhook { .. } => {}
            }
        }
        Action::Route { weight, shadow, header }
    }

    fn fail(&mut self, now: Millis, reason: String) -> Vec<Decision> {
        match self.plan.on_failure {
            OnFailure::Rollback => self.end_rolled_back(now, reason),
            OnFailure::Pause => {
                self.phase = Phase::Paused { reason: reason.clone() };
                vec![self.decide(now, Action::Pause, &reason)]
            }
        }
    }

    fn end_rolled_back(&mut self, now: Millis, reason: String) -> Vec<Decision> {
        self.phase = Phase::RolledBack { reason: reason.clone() };
        vec![self.decide(now, Action::Rollback, &reason)]
    }

    fn decide(&self, at: Millis, action: Action, reason: &str) -> Decision {
        Decision { at, action, reason: reason.to_owned(), evidence: self.verdicts.clone() }
    }
}

/// Why `check` has nothing to judge in `step`, or `None` when it judges it. A check judges a
/// step that gives both versions the evidence it reads, measured as clients would see it:
///
/// - shadow: the candidate answers mirrored copies of stable's requests, so agreement, drift
///   (its scores against stable's on the same requests) and error rate judge it (copies are made
///   of requests stable answered, so a failure of the candidate's own shows, one both share does
///   not); latency does not (copies run at background priority), nor does quality (labels join
///   the answers clients got, which were stable's).
/// - header and weight below 100 %: the candidate answers live requests; everything but
///   agreement (nothing is mirrored).
/// - weight 100 %: no live request reaches stable, so nothing is compared: the step is a plain
///   hold (earlier steps carried the evidence; an operator can still roll back).
/// - Prometheus: an absolute signal from outside, judged wherever traffic flows.
///
/// A step none of whose checks applies advances when its hold ends; gates are never judged.
fn not_applicable(check: &Check, step: &Step) -> Option<&'static str> {
    let gate = "not applicable at a gate: it waits for its answer, not for evidence";
    if matches!(check, Check::Prometheus { .. }) {
        return matches!(step, Step::Approve {} | Step::Webhook { .. }).then_some(gate);
    }
    match (step, check) {
        (Step::Approve {} | Step::Webhook { .. }, _) => Some(gate),
        (Step::Shadow { .. }, Check::Latency { .. }) => {
            Some("not applicable in a shadow step: mirrored copies run at background priority, so their latency is not what clients would see")
        }
        (Step::Shadow { .. }, Check::Quality { .. } | Check::Reward { .. }) => {
            Some("not applicable in a shadow step: labels and rewards join the answers clients got, which came from stable")
        }
        (Step::Shadow { .. }, _) => None,
        (Step::Weight { weight, .. }, _) if weight.0 == BasisPoints::ALL => {
            Some("not applicable at 100%: no live request reaches stable to compare with")
        }
        (Step::Header { .. } | Step::Weight { .. } | Step::Experiment { .. }, Check::Agreement { .. }) => {
            Some("not applicable outside a shadow step: no request is mirrored to compare answers")
        }
        (Step::Header { .. } | Step::Weight { .. } | Step::Experiment { .. }, _) => None,
    }
}
