//! The fleet under faults, each scenario judged by the history checker (`history.rs`): one
//! decision per step, revisions applied in order on every replica, no answer from a version the
//! revision in force did not route to, each step acknowledged by every live replica before the
//! next, and no failed client request unless the scenario cuts that replica's clients.
//!
//! | scenario | test |
//! |---|---|
//! | the leader killed (SIGKILL) mid-step | `the_leader_killed_mid_rollout_…` |
//! | the leader cut off the net (its own host) mid-step | `the_leader_cut_off_the_net_mid_rollout_…` |
//! | the leader cut off from Redis only (its clients still reach it) | `the_leader_cut_off_from_redis_…` |
//! | a replica that does not lead cut off mid-step | `a_replica_cut_off_the_net_mid_rollout_…` |
//! | the Redis primary failed over by Sentinel mid-step | `the_store_failed_over_by_sentinel_…` |
//! | 200 ms ± 100 ms delay and 5 % loss to the store | `a_slow_and_lossy_link_to_the_store_…` |
//! | two replicas' clocks 3 s ahead, the leader killed | `replicas_with_their_clocks_ahead_…` |
//! | Redis away for 10 s | `the_store_going_away_mid_rollout_…` |
//! | the store loses its latest revision | `replicas_follow_a_store_that_lost_…` |
//! | 17 replicas join 3 mid-step (loopback, and own hosts) | `replicas_…_join_…_are_counted` |
//! | 3 → 20 → 3 replicas during a promotion | `scaling_from_3_to_20_and_back_…` |
//! | 20 replicas: a bad candidate rolled back, an identical one promoted | `twenty_replicas_…` |
//!
//! Each runs once in the suite; `MODELSHIP_FLEET_RUNS=N` runs each N times, the moment of its
//! fault drawn at random within the step each time (the seed is printed, and
//! `MODELSHIP_FLEET_SEED` replays one). `BENCHMARKS.md` reports five runs of each.
//!
//! Hosts with their own addresses are network namespaces (`netns.rs`): a namespace per
//! replica, Redis and S3 on the bridge's address.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::Load;
use crate::features::Redis;
use crate::fleet::{Replicas, answers, decisions, steps_entered};
use crate::support::{Receiver, free_port};

/// An identical candidate's rollout: three steps of 3 s, judged on errors every 500 ms.
const THREE_STEPS: &str = "to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n";

/// How many times each scenario runs (`MODELSHIP_FLEET_RUNS`, default 1).
fn runs() -> usize {
    std::env::var("MODELSHIP_FLEET_RUNS").ok().and_then(|n| n.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// Random timing for a scenario's faults (xorshift; the seed is printed so a run can be
/// replayed with `MODELSHIP_FLEET_SEED`).
struct Jitter(u64);

impl Jitter {
    fn new(scenario: &str, run: usize) -> Jitter {
        let seed = std::env::var("MODELSHIP_FLEET_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1
        });
        eprintln!("fleet faults: {scenario}, run {run} of {}, seed {seed}", runs());
        Jitter(seed)
    }

    /// A pause of 0 to `max`, drawn.
    fn pause(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let pause = Duration::from_millis(self.0 % (max.as_millis() as u64 + 1));
        thread::sleep(pause);
        pause
    }
}

/// Pushes an identical candidate (`fraud:4`), starts its [`THREE_STEPS`] rollout with two
/// clients on each of the first three replicas, and returns once step 2 has settled (every
/// replica routes by it): the loads, their answers, and the rollout's status then.
fn at_step_2(fleet: &Replicas) -> (Vec<Load>, Vec<crate::fleet::Answers>, Value) {
    fleet.push("fraud", "4");
    fleet.converge(0);
    let spec = fleet.spec(THREE_STEPS);
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    let answered = answers(&loads);
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let at = fleet.wait_rollout(1, "reached step 2 settled", |s| s["step"] == 2 && !s["settled_ms"].is_null());
    (loads, answered, at)
}

/// Runs `scenario` [`runs`] times, each with its own [`Jitter`].
fn each_run(name: &str, mut scenario: impl FnMut(&mut Jitter)) {
    for run in 1..=runs() {
        scenario(&mut Jitter::new(name, run));
    }
}

/// The store loses its latest revision (what a Redis failover does to a write no replica had
/// received): the replicas, which route by it, go back to the revision the store holds, and a
/// new revision committed under the lost one's number, with other routing, is applied
/// everywhere, not taken for the one they served.
#[test]
fn replicas_follow_a_store_that_lost_its_latest_revision() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::start(&redis, 2);
    fleet.converge(0);
    fleet.ok(0, &["set", "fraud", "--candidate", "2", "--weight", "10%", "--reason", "lost at the failover"]);
    fleet.converge(1);
    redis.cli(&["SET", "modelship:traffic:fraud:latest", "0"]);
    redis.cli(&["HDEL", "modelship:traffic:fraud:revisions", "1"]);
    fleet.converge(0);
    for i in 0..2 {
        assert!(fleet.status(i)["traffic"]["candidate"].is_null(), "replica {i} went back to the store's revision 0: {}", fleet.status(i));
    }
    fleet.ok(1, &["set", "fraud", "--candidate", "2", "--weight", "50%", "--reason", "after the failover"]);
    fleet.converge(1);
    for i in 0..2 {
        assert_eq!(fleet.status(i)["traffic"]["candidate"]["weight"], 5000, "replica {i} serves the new revision 1: {}", fleet.status(i));
    }
    assert!(fleet.logs().contains("it lost writes"), "the replicas said why they went back");
}

