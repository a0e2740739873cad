//! The fleet's history checker: what a fault test records of a rollout, and the invariants every
//! run must keep, whatever the fault (in the spirit of Jepsen's checkers: record what each
//! process saw, then judge the whole history, not one outcome).
//!
//! Recorded:
//! - the rollout's decisions, from the store (`rollout history`): when (the store's clock) and why;
//! - the routing revisions committed, from the store (`traffic history`): each one's table;
//! - each replica's applied revisions (`traffic status`: `applied`), with when it began routing
//!   by each, on its own clock (a known skew is given for replicas whose clock is set ahead);
//! - every answer its clients got: the revision that routed it and the version that answered.
//!
//! Invariants:
//! 1. **One decision per step**: the steps entered are 1, 2, … in order, each once, and the
//!    rollout ends once, with its last decision.
//! 2. **Revisions applied in order** on every replica: strictly increasing, each one the store
//!    holds.
//! 3. **No answer from a version no revision allowed**: every answer's version is the stable
//!    version or a candidate with traffic in the revision that routed it.
//! 4. **Every step acknowledged before the next**: each replica that was live throughout applied
//!    every step's revision (or a later one) before the decision that ended the step.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A rollout's recorded history (see the module's documentation).
#[derive(Default)]
pub struct History {
    /// The rollout checked.
    pub id: i64,
    /// Rollout `id`'s decisions: (when, by the store's clock, why, and whether it ended the
    /// rollout: a promotion or a rollback).
    pub decisions: Vec<(u64, String, bool)>,
    /// Committed revisions: number → (versions that may answer, the rollout's step it routes:
    /// its reason).
    pub revisions: BTreeMap<u64, (BTreeSet<String>, String)>,
    /// What each replica applied.
    pub replicas: Vec<ReplicaLog>,
    /// Answers: (revision, version) → count.
    pub served: BTreeMap<(u64, String), usize>,
}

/// One replica's applied revisions.
pub struct ReplicaLog {
    pub name: String,
    /// (revision, when it began routing by it, by its clock), oldest first.
    pub applied: Vec<(u64, u64)>,
    /// Its clock's known lead over the machine's, in ms.
    pub ahead_ms: u64,
    /// Live throughout the rollout (one cut off for a while is checked for order, not for
    /// acknowledging every step).
    pub throughout: bool,
}

impl ReplicaLog {
    /// When it began routing by the first revision at or after `revision`, which one, on the
    /// machine's clock.
    fn reached(&self, revision: u64) -> Option<(u64, u64)> {
        self.applied.iter().find(|(r, _)| *r >= revision).map(|(r, at)| (*r, at.saturating_sub(self.ahead_ms)))
    }

    /// When it began routing by exactly `revision`, on the machine's clock.
    fn applied_at(&self, revision: u64) -> Option<u64> {
        self.reached(revision).filter(|(r, _)| *r == revision).map(|(_, at)| at)
    }

    /// Its first revision (on starting) and when, on the machine's clock.
    fn first(&self) -> Option<(u64, u64)> {
        self.applied.first().map(|(r, at)| (*r, at.saturating_sub(self.ahead_ms)))
    }
}

/// What the checker found: a summary for the logs and `BENCHMARKS.md`.
pub struct Report {
    pub decisions: usize,
    pub steps: usize,
    pub revisions: usize,
    pub replicas: usize,
    pub answers: usize,
    /// For each revision the rollout committed, how long from the first replica routing by it
    /// (the one that committed it) until the last, in ms: among the replicas live throughout
    /// that were running before it.
    pub reach_ms: Vec<u64>,
    /// The replica that took longest to route by a rollout revision: (name, revision, ms).
    pub slowest: Option<(String, u64, u64)>,
}

