//! Three replicas that share nothing but a real `redis-server` (the control store) and the
//! registry's artifacts: one routing table, one revision sequence. A change made through any
//! replica's admin API is in force on all three within 2 s, a sticky key gets the same version
//! on every replica, and two replicas racing for one revision cannot both win.
//!
//! Not here yet (issue 12): one rollout leader under a lease, evidence from every replica, the
//! store going down mid-rollout, artifacts without a shared disk, the Kubernetes backend.

use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::features::Redis;
use crate::support::{Server, command, fraud_body, free_port, model};

const TOKEN: &str = "fleet-test-admin-token-0123456789";

struct Replicas {
    registry: tempfile::TempDir,
    servers: Vec<(Server, tempfile::TempDir)>,
}

impl Replicas {
    fn start(redis: &Redis, n: usize) -> Replicas {
        let registry = tempfile::tempdir().unwrap();
        for (file, version) in [("fraud", "1"), ("xgboost", "2")] {
            let out = command().args(["models", "push", "fraud", &model(file), "--version", version, "--registry"]).arg(registry.path()).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let mut replicas = Replicas { registry, servers: Vec::new() };
        for _ in 0..n {
            replicas.add(redis);
        }
        replicas
    }

    /// Starts one more replica with its own state directory.
    fn add(&mut self, redis: &Redis) {
        let state = tempfile::tempdir().unwrap();
        let server = Server::start_with(
            &["fraud:1", "--registry", self.registry.path().to_str().unwrap(), "--control-store", &redis.url(), "--workers", "1"],
            &[("MODELSHIP_STATE_DIR", state.path().to_str().unwrap()), ("MODELSHIP_ADMIN_TOKEN", TOKEN)],
        );
        self.servers.push((server, state));
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

    // The same sticky key gets the same version on every replica; the candidate's share over
    // all keys is the weight.
    let keys = 600;
    let mut candidate = 0;
    for k in 0..keys {
        let user = format!("user-{k}");
        let answers: Vec<(String, u64)> = (0..3).map(|i| answer(fleet.server(i), &[("x-user", &user)])).collect();
        assert!(answers.iter().all(|a| *a == answers[0]), "key {user}: {answers:?}");
        assert_eq!(answers[0].1, 2, "answered under revision 2");
        candidate += usize::from(answers[0].0 == "2");
    }
    let share = candidate as f64 / keys as f64;
    assert!((share - 0.30).abs() < 0.06, "candidate share over {keys} sticky keys: {share}");

    // A replica that joins late applies the current revision before it answers.
    fleet.add(&redis);
    assert_eq!(answer(fleet.server(3), &[("x-user", "user-1")]).1, 2, "the late replica serves revision 2");

    // Promotion through replica 1; the history is one sequence, whoever wrote it.
    fleet.ok(0, &["promote", "fraud", "--reason", "canary passed"]);
    fleet.converge(3);
    for i in 0..4 {
        assert_eq!(answer(fleet.server(i), &[]), ("2".to_owned(), 3), "replica {i}");
    }
    let history: Value = serde_json::from_str(&fleet.ok(1, &["history", "fraud", "--output", "json"])).unwrap();
    let revisions: Vec<u64> = history.as_array().unwrap().iter().map(|r| r["revision"].as_u64().unwrap()).collect();
    assert_eq!(revisions, [0, 1, 2, 3], "{history}");
    // Each revision is in Redis once; the latest number is 3.
    assert_eq!(redis.cli(&["GET", "modelship:traffic:fraud:latest"]).trim(), "3");
    assert_eq!(redis.cli(&["HLEN", "modelship:traffic:fraud:revisions"]).trim(), "4");
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