/// Scale-up during a rollout (issue 32's first defect): 3 replicas start the canary step of a
/// broken candidate, then 17 more join (before the step settles, or after), and the load lands
/// on all 20. The joiners' evidence must count: the leader rolls the candidate back on
/// `error_rate`, never judging "0 requests" once evidence has arrived.
#[test]
fn replicas_that_join_before_the_step_settles_are_counted() {
    each_run("replicas_that_join_before_the_step_settles_are_counted", |jitter| {
        let redis = Redis::start(free_port());
        scale_up_mid_step(&redis, Replicas::start(&redis, 3), false, jitter);
    });
}

#[test]
fn replicas_that_join_after_the_step_settled_are_counted() {
    each_run("replicas_that_join_after_the_step_settled_are_counted", |jitter| {
        let redis = Redis::start(free_port());
        scale_up_mid_step(&redis, Replicas::start(&redis, 3), true, jitter);
    });
}

/// The same with every replica on its own host (a network namespace), Redis and S3 on another,
/// as the issue that found the defect ran it.
#[test]
fn replicas_on_their_own_hosts_that_join_mid_step_are_counted() {
    each_run("replicas_on_their_own_hosts_that_join_mid_step_are_counted", |jitter| {
        let Some(net) = crate::netns::net_or_skip() else { return };
        let redis = Redis::start_on(free_port(), &net.gateway());
        scale_up_mid_step(&redis, Replicas::in_namespaces(&redis, 3, net), true, jitter);
    });
}

fn scale_up_mid_step(redis: &Redis, mut fleet: Replicas, after_settling: bool, jitter: &mut Jitter) {
    fleet.push("faulty", "3");
    fleet.converge(0);
    let spec = fleet.spec("to: '3'\ncanary: {weights: [30, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20, deadline: 10m}\ninterval: 500ms\n");
    let started = fleet.rollout(2, &["start", "fraud", "--spec", &spec]);
    assert_eq!(started["phase"]["phase"], "progressing", "{started}");
    if after_settling {
        fleet.wait_rollout(0, "settled on step 1", |s| s["settled_ms"].is_u64());
    }
    let paused = jitter.pause(Duration::from_millis(1500));
    let joining = Instant::now();
    for _ in 0..17 {
        fleet.add(redis);
    }
    eprintln!("fleet: 17 replicas joined step 1 ({}, {paused:?} later) in {:.1} s", if after_settling { "after it settled" } else { "before it settled" }, joining.elapsed().as_secs_f64());
    let revision = fleet.wait_rollout(0, "settled on step 1", |s| s["settled_ms"].is_u64())["revision"].as_u64().unwrap();
    fleet.converge(revision);
    let loads: Vec<Load> = (0..fleet.servers.len()).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 1)).collect();
    let answered = answers(&loads);
    let loaded = Instant::now();
    let mut verdicts = Vec::new();
    let done = fleet.wait_rollout(0, "rolled back with 20 replicas", |s| {
        if let Some(check) = s["checks"].as_array().and_then(|c| c.iter().find(|c| c["check"] == "error_rate")) {
            verdicts.push(check["result"].to_string());
        }
        s["phase"]["phase"] == "rolled_back"
    });
    let reason = done["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("error_rate"), "{done}");
    eprintln!("fleet: 20 replicas, rolled back {:.1} s after the load began: {reason}", loaded.elapsed().as_secs_f64());
    // Once evidence arrived, the leader never judged from nothing again.
    let after_evidence = verdicts.iter().skip_while(|v| v.contains("0 requests")).filter(|v| v.contains("0 requests")).count();
    assert_eq!(after_evidence, 0, "the leader judged from nothing after evidence had arrived: {verdicts:?}");
    for load in loads {
        load.finish();
    }
    let all: Vec<usize> = (0..fleet.servers.len()).collect();
    let report = fleet.history(1, &all, &[], &answered, &[]).check(2, "error_rate");
    eprintln!("fleet history checker (17 joined mid-step): {report}");
    let history = fleet.rollout(1, &["history", "fraud"]);
    assert_eq!(decisions(&history, 1).len(), 2, "started, rolled back: one decision each");
}

