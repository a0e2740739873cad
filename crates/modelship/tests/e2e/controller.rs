//! The mesh controller (`modelship controller`, feature `kubernetes`) with real evidence and a
//! mocked API server: a real modelship server answers for both versions (its own routing stands
//! in for the mesh, which cannot run here), a real Prometheus scrapes it, and the controller's
//! Kubernetes calls go to kube's `tower-test` mock, which keeps the VirtualService that
//! `modelship deploy k8s` generates and checks every request. No API server or Istio runs on
//! these machines: the patches asserted here are all the evidence of what a cluster would get.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use modelship_server::control::StoredRollout;
use modelship_server::mesh::controller::{Controller, Progress, RouteTarget};
use modelship_server::mesh::{Backends, Mesh, Split};
use serde_json::{Value, json};
use tower_test::mock;

use crate::docker::Load;
use crate::support::{Prometheus, Server, command, model, root};

const PATH: &str = "/apis/networking.istio.io/v1/namespaces/ml-serving/virtualservices/fraud";
const HOST: &str = "fraud.ml-serving.svc.cluster.local";

/// What the mocked API server saw: each request's method and, for a patch, its body and answer.
#[derive(Debug, Default)]
struct ApiLog {
    requests: Vec<(String, Option<Value>, u16)>,
}

/// Answers the controller as an API server holding `object` would: GET returns it, a merge patch
/// whose `resourceVersion` matches replaces `spec.http` and bumps the version, any other gets
/// 409. The first patch meets a concurrent writer (another field changed just before it lands).
fn api_server(mut handle: mock::Handle<Request<Body>, Response<Body>>, mut object: Value, log: Arc<Mutex<ApiLog>>) {
    tokio::spawn(async move {
        let mut patches = 0;
        while let Some((request, answer)) = handle.next_request().await {
            let (method, uri) = (request.method().as_str().to_owned(), request.uri().path().to_owned());
            assert_eq!(uri, PATH, "{method} {}", request.uri());
            let body = request.into_body().collect_bytes().await.unwrap();
            let respond = |code: u16, body: &Value| answer.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap());
            if method == "GET" {
                log.lock().unwrap().requests.push((method, None, 200));
                respond(200, &object);
                continue;
            }
            assert_eq!(method, "PATCH");
            let patch: Value = serde_json::from_slice(&body).unwrap();
            patches += 1;
            if patches == 1 {
                // Someone else (a person with kubectl) changed the object just before.
                object["metadata"]["labels"]["touched-by"] = json!("kubectl");
                bump(&mut object);
            }
            let code = if patch["metadata"]["resourceVersion"] == object["metadata"]["resourceVersion"] {
                object["spec"]["http"] = patch["spec"]["http"].clone();
                bump(&mut object);
                200
            } else {
                409
            };
            log.lock().unwrap().requests.push((method, Some(patch), code));
            if code == 200 {
                respond(200, &object);
            } else {
                respond(409, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                    "message": "Operation cannot be fulfilled on virtualservices.networking.istio.io \"fraud\": the object has been modified"}));
            }
        }
    });
}

fn bump(object: &mut Value) {
    let next = object["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() + 1;
    object["metadata"]["resourceVersion"] = json!(next.to_string());
}

/// The generated VirtualService of the Istio canary case, as the API server would return it.
fn virtual_service() -> Value {
    let text = std::fs::read_to_string(root().join("crates/deploy/tests/golden/k8s-canary-istio/kubernetes/virtualservice.yaml")).unwrap();
    let mut object: Value = serde_yaml_ng::from_str(&text).unwrap();
    object["metadata"]["resourceVersion"] = json!("1");
    object
}

/// The patch body the controller must send for a split at `resource_version`.
fn patch(resource_version: &str, header_subset: &str, stable: u64, canary: u64) -> Value {
    let dest = |subset: &str, weight: u64| json!({"destination": {"host": HOST, "subset": subset}, "weight": weight});
    json!({
        "metadata": {"resourceVersion": resource_version},
        "spec": {"http": [
            {"name": "canary-header", "match": [{"headers": {"x-canary": {"exact": "true"}}}], "route": [dest(header_subset, 100)]},
            {"name": "weighted", "route": [dest("stable", stable), dest("canary", canary)]},
        ]},
    })
}

struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn decided(&self, _: &StoredRollout, decisions: &[modelship_rollout::engine::Decision]) {
        self.0.lock().unwrap().extend(decisions.iter().map(|d| format!("{:?}: {}", d.action, d.reason)));
    }

    fn patched(&self, _: &StoredRollout, split: Split) {
        self.0.lock().unwrap().push(format!("patched {} bp", split.weight.get()));
    }
}

/// The error ratio of the candidate over the last 10 s (empty, so inconclusive, without traffic).
fn spec(prometheus: &str, to: &str, weights: &str, every: &str) -> String {
    format!(
        "to: '{to}'\ncanary: {{weights: {weights}, every: {every}}}\nchecks:\n  - prometheus:\n      url: {prometheus}\n      query: '(sum(rate(modelship_requests_total{{model=\"{{{{model}}}}\",version=\"{{{{candidate}}}}\",code=\"500\"}}[10s])) or vector(0)) / sum(rate(modelship_requests_total{{model=\"{{{{model}}}}\",version=\"{{{{candidate}}}}\"}}[10s]))'\n      max: 0.01\nfailure: {{consecutive: 2, total: 2, deadline: 2m}}\ninterval: 500ms\n"
    )
}