impl Report {
    /// The median and the longest time a rollout revision took to reach every live replica.
    pub fn median_and_max_reach(&self) -> (u64, u64) {
        let mut all = self.reach_ms.clone();
        all.sort_unstable();
        (all.get(all.len() / 2).copied().unwrap_or(0), all.last().copied().unwrap_or(0))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (median, max) = self.median_and_max_reach();
        write!(
            f,
            "history checked: {} decisions, {} steps, {} revisions, {} replicas, {} answers; each rollout revision reached every live replica in {median} ms (median), {max} ms (max) of {}{}",
            self.decisions,
            self.steps,
            self.revisions,
            self.replicas,
            self.answers,
            self.reach_ms.len(),
            self.slowest.as_ref().map_or(String::new(), |(name, revision, ms)| format!(" (the slowest: {name}, revision {revision}, {ms} ms)"))
        )
    }
}

impl History {
    /// Reads rollout `id`'s decisions and the model's revisions from JSON as the CLI prints them
    /// (`rollout history --output json`, `traffic history --output json`).
    pub fn new(id: i64, decisions: &Value, revisions: &Value) -> History {
        let decisions = decisions
            .as_array()
            .expect("a list of decisions")
            .iter()
            .filter(|d| d["rollout"] == id)
            .map(|d| {
                let action = d["action"]["action"].as_str().or(d["action"].as_str()).unwrap_or_default();
                (d["at"].as_u64().unwrap(), d["reason"].as_str().unwrap().to_owned(), matches!(action, "promote" | "rollback"))
            })
            .collect();
        let revisions = revisions
            .as_array()
            .expect("a list of revisions")
            .iter()
            .map(|r| {
                let table = &r["traffic"];
                let mut allowed = BTreeSet::from([table["stable"].as_str().unwrap().to_owned()]);
                if let Some(candidate) = table["candidate"]["version"].as_str() {
                    allowed.insert(candidate.to_owned());
                }
                (r["revision"].as_u64().unwrap(), (allowed, r["reason"].as_str().unwrap_or_default().to_owned()))
            })
            .collect();
        History { id, decisions, revisions, ..History::default() }
    }

    /// Adds a replica's `traffic status --output json` (its applied revisions), its clock
    /// `ahead_ms` of the machine's, and whether it was live `throughout` the rollout.
    pub fn replica(&mut self, name: &str, status: &Value, ahead_ms: u64, throughout: bool) {
        let applied = status["applied"].as_array().expect("applied revisions").iter().map(|a| (a["revision"].as_u64().unwrap(), a["at_ms"].as_u64().unwrap())).collect();
        self.replicas.push(ReplicaLog { name: name.to_owned(), applied, ahead_ms, throughout });
    }

    /// Adds a client's answers (`Load::served`).
    pub fn answers(&mut self, served: &BTreeMap<(u64, String), usize>) {
        for (key, n) in served {
            *self.served.entry(key.clone()).or_default() += n;
        }
    }

    /// Checks every invariant for a rollout of `steps` steps that ended `outcome` (`every step
    /// done` for a promotion, a check's name for a rollback); panics naming the first broken one
    /// with the history around it.
    pub fn check(&self, steps: usize, outcome: &str) -> Report {
        let reasons: Vec<&str> = self.decisions.iter().map(|(_, r, _)| r.as_str()).collect();
        // 1. One decision per step, the end once and last.
        let entered: Vec<usize> = reasons.iter().filter_map(|r| step_of(r, steps)).collect();
        let expected: Vec<usize> = (1..=entered.len()).collect();
        assert_eq!(entered, expected, "steps entered once each, in order: {reasons:#?}");
        let ends: Vec<usize> = self.decisions.iter().enumerate().filter(|(_, (_, _, end))| *end).map(|(i, _)| i).collect();
        assert_eq!(ends, [reasons.len() - 1], "the rollout ends once, with its last decision: {reasons:#?}");
        assert!(reasons.last().unwrap().contains(outcome), "ended by {outcome}: {reasons:#?}");

        // 2. Revisions applied in order, each one the store holds.
        for ReplicaLog { name, applied, .. } in &self.replicas {
            for pair in applied.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{name} applied revision {} after {}: {applied:?}", pair[1].0, pair[0].0);
            }
            for (revision, _) in applied {
                assert!(self.revisions.contains_key(revision), "{name} applied revision {revision}, which the store does not hold: {applied:?}");
            }
        }