/// An identical candidate walks every step and is promoted, with load on every replica. Its
/// leader is killed (SIGKILL) in the middle: another replica takes the lease over within its
/// time to live plus one interval and finishes the rollout from the step it was at, entering
/// no step twice and skipping none.
#[test]
fn the_leader_killed_mid_rollout_is_replaced_and_the_rollout_finishes_from_its_step() {
    each_run("the_leader_killed_mid_rollout_is_replaced_and_the_rollout_finishes_from_its_step", |jitter| {
        let redis = Redis::start(free_port());
        // Every replica tells a webhook of the rollout's events.
        let sink = Receiver::start(|_| Some(200));
        let config = tempfile::tempdir().unwrap();
        let file = config.path().join("modelship.yaml");
        std::fs::write(&file, format!("notifications:\n  sinks:\n    - {{name: hook, webhook: '{}/events'}}\n", sink.url)).unwrap();
        let fleet = Replicas::configured(&redis, 3, &file, Vec::new());
        // Mid-rollout: step 2 under way, its routing applied by every replica.
        let (loads, answered, at) = at_step_2(&fleet);
        let leader = at["leader"].as_str().unwrap().to_owned();
        let victim = fleet.index_of(&leader);
        let mut loads: Vec<Option<Load>> = loads.into_iter().map(Some).collect();
        // The victim's clients stop first: requests cut off by the kill are not the rollout's.
        let (victim_ok, victim_failed, _) = loads[victim].take().unwrap().finish();
        assert!(victim_failed.is_empty(), "{victim_failed:?}");
        jitter.pause(Duration::from_millis(2500));
        let killed = Instant::now();
        fleet.servers[victim].0.signal("KILL");
        let survivor = (victim + 1) % 3;
        let took_over = fleet.wait_rollout(survivor, "taken over", |s| s["leader"].as_str().is_some_and(|l| l != leader));
        let takeover = killed.elapsed();
        eprintln!("fleet: {leader} killed at step {}; {} took over after {takeover:?}", at["step"], took_over["leader"]);
        assert!(takeover < Duration::from_millis(2000 + 500 + 1000), "lease 2 s + interval 0.5 s (+1 s for polling): took {takeover:?}");
        let done = fleet.wait_rollout(survivor, "promoted", |s| s["phase"]["phase"] == "promoted");
        assert_eq!((done["stable"].as_str(), done["to"].as_str()), (Some("1"), Some("4")), "{done}");
        for (i, load) in loads.into_iter().enumerate() {
            if let Some(load) = load {
                let (ok, failed, versions) = load.finish();
                assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
                assert!(versions.contains_key("4"), "replica {i} served the candidate: {versions:?}");
            }
        }
        assert!(victim_ok > 0);
        let live: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let report = fleet.history(survivor, &live, &[], &answered, &[]).check(3, "every step done");
        eprintln!("fleet history checker (the leader killed): {report}");
        let reasons = decisions(&fleet.rollout(survivor, &["history", "fraud"]), 1);
        // Each step entered once, in order, then the promotion: nothing repeated, nothing skipped.
        let entered = steps_entered(&reasons);
        assert_eq!(entered, ["step 1 of 3", "step 2 of 3", "step 3 of 3"], "{reasons:?}");
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons.last().unwrap().ends_with("every step done"), "{reasons:?}");
        // Each decision told once, by the replica that took it, and the takeover once, by the new
        // leader.
        let told = sink.wait_for(Duration::from_secs(30), "told the promotion", |got| got.iter().any(|r| r.json()["kind"] == "promoted"));
        thread::sleep(Duration::from_secs(2));
        let told = if sink.received().len() > told.len() { sink.received() } else { told };
        let kinds: Vec<String> = told.iter().map(|r| r.json()["kind"].as_str().unwrap().to_owned()).collect();
        let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
        assert_eq!((count("started"), count("step"), count("promoted"), count("leader_changed")), (1, 2, 1, 1), "{kinds:?}");
        let takeover = told.iter().map(|r| r.json()).find(|n| n["kind"] == "leader_changed").unwrap();
        assert_eq!(takeover["replica"], took_over["leader"], "{takeover}");
        assert!(takeover["reason"].as_str().unwrap().contains(&leader), "{takeover}");
        let promoted = told.iter().map(|r| r.json()).find(|n| n["kind"] == "promoted").unwrap();
        assert_eq!(promoted["replica"], took_over["leader"]);
    });
}

/// The leader's host is cut off the net in the middle of a rollout (every replica on its own
/// host): another replica takes the lease over and finishes the rollout from the step it was at;
/// the cut leader, which can reach neither Redis nor anyone, takes no decision; healed, it
/// applies the fleet's latest revision. The survivors' clients see no failed request.
#[test]
fn the_leader_cut_off_the_net_mid_rollout_is_replaced_and_rejoins_without_a_decision() {
    each_run("the_leader_cut_off_the_net_mid_rollout_is_replaced_and_rejoins_without_a_decision", |jitter| {
        cut_off_mid_rollout(true, Cut::Host, jitter);
    });
}

/// The leader loses Redis alone mid-rollout (its clients still reach it): it keeps answering
/// them, with no failed request, on the routing it had; another replica takes the lease over
/// and finishes the rollout; the cut leader takes no decision and, when Redis is back in its
/// reach, applies the latest revision.
#[test]
fn the_leader_cut_off_from_redis_keeps_serving_its_clients_and_is_replaced() {
    each_run("the_leader_cut_off_from_redis_keeps_serving_its_clients_and_is_replaced", |jitter| {
        cut_off_mid_rollout(true, Cut::Store, jitter);
    });
}

/// A replica that does not lead is cut off the net mid-step: the rollout does not wait for it
/// (it is no longer live) and is promoted; healed, the replica applies the latest revision.
#[test]
fn a_replica_cut_off_the_net_mid_rollout_does_not_hold_it_and_catches_up() {
    each_run("a_replica_cut_off_the_net_mid_rollout_does_not_hold_it_and_catches_up", |jitter| {
        cut_off_mid_rollout(false, Cut::Host, jitter);
    });
}

/// What a partition takes from a replica's host.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Cut {
    /// Everything: the store, S3, its clients.
    Host,
    /// Redis alone.
    Store,
}

