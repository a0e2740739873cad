//! Knowing what happens, with the real parties: OpenTelemetry traces received by an OTLP receiver
//! built on opentelemetry-proto (PyPI) from a server called by a client with opentelemetry-sdk,
//! and the generated alerting rules loaded by a real Prometheus (Debian) that scrapes a server
//! whose candidate fails, routed by a real Alertmanager (Debian `prometheus-alertmanager`) to a
//! webhook receiver, beside the server's own rollout notification sent to Alertmanager's API.

use std::collections::HashMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::Load;
use crate::support::{Receiver, Server, Service, agent, command, free_port, root};

/// The OTLP receiver (`otel.py receive`), writing what it gets as JSON lines.
struct Otlp {
    _service: Service,
    dir: tempfile::TempDir,
    grpc: u16,
    http: u16,
}

fn otel_python() -> std::path::PathBuf {
    let python = root().join(".cache/otel-venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh --test", python.display());
    python
}

impl Otlp {
    fn start() -> Otlp {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = Command::new(otel_python());
        cmd.arg(root().join("crates/modelship/tests/e2e/otel.py"))
            .args(["receive", "--grpc", &grpc.to_string(), "--http", &http.to_string(), "--out"])
            .arg(dir.path().join("spans.jsonl"));
        let mut service = Service::start("otlp-receiver", cmd, dir.path().join("receiver.log"));
        let log = dir.path().join("receiver.log");
        service.wait_until(Duration::from_secs(30), || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready")));
        Otlp { _service: service, dir, grpc, http }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `done` holds for the spans received (at most 60 s).
    fn wait(&self, what: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "never {what}; spans: {spans:#?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `otel.py client`: requests made inside the client's own spans; one JSON line per request.
fn traced_requests(url: &str, n: usize) -> Vec<Value> {
    let out = Command::new(otel_python())
        .arg(root().join("crates/modelship/tests/e2e/otel.py"))
        .args(["client", "--url", url, "--requests", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn traced_server(fleet: &crate::traffic::Fleet, env: &[(&str, String)]) -> Server {
    let mut all: Vec<(&str, String)> = vec![
        ("MODELSHIP_STATE_DIR", fleet.state.path().to_str().unwrap().to_owned()),
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ("OTEL_SERVICE_NAME", "fraud-api".to_owned()),
    ];
    all.extend(env.iter().cloned());
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(&["fraud:1", "--registry", fleet.registry.path().to_str().unwrap(), "--workers", "1"], &env)
}

/// A client's traces continue through the server: its server span is the child of the client's
/// span, with a child span for each stage, the caller's tracestate kept, attributes naming the
/// version, role, revision and request id; the shadow copy's span is linked to its request's;
/// the server's log line of each request carries the same trace id. Over OTLP/gRPC, then over
/// OTLP/HTTP.
#[test]
fn traces_continue_the_callers_trace_through_every_stage() {
    let otlp = Otlp::start();
    let fleet = crate::traffic::fleet();
    let server = traced_server(&fleet, &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", otlp.grpc))]);
    fleet.ok(&server, &["shadow", "fraud", "--version", "2", "--percent", "100"]);
    let calls = traced_requests(&server.url("/v2/models/fraud/infer"), 5);
    assert!(calls.iter().all(|c| c["status"] == 200), "{calls:?}");
    let traces: Vec<&str> = calls.iter().map(|c| c["trace_id"].as_str().unwrap()).collect();
    let spans = otlp.wait("got every request's stages and shadow", |spans| {
        traces.iter().all(|t| {
            let of: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == *t).collect();
            let shadow = spans.iter().any(|s| s["name"] == "shadow" && s["links"].as_array().is_some_and(|l| l.iter().any(|l| l["trace_id"] == *t)));
            of.len() >= 6 && shadow
        })
    });
    for call in &calls {
        let trace = call["trace_id"].as_str().unwrap();
        let of: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();
        let server_span = of.iter().find(|s| s["kind"] == 2).unwrap_or_else(|| panic!("no server span in {of:#?}"));
        assert_eq!(server_span["parent_span_id"], call["span_id"], "the server span continues the client's: {server_span}");
        assert_eq!(server_span["service"], "fraud-api");
        assert_eq!(server_span["protocol"], "grpc");
        assert!(server_span["trace_state"].as_str().unwrap().contains("vendor=test"), "tracestate passed on: {server_span}");
        let a = &server_span["attributes"];
        assert_eq!((a["modelship.model"].as_str(), a["modelship.version"].as_str(), a["modelship.role"].as_str()), (Some("fraud"), Some("1"), Some("stable")), "{a}");
        assert_eq!(a["modelship.request_id"], call["request_id"]);
        assert!(a["modelship.revision"].as_i64().is_some() || a["modelship.revision"].as_str().is_some(), "{a}");
        let children: HashMap<&str, &Value> = of.iter().filter(|s| s["parent_span_id"] == server_span["span_id"]).map(|s| (s["name"].as_str().unwrap(), *s)).collect();
        for stage in ["decode", "route", "queue", "infer", "encode"] {
            let child = children.get(stage).unwrap_or_else(|| panic!("no {stage} span under the server span: {of:#?}"));
            assert!(child["start"].as_u64() >= server_span["start"].as_u64() && child["end"].as_u64() <= server_span["end"].as_u64(), "{stage} inside the request: {child}");
        }
        let shadow = spans
            .iter()
            .find(|s| s["name"] == "shadow" && s["links"].as_array().is_some_and(|l| l.iter().any(|l| l["span_id"] == server_span["span_id"])))
            .expect("the shadow span links to its request's");
        assert_eq!(shadow["attributes"]["modelship.version"], "2");
        assert_eq!(shadow["attributes"]["modelship.request_id"], call["request_id"]);
    }
    // The log line of each request carries its trace id beside its request id.
    let logs = server.stderr();
    for call in &calls {
        let line = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "inference" && l["request_id"] == call["request_id"])
            .unwrap_or_else(|| panic!("no log line for {}", call["request_id"]));
        assert_eq!(line["trace_id"], call["trace_id"], "{line}");
    }
    drop(server);

    // OTLP over HTTP/protobuf, sampling new traces at 0: a caller's sampled trace is still
    // continued (parent-based), and a request without one is logged with a trace id, unexported.
    let server = traced_server(
        &fleet,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{}", otlp.http)),
            ("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()),
        ],
    );
    let call = &traced_requests(&server.url("/v2/models/fraud/infer"), 1)[0];
    let trace = call["trace_id"].as_str().unwrap().to_owned();
    otlp.wait("got the request over HTTP", |spans| spans.iter().any(|s| s["trace_id"] == trace.as_str() && s["protocol"] == "http" && s["kind"] == 2));
    let untraced = server.post("/v2/models/fraud/infer", &crate::support::fraud_body(1));
    assert_eq!(untraced.status, 200);
    let id = untraced.header("x-request-id").unwrap().to_owned();
    thread::sleep(Duration::from_secs(1));
    let logged = server.stderr().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|l| l["message"] == "inference" && l["request_id"] == id.as_str()).unwrap();
    let unsampled = logged["trace_id"].as_str().expect("a trace id even unsampled").to_owned();
    assert!(otlp.spans().iter().all(|s| s["trace_id"] != unsampled.as_str()), "an unsampled trace was exported");

    // gRPC: Triton's own client sends the context as metadata.
    let (trace, parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let script = "import sys, numpy as np, tritonclient.grpc as g\n\
c = g.InferenceServerClient(sys.argv[1])\n\
x = g.InferInput('input', [1, 30], 'FP32'); x.set_data_from_numpy(np.full((1, 30), 0.1, dtype=np.float32))\n\
c.infer('fraud', [x], headers={'traceparent': sys.argv[2], 'tracestate': 'vendor=grpc'})\n";
    let out = Command::new(root().join(".cache/triton-venv/bin/python"))
        .args(["-c", script, server.ready["grpc"].as_str().unwrap(), &format!("00-{trace}-{parent}-01")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spans = otlp.wait("got the gRPC request's spans", |spans| spans.iter().filter(|s| s["trace_id"] == trace).count() >= 6);
    let grpc = spans.iter().find(|s| s["trace_id"] == trace && s["kind"] == 2).unwrap();
    assert_eq!((grpc["name"].as_str(), grpc["parent_span_id"].as_str(), grpc["trace_state"].as_str()), (Some("grpc_infer"), Some(parent), Some("vendor=grpc")), "{grpc}");
}

/// A request that names entities: the feature store's round trip is a client span under
/// `enrich`, which says how many entities the cache answered.
#[test]
fn a_feature_store_round_trip_is_a_span_of_its_own() {
    let otlp = Otlp::start();
    let dir = tempfile::tempdir().unwrap();
    let redis = crate::features::Redis::start(free_port());
    let cfg = crate::features::config(dir.path(), &redis, "  cache_ttl: 300\n");
    crate::features::load(&cfg, &crate::features::csv(dir.path()));
    let server = Server::start_with(
        &["--config", cfg.to_str().unwrap()],
        &[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_BSP_SCHEDULE_DELAY", "200"), ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://127.0.0.1:{}", otlp.grpc))],
    );
    crate::features::wait_ready(&server, 200);
    let traceparent = |i: usize| format!("00-{:032x}-{:016x}-01", 0xabc0 + i, 0xdef0 + i);
    for i in 0..2 {
        let body = serde_json::json!({"entities": [crate::features::entity(1), crate::features::entity(2)]}).to_string();
        let r = server.post_with("/v1/predict", &body, &[("traceparent", &traceparent(i))]);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let trace = |i: usize| format!("{:032x}", 0xabc0 + i);
    let spans = otlp.wait("got both requests' enrichment", |spans| (0..2).all(|i| spans.iter().any(|s| s["trace_id"] == trace(i).as_str() && s["name"] == "enrich")));
    // The first request went to Redis; the second found both entities cached.
    let enrich = |i: usize| spans.iter().find(|s| s["trace_id"] == trace(i).as_str() && s["name"] == "enrich").unwrap();
    let first = enrich(0);
    let store = spans.iter().find(|s| s["name"] == "feature_store" && s["parent_span_id"] == first["span_id"]).expect("a feature_store span under enrich");
    assert_eq!((store["kind"].as_u64(), store["attributes"]["db.system"].as_str(), store["attributes"]["modelship.outcome"].as_str()), (Some(3), Some("redis"), Some("ok")), "{store}");
    assert_eq!(store["attributes"]["modelship.keys"].as_i64().or_else(|| store["attributes"]["modelship.keys"].as_str().and_then(|k| k.parse().ok())), Some(2), "{store}");
    let second = enrich(1);
    assert!(spans.iter().all(|s| !(s["name"] == "feature_store" && s["parent_span_id"] == second["span_id"])), "the cache answered the second");
    let server_span = spans.iter().find(|s| s["trace_id"] == trace(0).as_str() && s["kind"] == 2).unwrap();
    assert_eq!(first["parent_span_id"], server_span["span_id"]);
}

/// The rules `deploy alerts` writes, loaded by a real Prometheus scraping a server whose
/// candidate fails every request: `ModelshipHighErrorRate` for the candidate and
/// `ModelshipRolloutRolledBack` reach the webhook through a real Alertmanager, and the server's
/// own notification of the rollback (an Alertmanager sink) arrives the same way.
#[test]
fn generated_alerts_fire_through_prometheus_and_alertmanager() {
    let hook = Receiver::start(|_| Some(200));
    let work = tempfile::tempdir().unwrap();
    // The rules, from the CLI, with short windows for a test.
    std::fs::write(
        work.path().join("deploy.yaml"),
        "name: fraud\nmodel: {file: fraud.onnx}\nalerts: {job: modelship, rate_window: 10s, error_rate_for: 5s, rolled_back_window: 5m}\n",
    )
    .unwrap();
    let out = command().args(["deploy", "alerts", "--file", "deploy.yaml", "--out", "monitoring"]).current_dir(work.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = work.path().join("monitoring/modelship-alerts.yml");
    assert!(std::fs::read_to_string(&rules).unwrap().starts_with("# Generated by `modelship deploy alerts"));

    // Alertmanager: every alert to the webhook at once.
    let am_port = free_port();
    std::fs::write(
        work.path().join("alertmanager.yml"),
        format!(
            "route: {{receiver: hook, group_by: [alertname, model, version], group_wait: 0s, group_interval: 1s, repeat_interval: 1h}}\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: '{}/alerts', send_resolved: false}}]\n",
            hook.url
        ),
    )
    .unwrap();
    let mut am = Command::new("prometheus-alertmanager");
    am.arg(format!("--config.file={}", work.path().join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", work.path().join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
        .arg("--cluster.listen-address=");
    let mut alertmanager = Service::start("alertmanager", am, work.path().join("alertmanager.log"));
    let am_url = format!("http://127.0.0.1:{am_port}");
    let probe = agent();
    alertmanager.wait_until(Duration::from_secs(60), || probe.get(format!("{am_url}/-/ready")).call().is_ok_and(|r| r.status() == 200));

    // The server: its rollout events go to Alertmanager's API too.
    let fleet = crate::traffic::fleet();
    fleet.push("faulty", "3");
    let config = work.path().join("modelship.yaml");
    std::fs::write(&config, format!("notifications:\n  sinks:\n    - {{name: alertmanager, alertmanager: '{am_url}', events: [rolled_back]}}\n")).unwrap();
    let server = fleet.serve(&["--config", config.to_str().unwrap()]);
    let prometheus = crate::support::Prometheus::with_rules(&[&server.addr], &rules, &format!("127.0.0.1:{am_port}"));

    // The failing version takes half the traffic (set by hand, so it stays until the alert).
    let load = Load::start(&server.url("/v1/predict"), 2);
    fleet.ok(&server, &["set", "fraud", "--candidate", "3", "--weight", "50%"]);
    // From when the failing version is in force (the change returns once it is loaded and routed).
    let started = Instant::now();
    let wall = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let changed_at = wall(std::time::SystemTime::now());
    let alerts = |got: &[crate::support::Received]| -> Vec<Value> {
        got.iter().flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default()).collect()
    };
    let has = |got: &[crate::support::Received], name: &str| alerts(got).iter().any(|a| a["labels"]["alertname"] == name);
    let got = hook.wait_for(Duration::from_secs(120), "the candidate's error rate alert", |got| has(got, "ModelshipHighErrorRate"));
    let fired = started.elapsed();
    let all = alerts(&got);
    let error = all.iter().find(|a| a["labels"]["alertname"] == "ModelshipHighErrorRate").unwrap();
    assert_eq!((error["labels"]["model"].as_str(), error["labels"]["version"].as_str(), error["labels"]["severity"].as_str()), (Some("fraud"), Some("3"), Some("critical")), "{error}");
    assert!(error["annotations"]["runbook_url"].as_str().unwrap().ends_with("#modelshiphigherrorrate"), "{error}");
    eprintln!(
        "alerts: ModelshipHighErrorRate reached the webhook {fired:?} after the failing version took traffic (for: 5s, scrape and evaluation every 1s, rate over 10s); traffic changed at {changed_at:.3} (Unix s), the alert's startsAt (Prometheus) {}, received at {:.3}",
        error["startsAt"],
        wall(std::time::SystemTime::now())
    );
    // Then a rollout of it, which its error_rate check rolls back.
    fleet.ok(&server, &["rollback", "fraud"]);
    let spec = fleet.state.path().join("bad.yaml");
    std::fs::write(&spec, "to: '3'\ncanary: {weights: [50, 100], every: 5m}\nchecks: [{error_rate: {}}]\nfailure: {consecutive: 3, min_samples: 30}\ninterval: 2s\n").unwrap();
    crate::traffic::rollout(&fleet, &server, &["start", "fraud", "--spec", spec.to_str().unwrap()]);
    crate::traffic::wait_phase(&fleet, &server, "rolled_back");
    drop(load);
    let got = hook.wait_for(Duration::from_secs(120), "the rollback's alerts", |got| {
        let all = alerts(got);
        let by_rule = all.iter().any(|a| a["labels"]["alertname"] == "ModelshipRolloutRolledBack" && a["labels"]["source"].is_null());
        let by_notification = all.iter().any(|a| a["labels"]["alertname"] == "ModelshipRolloutRolledBack" && a["labels"]["source"] == "modelship");
        by_rule && by_notification
    });
    let told = alerts(&got).into_iter().find(|a| a["labels"]["source"] == "modelship").unwrap();
    assert_eq!((told["labels"]["model"].as_str(), told["labels"]["rollout"].as_str(), told["labels"]["severity"].as_str()), (Some("fraud"), Some("1"), Some("critical")), "{told}");
    assert!(told["annotations"]["summary"].as_str().unwrap().contains("rolled back"), "{told}");
    drop(prometheus);
}
