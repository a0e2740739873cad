//! The prediction log in a bucket (`modelship serve --config` with `prediction_log.url:
//! s3://...`), against a real S3 server (s3s-fs) that is killed for 10 seconds mid-run.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry_s3::S3;
use crate::support::{Server, command, model};
use crate::traffic::load;

/// The bucket goes away for 10 s under load: no request fails; what the full queue could not
/// hold is dropped and counted; writing resumes once the bucket is back; every answered request
/// is either kept or counted as dropped, and the server drains with the log written.
#[test]
fn a_store_that_goes_away_fails_no_request_and_drops_only_what_it_counts() {
    let mut s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serving.yaml");
    std::fs::write(&config, "prediction_log:\n  url: s3://models/predictions\n  roll_seconds: 0.5\n  queue: 500\n").unwrap();
    let env: Vec<(&str, String)> = s3.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start_with(&[&model("fraud"), "--config", config.to_str().unwrap(), "--workers", "1"], &env_refs);
    let (stop, _counting, sent, failed, clients) = load(&server, 3);
    thread::sleep(Duration::from_secs(2));
    s3.kill();
    let killed = Instant::now();
    thread::sleep(Duration::from_secs(10));
    let during = server.metric("modelship_prediction_log_dropped_total", &["queue_full"]).unwrap_or(0.0);
    s3.restart();
    // Writing resumes: rows are written again (the counter moves past where it stood).
    let written = |s: &Server| s.metric("modelship_prediction_log_rows_total", &["predictions"]).unwrap_or(0.0);
    let before = written(&server);
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&server) <= before {
        assert!(Instant::now() < deadline, "writing never resumed:\n{}", server.stderr());
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let metrics = server.get("/metrics").text;
    let dropped = server.metric("modelship_prediction_log_dropped_total", &["queue_full"]).unwrap_or(0.0);
    let errors = server.metric("modelship_prediction_log_write_errors_total", &[]).unwrap_or(0.0);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(60)).code(), Some(0), "{}", server.stderr());
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "of {sent} requests, with the store away for {:?}", killed.elapsed());
    // (Write errors are counted only once the store's client gives up retrying a write.)
    assert!(during > 0.0, "the queue of 500 filled while the store was away: dropped {during}\n{metrics}");
    assert!(server.stderr().contains("the prediction log is dropping records"), "the drops are logged");

    // What the log holds, read back from the bucket by the command people use.
    let mut cmd = command();
    cmd.args(["predictions", "ls", "--log", "s3://models/predictions", "--limit", "0", "--output", "json"]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total = serde_json::from_slice::<Value>(&out.stdout).unwrap()["total"].as_u64().unwrap();
    // Every answer is accounted for: kept, or dropped and counted.
    eprintln!("{sent} requests answered, {total} kept, {dropped} dropped while the store was away ({errors} write errors)");
    assert_eq!(total as f64 + dropped, sent as f64, "kept + dropped = answered");
}
