//! Replicas that share nothing but a real `redis-server` (the control store) and a real S3
//! server (the registry, catalog and artifacts, in a bucket), each with its own home and state
//! directory: one routing table, one revision sequence, one rollout.
//!
//! - A change made through any replica's admin API is in force on all three within 2 s; a sticky
//!   key gets the same version on every replica; two replicas racing for one revision cannot
//!   both win.
//! - One replica leads a rollout under a lease and judges the whole fleet's evidence: a bad
//!   candidate whose traffic reaches only one replica is rolled back; an identical one is
//!   promoted, even when its leader is killed mid-rollout; labels posted to one replica join
//!   predictions another made; Redis going away for 10 s fails no request and takes no step.
//! - Scale-up mid-step: 17 replicas join 3 during a rollout's step (on loopback, and each on its
//!   own host) and their evidence counts.
//! - Hosts with their own addresses (`netns`: a network namespace per replica, Redis and S3 on
//!   the bridge's address): the leader cut off the net mid-rollout is replaced and, healed,
//!   takes no decision; a replica that does not lead, cut off, does not hold the rollout; both
//!   catch up on the latest revision when healed.
//!
//! Not here: the Kubernetes backend (no API server can run on these machines; its tests run
//! against kube's mock service in the server crate).

use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::Load;
use crate::features::Redis;
use crate::history::History;
use crate::netns::{Host, Net};
use crate::registry_s3::S3;
use crate::support::{Receiver, Server, command, fraud_body, free_port, model};

const TOKEN: &str = "fleet-test-admin-token-0123456789";
/// The fleet's registry: catalog and artifacts in the bucket, nothing on any replica's disk.
const REGISTRY: &str = "s3://models/fleet";

struct Replicas {
    s3: S3,
    /// What every replica serves: `fraud:1`, or an alias to follow.
    serves: &'static str,
    /// More models every replica serves beside it.
    more: Vec<String>,
    servers: Vec<(Server, tempfile::TempDir)>,
    /// Arguments every replica gets beside the fleet's own (a configuration file).
    args: Vec<String>,
    /// Environment every replica gets (secrets a configuration names).
    env: Vec<(&'static str, String)>,
    /// Each replica's host when they run in network namespaces (in the order of `servers`), and
    /// the net they share; dropped after the servers.
    hosts: Vec<Host>,
    net: Option<Net>,
    /// The control store's URL as the replicas reach it, when not Redis itself (a proxy).
    store: Option<String>,
}

impl Replicas {
    fn start(redis: &Redis, n: usize) -> Replicas {
        Replicas::serving(redis, n, "fraud:1", &[])
    }

    /// `n` replicas serving `model` after `prepare` ran against the fleet's registry.
    fn serving(redis: &Redis, n: usize, serves: &'static str, prepare: &[&[&str]]) -> Replicas {
        Replicas::serving_more(redis, n, serves, &[], prepare)
    }

    /// `n` replicas serving `model` and `more` after `prepare` ran against the fleet's registry.
    fn serving_more(redis: &Redis, n: usize, serves: &'static str, more: &[&str], prepare: &[&[&str]]) -> Replicas {
        let more = more.iter().map(|m| (*m).to_owned()).collect();
        let mut replicas = Replicas { s3: S3::start(), serves, more, servers: Vec::new(), args: Vec::new(), env: Vec::new(), hosts: Vec::new(), net: None, store: None };
        replicas.push("fraud", "1");
        replicas.push("xgboost", "2");
        for args in prepare {
            replicas.registry(args);
        }
        for _ in 0..n {
            replicas.add(redis);
        }
        replicas
    }

