//! What decides what a server serves: for a server following `NAME@ALIAS`, the alias. A
//! promotion made through the server (a rollout, `traffic promote`, a switch) moves the alias in
//! the same step, so a restart serves what was promoted; an alias moved while the server was
//! stopped decides at the restart, recorded once; routing recorded for another model source is
//! not carried over; a shadow of the version that becomes stable ends there. The traffic
//! history records each real change once, and nothing that did not happen.

use std::path::PathBuf;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, command, fraud_body, model};

const TOKEN: &str = "source-of-truth-admin-token-0123";

/// A registry holding fraud:1 and fraud:2 (`production` → 1), and a state directory that
/// outlives the servers started on it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let s = Setup { dir: tempfile::tempdir().unwrap() };
        for (file, version) in [("fraud", "1"), ("xgboost", "2")] {
            s.models(&["push", "fraud", &model(file), "--version", version]);
        }
        s.models(&["alias", "fraud", "production", "1"]);
        s
    }

    fn registry(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [("MODELSHIP_STATE_DIR", self.state().to_str().unwrap().to_owned()), ("MODELSHIP_ADMIN_TOKEN", TOKEN.to_owned())]
    }

    fn serve(&self, what: &str) -> Server {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_with(&[what, "--registry", self.registry().to_str().unwrap(), "--poll-interval", "0.1", "--workers", "1"], &env)
    }

    fn models(&self, args: &[&str]) -> String {
        let out = command().arg("models").args(args).arg("--registry").arg(self.registry()).output().unwrap();
        ok(&out, &format!("models {args:?}"))
    }

    fn alias_target(&self) -> String {
        let record: Value = serde_json::from_str(&self.models(&["show", "fraud@production", "--output", "json"])).unwrap();
        record["version"].as_str().unwrap_or_else(|| panic!("{record}")).to_owned()
    }

    /// The alias moves in the registry's history, oldest first: (version, actor).
    fn alias_moves(&self) -> Vec<(String, String)> {
        let moves: Value = serde_json::from_str(&self.models(&["history", "fraud", "--output", "json"])).unwrap();
        moves
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["alias"] == "production")
            .map(|m| (m["version"].as_str().unwrap_or("").to_owned(), m["actor"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    fn admin(&self, server: &Server, command_name: &str, args: &[&str]) -> Output {
        let admin = format!("http://{}", server.ready["admin"].as_str().unwrap());
        command().arg(command_name).args(args).args(["--admin", &admin]).env("MODELSHIP_ADMIN_TOKEN", TOKEN).output().unwrap()
    }

    fn history(&self, server: &Server) -> Vec<Value> {
        let out = self.admin(server, "traffic", &["history", "fraud", "--output", "json"]);
        serde_json::from_str::<Value>(&ok(&out, "traffic history")).unwrap().as_array().unwrap().clone()
    }

    fn spec(&self) -> String {
        let path = self.dir.path().join("fast.yaml");
        std::fs::write(&path, "steps:\n  - weight: {weight: 50%, hold: 1s}\ninterval: 200ms\n").unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn answered_by(server: &Server) -> String {
    let reply = server.post("/v2/models/fraud/infer", &fraud_body(1));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.header("x-model-version").unwrap().to_owned()
}

/// Waits until the server routes all traffic to `version` as stable; returns its status.
fn wait_stable(setup: &Setup, server: &Server, version: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = setup.admin(server, "traffic", &["status", "fraud", "--output", "json"]);
        let status: Value = serde_json::from_str(&ok(&out, "traffic status")).unwrap();
        if status["traffic"]["stable"] == version {
            return status;
        }
        assert!(Instant::now() < deadline, "never stable on {version}: {status}\n{}", server.stderr());
        thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut server: Server) {
    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(30)).success(), "{}", server.stderr());
}

#[test]
fn a_promotion_moves_the_alias_and_a_restart_serves_what_was_promoted() {
    let s = Setup::new();
    let server = s.serve("fraud@production");
    let out = s.admin(&server, "rollout", &["start", "fraud", "--to", "2", "--spec", &s.spec(), "--wait", "--timeout", "60s"]);
    let log = ok(&out, "rollout start --wait");
    assert!(log.contains("promoted to 2"), "{log}");
    // The promotion moved the alias, once, recorded with the rollout as its actor.
    assert_eq!(s.alias_target(), "2");
    let moves = s.alias_moves();
    assert_eq!(moves.len(), 2, "the push's alias and the promotion: {moves:?}");
    assert!(moves[1].0 == "2" && moves[1].1.starts_with("rollout"), "{moves:?}");
    let before = s.history(&server);
    assert_eq!(answered_by(&server), "2");
    // Restarted on the same alias: version 2, and nothing added to the history.
    stop(server);
    let server = s.serve("fraud@production");
    assert_eq!(server.ready["version"], "2", "{}", server.ready);
    assert_eq!(answered_by(&server), "2");
    // Polls of the alias find what is served: no switch back, no revision.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(answered_by(&server), "2");
    let after = s.history(&server);
    assert_eq!(after, before, "a restart records nothing when nothing changed");
    let reasons: Vec<&str> = after.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(!reasons.iter().any(|r| r.contains("moved to 1")), "no move that did not happen: {reasons:?}");
    assert!(!server.stderr().contains("cannot restore"), "{}", server.stderr());
}

#[test]
fn traffic_promote_and_switch_move_the_alias_too() {
    let s = Setup::new();
    let server = s.serve("fraud@production");
    ok(&s.admin(&server, "traffic", &["set", "fraud", "--candidate", "2", "--weight", "10%"]), "traffic set");
    ok(&s.admin(&server, "traffic", &["promote", "fraud"]), "traffic promote");
    assert_eq!(s.alias_target(), "2");
    ok(&s.admin(&server, "traffic", &["switch", "fraud", "1"]), "traffic switch");
    assert_eq!(s.alias_target(), "1");
    let moves = s.alias_moves();
    assert_eq!(moves.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["1", "2", "1"], "{moves:?}");
}

#[test]
fn an_alias_moved_while_the_server_was_stopped_decides_at_the_restart_recorded_once() {
    let s = Setup::new();
    let server = s.serve("fraud@production");
    assert_eq!(answered_by(&server), "1");
    stop(server);
    s.models(&["alias", "fraud", "production", "2"]);
    let server = s.serve("fraud@production");
    assert_eq!(answered_by(&server), "2");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(answered_by(&server), "2", "{}", server.stderr());
    let history = s.history(&server);
    assert_eq!(history.len(), 2, "the first routing, then the alias's decision: {history:#?}");
    let last = &history[1];
    assert_eq!((last["actor"].as_str(), last["traffic"]["stable"].as_str()), (Some("server"), Some("2")), "{last}");
    assert!(last["reason"].as_str().unwrap().contains("fraud@production names 2, but the recorded routing served 1"), "{last}");
    assert_eq!(s.alias_moves().len(), 2, "the server moved nothing");
}

#[test]
fn routing_recorded_for_another_source_is_not_carried_over() {
    let s = Setup::new();
    let env = s.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = Server::start_with(&[&model("fraud"), "--workers", "1"], &env);
    assert_eq!(answered_by(&file), "1");
    stop(file);
    let server = s.serve("fraud@production");
    assert_eq!(answered_by(&server), "1");
    let log = server.stderr();
    assert!(!log.contains("cannot restore the recorded routing"), "{log}");
    let history = s.history(&server);
    assert_eq!(history.len(), 2, "{history:#?}");
    let reason = history[1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("now served from fraud@production, not file:") && reason.ends_with("is not carried over"), "{reason}");
    assert_eq!(history[1]["source"], "fraud@production");
    assert!(history[0]["source"].as_str().unwrap().starts_with("file:"), "{:?}", history[0]);
    // And back: the file's routing is not resumed over the registry's either.
    stop(server);
    let file = Server::start_with(&[&model("fraud"), "--workers", "1"], &env);
    assert_eq!(answered_by(&file), "1");
    assert!(!file.stderr().contains("cannot restore"), "{}", file.stderr());
    assert_eq!(s.history(&file).len(), 3);
}

#[test]
fn a_shadow_of_the_version_that_becomes_stable_ends_there() {
    let s = Setup::new();
    let server = s.serve("fraud@production");
    ok(&s.admin(&server, "traffic", &["shadow", "fraud", "--version", "2", "--percent", "100%"]), "traffic shadow");
    s.models(&["alias", "fraud", "production", "2"]);
    let status = wait_stable(&s, &server, "2");
    assert!(status["traffic"]["shadow"].is_null(), "stable 2 is not shadowed by itself: {status}");
    // Asked directly, a shadow of the stable version is refused.
    let out = s.admin(&server, "traffic", &["shadow", "fraud", "--version", "2", "--percent", "10%"]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("is the stable version"), "{message}");
    let history = s.history(&server);
    let last = history.last().unwrap();
    assert_eq!((last["actor"].as_str(), last["reason"].as_str().map(|r| r.starts_with("fraud@production moved to 2 (by "))), (Some("registry"), Some(true)), "{last}");
}

/// A version `validate --record` judged failed is neither aliased nor rolled out unless forced.
#[test]
fn a_version_that_failed_validation_is_not_aliased_or_rolled_out_unless_forced() {
    let s = Setup::new();
    s.models(&["push", "fraud", &model("xgboost"), "--version", "3", "--label", "validate=fail"]);
    let server = s.serve("fraud@production");
    let out = command().args(["models", "alias", "fraud", "production", "3", "--registry"]).arg(s.registry()).output().unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("fraud:3 failed validation") && message.contains("--force"), "{message}");
    assert_eq!(s.alias_target(), "1");
    let out = s.admin(&server, "rollout", &["start", "fraud", "--to", "3", "--spec", &s.spec()]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("fraud:3 failed validation") && message.contains("(HTTP 409)"), "{message}");
    let out = s.admin(&server, "rollout", &["status", "fraud", "--output", "json"]);
    let status: Value = serde_json::from_str(&ok(&out, "rollout status")).unwrap();
    assert!(status["rollout"].is_null(), "a refused start leaves no record: {status}");
    s.models(&["alias", "fraud", "staging", "3", "--force"]);
    let out = s.admin(&server, "rollout", &["start", "fraud", "--to", "3", "--spec", &s.spec(), "--force", "--wait", "--timeout", "60s"]);
    assert!(ok(&out, "rollout start --force").contains("promoted to 3"));
    assert_eq!(s.alias_target(), "3");
}

/// On a server following the alias, a failed version does not become stable by a plain
/// promotion either: the routing and the alias stay as they are.
#[test]
fn a_failed_version_is_not_promoted_by_hand_on_a_server_following_the_alias() {
    let s = Setup::new();
    s.models(&["push", "fraud", &model("xgboost"), "--version", "3", "--label", "validate=fail"]);
    let server = s.serve("fraud@production");
    ok(&s.admin(&server, "traffic", &["set", "fraud", "--candidate", "3", "--weight", "10%"]), "traffic set");
    let out = s.admin(&server, "traffic", &["promote", "fraud"]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("fraud:3 failed validation") && message.contains("--force"), "{message}");
    assert_eq!(s.alias_target(), "1");
    let status: Value = serde_json::from_str(&ok(&s.admin(&server, "traffic", &["status", "fraud", "--output", "json"]), "status")).unwrap();
    assert_eq!(status["traffic"]["stable"], "1", "{status}");
}
