//! The prediction log on an in-process server ([`crate::inproc`]): every answer kept once per
//! role and read back by pyarrow and DuckDB as data people read it; a rollout rolled back on
//! errors marks exactly what its candidate said, and `modelship predictions` lists, exports and
//! purges exactly those (audited).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use modelship_predictions::{LogSettings, LogStore, Prediction};
use serde_json::{Value, json};

use crate::inproc::{App, Fixtures};
use crate::support::{agent, command, fraud_body, reply, root};
use crate::traffic::load;

fn logging(fixtures: &Fixtures, dir: &Path) -> modelship_server::Settings {
    let log = LogSettings { roll_rows: 500, roll_interval: Duration::from_secs(1), ..LogSettings::default() };
    modelship_server::Settings {
        prediction_log: Some(modelship_server::PredictionLogSettings { url: dir.display().to_string(), log }),
        ..fixtures.settings()
    }
}

/// Every prediction in the log at `dir`, read by the crate the server wrote it with.
fn stored(dir: &Path) -> Vec<Prediction> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = LogStore::open(dir.to_str().unwrap()).unwrap();
    runtime.block_on(store.predictions(None)).unwrap()
}

/// Runs `script` with the project's Python (pyarrow, DuckDB), `dir` as its argument; its JSON.
fn python(script: &str, dir: &Path) -> Value {
    let out = std::process::Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `modelship predictions ARGS --log DIR`: exit success and stdout.
fn predictions(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = command().arg("predictions").args(args).arg("--log").arg(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// 10,000 requests from 32 clients at once (c=32), ids `PREFIX-CLIENT-N`, each answered 200:
/// id -> the version that answered.
fn ten_thousand(app: &App, prefix: &str) -> BTreeMap<String, String> {
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (url, prefix) = (app.url("/v2/models/fraud/infer"), prefix.to_owned());
            thread::spawn(move || {
                let agent = agent();
                let mut answered = BTreeMap::new();
                for n in 0..(312 + usize::from(c < 16)) {
                    let id = format!("{prefix}-{c}-{n}");
                    let r = reply(agent.post(&url).header("content-type", "application/json").header("x-request-id", &id).send(fraud_body(1)).unwrap());
                    assert_eq!(r.status, 200, "{}", r.text);
                    answered.insert(id, r.header("x-model-version").unwrap().to_owned());
                }
                answered
            })
        })
        .collect();
    clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
}

/// How pyarrow and DuckDB read the log: one dataset per table, hive partitions as columns.
const READ_BACK: &str = r#"
import json, sys
import duckdb, pyarrow.dataset as ds
root = sys.argv[1]
t = ds.dataset(root + "/predictions", format="parquet", partitioning="hive").to_table()
pairs = list(zip(t.column("request_id").to_pylist(), t.column("role").to_pylist()))
by_role = {}
for _, role in pairs:
    by_role[role] = by_role.get(role, 0) + 1
con = duckdb.connect()
rows, distinct = con.execute(
    "SELECT count(*), count(DISTINCT (request_id, role)) FROM read_parquet(?, hive_partitioning = true)",
    [root + "/predictions/**/*.parquet"]).fetchone()
print(json.dumps({"pyarrow_rows": t.num_rows, "pyarrow_distinct": len(set(pairs)), "by_role": by_role,
                  "duckdb_rows": rows, "duckdb_distinct": distinct, "columns": t.column_names}))
"#;

/// 10,000 requests at c=32 with a 20 % canary and a 100 % shadow: each request id is kept
/// exactly once as the answer its client got and at most once as a shadow answer, every shadow
/// answer the server compared is kept, and pyarrow and DuckDB read the same rows.
#[test]
fn every_answer_is_kept_once_per_role_and_read_back_by_pyarrow_and_duckdb() {
    let fixtures = Fixtures::new();
    fixtures.push("fraud", "3");
    let log = tempfile::tempdir().unwrap();
    let app = fixtures.serve("1", logging(&fixtures, log.path()));
    app.change(json!({"op": "canary", "version": "2", "weight": 2000}));
    app.change(json!({"op": "shadow", "version": "3", "percent": 10000}));
    let answered = ten_thousand(&app, "req");
    assert_eq!(answered.len(), 10_000);
    // Every copy mirrored was compared (or failed, or dropped) before the server stops.
    let shadow_count = |app: &App, result: &str| app.metric("modelship_shadow_comparisons_total", &[&format!("result=\"{result}\"")]).unwrap_or(0.0);
    let dropped = |app: &App| app.metric("modelship_shadow_dropped_total", &[]).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while shadow_count(&app, "agree") + shadow_count(&app, "disagree") + shadow_count(&app, "error") + dropped(&app) < 10_000.0 {
        assert!(Instant::now() < deadline, "the shadow copies never all finished");
        thread::sleep(Duration::from_millis(50));
    }
    let compared = shadow_count(&app, "agree") + shadow_count(&app, "disagree") + shadow_count(&app, "error");
    let log_dropped = app.metric("modelship_prediction_log_dropped_total", &[]).unwrap_or(0.0);
    app.stop();

    let rows = stored(log.path());
    let served: Vec<&Prediction> = rows.iter().filter(|p| p.role != "shadow").collect();
    let shadows: Vec<&Prediction> = rows.iter().filter(|p| p.role == "shadow").collect();
    assert_eq!(log_dropped, 0.0, "nothing dropped at this rate");
    // Each request exactly once as its client's answer, by the version that answered it.
    let served_ids: BTreeMap<&str, &Prediction> = served.iter().map(|p| (p.request_id.as_str(), *p)).collect();
    assert_eq!(served.len(), 10_000, "one answer per request");
    assert_eq!(served_ids.len(), 10_000, "no request kept twice");
    for (id, version) in &answered {
        let p = served_ids.get(id.as_str()).unwrap_or_else(|| panic!("{id} not kept"));
        assert_eq!(&p.version, version, "{id}");
        assert_eq!(p.role, if version == "2" { "candidate" } else { "stable" }, "{id}");
        assert!(p.inputs.as_deref().is_some_and(|i| i.contains("\"shape\":[1,")), "{id}: inputs as V2 JSON");
        assert!(p.outputs.is_some() && p.score.is_some() && p.revision == Some(2) && p.status == 200, "{p:?}");
    }
    let on_candidate = served.iter().filter(|p| p.role == "candidate").count();
    assert!((1_600..=2_400).contains(&on_candidate), "{on_candidate} of 10000 on a 20 % canary");
    // Each compared shadow copy once, beside the answer its client got.
    let shadow_ids: BTreeSet<&str> = shadows.iter().map(|p| p.request_id.as_str()).collect();
    assert_eq!(shadow_ids.len(), shadows.len(), "a shadow answer kept twice");
    assert_eq!(shadows.len() as f64, compared, "every shadow answer compared is kept");
    for s in &shadows {
        let client_got = served_ids[s.request_id.as_str()];
        assert_eq!(s.served_version.as_deref(), Some(client_got.version.as_str()), "{s:?}");
        assert_eq!(s.version, "3");
        // fraud:3 is fraud:1's file: it agrees with version 1's answers.
        if client_got.version == "1" {
            assert_eq!(s.agreed, Some(true), "{s:?}");
        }
    }
    // The same rows, as pyarrow and DuckDB read them.
    let read = python(READ_BACK, log.path());
    eprintln!("kept {} answers: {on_candidate} from the candidate, {} shadow answers of {compared} compared; read back: {read}", served.len(), shadows.len());
    let total = rows.len() as u64;
    assert_eq!((read["pyarrow_rows"].as_u64(), read["pyarrow_distinct"].as_u64()), (Some(total), Some(total)), "{read}");
    assert_eq!((read["duckdb_rows"].as_u64(), read["duckdb_distinct"].as_u64()), (Some(total), Some(total)), "{read}");
    assert_eq!(read["by_role"]["shadow"].as_u64(), Some(shadows.len() as u64), "{read}");
    // The shadow disagreements, side by side: xgboost (2) against fraud (3) when 2 answered.
    let (ok, out, err) = predictions(log.path(), &["diff", "--model", "fraud", "--output", "json"]);
    assert!(ok, "{err}");
    let diff: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(diff["shadow_answers"].as_u64(), Some(shadows.len() as u64));
    assert_eq!(diff["disagreed"].as_u64(), Some(shadows.iter().filter(|s| s.agreed == Some(false)).count() as u64));
}

/// A rollout of a version that fails is rolled back on its errors: a mark covers exactly the
/// candidate's predictions in its window; `predictions ls --rolled-back`, the export and the
/// documented DuckDB query find exactly those; a purge removes exactly those and is audited.
#[test]
fn a_rollback_marks_exactly_what_the_candidate_said_and_a_purge_removes_exactly_that() {
    let fixtures = Fixtures::new();
    fixtures.push("faulty", "3");
    let log = tempfile::tempdir().unwrap();
    let app = fixtures.serve("1", logging(&fixtures, log.path()));
    let (stop, _counting, _sent, _failed, clients) = load(&app, 3);
    let r = app.admin(
        "POST",
        "rollout",
        Some(json!({"spec": {"to": "3", "canary": {"weights": [20, 100], "every": "1m"}, "checks": [{"error_rate": {}}], "failure": {"consecutive": 2, "min_samples": 20}, "interval": "500ms"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(90);
    while app.admin("GET", "rollout", None).json()["phase"]["phase"] != "rolled_back" || !app.status()["traffic"]["candidate"].is_null() {
        assert!(Instant::now() < deadline, "never rolled back");
        thread::sleep(Duration::from_millis(100));
    }
    // Stable answers after the rollback too: never marked.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    app.stop();

    let rows = stored(log.path());
    let from_candidate: BTreeSet<&str> = rows.iter().filter(|p| p.version == "3").map(|p| p.request_id.as_str()).collect();
    assert!(!from_candidate.is_empty() && rows.iter().any(|p| p.version == "1"), "both versions answered");
    assert!(rows.iter().filter(|p| p.version == "3").any(|p| p.status >= 500), "the candidate's failures are kept too");
    let (ok, out, err) = predictions(log.path(), &["rollbacks", "--output", "json"]);
    assert!(ok, "{err}");
    let marks: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(marks.as_array().unwrap().len(), 1, "{marks}");
    assert_eq!((marks[0]["model"].as_str(), marks[0]["version"].as_str(), marks[0]["actor"].as_str()), (Some("fraud"), Some("3"), Some("rollout")), "{marks}");
    // Exactly the candidate's predictions are rolled back: by the command, the export and SQL.
    let (ok, out, err) = predictions(log.path(), &["ls", "--rolled-back", "--limit", "100000", "--output", "json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let marked: BTreeSet<&str> = listed["predictions"].as_array().unwrap().iter().map(|p| p["request_id"].as_str().unwrap()).collect();
    assert_eq!(marked, from_candidate, "what the rollback marked");
    let export = log.path().join("..").join(format!("export-{}.csv", std::process::id()));
    let (ok, _, err) = predictions(log.path(), &["export", "--to", export.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut csv = csv::Reader::from_path(&export).unwrap();
    let headers = csv.headers().unwrap().clone();
    let (id_at, flag_at) = (headers.iter().position(|h| h == "request_id").unwrap(), headers.iter().position(|h| h == "rolled_back").unwrap());
    let exported: BTreeSet<String> = csv.records().map(Result::unwrap).filter(|r| &r[flag_at] == "true").map(|r| r[id_at].to_owned()).collect();
    std::fs::remove_file(&export).unwrap();
    assert_eq!(exported.iter().map(String::as_str).collect::<BTreeSet<_>>(), from_candidate);
    let sql = python(ROLLED_BACK_QUERY, log.path());
    eprintln!("{} predictions kept, {} from the rolled-back candidate; marks: {marks}; DuckDB: {sql}", rows.len(), from_candidate.len());
    assert_eq!(sql["rolled_back"].as_u64(), Some(from_candidate.len() as u64), "{sql}");
    // A purge needs --yes, then removes exactly those, and says so in the audit table.
    let (ok, _, err) = predictions(log.path(), &["purge", "--rolled-back"]);
    assert!(!ok && err.contains(&format!("{} predictions of rolled-back versions would be removed", from_candidate.len())), "{err}");
    let (ok, out, err) = predictions(log.path(), &["purge", "--rolled-back", "--yes", "--actor", "ops", "--output", "json"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["removed"].as_u64(), Some(from_candidate.len() as u64), "{out}");
    let after = stored(log.path());
    assert!(after.iter().all(|p| p.version != "3"));
    assert_eq!(after.len(), rows.len() - from_candidate.len(), "nothing else removed");
    let (ok, out, err) = predictions(log.path(), &["audit", "--output", "json"]);
    assert!(ok, "{err}");
    let audit: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((audit[0]["actor"].as_str(), audit[0]["rows"].as_u64()), (Some("ops"), Some(from_candidate.len() as u64)), "{audit}");
}

/// The query docs/src/guides/predictions.md gives for "which of my stored predictions came from a
/// version later rolled back?".
const ROLLED_BACK_QUERY: &str = r#"
import json, sys, duckdb
root = sys.argv[1]
n = duckdb.connect().execute("""
SELECT count(*)
FROM read_parquet(? || '/predictions/**/*.parquet') p
JOIN read_parquet(? || '/rollbacks/**/*.parquet') r
  ON p.model = r.model AND p.version = r.version
 AND p.revision >= r.from_revision AND p.revision < r.to_revision
""", [root, root]).fetchone()[0]
print(json.dumps({"rolled_back": n}))
"#;

/// Delayed labels outlive the process: predictions made under a rollout, the server restarted,
/// then their labels posted: every one joins (read back from the log), and the quality check,
/// which had none before the restart, judges on them.
#[test]
fn labels_posted_after_a_restart_still_count_in_the_quality_check() {
    let fixtures = Fixtures::new();
    let log = tempfile::tempdir().unwrap();
    let app = fixtures.serve("1", logging(&fixtures, log.path()));
    let spec = json!({
        "to": "2",
        "steps": [{"weight": {"weight": "50%", "hold": "1h"}}],
        "checks": [{"quality": {"metric": "accuracy", "min_delta": -1.0, "min_labels": 20}}],
        "failure": {"min_samples": 5, "deadline": "3h"},
        "interval": "300ms"
    });
    let r = app.admin("POST", "rollout", Some(json!({ "spec": spec })));
    assert_eq!(r.status, 200, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.admin("GET", "rollout", None).json()["settled_ms"].is_null() {
        assert!(Instant::now() < deadline, "the step never settled");
        thread::sleep(Duration::from_millis(50));
    }
    let mut labels = Vec::new();
    for i in 0..120 {
        let r = app.post("/v2/models/fraud/infer", &fraud_body(1 + i % 2));
        assert_eq!(r.status, 200);
        labels.push(json!({"request_id": r.header("x-request-id").unwrap(), "label": i % 3 == 0}));
    }
    let verdict = |app: &App| app.admin("GET", "rollout", None).json()["checks"][0]["result"]["verdict"].as_str().unwrap_or_default().to_owned();
    assert!(!matches!(verdict(&app).as_str(), "pass" | "proven"), "judged without a label");
    app.stop();

    let app = fixtures.serve("1", logging(&fixtures, log.path()));
    let batch = json!({ "labels": labels });
    // The answers are read back from the log as the rollout resumes: all of them join.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut posts = 0;
    loop {
        let r = app.admin("POST", "feedback", Some(batch.clone()));
        posts += 1;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.json()["joined"] == 120 {
            break;
        }
        assert!(Instant::now() < deadline, "labels posted after the restart never joined: {}", r.text);
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(verdict(&app).as_str(), "pass" | "proven") {
        assert!(Instant::now() < deadline, "quality never judged on the labels: {}", app.admin("GET", "rollout", None).text);
        thread::sleep(Duration::from_millis(200));
    }
    // Posted again, they count once.
    let again = app.admin("POST", "feedback", Some(batch)).json();
    assert_eq!(again["joined"], 120, "{again}");
    app.stop();
    // And the log holds every post of them for whoever reads it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = LogStore::open(log.path().to_str().unwrap()).unwrap();
    let kept = runtime.block_on(store.feedback()).unwrap();
    assert_eq!(kept.len(), 120 * (posts + 1));
    assert_eq!(kept.iter().map(|f| f.request_id.as_str()).collect::<BTreeSet<_>>().len(), 120);
}

/// The log in PostgreSQL: 10,000 requests at c=32 with a 20 % canary and a 100 % shadow are each kept
/// once per role (read with `psql`); an operator's rollback marks exactly the candidate's rows
/// (one query on the `modelship_predictions_marked` view); the database is killed for 10 s under
/// load: no request fails, every answer is kept or counted as dropped, and writing resumes.
#[test]
fn postgres_keeps_every_answer_once_marks_rollbacks_and_outlives_a_database_restart() {
    let mut pg = crate::support::Postgres::start();
    let fixtures = Fixtures::new();
    fixtures.push("fraud", "3");
    let log = LogSettings { roll_rows: 500, roll_interval: Duration::from_millis(500), queue: 500, ..LogSettings::default() };
    let settings = modelship_server::Settings {
        prediction_log: Some(modelship_server::PredictionLogSettings { url: pg.url(), log }),
        ..fixtures.settings()
    };
    let app = fixtures.serve("1", settings);
    app.change(json!({"op": "canary", "version": "2", "weight": 2000}));
    app.change(json!({"op": "shadow", "version": "3", "percent": 10000}));
    ten_thousand(&app, "pg");
    let shadow_done = |app: &App| {
        ["agree", "disagree", "error"].iter().map(|r| app.metric("modelship_shadow_comparisons_total", &[&format!("result=\"{r}\"")]).unwrap_or(0.0)).sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while shadow_done(&app) + app.metric("modelship_shadow_dropped_total", &[]).unwrap_or(0.0) < 10_000.0 {
        assert!(Instant::now() < deadline, "the shadow copies never all finished");
        thread::sleep(Duration::from_millis(50));
    }
    let compared = shadow_done(&app) as u64;
    let expected = 10_000 + compared;
    // Kept or counted as dropped, each: a queue of 500 may overflow while the first connection
    // and the migration are made, or not, as the machine goes.
    let dropped = |app: &App| app.metric("modelship_prediction_log_dropped_total", &["queue_full"]).unwrap_or(0.0) as u64;
    let rows = || pg.psql("SELECT count(*) FROM modelship_predictions").parse::<u64>().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows() + dropped(&app) < expected {
        assert!(Instant::now() < deadline, "never written: {} rows, {} dropped of {expected}", rows(), dropped(&app));
        thread::sleep(Duration::from_millis(100));
    }
    let (kept, lost) = (rows(), dropped(&app));
    assert_eq!(kept + lost, expected, "every answer kept or counted as dropped");
    let counts = pg.psql("SELECT count(DISTINCT (request_id, role)) || ' ' || count(*) FILTER (WHERE role <> 'shadow') || ' ' || count(DISTINCT request_id) FILTER (WHERE role <> 'shadow') FROM modelship_predictions");
    let served = kept - pg.psql("SELECT count(*) FROM modelship_predictions WHERE role = 'shadow'").parse::<u64>().unwrap();
    assert_eq!(counts, format!("{kept} {served} {served}"), "no answer kept twice (rows {kept}, dropped {lost})");
    assert_eq!(pg.psql("SELECT count(*) FROM modelship_predictions WHERE role <> 'shadow' AND (outputs->0->>'name') IS NULL"), "0", "outputs as JSON");

    // The operator rolls the canary back (after the shadow was stopped: not a rollback).
    app.change(json!({"op": "stop_shadow"}));
    let r = app.admin("POST", "traffic/rollback", Some(json!({"to_revision": 0, "reason": "bad canary"})));
    assert_eq!(r.status, 200, "{}", r.text);
    let candidate = pg.psql("SELECT count(*) FROM modelship_predictions WHERE version = '2'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("SELECT count(*) FROM modelship_rollbacks") != "1" {
        assert!(Instant::now() < deadline, "the rollback was never marked");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pg.psql("SELECT count(*) FROM modelship_predictions_marked WHERE rolled_back"), candidate, "exactly the candidate's answers");
    assert_eq!(pg.psql("SELECT count(*) FROM modelship_predictions_marked WHERE rolled_back AND version <> '2'"), "0");

    // The database goes away for 10 s under load.
    let (stop, _counting, sent, failed, load_clients) = load(&app, 3);
    thread::sleep(Duration::from_secs(1));
    pg.kill();
    thread::sleep(Duration::from_secs(10));
    pg.restart();
    let written = |app: &App| app.metric("modelship_prediction_log_rows_total", &["predictions"]).unwrap_or(0.0);
    let before = written(&app);
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&app) <= before {
        assert!(Instant::now() < deadline, "writing never resumed");
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    load_clients.into_iter().for_each(|c| c.join().unwrap());
    let dropped = dropped(&app) - lost;
    app.stop();
    let (sent, failed) = (sent.load(Ordering::Relaxed) as u64, failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "of {sent} requests while the database was away");
    assert!(dropped > 0, "the queue of 500 filled while the database was away");
    let total: u64 = pg.psql("SELECT count(*) FROM modelship_predictions").parse().unwrap();
    eprintln!("PostgreSQL: {kept} rows before the outage ({lost} dropped), {sent} requests around it, {dropped} dropped, {total} rows in all");
    assert_eq!(total + lost + dropped, expected + sent, "every answer kept or counted as dropped");
    assert_eq!(pg.psql("SELECT max(version) FROM modelship_schema_migrations"), "1");
}