    /// `n` replicas serving `fraud:1`, each with `--config FILE` and `env` (a configuration that
    /// names notification sinks, and the secrets it reads).
    fn configured(redis: &Redis, n: usize, file: &std::path::Path, env: Vec<(&'static str, String)>) -> Replicas {
        let mut replicas = Replicas {
            s3: S3::start(),
            serves: "fraud:1",
            more: Vec::new(),
            servers: Vec::new(),
            args: vec!["--config".into(), file.to_str().unwrap().into()],
            env,
            hosts: Vec::new(),
            net: None,
            store: None,
        };
        replicas.push("fraud", "1");
        replicas.push("xgboost", "2");
        for _ in 0..n {
            replicas.add(redis);
        }
        replicas
    }

    /// `n` replicas serving `fraud:1`, each on its own host (a network namespace on `net`, whose
    /// gateway Redis and S3 listen on).
    fn in_namespaces(redis: &Redis, n: usize, net: Net) -> Replicas {
        Replicas::in_namespaces_via(redis, n, net, None)
    }

    /// The same, the replicas reaching the control store at `store` (a proxy in front of it).
    fn in_namespaces_via(redis: &Redis, n: usize, net: Net, store: Option<String>) -> Replicas {
        let mut replicas = Replicas {
            s3: S3::start_on("0.0.0.0"),
            serves: "fraud:1",
            more: Vec::new(),
            servers: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            hosts: Vec::new(),
            net: Some(net),
            store,
        };
        replicas.push("fraud", "1");
        replicas.push("xgboost", "2");
        for _ in 0..n {
            replicas.add(redis);
        }
        replicas
    }

    /// Pushes fixture `file` as version `version` of the model (as a CI job would: to the bucket).
    fn push(&self, file: &str, version: &str) {
        self.push_to(REGISTRY, file, version);
    }

    /// `modelship models ARGS` on the fleet's registry, from a host that is none of the replicas.
    fn registry(&self, args: &[&str]) {
        let out = self.s3.models(&[&["--registry", REGISTRY], args].concat());
        assert!(out.status.success(), "models {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn push_to(&self, registry: &str, file: &str, version: &str) {
        let out = self.s3.models(&["--registry", registry, "push", "fraud", &model(file), "--version", version]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts one more replica with `extra` in its environment only (a skewed clock).
    fn add_with_env(&mut self, redis: &Redis, extra: &[(&'static str, String)]) {
        let fleet_env = self.env.clone();
        self.env.extend(extra.iter().cloned());
        self.add(redis);
        self.env = fleet_env;
    }

    /// Starts one more replica with its own home and state directory, named `replica-N`, with a
    /// 2 s rollout lease.
    fn add(&mut self, redis: &Redis) {
        self.add_with(redis, REGISTRY);
    }

    /// Starts one more replica, reading versions from `registry`.
    fn add_with(&mut self, redis: &Redis, registry: &str) {
        let state = tempfile::tempdir().unwrap();
        let name = format!("replica-{}", self.servers.len() + 1);
        if let Some(host) = self.net.as_mut().map(Net::host) {
            self.hosts.push(host);
        }
        let server = self.start_replica(redis, registry, &name, &state, self.hosts.get(self.servers.len()));
        self.servers.push((server, state));
    }

    /// Stops replica `i` (SIGTERM, drained) and starts it again on the same state directory.
    fn restart(&mut self, redis: &Redis, i: usize) {
        let (mut server, state) = self.servers.remove(i);
        server.signal("TERM");
        assert!(server.wait(Duration::from_secs(30)).success(), "{}", server.stderr());
        let server = self.start_replica(redis, REGISTRY, &format!("replica-{}", i + 1), &state, self.hosts.get(i));
        self.servers.insert(i, (server, state));
    }

    /// Starts a replica, on `host` when the fleet runs in namespaces (listening on the host's
    /// address, admin API included, and reaching Redis and S3 at the net's gateway).
    fn start_replica(&self, redis: &Redis, registry: &str, name: &str, state: &tempfile::TempDir, host: Option<&Host>) -> Server {
        let gateway = self.net.as_ref().map(Net::gateway);
        let mut env = match &gateway {
            Some(gateway) => self.s3.env_at(gateway),
            None => self.s3.env(),
        };
        env.extend([
            ("HOME", state.path().to_str().unwrap().to_owned()),
            ("MODELSHIP_STATE_DIR", state.path().join("state").to_str().unwrap().to_owned()),
            ("MODELSHIP_ADMIN_TOKEN", TOKEN.to_owned()),
        ]);
        env.extend(self.env.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = self.store.clone().unwrap_or_else(|| gateway.as_deref().map_or_else(|| redis.url(), |g| redis.url_at(g)));
        // A 2 s lease (takeovers within a test's patience), unless the fleet's arguments name
        // another (a slow link needs the default's 10 s: one analysis there takes seconds).
        let lease_ttl = if self.args.iter().any(|a| a == "--lease-ttl") { None } else { Some("2") };
        let mut args = vec![self.serves, "--registry", registry, "--poll-interval", "0.2", "--control-store", &url, "--workers", "1", "--replica", name];
        args.extend(lease_ttl.iter().flat_map(|ttl| ["--lease-ttl", *ttl]));
        args.extend(self.more.iter().map(String::as_str));
        args.extend(self.args.iter().map(String::as_str));
        match host {
            None => Server::start_with(&args, &env),
            Some(host) => {
                let mut cmd = host.command(env!("CARGO_BIN_EXE_modelship"));
                cmd.current_dir(crate::support::root()).stdin(std::process::Stdio::null());
                cmd.arg("serve").args(&args).args(["--host", &host.address, "--port", "0", "--admin-host", &host.address]);
                for (k, v) in env {
                    cmd.env(k, v);
                }
                Server::spawn(cmd, None)
            }
        }
    }

    /// `modelship rollout ARGS --output json` through replica `i`.
    fn rollout(&self, i: usize, args: &[&str]) -> Value {
        let out = command()
            .arg("rollout")
            .args(args)
            .args(["--output", "json", "--admin", &format!("http://{}", self.server(i).ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "replica {i}: rollout {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Writes a rollout spec into replica 1's state directory; returns its path.
    fn spec(&self, yaml: &str) -> String {
        let path = self.servers[0].1.path().join("rollout.yaml");
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Polls the rollout's status through replica `i` until `done` says so (at most 90 s).
    fn wait_rollout(&self, i: usize, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = self.rollout(i, &["status", "fraud"]);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "never {what}: {status}\nleader logs:\n{}", self.logs());
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.servers.iter().enumerate().map(|(i, (s, _))| format!("--- replica {}\n{}", i + 1, s.stderr())).collect::<Vec<_>>().join("\n")
    }

    /// The index of the replica named `name`.
    fn index_of(&self, name: &str) -> usize {
        name.strip_prefix("replica-").and_then(|n| n.parse::<usize>().ok()).map(|n| n - 1).expect("a replica-N name")
    }

    fn server(&self, i: usize) -> &Server {
        &self.servers[i].0
    }

    fn traffic(&self, i: usize, args: &[&str]) -> Output {
        command()
            .arg("traffic")
            .args(args)
            .args(["--admin", &format!("http://{}", self.server(i).ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    }

    fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.traffic(i, args);
        assert!(out.status.success(), "replica {i}: traffic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, i: usize) -> Value {
        serde_json::from_str(&self.ok(i, &["status", "fraud", "--output", "json"])).unwrap()
    }

    /// Rollout 1's history as the store and the live replicas recorded it, with the answers
    /// the clients got (`Load::served`, kept before the loads finish), for the history
    /// checker; read through replica `via`. `ahead_ms` gives a replica's clock lead over the
    /// machine's (libfaketime), by index.
    /// `live` are the replicas live throughout; `rejoined`, ones cut off for a while (checked
    /// for order only).
    fn history(&self, via: usize, live: &[usize], rejoined: &[usize], answers: &[Answers], ahead_ms: &[(usize, u64)]) -> History {
        let decisions = self.rollout(via, &["history", "fraud"]);
        let revisions: Value = serde_json::from_str(&self.ok(via, &["history", "fraud", "--output", "json"])).unwrap();
        let mut history = History::new(1, &decisions, &revisions);
        for (&i, throughout) in live.iter().map(|i| (i, true)).chain(rejoined.iter().map(|i| (i, false))) {
            let ahead = ahead_ms.iter().find(|(r, _)| *r == i).map_or(0, |(_, ms)| *ms);
            history.replica(&format!("replica-{}", i + 1), &self.status(i), ahead, throughout);
        }
        for served in answers {
            history.answers(&served.lock().unwrap());
        }
        history
    }

    /// Waits until every replica serves `revision`; returns how long it took.
    fn converge(&self, revision: u64) -> Duration {
        let started = Instant::now();
        for (i, (server, _)) in self.servers.iter().enumerate() {
            while server.metric("modelship_traffic_revision", &[r#"model="fraud""#]) != Some(revision as f64) {
                assert!(started.elapsed() < Duration::from_secs(10), "replica {i} never applied revision {revision}:\n{}", server.stderr());
                thread::sleep(Duration::from_millis(10));
            }
        }
        started.elapsed()
    }
}

/// A load's answers by (revision, version), kept to be checked after it finished.
type Answers = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(u64, String), usize>>>;

fn answers(loads: &[Load]) -> Vec<Answers> {
    loads.iter().map(|l| std::sync::Arc::clone(&l.served)).collect()
}

fn answer(server: &Server, headers: &[(&str, &str)]) -> (String, u64) {
    let r = server.post_with("/v2/models/fraud/infer", &fraud_body(1), headers);
    assert_eq!(r.status, 200, "{}", r.text);
    (r.header("x-model-version").unwrap().to_owned(), r.header("x-modelship-revision").unwrap().parse().unwrap())
}

#[test]
fn replicas_sharing_a_redis_control_store_route_from_one_revisioned_table() {
    let redis = Redis::start(free_port());
    let mut fleet = Replicas::start(&redis, 3);
    // The first replica committed revision 0; the others applied it.
    fleet.converge(0);

    // A change through replica 3 (two revisions: the sticky key, then the canary) is in force
    // on all three, pushed, well within 2 s.
    let started = Instant::now();
    fleet.ok(2, &["set", "fraud", "--candidate", "2", "--weight", "30%", "--sticky-header", "x-user", "--reason", "canary from replica 3"]);
    let spread = fleet.converge(2);
    let reached = started.elapsed();
    assert!(reached < Duration::from_secs(2), "revision 2 reached every replica after {reached:?}");
    eprintln!("fleet: a change through replica 3 reached all 3 replicas {spread:?} after it was committed ({reached:?} with the CLI)");
    for i in 0..3 {
        let status = fleet.status(i);
        assert_eq!(status["revision"], 2, "replica {i}: {status}");
        assert_eq!(status["traffic"]["candidate"]["version"], "2", "replica {i}: {status}");
    }

    // Twenty more weight changes, each through another replica: how long until all three route
    // by it, after the CLI returned (median and max, for BENCHMARKS.md).
    let mut spreads: Vec<Duration> = (0..20u64)
        .map(|n| {
            fleet.ok((n % 3) as usize, &["set", "fraud", "--candidate", "2", "--weight", &format!("{}%", 10 + n), "--reason", "propagation"]);
            fleet.converge(3 + n)
        })
        .collect();
    spreads.sort();
    eprintln!("fleet: 20 changes reached all 3 replicas after median {:?}, max {:?}", spreads[10], spreads[19]);
    assert!(spreads[19] < Duration::from_secs(2), "{spreads:?}");
    fleet.ok(0, &["set", "fraud", "--candidate", "2", "--weight", "30%", "--reason", "back to 30%"]);
    fleet.converge(23);

    // The same sticky key gets the same version on every replica (1,000 keys asked of all
    // three); over 10,000 keys spread across the replicas the candidate's share is the weight
    // within one point.
    let keys = 10_000;
    let candidate: usize = thread::scope(|scope| {
        let fleet = &fleet;
        let workers: Vec<_> = (0..4)
            .map(|w| {
                scope.spawn(move || {
                    let mut candidate = 0;
                    for k in (w..keys).step_by(4) {
                        let user = format!("user-{k}");
                        let replicas: Vec<usize> = if k < 1_000 { vec![0, 1, 2] } else { vec![k % 3] };
                        let answers: Vec<(String, u64)> = replicas.iter().map(|i| answer(fleet.server(*i), &[("x-user", &user)])).collect();
                        assert!(answers.iter().all(|a| *a == answers[0]), "key {user}: {answers:?}");
                        assert_eq!(answers[0].1, 23, "answered under revision 23");
                        candidate += usize::from(answers[0].0 == "2");
                    }
                    candidate
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let share = candidate as f64 / keys as f64;
    eprintln!("fleet: candidate share over {keys} sticky keys on 3 replicas: {share:.4} (weight 0.30)");
    assert!((share - 0.30).abs() <= 0.01, "candidate share over {keys} sticky keys: {share}");

    // A replica that joins late applies the current revision before it answers.
    fleet.add(&redis);
    assert_eq!(answer(fleet.server(3), &[("x-user", "user-1")]).1, 23, "the late replica serves revision 23");

    // Promotion through replica 1; the history is one sequence, whoever wrote it.
    fleet.ok(0, &["promote", "fraud", "--reason", "canary passed"]);
    fleet.converge(24);
    for i in 0..4 {
        assert_eq!(answer(fleet.server(i), &[]), ("2".to_owned(), 24), "replica {i}");
    }
    let history: Value = serde_json::from_str(&fleet.ok(1, &["history", "fraud", "--output", "json"])).unwrap();
    let revisions: Vec<u64> = history.as_array().unwrap().iter().map(|r| r["revision"].as_u64().unwrap()).collect();
    assert_eq!(revisions, (0..=24).collect::<Vec<u64>>(), "{history}");
    // Each revision is in Redis once; the latest number is 24.
    assert_eq!(redis.cli(&["GET", "modelship:traffic:fraud:latest"]).trim(), "24");
    assert_eq!(redis.cli(&["HLEN", "modelship:traffic:fraud:revisions"]).trim(), "25");
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

#[test]
fn a_change_refused_by_the_store_changes_nothing_and_says_what_to_do() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::start(&redis, 1);
    fleet.converge(0);
    // Another writer takes revision 1 behind the replica's back (as a replica that won a race).
    let forged = serde_json::json!({
        "model": "fraud", "revision": 1, "at_ms": 0, "actor": "other-replica", "reason": "won the race", "change": null,
        "traffic": {"stable": "1", "candidate": {"version": "2", "weight": 1000}}
    });
    redis.cli(&["SET", "modelship:traffic:fraud:latest", "1"]);
    redis.cli(&["HSET", "modelship:traffic:fraud:revisions", "1", &forged.to_string()]);
    // The replica has not seen it yet (no publish): its change for revision 1 loses the race.
    let out = fleet.traffic(0, &["set", "fraud", "--candidate", "2", "--weight", "50%"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // The periodic re-read applied revision 1 first: the change became revision 2.
        assert_eq!(fleet.status(0)["revision"], 2);
    } else {
        assert!(stderr.contains("changed by another replica") && stderr.contains("retry"), "{stderr}");
        // It applied the winner's table instead of its own.
        fleet.converge(1);
        assert_eq!(fleet.status(0)["traffic"]["candidate"]["weight"], 1000);
    }
}

/// The steps a rollout of 3 steps entered, in the order its decisions say so (`step N of 3`).
fn steps_entered(reasons: &[String]) -> Vec<String> {
    reasons.iter().filter_map(|r| r.rsplit("; ").next().filter(|s| s.ends_with(" of 3")).map(str::to_owned)).collect()
}

/// The reasons of rollout `id`'s decisions, oldest first.
fn decisions(history: &Value, id: i64) -> Vec<String> {
    history.as_array().unwrap().iter().filter(|d| d["rollout"] == id).map(|d| d["reason"].as_str().unwrap().to_owned()).collect()
}

/// A broken candidate (it fails every request) whose traffic reaches only replica 2: the leader,
/// whichever replica it is, sees replica 2's errors through the store and rolls it back.
#[test]
fn a_bad_candidate_seen_by_one_replica_is_rolled_back_by_the_leader() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::start(&redis, 3);
    fleet.push("faulty", "3");
    fleet.converge(0);
    let spec = fleet.spec("to: '3'\ncanary: {weights: [30, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20}\ninterval: 500ms\n");
    let load = Load::start(&fleet.server(1).url("/v1/predict"), 3);
    let started = fleet.rollout(2, &["start", "fraud", "--spec", &spec]);
    assert_eq!(started["phase"]["phase"], "progressing", "{started}");
    let done = fleet.wait_rollout(0, "rolled back", |s| s["phase"]["phase"] == "rolled_back");
    let reason = done["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("error_rate"), "{done}");
    let leader = done["leader"].as_str().expect("the leader is named").to_owned();
    eprintln!("fleet: {leader} rolled back a candidate only replica-2 served: {reason}");
    // From the rollback on, replica 2 answers every request on stable.
    fleet.converge(fleet.status(0)["revision"].as_u64().unwrap());
    let before = load.failed.lock().unwrap().len();
    thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    assert_eq!(failed.len(), before, "no request failed after the rollback ({ok} succeeded)");
    for i in 0..3 {
        let status = fleet.status(i);
        assert_eq!((status["traffic"]["stable"].as_str(), status["traffic"]["candidate"].is_null()), (Some("1"), true), "replica {i}: {status}");
    }
    let history = fleet.rollout(1, &["history", "fraud"]);
    let reasons = decisions(&history, 1);
    assert_eq!(reasons.len(), 2, "started, rolled back: {reasons:?}");
}

/// Scale-up during a rollout (issue 32's first defect): 3 replicas start the canary step of a
/// broken candidate, then 17 more join (before the step settles, or after), and the load lands
/// on all 20. The joiners' evidence must count: the leader rolls the candidate back on
/// `error_rate`, never judging "0 requests" once evidence has arrived.
#[test]
fn replicas_that_join_before_the_step_settles_are_counted() {
    let redis = Redis::start(free_port());
    scale_up_mid_step(&redis, Replicas::start(&redis, 3), false);
}

#[test]
fn replicas_that_join_after_the_step_settled_are_counted() {
    let redis = Redis::start(free_port());
    scale_up_mid_step(&redis, Replicas::start(&redis, 3), true);
}

/// The same with every replica on its own host (a network namespace), Redis and S3 on another,
/// as the issue that found the defect ran it.
#[test]
fn replicas_on_their_own_hosts_that_join_mid_step_are_counted() {
    let Some(net) = crate::netns::net_or_skip() else { return };
    let redis = Redis::start_on(free_port(), &net.gateway());
    scale_up_mid_step(&redis, Replicas::in_namespaces(&redis, 3, net), true);
}

fn scale_up_mid_step(redis: &Redis, mut fleet: Replicas, after_settling: bool) {
    fleet.push("faulty", "3");
    fleet.converge(0);
    let spec = fleet.spec("to: '3'\ncanary: {weights: [30, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20, deadline: 10m}\ninterval: 500ms\n");
    let started = fleet.rollout(2, &["start", "fraud", "--spec", &spec]);
    assert_eq!(started["phase"]["phase"], "progressing", "{started}");
    if after_settling {
        fleet.wait_rollout(0, "settled on step 1", |s| s["settled_ms"].is_u64());
    }
    let joining = Instant::now();
    for _ in 0..17 {
        fleet.add(redis);
    }
    eprintln!("fleet: 17 replicas joined step 1 ({}) in {:.1} s", if after_settling { "after it settled" } else { "before it settled" }, joining.elapsed().as_secs_f64());
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
    let redis = Redis::start(free_port());
    // Every replica tells a webhook of the rollout's events.
    let sink = Receiver::start(|_| Some(200));
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("modelship.yaml");
    std::fs::write(&file, format!("notifications:\n  sinks:\n    - {{name: hook, webhook: '{}/events'}}\n", sink.url)).unwrap();
    let fleet = Replicas::configured(&redis, 3, &file, Vec::new());
    fleet.push("fraud", "4");
    fleet.converge(0);
    let spec = fleet.spec(
        "to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n",
    );
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    let answered = answers(&loads);
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    // Mid-rollout: step 2 under way, its routing applied by every replica.
    let at = fleet.wait_rollout(1, "reached step 2 settled", |s| s["step"] == 2 && !s["settled_ms"].is_null());
    let leader = at["leader"].as_str().unwrap().to_owned();
    let victim = fleet.index_of(&leader);
    let mut loads: Vec<Option<Load>> = loads.into_iter().map(Some).collect();
    // The victim's clients stop first: requests cut off by the kill are not the rollout's.
    let (victim_ok, victim_failed, _) = loads[victim].take().unwrap().finish();
    assert!(victim_failed.is_empty(), "{victim_failed:?}");
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
}

/// The leader's host is cut off the net in the middle of a rollout (every replica on its own
/// host): another replica takes the lease over and finishes the rollout from the step it was at;
/// the cut leader, which can reach neither Redis nor anyone, takes no decision; healed, it
/// applies the fleet's latest revision. The survivors' clients see no failed request.
#[test]
fn the_leader_cut_off_the_net_mid_rollout_is_replaced_and_rejoins_without_a_decision() {
    cut_off_mid_rollout(true, Cut::Host);
}

/// The leader loses Redis alone mid-rollout (its clients still reach it): it keeps answering
/// them, with no failed request, on the routing it had; another replica takes the lease over
/// and finishes the rollout; the cut leader takes no decision and, when Redis is back in its
/// reach, applies the latest revision.
#[test]
fn the_leader_cut_off_from_redis_keeps_serving_its_clients_and_is_replaced() {
    cut_off_mid_rollout(true, Cut::Store);
}

/// A replica that does not lead is cut off the net mid-step: the rollout does not wait for it
/// (it is no longer live) and is promoted; healed, the replica applies the latest revision.
#[test]
fn a_replica_cut_off_the_net_mid_rollout_does_not_hold_it_and_catches_up() {
    cut_off_mid_rollout(false, Cut::Host);
}

/// What a partition takes from a replica's host.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Cut {
    /// Everything: the store, S3, its clients.
    Host,
    /// Redis alone.
    Store,
}

fn cut_off_mid_rollout(the_leader: bool, cut_off: Cut) {
    let Some(net) = crate::netns::net_or_skip() else { return };
    let redis = Redis::start_on(free_port(), &net.gateway());
    let fleet = Replicas::in_namespaces(&redis, 3, net);
    fleet.push("fraud", "4");
    fleet.converge(0);
    let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    let answered = answers(&loads);
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let at = fleet.wait_rollout(1, "reached step 2 settled", |s| s["step"] == 2 && !s["settled_ms"].is_null());
    let leader = at["leader"].as_str().unwrap().to_owned();
    let victim = if the_leader { fleet.index_of(&leader) } else { (fleet.index_of(&leader) + 1) % 3 };
    let mut loads: Vec<Option<Load>> = loads.into_iter().map(Some).collect();
    if cut_off == Cut::Host {
        // The victim's clients are cut off with it: they stop first.
        let (_, victim_failed, _) = loads[victim].take().unwrap().finish();
        assert!(victim_failed.is_empty(), "{victim_failed:?}");
    }
    let gateway = fleet.net.as_ref().unwrap().gateway();
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
    let final_revision = fleet.status(survivor)["revision"].as_u64().unwrap();
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
}

/// Every replica on its own host reaches Redis over a poor link: 200 ms ± 100 ms of delay each
/// way (a proxy: this kernel has no `tc netem`) and 5 % of its packets to the store dropped (its
/// firewall; TCP sends them again). A rollout of an identical candidate is promoted with each
/// step entered once, every replica ends on the final revision, and no client request fails.
#[test]
fn a_slow_and_lossy_link_to_the_store_takes_no_step_twice_and_fails_no_request() {
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
    let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    let answered = answers(&loads);
    let started = Instant::now();
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let done = fleet.wait_rollout(1, "promoted over the poor link", |s| s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back");
    assert_eq!(done["phase"]["phase"], "promoted", "{done}");
    eprintln!("fleet over a 200 ± 100 ms, 5 % loss link to Redis: promoted {:.1} s after the start (holds 3 × 3 s)", started.elapsed().as_secs_f64());
    let final_revision = fleet.status(1)["revision"].as_u64().unwrap();
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
}

/// The control store is a Redis primary with two replicas behind three Sentinels
/// (`redis+sentinel://`, every write that matters acknowledged by a replica). In the middle of a
/// rollout of an identical candidate, with load on every replica, the primary is killed: the
/// Sentinels promote a replica, the fleet follows them to it, and the rollout goes on from its
/// step. The history checker passes: each step entered once, revisions applied in order, no
/// answer from a version its revision did not route to, and no failed request.
#[test]
fn the_store_failed_over_by_sentinel_mid_rollout_takes_no_step_twice() {
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
    fleet.push("fraud", "4");
    fleet.converge(0);
    let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 20%, hold: 3s}\n  - weight: {weight: 50%, hold: 3s}\n  - weight: {weight: 80%, hold: 3s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    let answered = answers(&loads);
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let at = fleet.wait_rollout(1, "reached step 2 settled", |s| s["step"] == 2 && !s["settled_ms"].is_null());
    let killed = Instant::now();
    primary.kill();
    let done = fleet.wait_rollout(1, "promoted after the failover", |s| s["phase"]["phase"] == "promoted" || s["phase"]["phase"] == "rolled_back");
    assert_eq!(done["phase"]["phase"], "promoted", "{done}");
    let promoted = sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "modelship"]);
    assert!(!promoted.contains(&primary.port().to_string()), "the Sentinels moved the primary: {promoted}");
    eprintln!("fleet on Sentinel: the primary killed at step {}; promoted {:.1} s later, the primary now {}", at["step"], killed.elapsed().as_secs_f64(), promoted.split_whitespace().collect::<Vec<_>>().join(":"));
    let final_revision = fleet.status(1)["revision"].as_u64().unwrap();
    fleet.converge(final_revision);
    for (i, load) in loads.into_iter().enumerate() {
        let (ok, failed, _) = load.finish();
        assert!(failed.is_empty(), "replica {i}: {} of {} failed: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(3)]);
    }
    let report = fleet.history(2, &[0, 1, 2], &[], &answered, &[]).check(3, "every step done");
    eprintln!("fleet history checker (Sentinel failover): {report}");
    drop(replicas);
}

/// Redis stops for 10 s in the middle of a rollout: every replica keeps serving with no failed
/// request, readiness reports the store, no step is taken while it is away, and the rollout
/// goes on to its promotion once it is back.
#[test]
fn the_store_going_away_mid_rollout_fails_no_request_and_takes_no_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::persistent(free_port(), dir.path());
    let fleet = Replicas::start(&redis, 3);
    fleet.push("fraud", "4");
    fleet.converge(0);
    let spec = fleet.spec("to: '4'\nsteps:\n  - weight: {weight: 30%, hold: 2s}\n  - weight: {weight: 60%, hold: 2s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 5m}\ninterval: 500ms\n");
    let loads: Vec<Load> = (0..3).map(|i| Load::start(&fleet.server(i).url("/v1/predict"), 2)).collect();
    fleet.rollout(1, &["start", "fraud", "--spec", &spec]);
    let before = fleet.wait_rollout(2, "at step 1, settled", |s| s["step"] == 1 && !s["settled_ms"].is_null());
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
    let at = |d: &Value| d["at"].as_i64().unwrap();
    let offsets: Vec<String> = history.as_array().unwrap().iter().map(|d| format!("{:+} ms", at(d) - restarted as i64)).collect();
    eprintln!(
        "fleet: Redis away {} ms at step {}; decisions at {offsets:?} from its restart; {:?}",
        restarted - stopped,
        before["step"],
        done["phase"]
    );
}

/// Labels posted to replica 3 for predictions replica 1 made are handed on through the store,
/// joined by replica 1, and judged by the quality check wherever the leader runs.
#[test]
fn labels_posted_to_one_replica_join_the_predictions_of_another() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::start(&redis, 3);
    fleet.converge(0);
    let spec = fleet.spec(
        "to: '2'\nsteps:\n  - weight: {weight: 50%, hold: 1h}\nchecks:\n  - quality: {metric: accuracy, min_delta: -1.0, min_labels: 10}\nfailure: {min_samples: 5, deadline: 3h}\ninterval: 300ms\n",
    );
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    fleet.wait_rollout(1, "settled", |s| !s["settled_ms"].is_null());
    let mut labels = Vec::new();
    for i in 0..80 {
        let r = fleet.server(0).post("/v2/models/fraud/infer", &fraud_body(1 + i % 2));
        assert_eq!(r.status, 200);
        labels.push(serde_json::json!({"request_id": r.header("x-request-id").unwrap(), "label": i % 3 == 0}));
    }
    let batch = serde_json::json!({"labels": labels}).to_string();
    let auth = format!("Bearer {TOKEN}");
    let answer = fleet.server(2).post_with("/v1/feedback", &batch, &[("authorization", &auth)]).json();
    assert_eq!((answer["joined"].as_u64(), answer["forwarded"].as_u64()), (Some(0), Some(80)), "{answer}");
    let judged = fleet.wait_rollout(1, "judged on the labels", |s| matches!(s["checks"][0]["result"]["verdict"].as_str(), Some("pass" | "proven")));
    assert_eq!(judged["checks"][0]["check"], "quality", "{judged}");
    fleet.rollout(2, &["abort", "fraud", "--reason", "enough"]);
}

/// A replica that cannot load the candidate (its registry does not have it) reports so; the
/// leader never counts it as routing by the step and the rollout fails by its policy (here,
/// rollback), while every replica keeps answering.
#[test]
fn a_replica_that_cannot_load_the_candidate_fails_the_step_by_the_policy() {
    let redis = Redis::start(free_port());
    let mut fleet = Replicas::start(&redis, 2);
    fleet.push_to("s3://models/partial", "fraud", "1");
    fleet.add_with(&redis, "s3://models/partial");
    fleet.converge(0);
    let spec = fleet.spec("to: '2'\ncanary: {weights: [20, 100], every: 1m}\nchecks: [{error_rate: {}}]\ninterval: 500ms\n");
    let load = Load::start(&fleet.server(2).url("/v1/predict"), 2);
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let done = fleet.wait_rollout(1, "rolled back", |s| s["phase"]["phase"] == "rolled_back");
    let reason = done["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("replica-3 cannot apply revision 1") && reason.contains("no version '2'"), "{done}");
    assert!(done["settled_ms"].is_null(), "never settled: replica 3 never routed by the step: {done}");
    let (ok, failed, versions) = load.finish();
    assert!(failed.is_empty() && ok > 0, "replica 3 kept answering on its last routing: {failed:?}");
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["1"], "{versions:?}");
    fleet.converge(2);
    eprintln!("fleet: {reason}");
}

/// An alias moved from a CI job (a host that is none of the replicas, sharing only the bucket)
/// reaches every replica following it, as one revision of the fleet's routing: the first replica
/// to see the move commits the switch, the others apply it.
#[test]
fn an_alias_moved_by_a_ci_job_switches_the_whole_fleet_once() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::serving(&redis, 3, "fraud@production", &[&["alias", "fraud", "production", "1"]]);
    fleet.converge(0);
    let load = Load::start(&fleet.server(1).url("/v1/predict"), 2);
    let moved = Instant::now();
    fleet.registry(&["alias", "fraud", "production", "2"]);
    let revision = (0..3)
        .map(|i| loop {
            let status = fleet.status(i);
            if status["traffic"]["stable"] == "2" {
                break status["revision"].as_u64().unwrap();
            }
            assert!(moved.elapsed() < Duration::from_secs(20), "replica {i} never switched: {status}\n{}", fleet.logs());
            thread::sleep(Duration::from_millis(50));
        })
        .max()
        .unwrap();
    eprintln!("fleet: an alias move from CI switched all 3 replicas after {:?}", moved.elapsed());
    fleet.converge(revision);
    let history: Value = serde_json::from_str(&fleet.ok(2, &["history", "fraud", "--output", "json"])).unwrap();
    let switches: Vec<&Value> = history.as_array().unwrap().iter().filter(|r| r["actor"] == "registry").collect();
    assert_eq!(switches.len(), 1, "one revision for one alias move: {history}");
    let reason = switches[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("fraud@production moved to 2 (by "), "{history}");
    let (ok, failed, _) = load.finish();
    assert!(failed.is_empty() && ok > 0, "{failed:?}");
    for i in 0..3 {
        assert_eq!(answer(fleet.server(i), &[]).0, "2");
    }
}

/// A fleet following `fraud@production`: the rollout's promotion moves the alias once, with the
/// rollout as its actor, and restarting every replica serves the promoted version with nothing
/// added to the fleet's history (no replica "moves" the alias back).
#[test]
fn a_promotion_moves_the_alias_the_fleet_follows_and_survives_restarting_every_replica() {
    let redis = Redis::start(free_port());
    let mut fleet = Replicas::serving(&redis, 3, "fraud@production", &[&["alias", "fraud", "production", "1"]]);
    fleet.converge(0);
    let spec = fleet.spec("to: '2'\nsteps:\n  - weight: {weight: 50%, hold: 1s}\ninterval: 200ms\n");
    fleet.rollout(0, &["start", "fraud", "--spec", &spec]);
    let done = fleet.wait_rollout(1, "promoted", |s| s["phase"]["phase"] == "promoted");
    assert_eq!(done["to"], "2", "{done}");
    // The decision is recorded first; the routing that carries it out follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.status(0)["traffic"]["stable"] != "2" {
        assert!(Instant::now() < deadline, "the promotion was never applied:\n{}", fleet.logs());
        thread::sleep(Duration::from_millis(50));
    }
    let out = fleet.s3.models(&["--registry", REGISTRY, "history", "fraud", "--output", "json"]);
    let moves: Value = serde_json::from_slice(&out.stdout).unwrap();
    let moves: Vec<&Value> = moves.as_array().unwrap().iter().filter(|m| m["alias"] == "production").collect();
    assert_eq!(moves.len(), 2, "set by the test, then moved by the promotion, once: {moves:?}\n{}", fleet.logs());
    assert!(moves[1]["version"] == "2" && moves[1]["actor"].as_str().unwrap().starts_with("rollout"), "{moves:?}");
    let history: Value = serde_json::from_str(&fleet.ok(0, &["history", "fraud", "--output", "json"])).unwrap();
    let revision = history.as_array().unwrap().last().unwrap()["revision"].as_u64().unwrap();
    fleet.converge(revision);
    for i in 0..3 {
        fleet.restart(&redis, i);
    }
    fleet.converge(revision);
    thread::sleep(Duration::from_millis(600));
    for i in 0..3 {
        assert_eq!(answer(fleet.server(i), &[]).0, "2", "replica {i}");
        assert_eq!(fleet.server(i).ready["version"], "2");
    }
    let after: Value = serde_json::from_str(&fleet.ok(2, &["history", "fraud", "--output", "json"])).unwrap();
    assert_eq!(after, history, "restarts record nothing when nothing changed");
    let moves: Value = serde_json::from_slice(&fleet.s3.models(&["--registry", REGISTRY, "history", "fraud", "--output", "json"]).stdout).unwrap();
    assert_eq!(moves.as_array().unwrap().iter().filter(|m| m["alias"] == "production").count(), 2, "{moves}");
}

/// A server of another model source pointed at the fleet's control store (`fraud:1` beside a
/// fleet of `fraud@production`) would restart the fleet's routing from its own: it refuses to
/// start, saying what to do, and the fleet's routing stays as it was.
#[test]
fn a_server_of_another_source_cannot_reset_the_fleets_routing() {
    let redis = Redis::start(free_port());
    let fleet = Replicas::serving(&redis, 1, "fraud@production", &[&["alias", "fraud", "production", "1"]]);
    fleet.converge(0);
    let state = tempfile::tempdir().unwrap();
    let mut env = fleet.s3.env();
    env.extend([("MODELSHIP_STATE_DIR", state.path().to_str().unwrap().to_owned()), ("MODELSHIP_ADMIN_TOKEN", TOKEN.to_owned())]);
    let out = command()
        .args(["serve", "fraud:1", "--registry", REGISTRY, "--control-store", &redis.url(), "--workers", "1"])
        .args(["--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--admin-port", "0"])
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("recorded for fraud@production, and this server serves fraud:1") && stderr.contains("--name"), "{stderr}");
    let history: Value = serde_json::from_str(&fleet.ok(0, &["history", "fraud", "--output", "json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "nothing committed: {history}");
}

/// Two models on every replica of a fleet on Redis, two rollouts at once: `fraud`'s candidate
/// fails every request and is rolled back, `churn`'s is promoted; each model's rollout is led on
/// its own lease, and every replica ends with both outcomes.
#[test]
fn two_models_on_a_fleet_roll_out_independently() {
    let redis = Redis::start(free_port());
    let (fraud, xgboost) = (model("fraud"), model("xgboost"));
    let fleet = Replicas::serving_more(
        &redis,
        3,
        "fraud:1",
        &["churn:1"],
        &[&["push", "churn", &fraud, "--version", "1"], &["push", "churn", &xgboost, "--version", "2"]],
    );
    fleet.push("faulty", "3");
    fleet.converge(0);
    let failing = fleet.spec("to: '3'\ncanary: {weights: [30, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20}\ninterval: 500ms\n");
    let healthy = fleet.servers[0].1.path().join("churn.yaml");
    std::fs::write(&healthy, "to: '2'\nsteps:\n  - weight: {weight: 50%, hold: 2s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 2m}\ninterval: 500ms\n").unwrap();
    let loads: Vec<Load> = (0..3)
        .flat_map(|i| [fleet.server(i).url("/v1/predict"), fleet.server(i).url("/v1/models/churn/predict")])
        .map(|url| Load::start(&url, 1))
        .collect();
    fleet.rollout(1, &["start", "fraud", "--spec", &failing]);
    fleet.rollout(2, &["start", "churn", "--spec", healthy.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let phase = |model: &str| fleet.rollout(0, &["status", model])["phase"]["phase"].as_str().unwrap_or_default().to_owned();
    while phase("fraud") != "rolled_back" || phase("churn") != "promoted" {
        assert!(Instant::now() < deadline, "fraud {}, churn {}\n{}", phase("fraud"), phase("churn"), fleet.logs());
        thread::sleep(Duration::from_millis(200));
    }
    let leaders: Vec<Value> = ["fraud", "churn"].iter().map(|m| fleet.rollout(0, &["status", m])["leader"].clone()).collect();
    eprintln!("fleet of two models: fraud rolled back (led by {}), churn promoted (led by {})", leaders[0], leaders[1]);
    let state = |i: usize, model: &str| -> Value { serde_json::from_str(&fleet.ok(i, &["status", model, "--output", "json"])).unwrap() };
    let settled = Instant::now() + Duration::from_secs(30);
    for i in 0..3 {
        loop {
            let (f, c) = (state(i, "fraud"), state(i, "churn"));
            let done = f["traffic"]["stable"] == "1" && f["traffic"]["candidate"].is_null() && c["traffic"]["stable"] == "2" && c["traffic"]["candidate"].is_null();
            if done {
                break;
            }
            assert!(Instant::now() < settled, "replica {i}: fraud {f}, churn {c}");
            thread::sleep(Duration::from_millis(100));
        }
    }
    for (i, load) in loads.into_iter().enumerate() {
        let (ok, failed, versions) = load.finish();
        let failed_on_candidate = failed.iter().all(|f| f.starts_with("500"));
        if i % 2 == 1 {
            assert!(failed.is_empty(), "churn never failed on replica {}: {failed:?}", i / 2 + 1);
        } else {
            assert!(failed_on_candidate, "fraud failed only on its candidate: {failed:?}");
        }
        assert!(ok > 0, "{versions:?}");
    }
}

/// Rollout events told to three sinks by a fleet of three: a webhook signed with HMAC-SHA256 that
/// answers 500 three times before it answers 200, a Slack-compatible one, and a webhook that
/// never answers. A broken candidate is started through replica 3 and rolled back by the leader:
/// each decision reaches each answering sink exactly once (by the replica that committed it),
/// signed; the silent sink delays neither the rollout nor the other sinks; the status shows what
/// was sent.
#[test]
fn rollout_events_are_told_once_per_sink_by_the_replica_that_decided() {
    const SECRET: &str = "notify-secret-for-the-fleet-test";
    let flaky = Receiver::start(|n| Some(if n <= 3 { 500 } else { 200 }));
    let slack = Receiver::start(|_| Some(200));
    let silent = Receiver::start(|_| None);
    let redis = Redis::start(free_port());
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("modelship.yaml");
    std::fs::write(
        &file,
        format!(
            "notifications:\n  timeout_seconds: 2\n  retries: 5\n  backoff_seconds: 0.2\n  sinks:\n    - {{name: ops, webhook: '{}/hook', secret_env: NOTIFY_SECRET}}\n    - {{name: team, slack_env: SLACK_URL}}\n    - {{name: silent, webhook: '{}/never'}}\n",
            flaky.url, silent.url
        ),
    )
    .unwrap();
    let fleet = Replicas::configured(&redis, 3, &file, vec![("NOTIFY_SECRET", SECRET.into()), ("SLACK_URL", format!("{}/services/T0/B0/x", slack.url))]);
    fleet.push("faulty", "3");
    fleet.converge(0);
    let spec = fleet.spec("to: '3'\ncanary: {weights: [30, 100], every: 1m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 2, min_samples: 20}\ninterval: 500ms\n");
    let load = Load::start(&fleet.server(1).url("/v1/predict"), 3);
    let started = fleet.rollout(2, &["start", "fraud", "--spec", &spec]);
    assert_eq!(started["phase"]["phase"], "progressing", "{started}");
    let done = fleet.wait_rollout(0, "rolled back", |s| s["phase"]["phase"] == "rolled_back");
    let leader = done["leader"].as_str().expect("the leader is named").to_owned();
    drop(load);
    let decisions = decisions(&fleet.rollout(1, &["history", "fraud"]), 1);
    assert_eq!(decisions.len(), 2, "started, rolled back: {decisions:?}");

    // The signed webhook: every event once with a 2xx, after the three 500s were retried.
    let hook = flaky.wait_for(Duration::from_secs(60), "told the rollback to the webhook", |got| {
        got.iter().any(|r| r.answered == Some(200) && r.json()["kind"] == "rolled_back")
    });
    // Late duplicates would come within a few beats: give them the time.
    thread::sleep(Duration::from_secs(3));
    let hook = if flaky.received().len() > hook.len() { flaky.received() } else { hook };
    assert_eq!(hook.iter().filter(|r| r.answered == Some(500)).count(), 3);
    let mut delivered: Vec<(String, String, String)> = Vec::new();
    for r in &hook {
        let id = r.header("x-modelship-delivery").expect("a delivery id").to_owned();
        let timestamp = r.header("x-modelship-timestamp").expect("a timestamp");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let signed = format!("{timestamp}.{}", String::from_utf8_lossy(&r.body));
        let expected = format!("sha256={}", hex(ring::hmac::sign(&key, signed.as_bytes()).as_ref()));
        assert_eq!(r.header("x-modelship-signature"), Some(expected.as_str()), "a valid signature on {id}");
        let body = r.json();
        assert_eq!(body["id"], id.as_str());
        if r.answered == Some(200) {
            delivered.push((body["kind"].as_str().unwrap().to_owned(), id, body["replica"].as_str().unwrap().to_owned()));
        }
    }
    delivered.sort();
    let kinds: Vec<&str> = delivered.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["rolled_back", "started"], "each decision once: {delivered:?}");
    let by = |kind: &str| delivered.iter().find(|(k, _, _)| k == kind).map(|(_, _, r)| r.clone()).unwrap();
    assert_eq!(by("started"), "replica-3", "the replica that took the start command told it");
    assert_eq!(by("rolled_back"), leader, "the leader that rolled back told it");
    let rollback = hook.iter().find(|r| r.json()["kind"] == "rolled_back").unwrap().json();
    assert_eq!((rollback["severity"].as_str(), rollback["model"].as_str(), rollback["to"].as_str()), (Some("critical"), Some("fraud"), Some("3")), "{rollback}");
    assert!(rollback["reason"].as_str().unwrap().contains("error_rate"), "{rollback}");

    // The Slack-compatible sink: one message per decision, for people.
    let messages = slack.wait_for(Duration::from_secs(30), "told Slack", |got| got.len() >= 2);
    let texts: Vec<String> = messages.iter().map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("fraud: rollout 1 of version 3 started")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("fraud: rollout 1 of version 3 rolled back: error_rate")), "{texts:?}");
    assert!(messages.iter().all(|r| r.path == "/services/T0/B0/x"));

    // The silent sink held its first attempt open all along; the others were told meanwhile,
    // and the rollout did not wait for it.
    let first_silent = silent.received().first().map(|r| r.at).expect("the silent sink was tried");
    let rolled_back_told = hook.iter().find(|r| r.answered == Some(200) && r.json()["kind"] == "rolled_back").unwrap().at;
    eprintln!("notifications: the rollback reached the webhook {:?} after the silent sink's first attempt began", rolled_back_told.duration_since(first_silent));
    let status = fleet.rollout(0, &["status", "fraud"]);
    let notifications = status["notifications"].as_array().expect("notifications in the status");
    let result = |sink: &str, kind: &str| {
        notifications.iter().find(|n| n["sink"] == sink && n["kind"] == kind).map(|n| (n["result"].as_str().unwrap().to_owned(), n["attempts"].as_u64().unwrap()))
    };
    assert_eq!(result("ops", "rolled_back").map(|r| r.0), Some("sent".to_owned()), "{status}");
    assert_eq!(result("ops", "started"), Some(("sent".to_owned(), 4)), "three 500s, then 200: {status}");
    assert_eq!(result("team", "rolled_back").map(|r| r.0), Some("sent".to_owned()), "{status}");
    let silent_state = result("silent", "started").map(|r| r.0);
    assert!(matches!(silent_state.as_deref(), Some("pending" | "failed")), "{status}");
    let text = String::from_utf8_lossy(
        &command()
            .args(["rollout", "status", "fraud", "--admin", &format!("http://{}", fleet.server(1).ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(text.contains("notifications (latest first)") && text.contains("rolled_back") && text.contains("ops"), "{text}");
    // Neither the secret nor the Slack URL reaches a log.
    let logs = fleet.logs();
    assert!(!logs.contains(SECRET) && !logs.contains("/services/T0/B0/x"), "a secret in the logs");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
