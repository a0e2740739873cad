//! Replicas that share nothing but a real `redis-server` (the control store) and a real S3
//! server (the registry, catalog and artifacts, in a bucket), each with its own home and state
//! directory: one routing table, one revision sequence, one rollout.
//!
//! - A change made through any replica's admin API is in force on all three within 2 s; a sticky
//!   key gets the same version on every replica; two replicas racing for one revision cannot
//!   both win.
//! - One replica leads a rollout under a lease and judges the whole fleet's evidence: a bad
//!   candidate whose traffic reaches only one replica is rolled back; labels posted to one
//!   replica join predictions another made; an alias moved by CI switches the fleet once.
//!
//! The fleet under faults (partitions, failovers, skewed clocks, 20 replicas) is in
//! `fleet_faults.rs`, on the [`Replicas`] defined here.
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

pub(crate) const TOKEN: &str = "fleet-test-admin-token-0123456789";
/// The fleet's registry: catalog and artifacts in the bucket, nothing on any replica's disk.
const REGISTRY: &str = "s3://models/fleet";

pub(crate) struct Replicas {
    pub(crate) s3: S3,
    /// What every replica serves: `fraud:1`, or an alias to follow.
    pub(crate) serves: &'static str,
    /// More models every replica serves beside it.
    pub(crate) more: Vec<String>,
    pub(crate) servers: Vec<(Server, tempfile::TempDir)>,
    /// Arguments every replica gets beside the fleet's own (a configuration file).
    pub(crate) args: Vec<String>,
    /// Environment every replica gets (secrets a configuration names).
    pub(crate) env: Vec<(&'static str, String)>,
    /// Each replica's host when they run in network namespaces (in the order of `servers`), and
    /// the net they share; dropped after the servers.
    pub(crate) hosts: Vec<Host>,
    pub(crate) net: Option<Net>,
    /// The control store's URL as the replicas reach it, when not Redis itself (a proxy).
    pub(crate) store: Option<String>,
}

impl Replicas {
    pub(crate) fn start(redis: &Redis, n: usize) -> Replicas {
        Replicas::serving(redis, n, "fraud:1", &[])
    }

    /// `n` replicas serving `model` after `prepare` ran against the fleet's registry.
    pub(crate) fn serving(redis: &Redis, n: usize, serves: &'static str, prepare: &[&[&str]]) -> Replicas {
        Replicas::serving_more(redis, n, serves, &[], prepare)
    }