        // 3. Every answer from a version its revision allowed.
        for ((revision, version), n) in &self.served {
            let allowed = &self.revisions.get(revision).unwrap_or_else(|| panic!("{n} answers routed by revision {revision}, which the store does not hold")).0;
            assert!(allowed.contains(version), "{n} answers from version {version} under revision {revision}, which routes to {allowed:?}");
        }

        // 4. Each step's revision applied by every live replica before the decision ending it.
        // A step's revision: the first committed for the step (its reason names it); the
        // decision ending step k is the one entering step k + 1, or the end.

        let mine = format!("rollout {}: ", self.id);
        for step in 1..=entered.len() {
            // A step that routes as the one before (an approval gate) commits no revision.
            let Some((&revision, _)) = self.revisions.iter().find(|(_, (_, reason))| reason.starts_with(&mine) && step_of(reason, steps) == Some(step)) else {
                continue;
            };
            let ended = self.decisions.iter().find(|(_, r, end)| step_of(r, steps) == Some(step + 1) || *end).map(|(at, _, _)| *at);
            let Some(ended) = ended else { continue };
            for replica in self.replicas.iter().filter(|r| r.throughout) {
                let (name, applied) = (&replica.name, &replica.applied);
                let Some((_, at)) = replica.reached(revision) else {
                    // A replica that joined after the step never applied its revision.
                    assert!(replica.first().is_some_and(|(r, _)| r > revision), "{name} never applied step {step}'s revision {revision}: {applied:?}");
                    continue;
                };
                // A replica that started after the step ended is not one the step waited for.
                if replica.first().is_some_and(|(first, _)| first >= revision) && at > ended {
                    continue;
                }
                assert!(at <= ended, "{name} applied step {step}'s revision {revision} at {at}, after the decision ending the step at {ended}: {applied:?}");
            }
        }

        // How long each rollout revision took to reach every live replica.
        let mut reach_ms = Vec::new();
        let mut slowest: Option<(String, u64, u64)> = None;
        for revision in self.revisions.iter().filter(|(_, (_, reason))| reason.starts_with("rollout ")).map(|(r, _)| *r) {
            // Replicas running before it was committed, by the first replica's routing by it
            // (one that started later applied it on starting: its delay is its start's).
            let Some(committed) = self.replicas.iter().filter_map(|r| r.applied_at(revision)).min() else { continue };
            let live: Vec<&ReplicaLog> = self.replicas.iter().filter(|r| r.throughout && r.first().is_some_and(|(_, started)| started < committed)).collect();
            let times: Vec<(&str, u64)> = live.iter().filter_map(|r| r.applied_at(revision).map(|at| (r.name.as_str(), at))).collect();
            if !times.is_empty() && times.len() == live.len() {
                let first = times.iter().map(|(_, at)| *at).min().unwrap();
                let (name, last) = times.iter().max_by_key(|(_, at)| *at).unwrap();
                reach_ms.push(last - first);
                if slowest.as_ref().is_none_or(|(_, _, ms)| last - first > *ms) {
                    slowest = Some(((*name).to_owned(), revision, last - first));
                }
            }
        }
        Report {
            decisions: reasons.len(),
            steps: entered.len(),
            revisions: self.revisions.len(),
            replicas: self.replicas.len(),
            answers: self.served.values().sum(),
            reach_ms,
            slowest,
        }
    }
}

/// The step a decision's reason (`…; step N of M`) or a rollout revision's (`rollout 1: step N
/// of M`) says the rollout entered.
fn step_of(reason: &str, steps: usize) -> Option<usize> {
    let last = reason.rsplit("; ").next()?;
    let (_, rest) = last.rsplit_once("step ")?;
    let (n, of) = rest.split_once(" of ")?;
    (of.parse::<usize>().ok()? == steps).then(|| n.parse().ok()).flatten()
}

#[test]
fn the_checker_reads_steps_and_ends_from_reasons() {
    assert_eq!(step_of("started; step 1 of 3", 3), Some(1));
    assert_eq!(step_of("step 1 held 3s and passed; step 2 of 3", 3), Some(2));
    assert_eq!(step_of("rollout 1: step 2 of 3", 3), Some(2));
    assert_eq!(step_of("step 2 of 4", 3), None);
    assert_eq!(step_of("step 3 held 3s and passed; every step done", 3), None);
}