fn cut_off_mid_rollout(the_leader: bool, cut_off: Cut, jitter: &mut Jitter) {
    let Some(net) = crate::netns::net_or_skip() else { return };
    let redis = Redis::start_on(free_port(), &net.gateway());
    let fleet = Replicas::in_namespaces(&redis, 3, net);
    let (loads, answered, at) = at_step_2(&fleet);
    let leader = at["leader"].as_str().unwrap().to_owned();
    let victim = if the_leader { fleet.index_of(&leader) } else { (fleet.index_of(&leader) + 1) % 3 };
    let mut loads: Vec<Option<Load>> = loads.into_iter().map(Some).collect();
    if cut_off == Cut::Host {
        // The victim's clients are cut off with it: they stop first.
        let (_, victim_failed, _) = loads[victim].take().unwrap().finish();
        assert!(victim_failed.is_empty(), "{victim_failed:?}");
    }
    let gateway = fleet.net.as_ref().unwrap().gateway();
    jitter.pause(Duration::from_millis(2500));
    let cut = Instant::now();
    match cut_off {
        Cut::Host => fleet.hosts[victim].cut(),
        Cut::Store => fleet.hosts[victim].drop_to(&gateway, redis.port()),
    }
    let survivor = (0..3).find(|&i| i != victim && (the_leader || fleet.index_of(&leader) == i)).unwrap();
    if the_leader {
        let took_over = fleet.wait_rollout(survivor, "taken over", |s| s["leader"].as_str().is_some_and(|l| l != leader));
        eprintln!("fleet on hosts: the leader {leader} cut off ({cut_off:?}) at step {}; {} took over after {:?}", at["step"], took_over["leader"], cut.elapsed());
    }
    let done = fleet.wait_rollout(survivor, "promoted", |s| s["phase"]["phase"] == "promoted");
    eprintln!("fleet on hosts: replica-{} cut off at step {}; promoted {:?} later", victim + 1, at["step"], cut.elapsed());
    assert_eq!(done["to"].as_str(), Some("4"), "{done}");
    if !the_leader {
        assert_eq!(done["leader"].as_str(), Some(leader.as_str()), "the lease stayed where it was: {done}");
    }
    let final_revision = fleet.ended_revision(survivor);
    // Healed: the replica catches up on the fleet's revision and takes no decision of its own.
    let healed = Instant::now();
    match cut_off {
        Cut::Host => fleet.hosts[victim].heal(),
        Cut::Store => fleet.hosts[victim].reach(&gateway, redis.port()),
    }
    let server = fleet.server(victim);
    // A new connection each time: the ones open before the cut were closed by then.
    let fresh = || crate::support::Client::new(server.ready["http"].as_str().unwrap().to_owned());
    while fresh().metric("modelship_traffic_revision", &[r#"model="fraud""#]) != Some(final_revision as f64) {
        assert!(healed.elapsed() < Duration::from_secs(30), "the healed replica never applied revision {final_revision}:\n{}", server.stderr());
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("fleet on hosts: the healed replica-{} applied revision {final_revision} after {:?}", victim + 1, healed.elapsed());
    thread::sleep(Duration::from_secs(2));
    for (i, load) in loads.into_iter().enumerate() {
        if let Some(load) = load {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
    }
    let live: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let report = fleet.history(victim, &live, &[victim], &answered, &[]).check(3, "every step done");
    eprintln!("fleet history checker (replica-{} cut off, {cut_off:?}): {report}", victim + 1);
    let reasons = decisions(&fleet.rollout(victim, &["history", "fraud"]), 1);
    let entered = steps_entered(&reasons);
    assert_eq!(entered, ["step 1 of 3", "step 2 of 3", "step 3 of 3"], "each step entered once: {reasons:?}");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let status = fleet.rollout(victim, &["status", "fraud"]);
    assert_eq!(status["phase"]["phase"], "promoted", "the healed replica sees the promotion: {status}");
}

/// Replicas whose clocks are 3 s ahead (libfaketime, Debian's `faketime`) in a fleet whose
/// leader is killed mid-rollout, so the lease goes from a replica on the machine's clock to one
/// 3 s ahead: leases and liveness are judged by Redis' clock, and so are the rollout's times
/// (`ControlStore::now_ms`), so the history stays whole (each step entered once, promoted, no
/// failed request) and every hold lasts its length. Before the rollout's times came from the
/// store, the step that changed leaders ended after 2.5 s of its 4 s hold.
#[test]
fn replicas_with_their_clocks_ahead_keep_the_rollout_history_whole() {
    each_run("replicas_with_their_clocks_ahead_keep_the_rollout_history_whole", |jitter| {
        let Some(faketime) = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "libfaketime is needed (apt-get install faketime; scripts/setup.sh --test does)");
            eprintln!("SKIPPED: no libfaketime (apt-get install faketime)");
            return;
        };
        let redis = Redis::start(free_port());
        let mut fleet = Replicas::start(&redis, 1);
        // replica-2's and replica-3's clocks are 3 s ahead (wall clock only: their monotonic clocks
        // are the machine's), so a takeover from replica-1 goes to a clock 3 s ahead of the one the
        // step began on.
        let ahead = [("LD_PRELOAD", faketime.to_owned()), ("FAKETIME", "+3s".to_owned()), ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned())];
        fleet.add_with_env(&redis, &ahead);
        fleet.add_with_env(&redis, &ahead);
        fleet.push("fraud", "4");
        fleet.converge(0);
        let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 4s}\n  - weight: {weight: 50%, hold: 4s}\n  - weight: {weight: 80%, hold: 4s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
        let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
        let answered = answers(&loads);
        fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
        // Redis' clock, read by the test around each look at the rollout.
        let redis_ms = || {
            let time = redis.cli(&["TIME"]);
            let mut parts = time.split_whitespace().map(|p| p.parse::<u64>().unwrap());
            parts.next().unwrap() * 1000 + parts.next().unwrap() / 1000
        };
        // Redis' time when the test first saw each step.
        let mut windows: Vec<(u64, u64)> = Vec::new();
        // Step lengths on the test's clock, and the leader through the rollout.
        let mut entered: Vec<(u64, Instant)> = Vec::new();
        let mut leaders: Vec<String> = Vec::new();
        let mut killed = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        let survivor = loop {
            let alive = (0..3).find(|i| Some(*i) != killed).unwrap();
            let status = fleet.rollout(alive, &["status", "fraud"]);
            let after = redis_ms();
            let step = status["step"].as_u64().unwrap_or(0);
            if entered.last().is_none_or(|(s, _)| *s != step) {
                entered.push((step, Instant::now()));
                windows.push((step, after));
            }
            if let Some(leader) = status["leader"].as_str().filter(|l| leaders.last().is_none_or(|last| last != l)) {
                leaders.push(leader.to_owned());
            }
            if status["phase"]["phase"] == "promoted" {
                break alive;
            }
            assert_ne!(status["phase"]["phase"], "rolled_back", "{status}");
            // Mid-rollout, the leader dies (its clients first): the lease moves.
            if killed.is_none() && step == 2 && !status["settled_ms"].is_null() {
                let victim = fleet.index_of(status["leader"].as_str().unwrap());
                jitter.pause(Duration::from_millis(2500));
                fleet.servers[victim].0.signal("KILL");
                killed = Some(victim);
            }
            assert!(Instant::now() < deadline, "never promoted: {status}\n{}", fleet.logs());
            thread::sleep(Duration::from_millis(100));
        };
        let lengths: Vec<String> = entered.windows(2).map(|w| format!("step {}: {:.1} s", w[0].0, w[1].1.duration_since(w[0].1).as_secs_f64())).collect();
        eprintln!("fleet with replica-2's and replica-3's clocks +3 s: leaders {leaders:?}; step lengths seen by the test (holds 4 s) {lengths:?}");
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, _) = load.finish();
            if Some(i) != killed {
                assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
            }
        }
        let live: Vec<usize> = (0..3).filter(|i| Some(*i) != killed).collect();
        let report = fleet.history(survivor, &live, &[], &answered, &[(1, 3000), (2, 3000)]).check(3, "every step done");
        eprintln!("fleet history checker (clocks +3 s): {report}");
        let history = fleet.rollout(survivor, &["history", "fraud"]);
        let reasons = decisions(&history, 1);
        let steps = steps_entered(&reasons);
        assert_eq!(steps, ["step 1 of 3", "step 2 of 3", "step 3 of 3"], "each step entered once: {reasons:?}");
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        // Every hold kept on one clock (the store's): each decision is stamped with Redis' time, so
        // no stamp is later than Redis' time when the test first saw the step (a leader 3 s ahead
        // stamping its own time would be); and each comes at least a hold after the one before.
        // (Only the upper bound is certain: a decision is stamped when its analysis begins, which
        // may be before the test's previous look, and a replica's status lags by up to a beat.)
        let at: Vec<u64> = history.as_array().unwrap().iter().filter(|d| d["rollout"] == 1).map(|d| d["at"].as_u64().unwrap()).collect();
        for (step, latest) in windows.iter().filter(|(step, _)| *step >= 2) {
            let stamped = at[*step as usize - 1];
            assert!(stamped <= *latest, "step {step} was entered at {stamped} by its decision, after Redis' time when the test saw it ({latest}): {history}");
        }
        for (i, pair) in at.windows(2).enumerate() {
            assert!(pair[1] >= pair[0] + 4000, "step {} lasted {} ms of its 4 s hold: {history}", i + 1, pair[1] as i64 - pair[0] as i64);
        }
    });
}

