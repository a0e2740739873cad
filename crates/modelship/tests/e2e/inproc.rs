//! A whole server in the test's own process: `modelship_server::Config::build`, the composition
//! `modelship serve` runs, on 127.0.0.1:0 with the real ONNX Runtime, a real registry and state
//! directory in temporary directories, the admin API over HTTP, and a drain at the end. Tests of
//! routing and rollouts that need no separate process run on it: nothing is spawned, neither
//! the server nor a CLI per change. What `serve` adds before the build (arguments, the
//! configuration file, conversion of other formats) is tested through the binary elsewhere.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, PushRequest, Registry, RegistryConfig};
use modelship_server::{Config, Credentials, DrainOutcome, Model, Settings, Source, WarmUp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Client, Reply, agent, model, reply, root};

pub const TOKEN: &str = "in-process-admin-token-0123456789";

/// ONNX Runtime is loaded once per process: every in-process server shares the backend.
fn backend() -> Arc<dyn Backend> {
    static BACKEND: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    Arc::clone(BACKEND.get_or_init(|| {
        let lib = std::fs::read_dir(root().join(".venv/lib"))
            .expect("scripts/setup.sh made .venv")
            .filter_map(Result::ok)
            .map(|d| d.path().join("site-packages/onnxruntime/capi"))
            .find_map(|capi| {
                std::fs::read_dir(capi).ok()?.filter_map(Result::ok).map(|f| f.path()).find(|f| {
                    f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
            })
            .expect("ONNX Runtime's library in .venv (scripts/setup.sh)");
        Arc::new(modelship_onnx::OnnxBackend::new(Some(&lib)).expect("ONNX Runtime loads"))
    }))
}

/// A registry of model `fraud` in a temporary directory.
pub struct Fixtures {
    runtime: tokio::runtime::Runtime,
    pub registry: Arc<Registry>,
    dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

impl Fixtures {
    /// fraud:1 (gradient boosting) and fraud:2 (xgboost), as the binary's traffic tests have.
    pub fn new() -> Fixtures {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(&RegistryConfig { root: dir.path().to_path_buf(), artifacts: None }).unwrap());
        let fixtures = Fixtures { runtime, registry, dir, state: tempfile::tempdir().unwrap() };
        fixtures.push("fraud", "1");
        fixtures.push("xgboost", "2");
        fixtures
    }

    /// Pushes fixture `file` as version `version` of model fraud.
    pub fn push(&self, file: &str, version: &str) {
        self.push_as("fraud", file, version);
    }

    /// Pushes fixture `file` as version `version` of model `name`.
    pub fn push_as(&self, name: &str, file: &str, version: &str) {
        let request = PushRequest {
            name: name.to_owned(),
            version: version.to_owned(),
            metrics: Default::default(),
            labels: Default::default(),
            description: None,
            source: Some(model(file)),
        };
        self.runtime.block_on(self.registry.push(request, &PathBuf::from(model(file)), &NoProgress)).unwrap();
    }

    /// The settings `modelship serve` has by default, on loopback ports chosen by the system,
    /// with this fixture's state directory.
    pub fn settings(&self) -> Settings {
        Settings {
            host: "127.0.0.1".to_owned(),
            port: 0,
            grpc_port: 0,
            admin_host: "127.0.0.1".to_owned(),
            admin_port: 0,
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_tensor_elements: 16 * 1024 * 1024,
            max_rows: 65_536,
            body_read_timeout: Duration::from_secs(10),
            min_body_bytes_per_second: modelship_server::DEFAULT_MIN_BODY_RATE,
            header_read_timeout: Duration::from_secs(10),
            max_connections: Some(1024),
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            workers: 1,
            max_queue: 256,
            intra_op_threads: 1,
            device: Default::default(),
            path_prefix: None,
            batching: None,
            inline_below: modelship_server::DEFAULT_INLINE_BELOW,
            opportunistic: modelship_server::Opportunistic::Auto,
            keep_warm: Duration::from_secs(60),
            control_store: "embedded".to_owned(),
            state_dir: self.state.path().to_path_buf(),
            replica: "in-process".to_owned(),
            lease_ttl: Duration::from_secs(10),
            unready_without_store: None,
            poll: Duration::from_secs(1),
            residency: modelship_server::residency::ResidencyLimits::default(),
            prediction_log: None,
            notifications: Vec::new(),
            tracing: None,
        }
    }

    /// Builds and starts a server of `fraud:VERSION` from the registry with `settings`.
    pub fn serve(&self, version: &str, settings: Settings) -> App {
        self.serve_models(&[("fraud", version)], settings)
    }

    /// Builds and starts a server of registry models `NAME:VERSION`, the first its own.
    pub fn serve_models(&self, models: &[(&str, &str)], settings: Settings) -> App {
        let started = Instant::now();
        let models = models
            .iter()
            .map(|(name, version)| {
                let reference = ModelRef::Version((*name).to_owned(), (*version).to_owned());
                let (record, bytes) = self.runtime.block_on(async {
                    let record = self.registry.resolve(&reference).await.unwrap();
                    let bytes = self.registry.artifact(&record, &NoProgress).await.unwrap();
                    (record, bytes)
                });
                let model = Model {
                    name: (*name).to_owned(),
                    version: record.version.clone(),
                    bytes: bytes.to_vec().into(),
                    warm_up: WarmUp { requests: 1, sample: None },
                    described_as: format!("{name}:{version} (registry {})", self.dir.path().display()),
                    limits: Default::default(),
                    declared: None,
                };
                (model, Source::Registry { registry: Arc::clone(&self.registry), reference, record })
            })
            .collect();
        let config = Config {
            settings,
            credentials: Credentials::new(Some(TOKEN), &[]),
            token_source: "the test".to_owned(),
            tls: None,
            models,
            features: None,
            repository: Some(Arc::clone(&self.registry)),
            started,
        };
        let shutdown = CancellationToken::new();
        let app = self.runtime.block_on(config.build(backend(), &shutdown)).unwrap_or_else(|e| panic!("the server did not start: {e}"));
        let ready = app.ready_line();
        let client = Client::new(ready["http"].as_str().unwrap().to_owned());
        let admin = format!("http://{}", ready["admin"].as_str().unwrap());
        let stop = shutdown.clone();
        let served = self.runtime.spawn(app.run_until(async move { stop.cancelled().await }));
        App { client, admin, shutdown, served: Some(served), handle: self.runtime.handle().clone() }
    }
}

/// A running in-process server; dropped, it is shut down and drained.
pub struct App {
    client: Client,
    admin: String,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<DrainOutcome>>,
    handle: tokio::runtime::Handle,
}

impl std::ops::Deref for App {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl App {
    /// The admin listener's base URL.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// `METHOD /admin/v1/models/fraud/PATH` on the admin listener with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.admin_of("fraud", method, path, body)
    }

    /// `METHOD /admin/v1/models/MODEL/PATH` on the admin listener with the admin token.
    pub fn admin_of(&self, model: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let url = format!("{}/admin/v1/models/{model}/{path}", self.admin);
        let agent = agent();
        let auth = format!("Bearer {TOKEN}");
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            (_, Some(body)) => agent.post(&url).header("authorization", &auth).header("content-type", "application/json").send(body.to_string()),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        };
        reply(response.expect("admin request"))
    }

    /// A routing change (`{"op": ...}`, the router's `Change`); panics unless it is accepted.
    pub fn change(&self, change: Value) -> Value {
        let r = self.admin("POST", "traffic", Some(json!({ "change": change, "reason": "test" })));
        assert_eq!(r.status, 200, "{change}: {}", r.text);
        r.json()
    }

    pub fn rollback(&self, reason: &str) -> Value {
        let r = self.admin("POST", "traffic/rollback", Some(json!({ "reason": reason })));
        assert_eq!(r.status, 200, "rollback: {}", r.text);
        r.json()
    }

    pub fn status(&self) -> Value {
        let r = self.admin("GET", "traffic", None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    /// Shuts down (as SIGTERM does) and waits for the drain.
    pub fn stop(mut self) -> DrainOutcome {
        self.shutdown.cancel();
        let served = self.served.take().unwrap();
        self.handle.block_on(served).unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            let _ = self.handle.block_on(served);
        }
    }
}

/// The in-process harness itself: an answer, an admin change in force at the next request, the
/// admin token required, and a drain.
#[test]
fn a_whole_server_runs_in_process_answers_changes_and_drains() {
    let fixtures = Fixtures::new();
    let app = fixtures.serve("1", fixtures.settings());
    let r = app.post("/v2/models/fraud/infer", &crate::support::fraud_body(2));
    assert_eq!((r.status, r.header("x-model-version")), (200, Some("1")), "{}", r.text);
    app.change(json!({"op": "switch", "version": "2"}));
    let r = app.post("/v2/models/fraud/infer", &crate::support::fraud_body(1));
    assert_eq!(r.header("x-model-version"), Some("2"), "{}", r.text);
    assert_eq!(app.status()["revision"], 1);
    // Without the token the admin API refuses, and nothing changes.
    let refused = reply(agent().post(&format!("{}/admin/v1/models/fraud/traffic/rollback", app.admin)).send_empty().unwrap());
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(app.status()["revision"], 1);
    assert_eq!(app.stop(), DrainOutcome::Complete);
}

/// A refused credential is answered before the request's body is read, so the connection cannot
/// carry another request: the refusal says `Connection: close`, and one pooled client sends
/// refused requests with bodies one after another, each answered 401.
#[test]
fn refused_requests_close_their_connection_and_a_pooled_client_goes_on() {
    let fixtures = Fixtures::new();
    let app = fixtures.serve("1", fixtures.settings());
    let agent = agent();
    let url = format!("{}/admin/v1/models/fraud/traffic", app.admin);
    let body = json!({"change": {"op": "weight", "weight": 5000}, "reason": "no"}).to_string();
    for _ in 0..3 {
        let r = reply(agent.post(&url).header("authorization", "Bearer wrong-token-0123456789abcdef").header("content-type", "application/json").send(&body).unwrap());
        assert_eq!((r.status, r.header("connection")), (401, Some("close")), "{}", r.text);
    }
    app.stop();
}