#[test]
fn the_controller_patches_an_istio_canary_step_by_step_and_rolls_back_on_prometheus_evidence() {
    // The pods: one real server holding stable (1), a healthy candidate (2) and a broken one (3).
    let registry = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for (file, version) in [("fraud", "1"), ("xgboost", "2"), ("faulty", "3")] {
        let out = command().args(["models", "push", "fraud", &model(file), "--version", version, "--registry"]).arg(registry.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let server = Server::start_with(&["fraud:1", "--registry", registry.path().to_str().unwrap()], &[("MODELSHIP_STATE_DIR", state.path().to_str().unwrap())]);
    let set_candidate = |version: &str| {
        let out = command()
            .args(["traffic", "set", "fraud", "--candidate", version, "--weight", "50%", "--admin", &format!("http://{}", server.ready["admin"].as_str().unwrap())])
            .env("MODELSHIP_STATE_DIR", state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    set_candidate("3");
    let prometheus = Prometheus::scraping(&[&server.addr]);
    let load = Load::start(&server.url("/v1/predict"), 2);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = modelship_server::control::open("embedded", &state.path().join("controller.db")).unwrap();
    let log = Arc::new(Mutex::new(ApiLog::default()));
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let controller = runtime.block_on(async {
        api_server(handle, virtual_service(), Arc::clone(&log));
        let target = RouteTarget {
            mesh: Mesh::Istio,
            namespace: "ml-serving".to_owned(),
            name: "fraud".to_owned(),
            backends: Backends { stable: "stable".to_owned(), canary: "canary".to_owned(), header: "x-canary".to_owned() },
        };
        Controller::new(kube::Client::new(service, "default"), target, Arc::clone(&store), "fraud", "controller-0", Duration::from_secs(5))
    });
    let run = |spec_yaml: String| {
        let spec: Value = serde_yaml_ng::from_str(&spec_yaml).unwrap();
        let plan = serde_json::from_value::<modelship_rollout::spec::RolloutSpec>(spec).unwrap().resolve().unwrap();
        let recorder = Recorder(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let record = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(90), controller.run(Some((plan, "1".to_owned())), false, &recorder, stop)).await })
            .expect("the rollout ended within 90 s")
            .unwrap();
        (record, recorder.0.into_inner().unwrap())
    };

    // The broken candidate: its first step is patched in (through a conflict), Prometheus shows
    // its errors, and the rollback sets its weight back to 0.
    let (record, events) = run(spec(&prometheus.url, "3", "[20, 100]", "1h"));
    assert!(matches!(record.rollout.phase, modelship_rollout::engine::Phase::RolledBack { .. }), "{events:#?}");
    let requests = std::mem::take(&mut log.lock().unwrap().requests);
    let expected = vec![
        ("GET".to_owned(), None, 200),
        ("GET".to_owned(), None, 200),
        ("PATCH".to_owned(), Some(patch("1", "canary", 80, 20)), 409),
        ("GET".to_owned(), None, 200),
        ("PATCH".to_owned(), Some(patch("2", "canary", 80, 20)), 200),
        ("GET".to_owned(), None, 200),
        ("PATCH".to_owned(), Some(patch("3", "stable", 100, 0)), 200),
    ];
    assert_eq!(requests, expected, "{events:#?}");
    let history = runtime.block_on(store.rollout_history("fraud")).unwrap();
    let rollback = history.iter().find(|(_, d)| matches!(d.action, modelship_rollout::engine::Action::Rollback)).expect("a recorded rollback");
    assert!(rollback.1.reason.contains("prometheus"), "{:?}", rollback.1);
    eprintln!("controller: {events:#?}");

    // The healthy candidate: both steps patched in, then the promotion (already all to it: no
    // further patch). The object keeps the change someone else made.
    set_candidate("2");
    let (record, events) = run(spec(&prometheus.url, "2", "[50, 100]", "2s"));
    assert_eq!(record.rollout.phase, modelship_rollout::engine::Phase::Promoted, "{events:#?}");
    assert_eq!(record.id, 2);
    let requests = std::mem::take(&mut log.lock().unwrap().requests);
    let expected = vec![
        ("GET".to_owned(), None, 200),
        ("GET".to_owned(), None, 200),
        ("PATCH".to_owned(), Some(patch("4", "canary", 50, 50)), 200),
        ("GET".to_owned(), None, 200),
        ("PATCH".to_owned(), Some(patch("5", "canary", 0, 100)), 200),
        ("GET".to_owned(), None, 200),
    ];
    assert_eq!(requests, expected, "{events:#?}");

    // The same rollout started again (a Job's pod retried after it ended) reports the outcome
    // and touches nothing.
    let (record, events) = run(spec(&prometheus.url, "2", "[50, 100]", "2s"));
    assert_eq!((record.id, &record.rollout.phase), (2, &modelship_rollout::engine::Phase::Promoted));
    assert!(events.is_empty() && log.lock().unwrap().requests.is_empty(), "{events:?}");
    let (ok, _, _) = load.finish();
    assert!(ok > 0);
}