/// Every replica on its own host reaches Redis over a poor link: 200 ms ± 100 ms of delay each
/// way (a proxy: this kernel has no `tc netem`) and 5 % of its packets to the store dropped (its
/// firewall; TCP sends them again). A rollout of an identical candidate is promoted with each
/// step entered once, every replica ends on the final revision, and no client request fails.
#[test]
fn a_slow_and_lossy_link_to_the_store_takes_no_step_twice_and_fails_no_request() {
    // The link itself is the randomness: no fault to time.
    each_run("a_slow_and_lossy_link_to_the_store_takes_no_step_twice_and_fails_no_request", |_| {
        let Some(net) = crate::netns::net_or_skip() else { return };
        let gateway = net.gateway();
        let redis = Redis::start(free_port());
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()));
        let delay = crate::netns::Delay::start(&gateway, to, Duration::from_millis(200), Duration::from_millis(100));
        let mut fleet = Replicas::in_namespaces_via(&redis, 0, net, Some(format!("redis://{gateway}:{}", delay.port)));
        // The default lease (10 s): an analysis over this link is several round trips of 0.4-0.6 s,
        // and a 2 s lease lapses between renewals (leadership then moved a dozen times in 90 s and
        // no step was ever held to its end).
        fleet.args = vec!["--lease-ttl".into(), "10".into()];
        for _ in 0..3 {
            fleet.add(&redis);
        }
        for host in &fleet.hosts {
            host.lose_to(&gateway, delay.port, 0.05);
        }
        fleet.push("fraud", "4");
        fleet.converge(0);
        let spec = fleet.spec(THREE_STEPS);
        let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
        let answered = answers(&loads);
        let started = Instant::now();
        fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
        let done = fleet.wait_rollout(1, "promoted over the poor link", |s| s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back");
        assert_eq!(done["phase"]["phase"], "promoted", "{done}");
        eprintln!("fleet over a 200 ± 100 ms, 5 % loss link to Redis: promoted {:.1} s after the start (holds 3 × 3 s)", started.elapsed().as_secs_f64());
        let final_revision = fleet.ended_revision(1);
        let converged = Instant::now();
        for (i, (server, _)) in fleet.servers.iter().enumerate() {
            while server.metric("modelship_traffic_revision", &[r#"model="fraud""#]) != Some(final_revision as f64) {
                assert!(converged.elapsed() < Duration::from_secs(60), "replica {i} never applied revision {final_revision}:\n{}", server.stderr());
                thread::sleep(Duration::from_millis(50));
            }
        }
        eprintln!("fleet over the poor link: every replica on revision {final_revision} {:?} after the promotion was seen", converged.elapsed());
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
        let report = fleet.history(2, &[0, 1, 2], &[], &answered, &[]).check(3, "every step done");
        eprintln!("fleet history checker (slow, lossy link): {report}");
        let reasons = decisions(&fleet.rollout(2, &["history", "fraud"]), 1);
        let entered = steps_entered(&reasons);
        assert_eq!(entered, ["step 1 of 3", "step 2 of 3", "step 3 of 3"], "each step entered once: {reasons:?}");
        assert_eq!(reasons.len(), 4, "{reasons:?}");
    });
}

