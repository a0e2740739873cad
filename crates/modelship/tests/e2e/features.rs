//! Feature-store enrichment against a real `redis-server` on a free loopback port: single and
//! batched entities, the order of the model's signature, the cache's TTL, a missing entity, a type
//! mismatch in stored data, the store going down and coming back (fail fast or fall back;
//! readiness follows), and `modelship features load`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, command, free_port, model};

/// A real redis-server on 127.0.0.1, killed on drop: without persistence, or with an
/// append-only file in `dir` (fsync on every write), so it can be stopped and started again
/// with its data, as a production Redis restarts.
pub struct Redis {
    port: u16,
    child: Child,
    dir: Option<std::path::PathBuf>,
    /// The working directory of one that keeps nothing: a replica's full sync writes
    /// `dump.rdb` there, which a server started later in the same directory would load.
    _scratch: Option<tempfile::TempDir>,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        Redis::launch(port, None, None)
    }

    /// A replica of the Redis on `primary` (`--replicaof`), ready once it answers.
    pub fn replica_of(port: u16, primary: u16) -> Redis {
        Redis::launch_with(port, None, None, &["--replicaof", "127.0.0.1", &primary.to_string()])
    }

    /// A Redis Sentinel (`redis-server CONFIG --sentinel`: the program Debian's `redis-sentinel`
    /// runs) on `port`, watching the primary on `primary` as service `modelship`: it counts as
    /// down after 1 s, and `quorum` Sentinels agreeing fail it over. Its configuration (which
    /// Sentinel rewrites) lives in `dir`.
    pub fn sentinel(port: u16, primary: u16, quorum: usize, dir: &Path) -> Redis {
        let config = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor modelship 127.0.0.1 {primary} {quorum}\nsentinel down-after-milliseconds modelship 1000\nsentinel failover-timeout modelship 10000\nsentinel parallel-syncs modelship 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; scripts/setup.sh --test does)");
        let sentinel = Redis { port, child, dir: None, _scratch: None };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis sentinel did not start on port {port}");
            thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    /// Kills it (SIGKILL): a primary that fails with no warning.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Listening on `address` too (a net's gateway, for hosts in namespaces).
    pub fn start_on(port: u16, address: &str) -> Redis {
        Redis::launch(port, None, Some(address))
    }

    pub fn persistent(port: u16, dir: &std::path::Path) -> Redis {
        Redis::launch(port, Some(dir.to_owned()), None)
    }

    fn launch(port: u16, dir: Option<std::path::PathBuf>, also: Option<&str>) -> Redis {
        Redis::launch_with(port, dir, also, &[])
    }

    fn launch_with(port: u16, dir: Option<std::path::PathBuf>, also: Option<&str>, extra: &[&str]) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        if let Some(address) = also {
            // Clients on other hosts, with no password: Redis' protected mode would refuse them.
            cmd.args([address, "--protected-mode", "no"]);
        }
        cmd.args(["--save", ""]).args(extra);
        let scratch = dir.is_none().then(|| tempfile::tempdir().unwrap());
        match (&dir, &scratch) {
            (Some(d), _) => cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(d),
            (None, Some(s)) => cmd.args(["--appendonly", "no", "--dir"]).arg(s.path()),
            (None, None) => unreachable!("a scratch directory when none is given"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; scripts/setup.sh --test does)");
        let redis = Redis { port, child, dir, _scratch: scratch };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// Stops the server (SIGTERM: it finishes writing its file), for `down`, then starts it
    /// again on the same port with the same data. Returns when it had exited and when it was
    /// started again (milliseconds since the epoch): the window in which it answered nothing.
    pub fn outage(&mut self, down: Duration) -> (u64, u64) {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(self.dir.is_some(), "an outage needs a persistent Redis");
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let stopped = now();
        thread::sleep(down);
        let started = now();
        let again = Redis::launch(self.port, self.dir.clone(), None);
        // The old child is reaped; the new one takes its place (and its drop).
        *self = again;
        (stopped, started)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).stdin(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL from another host, reaching it at `address` (see [`Redis::start_on`]).
    pub fn url_at(&self, address: &str) -> String {
        format!("redis://{address}:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Feature `i` of customer `c`: distinct, deterministic values.
fn value(c: usize, i: usize) -> f64 {
    ((c * 31 + i * 7) % 23) as f64 / 4.0 - 2.5
}

const CUSTOMERS: usize = 4;

/// A CSV of customers c0..c3 with store features f02..f29.
pub(crate) fn csv(dir: &Path) -> PathBuf {
    let path = dir.join("customers.csv");
    let mut text = String::from("customer_id");
    for i in 2..30 {
        text.push_str(&format!(",f{i:02}"));
    }
    text.push('\n');
    for c in 0..CUSTOMERS {
        text.push_str(&format!("c{c}"));
        for i in 2..30 {
            text.push_str(&format!(",{}", value(c, i)));
        }
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A serving config: f00 and f01 from the request, f02..f29 from the store, listed in reverse
/// with explicit positions (the model's order is the positions', not the list's).
pub(crate) fn config(dir: &Path, redis: &Redis, extra: &str) -> PathBuf {
    let mut features = String::new();
    for i in (0..30).rev() {
        let source = if i < 2 { "request" } else { "store" };
        let default = if i == 29 { ", default: 0.5" } else { "" };
        features.push_str(&format!("    - {{name: f{i:02}, source: {source}, position: {i}{default}}}\n"));
    }
    let path = dir.join(format!("serving-{}.yaml", extra.len()));
    std::fs::write(
        &path,
        format!(
            "model: {{path: {}, name: lr}}\nfeatures:\n  store_url: {}\n  key: 'features:customer:{{customer_id}}'\n  timeout_ms: 200\n{extra}  features:\n{features}",
            model("logistic_regression"),
            redis.url()
        ),
    )
    .unwrap();
    path
}

pub(crate) fn load(config: &Path, file: &Path) -> Value {
    let out = command().args(["features", "load"]).arg(file).arg("--config").arg(config).args(["--output", "json"]).output().unwrap();
    assert!(out.status.success(), "features load: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn entity(c: usize) -> Value {
    json!({"customer_id": format!("c{c}"), "f00": c as f64, "f01": -(c as f64)})
}

/// The full row of customer `c`, in the model's order.
fn row(c: usize) -> Vec<f64> {
    (0..30).map(|i| if i == 0 { c as f64 } else if i == 1 { -(c as f64) } else { value(c, i) }).collect()
}

fn predict(server: &Server, body: Value) -> (u16, Value) {
    let r = server.post("/v1/predict", &body.to_string());
    (r.status, r.json())
}

fn prediction(server: &Server, body: Value) -> Vec<f64> {
    let (status, body) = predict(server, body);
    assert_eq!(status, 200, "{body}");
    body["prediction"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn ready(server: &Server) -> (u16, Value) {
    let r = server.get("/health/ready");
    (r.status, r.json())
}

pub(crate) fn wait_ready(server: &Server, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready(server);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "readiness stayed {status}: {body}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn entities_are_enriched_in_the_signature_order_single_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let cfg = config(dir.path(), &redis, "  cache_ttl: 300\n");
    let loaded = load(&cfg, &csv(dir.path()));
    assert_eq!(loaded["loaded"], CUSTOMERS);
    assert_eq!(redis.cli(&["HGET", "features:customer:c2", "f07"]).trim().parse::<f64>().unwrap(), value(2, 7));

    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    // The store is connected in the background once the model is loaded: ready within moments.
    let body = wait_ready(&server, 200);
    assert_eq!(body["checks"]["feature_store_connected"], true, "{body}");

    let rows: Vec<Vec<f64>> = (0..CUSTOMERS).map(row).collect();
    let want = prediction(&server, json!({"features": rows}));
    // One entity at a time, then all in one request: the same predictions as the raw rows.
    for (c, w) in want.iter().enumerate() {
        let got = prediction(&server, json!({"entities": [entity(c)]}));
        assert!((got[0] - w).abs() < 1e-6, "customer {c}: {got:?} vs {w}");
    }
    let trips_before = server.metric("modelship_feature_store_duration_seconds_count", &[]).unwrap();
    // A batch of entities the cache has not seen costs one round trip.
    redis.cli(&["HSET", "features:customer:c9", "f02", "1"]);
    let hits_before = server.metric("modelship_feature_cache_requests_total", &["result=\"hit\""]).unwrap_or(0.0);
    let batch: Vec<Value> = (0..CUSTOMERS).map(entity).collect();
    let got = prediction(&server, json!({"entities": batch}));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "batched {got:?} vs {want:?}");
    }
    assert_eq!(server.metric("modelship_feature_store_duration_seconds_count", &[]).unwrap(), trips_before, "all cached: no round trip");
    assert_eq!(server.metric("modelship_feature_cache_requests_total", &["result=\"hit\""]).unwrap(), hits_before + CUSTOMERS as f64);
    server.post("/v2/models/lr/infer", &json!({"inputs": [], "parameters": {"entities": [{"customer_id": "c9", "f00": 0, "f01": 0}]}}).to_string());
    assert_eq!(server.metric("modelship_feature_store_duration_seconds_count", &[]).unwrap(), trips_before + 1.0);

    // V2: parameters.entities build the input; the answer equals the raw row's.
    let r = server.post("/v2/models/lr/infer", &json!({"inputs": [], "parameters": {"entities": [entity(1), entity(3)]}}).to_string());
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json()["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap().clone();
    let p: Vec<f64> = out["data"].as_array().unwrap().chunks(2).map(|p| p[1].as_f64().unwrap()).collect();
    assert!((p[0] - want[1]).abs() < 1e-6 && (p[1] - want[3]).abs() < 1e-6, "{p:?}");
    // The request's own value of a store feature wins over the store's.
    let mut own = entity(0);
    own["f05"] = json!(100.0);
    let mut raw = row(0);
    raw[5] = 100.0;
    assert!((prediction(&server, json!({"entities": [own]}))[0] - prediction(&server, json!({"features": [raw]}))[0]).abs() < 1e-6);

    // Over gRPC, the `entities` parameter (a JSON string) builds the input the same way.
    #[cfg(feature = "grpc")]
    {
        let script = format!(
            "import json, tritonclient.grpc as g\n\
             c = g.InferenceServerClient('{}')\n\
             r = c.infer('lr', [], parameters={{'entities': json.dumps({})}})\n\
             print(json.dumps(r.as_numpy('probabilities')[:, 1].tolist()))",
            server.ready["grpc"].as_str().unwrap(),
            json!([entity(0), entity(2)])
        );
        let out = Command::new(crate::support::tool(".cache/triton-venv/bin/python")).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let p: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
        assert!((p[0] - want[0]).abs() < 1e-6 && (p[1] - want[2]).abs() < 1e-6, "{p:?} vs {want:?}");
    }

    // Parquet loads like CSV (written here by pandas + pyarrow from ./.venv).
    let parquet = dir.path().join("more.parquet");
    let script = format!(
        "import pandas as pd\n\
         pd.DataFrame({{'customer_id': ['p1', 'p2'], **{{f'f{{i:02d}}': [0.25 * i, -0.5 * i] for i in range(2, 30)}}}}).to_parquet('{}')",
        parquet.display()
    );
    let out = Command::new(crate::support::tool(".venv/bin/python")).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(load(&cfg, &parquet)["loaded"], 2);
    assert_eq!(redis.cli(&["HGET", "features:customer:p2", "f04"]).trim().parse::<f64>().unwrap(), -2.0);
    // A file whose values do not fit the declared types is refused before anything is written.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("customer_id,{}\nz1,{}\n", (2..30).map(|i| format!("f{i:02}")).collect::<Vec<_>>().join(","), ["1"; 27].join(",") + ",abc")).unwrap();
    let out = command().args(["features", "load"]).arg(&bad).arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("row 2, column 'f29'"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(redis.cli(&["EXISTS", "features:customer:z1"]).trim(), "0");

    // Bad requests are named.
    let (status, body) = predict(&server, json!({"entities": [{"f00": 1, "f01": 2}]}));
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "entity 0 has no 'customer_id', which the key pattern features:customer:{customer_id} needs"));
    let (status, body) = predict(&server, json!({"entities": [{"customer_id": "c1"}]}));
    assert_eq!((status, body["error"].as_str().unwrap()), (400, "entity 0 has no 'f00', a request feature with no default"));
    let (status, body) = predict(&server, json!({"entities": [{"customer_id": "../x", "f00": 1, "f01": 2}]}));
    assert_eq!(status, 400, "{body}");
}

/// An entity cached before one of its fields was loaded: the field is found at once, not after
/// `cache_ttl` (300 s here), because a missing field is read again past the cache.
#[test]
fn a_field_loaded_after_its_entity_was_cached_is_found_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let cfg = config(dir.path(), &redis, "  cache_ttl: 300\n");
    load(&cfg, &csv(dir.path()));
    redis.cli(&["HDEL", "features:customer:c1", "f10"]);
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    wait_ready(&server, 200);
    let (status, body) = predict(&server, json!({"entities": [entity(1)]}));
    assert_eq!(status, 404, "{body}");
    redis.cli(&["HSET", "features:customer:c1", "f10", &value(1, 10).to_string()]);
    let got = prediction(&server, json!({"entities": [entity(1)]}))[0];
    let want = prediction(&server, json!({"features": [row(1)]}))[0];
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn missing_entities_bad_stored_data_and_the_cache_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let cfg = config(dir.path(), &redis, "  cache_ttl: 1\n");
    load(&cfg, &csv(dir.path()));
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    // The store connects in the background after the ready line; until then a request needing
    // it fails fast with 503 (the readiness probe says so). A fresh-clone run of the suite once
    // sent its first request before the connection.
    wait_ready(&server, 200);

    let (status, body) = predict(&server, json!({"entities": [entity(7)]}));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no features are stored under key 'features:customer:c7'"), "{body}");

    // A field that is not stored takes its default (f29 has one) and the response says so.
    redis.cli(&["HDEL", "features:customer:c2", "f29"]);
    let (status, body) = predict(&server, json!({"entities": [entity(2)]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["defaults_used"], json!([{"entity": 0, "features": ["f29"], "reason": "some fields are not stored"}]));
    // Without a default it is an error naming the key and field.
    redis.cli(&["HDEL", "features:customer:c2", "f10"]);
    thread::sleep(Duration::from_millis(1100));
    let (status, body) = predict(&server, json!({"entities": [entity(2)]}));
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (
            404,
            "key 'features:customer:c2' has no field 'f10' (feature 'f10'; read from the store itself, past the cache) and the feature has no default; load it (`modelship features load`) or give the feature a default"
        )
    );

    // A stored value of the wrong type is the store's fault: 502, naming key, feature and value.
    redis.cli(&["HSET", "features:customer:c3", "f05", "lots"]);
    let (status, body) = predict(&server, json!({"entities": [entity(3)]}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "key 'features:customer:c3': feature 'f05' is stored as 'lots', which is not a number; fix the stored data");

    // The cache serves a value until its TTL (1 s) runs out, then the store's new value.
    let before = prediction(&server, json!({"entities": [entity(1)]}))[0];
    redis.cli(&["HSET", "features:customer:c1", "f03", "40"]);
    assert_eq!(prediction(&server, json!({"entities": [entity(1)]}))[0], before, "served from the cache");
    thread::sleep(Duration::from_millis(1300));
    let after = prediction(&server, json!({"entities": [entity(1)]}))[0];
    assert!((after - before).abs() > 1e-6, "the new stored value is used after the TTL: {before} vs {after}");
    let mut changed = row(1);
    changed[3] = 40.0;
    assert!((after - prediction(&server, json!({"features": [changed]}))[0]).abs() < 1e-6);
}

#[test]
fn the_store_going_down_fails_fast_or_falls_back_and_readiness_follows() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = Redis::start(port);
    let strict_cfg = config(dir.path(), &redis, "  cache_ttl: 300\n");
    let lenient_cfg = config(
        dir.path(),
        &redis,
        "  cache_ttl: 300\n  on_store_error: defaults\n  on_missing_entity: defaults\n  cache_max_entries: 2\n",
    );
    // Every store feature needs a default to fall back to.
    let text = std::fs::read_to_string(&lenient_cfg).unwrap().replace("source: store, position:", "source: store, default: 0.0, position:").replace("default: 0.0, position: 29, default: 0.5", "default: 0.5, position: 29");
    std::fs::write(&lenient_cfg, text).unwrap();
    load(&strict_cfg, &csv(dir.path()));
    let strict = Server::start(&["--config", strict_cfg.to_str().unwrap()]);
    let lenient = Server::start(&["--config", lenient_cfg.to_str().unwrap()]);
    wait_ready(&strict, 200);
    wait_ready(&lenient, 200);
    let healthy = prediction(&strict, json!({"entities": [entity(1)]}))[0];
    assert_eq!(prediction(&lenient, json!({"entities": [entity(1)]}))[0], healthy);

    // Traffic keeps flowing while the store dies.
    drop(redis);
    let body = wait_ready(&strict, 503);
    assert_eq!(body["checks"]["feature_store_connected"], false, "{body}");
    wait_ready(&lenient, 503);
    let started = Instant::now();
    let (status, body) = predict(&strict, json!({"entities": [entity(2)]}));
    assert!(started.elapsed() < Duration::from_secs(5), "a dead store must not hang requests");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("the feature store is unavailable"), "{body}");
    // Cached entities still answer; raw features never needed the store.
    assert_eq!(prediction(&strict, json!({"entities": [entity(1)]}))[0], healthy);
    assert_eq!(prediction(&strict, json!({"features": [row(2)]})).len(), 1);
    // The lenient server answers with defaults and says so.
    let (status, body) = predict(&lenient, json!({"entities": [entity(3)]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["defaults_used"][0]["entity"], 0);
    assert!(body["defaults_used"][0]["reason"].as_str().unwrap().starts_with("feature store unavailable"), "{body}");
    assert!(strict.metric("modelship_feature_store_errors_total", &[]).unwrap() >= 1.0);

    // The store comes back (empty, then reloaded): readiness recovers by itself.
    let redis = Redis::start(port);
    load(&strict_cfg, &csv(dir.path()));
    let body = wait_ready(&strict, 200);
    assert_eq!(body["checks"]["feature_store_connected"], true);
    wait_ready(&lenient, 200);
    let again = prediction(&strict, json!({"entities": [entity(2)]}))[0];
    assert!((again - prediction(&strict, json!({"features": [row(2)]}))[0]).abs() < 1e-6);
    // A missing entity with the lenient policy: defaults, flagged.
    let (status, body) = predict(&lenient, json!({"entities": [entity(9)]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["defaults_used"][0]["reason"], "no features stored under key 'features:customer:c9'");
    // The lenient server's cache holds 2 entities: a third evicts one.
    for c in 0..CUSTOMERS {
        prediction(&lenient, json!({"entities": [entity(c)]}));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while lenient.metric("modelship_feature_cache_evictions_total", &["cause=\"size\""]).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "no size eviction counted");
        prediction(&lenient, json!({"entities": [entity(0)]}));
        thread::sleep(Duration::from_millis(50));
    }
    drop(redis);
}

#[test]
fn a_spec_that_does_not_fit_the_model_stops_the_server_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {{path: {}}}\nfeatures:\n  store_url: redis://127.0.0.1:1\n  key: 'customer'\n  features:\n    - {{name: a}}\n    - {{name: a}}\n",
            model("logistic_regression")
        ),
    )
    .unwrap();
    let out = command().args(["serve", "--config", cfg.to_str().unwrap(), "--port", "0"]).env("MODELSHIP_STATE_DIR", dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in ["has no placeholder", "feature 'a' is listed twice", "features build a [N, 2] input"] {
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
}

/// Each model of a server has its own feature spec in the one store: a listed model with a spec
/// of its own is enriched as the first model is; a model with none takes its features in the
/// request and refuses entities, saying how to give it a spec.
#[test]
fn each_model_has_its_own_feature_spec() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let first = config(dir.path(), &redis, "");
    load(&first, &csv(dir.path()));
    // The same spec as the first model's, under models[].features, and a model without one.
    let text = std::fs::read_to_string(&first).unwrap();
    let spec: String = text.lines().skip_while(|l| !l.starts_with("  features:")).skip(1).map(|l| format!("  {l}\n")).collect();
    let listed = format!(
        "{text}models:\n  - {{path: {}, name: plain}}\n  - path: {}\n    name: churn\n    features:\n      key: 'features:customer:{{customer_id}}'\n      features:\n{spec}",
        model("fraud"),
        model("logistic_regression"),
    );
    let cfg = dir.path().join("listed.yaml");
    std::fs::write(&cfg, listed).unwrap();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    wait_ready(&server, 200);
    let body = json!({"entities": [entity(1), entity(3)]}).to_string();
    let own = server.post("/v1/predict", &body);
    let listed = server.post("/v1/models/churn/predict", &body);
    assert_eq!((own.status, listed.status), (200, 200), "{} / {}", own.text, listed.text);
    assert_eq!(own.json()["prediction"], listed.json()["prediction"], "the same model and spec: the same answers");
    let plain = server.post("/v1/models/plain/predict", &body);
    assert_eq!(plain.status, 400, "{}", plain.text);
    assert!(plain.json()["error"].as_str().unwrap().contains("models[].features"), "{}", plain.text);
    // A model's spec without a store to look in is refused before anything starts.
    let bad = dir.path().join("no-store.yaml");
    std::fs::write(&bad, format!("model: {{path: {}}}\nmodels:\n  - {{path: {}, name: churn, features: {{key: 'k:{{id}}'}}}}\n", model("fraud"), model("logistic_regression"))).unwrap();
    let out = command().args(["serve", "--config", bad.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("models[0].features is set") && err.contains("features.store_url"), "{err}");
}

/// `modelship predict --entities`: a file of entity keys (and the request's own fields) scored
/// with the features the store holds for them, as `/v1/predict` by entities answers them, row for
/// row.
#[test]
fn a_file_of_entities_is_scored_with_the_store_features() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(free_port());
    let cfg = config(dir.path(), &redis, "  cache_ttl: 300\n");
    assert_eq!(load(&cfg, &csv(dir.path()))["loaded"], CUSTOMERS);
    let input = dir.path().join("entities.csv");
    let mut text = String::from("customer_id,f00,f01\n");
    for r in 0..1000 {
        let c = r % CUSTOMERS;
        text.push_str(&format!("c{c},{},{}\n", c as f64, -(c as f64)));
    }
    std::fs::write(&input, text).unwrap();
    let output = dir.path().join("scored.jsonl");
    let out = command()
        .args(["predict", "--config", cfg.to_str().unwrap(), "--entities", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()])
        .args(["--id-column", "customer_id", "--chunk-rows", "128", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&["--config", cfg.to_str().unwrap()]);
    wait_ready(&server, 200);
    let want = prediction(&server, json!({"features": (0..CUSTOMERS).map(row).collect::<Vec<_>>()}));
    let scored: Vec<Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), 1000);
    for (r, line) in scored.iter().enumerate() {
        let c = r % CUSTOMERS;
        assert_eq!((line["row"].as_u64(), line["id"].as_str()), (Some(r as u64), Some(format!("c{c}").as_str())));
        assert!((line["prediction"].as_f64().unwrap() - want[c]).abs() < 1e-6, "row {r}: {line} vs {}", want[c]);
    }
    // Without the store's features there is nothing to look entities up in: a usage error.
    let out = command().args(["predict", &model("logistic_regression"), "--entities", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --config with a features section"));
}