    /// `n` replicas serving `model` and `more` after `prepare` ran against the fleet's registry.
    pub(crate) fn serving_more(redis: &Redis, n: usize, serves: &'static str, more: &[&str], prepare: &[&[&str]]) -> Replicas {
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
    pub(crate) fn configured(redis: &Redis, n: usize, file: &std::path::Path, env: Vec<(&'static str, String)>) -> Replicas {
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
    pub(crate) fn in_namespaces(redis: &Redis, n: usize, net: Net) -> Replicas {
        Replicas::in_namespaces_via(redis, n, net, None)
    }

    /// The same, the replicas reaching the control store at `store` (a proxy in front of it).
    pub(crate) fn in_namespaces_via(redis: &Redis, n: usize, net: Net, store: Option<String>) -> Replicas {
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
    pub(crate) fn push(&self, file: &str, version: &str) {
        self.push_to(REGISTRY, file, version);
    }

    /// `modelship models ARGS` on the fleet's registry, from a host that is none of the replicas.
    pub(crate) fn registry(&self, args: &[&str]) {
        let out = self.s3.models(&[&["--registry", REGISTRY], args].concat());
        assert!(out.status.success(), "models {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub(crate) fn push_to(&self, registry: &str, file: &str, version: &str) {
        let out = self.s3.models(&["--registry", registry, "push", "fraud", &model(file), "--version", version]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts one more replica with `extra` in its environment only (a skewed clock).
    pub(crate) fn add_with_env(&mut self, redis: &Redis, extra: &[(&'static str, String)]) {
        let fleet_env = self.env.clone();
        self.env.extend(extra.iter().cloned());
        self.add(redis);
        self.env = fleet_env;
    }

    /// Starts one more replica with its own home and state directory, named `replica-N`, with a
    /// 2 s rollout lease.
    pub(crate) fn add(&mut self, redis: &Redis) {
        self.add_with(redis, REGISTRY);
    }

    /// Starts one more replica, reading versions from `registry`.
    pub(crate) fn add_with(&mut self, redis: &Redis, registry: &str) {
        let state = tempfile::tempdir().unwrap();
        let name = format!("replica-{}", self.servers.len() + 1);
        if let Some(host) = self.net.as_mut().map(Net::host) {
            self.hosts.push(host);
        }
        let server = self.start_replica(redis, registry, &name, &state, self.hosts.get(self.servers.len()));
        self.servers.push((server, state));
    }

    /// Stops replica `i` (SIGTERM, drained) and starts it again on the same state directory.
    pub(crate) fn restart(&mut self, redis: &Redis, i: usize) {
        let (mut server, state) = self.servers.remove(i);
        server.signal("TERM");
        assert!(server.wait(Duration::from_secs(30)).success(), "{}", server.stderr());
        let server = self.start_replica(redis, REGISTRY, &format!("replica-{}", i + 1), &state, self.hosts.get(i));
        self.servers.insert(i, (server, state));
    }

    /// Starts a replica, on `host` when the fleet runs in namespaces (listening on the host's
    /// address, admin API included, and reaching Redis and S3 at the net's gateway).
    pub(crate) fn start_replica(&self, redis: &Redis, registry: &str, name: &str, state: &tempfile::TempDir, host: Option<&Host>) -> Server {
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
    pub(crate) fn rollout(&self, i: usize, args: &[&str]) -> Value {
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
    pub(crate) fn spec(&self, yaml: &str) -> String {
        let path = self.servers[0].1.path().join("rollout.yaml");
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Polls the rollout's status through replica `i` until `done` says so (at most 90 s).
    pub(crate) fn wait_rollout(&self, i: usize, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
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

    pub(crate) fn logs(&self) -> String {
        self.servers.iter().enumerate().map(|(i, (s, _))| format!("--- replica {}\n{}", i + 1, s.stderr())).collect::<Vec<_>>().join("\n")
    }

    /// The index of the replica named `name`.
    pub(crate) fn index_of(&self, name: &str) -> usize {
        name.strip_prefix("replica-").and_then(|n| n.parse::<usize>().ok()).map(|n| n - 1).expect("a replica-N name")
    }

    pub(crate) fn server(&self, i: usize) -> &Server {
        &self.servers[i].0
    }

    pub(crate) fn traffic(&self, i: usize, args: &[&str]) -> Output {
        command()
            .arg("traffic")
            .args(args)
            .args(["--admin", &format!("http://{}", self.server(i).ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    }

    pub(crate) fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.traffic(i, args);
        assert!(out.status.success(), "replica {i}: traffic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn status(&self, i: usize) -> Value {
        serde_json::from_str(&self.ok(i, &["status", "fraud", "--output", "json"])).unwrap()
    }

    /// Rollout 1's history as the store and the live replicas recorded it, with the answers
    /// the clients got (`Load::served`, kept before the loads finish), for the history
    /// checker; read through replica `via`. `ahead_ms` gives a replica's clock lead over the
    /// machine's (libfaketime), by index.
    /// `live` are the replicas live throughout; `rejoined`, ones cut off for a while (checked
    /// for order only).
    pub(crate) fn history(&self, via: usize, live: &[usize], rejoined: &[usize], answers: &[Answers], ahead_ms: &[(usize, u64)]) -> History {
        self.history_of(1, via, live, rejoined, answers, ahead_ms)
    }

    /// [`Replicas::history`] of rollout `id`.
    pub(crate) fn history_of(&self, id: i64, via: usize, live: &[usize], rejoined: &[usize], answers: &[Answers], ahead_ms: &[(usize, u64)]) -> History {
        // What the replicas applied and answered first, the store after: every revision they
        // name was committed before the store is read (the leader commits a rollout's last
        // routing after its status says it ended).
        let replicas: Vec<(usize, bool, Value)> = live.iter().map(|&i| (i, true)).chain(rejoined.iter().map(|&i| (i, false))).map(|(i, t)| (i, t, self.status(i))).collect();
        let served: Vec<_> = answers.iter().map(|a| a.lock().unwrap().clone()).collect();
        let decisions = self.rollout(via, &["history", "fraud"]);
        let revisions: Value = serde_json::from_str(&self.ok(via, &["history", "fraud", "--output", "json"])).unwrap();
        let mut history = History::new(id, &decisions, &revisions);
        for (i, throughout, status) in &replicas {
            let ahead = ahead_ms.iter().find(|(r, _)| r == i).map_or(0, |(_, ms)| *ms);
            history.replica(&format!("replica-{}", i + 1), status, ahead, *throughout);
        }
        for served in &served {
            history.answers(served);
        }
        history
    }

    /// The revision that routes a rollout's end (its promotion or its rollback), once the store
    /// holds it (read through replica `via`): what every replica must come to serve. The
    /// rollout's status says it ended before the leader has committed that routing (a second
    /// at least on a slow link), and one replica's `status` says what it serves, which may lag.
    pub(crate) fn ended_revision(&self, via: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let revisions: Value = serde_json::from_str(&self.ok(via, &["history", "fraud", "--output", "json"])).unwrap();
            let latest = revisions.as_array().unwrap().iter().max_by_key(|r| r["revision"].as_u64()).expect("a revision");
            let reason = latest["reason"].as_str().unwrap_or_default();
            if reason.starts_with("rollout ") && (reason.ends_with(": promoted") || reason.contains(": rolled back")) {
                return latest["revision"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "the rollout's end was never routed: {revisions}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every replica serves `revision`; returns how long it took.
    pub(crate) fn converge(&self, revision: u64) -> Duration {
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
pub(crate) type Answers = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(u64, String), usize>>>;

pub(crate) fn answers(loads: &[Load]) -> Vec<Answers> {
    loads.iter().map(|l| std::sync::Arc::clone(&l.served)).collect()
}

pub(crate) fn answer(server: &Server, headers: &[(&str, &str)]) -> (String, u64) {
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
pub(crate) fn steps_entered(reasons: &[String]) -> Vec<String> {
    reasons.iter().filter_map(|r| r.rsplit("; ").next().filter(|s| s.ends_with(" of 3")).map(str::to_owned)).collect()
}

/// The reasons of rollout `id`'s decisions, oldest first.
pub(crate) fn decisions(history: &Value, id: i64) -> Vec<String> {
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
    fleet.converge(fleet.ended_revision(0));
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