/// The control store is a Redis primary with two replicas behind three Sentinels
/// (`redis+sentinel://`, every write that matters acknowledged by a replica). In the middle of a
/// rollout of an identical candidate, with load on every replica, the primary is killed: the
/// Sentinels promote a replica, the fleet follows them to it, and the rollout goes on from its
/// step. The history checker passes: each step entered once, revisions applied in order, no
/// answer from a version its revision did not route to, and no failed request.
#[test]
fn the_store_failed_over_by_sentinel_mid_rollout_takes_no_step_twice() {
    each_run("the_store_failed_over_by_sentinel_mid_rollout_takes_no_step_twice", |jitter| {
        let mut primary = Redis::start(free_port());
        let replicas = [Redis::replica_of(free_port(), primary.port()), Redis::replica_of(free_port(), primary.port())];
        let dir = tempfile::tempdir().unwrap();
        let sentinels: Vec<Redis> = (0..3).map(|_| Redis::sentinel(free_port(), primary.port(), 2, dir.path())).collect();
        // Both replicas in sync, and each Sentinel aware of them (from the primary's INFO, every
        // 10 s) and of the other two (hello messages), before the fleet starts: a failover needs them.
        let entries = |s: &Redis, what: &str| s.cli(&["SENTINEL", what, "modelship"]).lines().filter(|l| l.trim() == "name").count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !primary.cli(&["INFO", "replication"]).contains("connected_slaves:2") || !sentinels.iter().all(|s| entries(s, "REPLICAS") == 2 && entries(s, "SENTINELS") == 2) {
            assert!(Instant::now() < deadline, "the replicas never synced: {}", primary.cli(&["INFO", "replication"]));
            thread::sleep(Duration::from_millis(100));
        }
        let url = format!("redis+sentinel://{}/modelship", sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect::<Vec<_>>().join(","));
        let mut fleet = Replicas::serving(&primary, 0, "fraud:1", &[]);
        fleet.store = Some(url);
        for _ in 0..3 {
            fleet.add(&primary);
        }
        let (loads, answered, at) = at_step_2(&fleet);
        jitter.pause(Duration::from_millis(2500));
        let killed = Instant::now();
        primary.kill();
        let done = fleet.wait_rollout(1, "promoted after the failover", |s| s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back");
        assert_eq!(done["phase"]["phase"], "promoted", "{done}");
        let promoted = sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "modelship"]);
        assert!(!promoted.contains(&primary.port().to_string()), "the Sentinels moved the primary: {promoted}");
        eprintln!("fleet on Sentinel: the primary killed at step {}; promoted {:.1} s later, the primary now {}", at["step"], killed.elapsed().as_secs_f64(), promoted.split_whitespace().collect::<Vec<_>>().join(":"));
        let final_revision = fleet.ended_revision(1);
        fleet.converge(final_revision);
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
        let report = fleet.history(2, &[0, 1, 2], &[], &answered, &[]).check(3, "every step done");
        eprintln!("fleet history checker (Sentinel failover): {report}");
        drop(replicas);
    });
}

/// Redis stops for 10 s in the middle of a rollout: every replica keeps serving with no failed
/// request, readiness reports the store, no step is taken while it is away, and the rollout
/// goes on to its promotion once it is back.
#[test]
fn the_store_going_away_mid_rollout_fails_no_request_and_takes_no_step() {
    each_run("the_store_going_away_mid_rollout_fails_no_request_and_takes_no_step", |jitter| {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis::persistent(free_port(), dir.path());
        let fleet = Replicas::start(&redis, 3);
        fleet.push("fraud", "4");
        fleet.converge(0);
        let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 30%, hold: 2s}\n  - weight: {weight: 60%, hold: 2s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
        let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
        let answered = answers(&loads);
        fleet.rollout(1, &["start", "fraud", "--spec", &spec]);
        let before = fleet.wait_rollout(2, "at step 1, settled", |s| s["step"] == 1 && !s["settled_ms"].is_null());
        jitter.pause(Duration::from_millis(1500));
        let (stopped, restarted) = thread::scope(|scope| {
            let outage = scope.spawn(|| redis.outage(Duration::from_secs(10)));
            // While it is away: readiness says so (and stays 200), every replica still answers.
            thread::sleep(Duration::from_secs(4));
            for i in 0..3 {
                let ready = fleet.server(i).get("/health/ready");
                assert_eq!(ready.status, 200, "replica {i}: {}", ready.text);
                assert_eq!(ready.json()["checks"]["control_store_reachable"], false, "replica {i}: {}", ready.text);
                assert!(ready.text.contains("rollouts hold"), "{}", ready.text);
            }
            outage.join().unwrap()
        });
        let done = fleet.wait_rollout(0, "promoted after the outage", |s| s["phase"]["phase"] == "promoted");
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
        let history = fleet.rollout(0, &["history", "fraud"]);
        let during: Vec<&Value> = history.as_array().unwrap().iter().filter(|d| (stopped..restarted).contains(&d["at"].as_u64().unwrap())).collect();
        assert!(during.is_empty(), "no decision while the store was away: {during:?}");
        assert_eq!(decisions(&history, 1).len(), 3, "start, step 2, promotion: {history}");
        assert_eq!(fleet.server(0).get("/health/ready").json()["checks"]["control_store_reachable"], true);
        let report = fleet.history(0, &[0, 1, 2], &[], &answered, &[]).check(2, "every step done");
        eprintln!("fleet history checker (Redis away 10 s): {report}");
        let at = |d: &Value| d["at"].as_i64().unwrap();
        let offsets: Vec<String> = history.as_array().unwrap().iter().map(|d| format!("{:+} ms", at(d) - restarted as i64)).collect();
        eprintln!(
            "fleet: Redis away {} ms at step {}; decisions at {offsets:?} from its restart; {:?}",
            restarted - stopped,
            before["step"],
            done["phase"]
        );
    });
}

/// Redis' counters of the work it did: (commands, bytes in, bytes out).
fn redis_work(redis: &Redis) -> (u64, u64, u64) {
    let info = redis.cli(&["INFO", "stats"]);
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (field("total_commands_processed"), field("total_net_input_bytes"), field("total_net_output_bytes"))
}

/// The fleet scales from 3 to 20 replicas during a promotion's first step and back to 3 during
/// its third (the 17 drained with SIGTERM, their clients stopped first). Approval gates after
/// the first and third steps keep the rollout from running ahead of the scaling, however slow
/// starting 17 replicas is. Every step is entered once, the 3 that stayed acknowledge every
/// step, no client request fails, and the history checker passes.
#[test]
fn scaling_from_3_to_20_and_back_during_a_promotion_keeps_the_history_whole() {
    each_run("scaling_from_3_to_20_and_back_during_a_promotion_keeps_the_history_whole", |jitter| {
        let redis = Redis::start(free_port());
        let mut fleet = Replicas::start(&redis, 3);
        fleet.push("fraud", "4");
        fleet.converge(0);
        let spec = fleet.spec(
            "to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - approve: {}\n  - weight: {weight: 50%, hold: 3s}\n  - approve: {}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n",
        );
        let mut loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
        let mut answered = answers(&loads);
        fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
        fleet.wait_rollout(1, "settled on step 1", |s| s["step"] == 1 && !s["settled_ms"].is_null());
        jitter.pause(Duration::from_millis(1500));
        let up = Instant::now();
        for i in 3..20 {
            fleet.add(&redis);
            loads.push(Load::start(&fleet.server(i).url("/v1/predict"), 1));
        }
        answered.extend(answers(&loads[3..]));
        eprintln!("fleet: 3 → 20 replicas in {:.1} s", up.elapsed().as_secs_f64());
        fleet.wait_rollout(1, "awaiting approval at step 2", |s| s["step"] == 2 && s["phase"]["phase"] == "awaiting_approval");
        fleet.rollout(7, &["approve", "fraud"]);
        fleet.wait_rollout(1, "settled on step 3", |s| s["step"] == 3 && !s["settled_ms"].is_null());
        jitter.pause(Duration::from_millis(1500));
        let down = Instant::now();
        for (i, load) in loads.drain(3..).enumerate() {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {}: {} of {} failed: {:?}", i + 3, failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
        for i in 3..20 {
            fleet.servers[i].0.signal("TERM");
        }
        for i in 3..20 {
            assert!(fleet.servers[i].0.wait(Duration::from_secs(30)).success(), "{}", fleet.servers[i].0.stderr());
        }
        eprintln!("fleet: 20 → 3 replicas in {:.1} s", down.elapsed().as_secs_f64());
        fleet.wait_rollout(1, "awaiting approval at step 4", |s| s["step"] == 4 && s["phase"]["phase"] == "awaiting_approval");
        fleet.rollout(2, &["approve", "fraud"]);
        let done = fleet.wait_rollout(1, "promoted", |s| s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back");
        assert_eq!(done["phase"]["phase"], "promoted", "{done}");
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, _) = load.finish();
            assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
        }
        let report = fleet.history(0, &[0, 1, 2], &[], &answered, &[]).check(5, "every step done");
        eprintln!("fleet history checker (3 → 20 → 3): {report}");
    });
}

/// The guides' 20 replicas, each with its own client: a bad candidate (it fails every request)
/// is rolled back, then an identical one is promoted; the history checker passes on both, and
/// the control store's cost per replica is measured (Redis' own counters over the promotion).
#[test]
fn twenty_replicas_roll_back_a_bad_candidate_and_promote_an_identical_one() {
    each_run("twenty_replicas_roll_back_a_bad_candidate_and_promote_an_identical_one", |jitter| {
        let redis = Redis::start(free_port());
        let started = Instant::now();
        let fleet = Replicas::start(&redis, 20);
        eprintln!("fleet: 20 replicas started in {:.1} s", started.elapsed().as_secs_f64());
        fleet.push("faulty", "3");
        fleet.push("fraud", "4");
        fleet.converge(0);
        let loads: Vec<Load> = (0..20).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 1)).collect();
        let answered = answers(&loads);
        let all: Vec<usize> = (0..20).collect();
        jitter.pause(Duration::from_millis(1000));

        let bad = fleet.spec("to: '3'\nsteps:\n  - weight: {weight: 10%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20, deadline: 5m}\ninterval: 500ms\n");
        let first = Instant::now();
        fleet.rollout(0, &["start", "fraud", "--spec", &bad]);
        let done = fleet.wait_rollout(5, "rolled back", |s| s["phase"]["phase"] == "rolled_back" || s["phase"]["phase"] == "promoted");
        assert_eq!(done["phase"]["phase"], "rolled_back", "{done}");
        eprintln!("fleet of 20: the bad candidate rolled back {:.1} s after the start: {}", first.elapsed().as_secs_f64(), done["phase"]["reason"]);
        let report = fleet.history_of(1, 7, &all, &[], &answered, &[]).check(2, "error_rate");
        eprintln!("fleet history checker (20 replicas, rolled back): {report}");

        let good = fleet.spec(THREE_STEPS);
        let (work, second) = (redis_work(&redis), Instant::now());
        fleet.rollout(11, &["start", "fraud", "--spec", &good]);
        let done = fleet.wait_rollout(13, "promoted", |s| s["rollout"] == 2 && (s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back"));
        assert_eq!(done["phase"]["phase"], "promoted", "{done}");
        let seconds = second.elapsed().as_secs_f64();
        let after = redis_work(&redis);
        eprintln!(
            "fleet of 20: the identical candidate promoted {seconds:.1} s after the start; the control store per replica: {:.1} commands/s, {:.0} B/s in, {:.0} B/s out",
            (after.0 - work.0) as f64 / 20.0 / seconds,
            (after.1 - work.1) as f64 / 20.0 / seconds,
            (after.2 - work.2) as f64 / 20.0 / seconds
        );
        for (i, load) in loads.into_iter().enumerate() {
            let (ok, failed, versions) = load.finish();
            // The bad candidate's answers (500s) are what the rollback judged; nothing else fails.
            let other: Vec<&String> = failed.iter().filter(|f| !f.starts_with("500")).collect();
            assert!(other.is_empty(), "replica {i}: {} of {} failed: {:?}", other.len(), ok + failed.len(), &other[..other.len().min(3)]);
            assert!(versions.contains_key("4"), "replica {i} served the promoted version: {versions:?}");
        }
        let report = fleet.history_of(2, 17, &all, &[], &answered, &[]).check(3, "every step done");
        eprintln!("fleet history checker (20 replicas, promoted): {report}");
    });
}

/// A replica cut off from the store stays ready and serves its last routing, unless a policy
/// says otherwise: with `--unready-without-store 1`, Redis away for 5 s makes every replica
/// report itself not ready (503, naming why) while it still answers requests it gets, and ready
/// again once Redis is back.
#[test]
fn a_replica_without_the_store_turns_unready_only_by_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::persistent(free_port(), dir.path());
    let mut fleet = Replicas::start(&redis, 0);
    fleet.args = vec!["--unready-without-store".into(), "1".into()];
    fleet.add(&redis);
    fleet.add(&redis);
    fleet.converge(0);
    for i in 0..2 {
        assert_eq!(fleet.server(i).get("/health/ready").status, 200);
    }
    thread::scope(|scope| {
        let outage = scope.spawn(|| redis.outage(Duration::from_secs(5)));
        for i in 0..2 {
            let server = fleet.server(i);
            let deadline = Instant::now() + Duration::from_secs(4);
            let ready = loop {
                let ready = server.get("/health/ready");
                if ready.status == 503 || Instant::now() > deadline {
                    break ready;
                }
                thread::sleep(Duration::from_millis(100));
            };
            assert_eq!(ready.status, 503, "replica {i}: not ready by its policy: {}", ready.text);
            assert_eq!(ready.json()["checks"]["control_store_policy"], "unready", "{}", ready.text);
            assert!(ready.text.contains("unready_without_store_seconds"), "{}", ready.text);
            let answer = server.post("/v2/models/fraud/infer", &crate::support::fraud_body(1));
            assert_eq!(answer.status, 200, "still answers what reaches it: {}", answer.text);
        }
        outage.join().unwrap();
    });
    for i in 0..2 {
        let server = fleet.server(i);
        let deadline = Instant::now() + Duration::from_secs(15);
        while server.get("/health/ready").status != 200 {
            assert!(Instant::now() < deadline, "replica {i} never ready again: {}", server.get("/health/ready").text);
            thread::sleep(Duration::from_millis(100));
        }
    }
}
