//! The composition root. A server is a [`Config`], made of the components' own configurations
//! and the model to serve; [`Config::build`] binds the listeners, loads and warms the model up and
//! starts every component (traffic, rollouts, the fleet's beat, followers, the repository, the
//! REST, gRPC and admin listeners) in one order; [`App::run_until`] serves until shutdown, then
//! drains. [`build_direct`] is the listener-less build of Lambda's cold start.
//!
//! The binary only parses arguments, resolves configuration into a [`Config`] and calls these:
//! nothing else composes the server's parts.
//!
//! ```text
//! Settings ──► Limits, PoolConfig, ConnectionLimits, Drain, FleetConfig   (one mapping)
//! Config ──build──► listeners bound ─► http serves probes ─► model loaded, warmed up
//!                 ─► features ─► table published ─► traffic resumed ─► fleet follow, rollouts, beat
//!                 ─► repository ─► gRPC, admin ─► started ─► alias / file followers ─► App
//! App ──run_until(shutdown)──► drained
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelship_inference::{Backend, Device, LoadOptions};
use modelship_registry::{ModelRef, Registry, VersionRecord};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::auth::Credentials;
use crate::follow::{Follow, FollowFile, Prepare, follow_alias, follow_file};
use crate::model::{LoadedModel, ModelSpec, Served, WarmUp};
use crate::pool::{Batching, Opportunistic, PoolConfig};
use crate::repository::Repository;
use crate::residency::{Origin, ResidencyLimits};
use crate::rollouts::{FleetConfig, Rollouts};
use crate::serve::{ConnectionLimits, Drain, DrainOutcome, Server, Tls};
use crate::state::{AppState, Limits};
use crate::traffic::{Source as TrafficSource, Traffic};

/// The server's settings as the operator gave them (flags, file, environment), resolved: the
/// one place they become the components' configurations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub grpc_port: u16,
    pub admin_host: String,
    pub admin_port: u16,
    pub max_body_bytes: usize,
    /// The request line and headers together.
    pub max_header_bytes: usize,
    pub max_tensor_elements: usize,
    pub max_rows: usize,
    pub body_read_timeout: Duration,
    pub min_body_bytes_per_second: u64,
    pub header_read_timeout: Duration,
    /// `None`: derived from the process's file limit.
    pub max_connections: Option<usize>,
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub workers: usize,
    pub max_queue: usize,
    pub intra_op_threads: usize,
    /// Where sessions run (`--device`, `model.device`).
    pub device: Device,
    /// The REST API is served under this path too (`/api` for Azure Functions' forwarding).
    pub path_prefix: Option<String>,
    pub batching: Option<Batching>,
    pub inline_below: Duration,
    pub opportunistic: Opportunistic,
    /// How long a replaced version stays loaded for an instant rollback.
    pub keep_warm: Duration,
    /// `embedded` (STATE_DIR/traffic.db), `redis://...` or `kubernetes[://NAMESPACE]`.
    pub control_store: String,
    pub state_dir: PathBuf,
    /// This replica's name in the fleet.
    pub replica: String,
    pub lease_ttl: Duration,
    /// Not ready once the fleet's control store has not answered this long (`None`: ready
    /// whatever it does).
    pub unready_without_store: Option<Duration>,
    /// How often a followed alias or file is checked.
    pub poll: Duration,
    /// The bound on loaded models and how long a request waits for one to load again.
    pub residency: ResidencyLimits,
    /// Where predictions are kept (`--prediction-log`), and how; `None`: nowhere.
    pub prediction_log: Option<PredictionLogSettings>,
    /// Where rollout events are told (none: nowhere).
    pub notifications: Vec<crate::notify::SinkSettings>,
    /// OpenTelemetry traces, when on.
    pub tracing: Option<crate::trace::TraceSettings>,
}

/// The prediction log: its store's URL (a directory or `s3://BUCKET/PREFIX`) and the writer's
/// sampling and batching.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionLogSettings {
    pub url: String,
    pub log: modelship_predictions::LogSettings,
}

/// How long a draining server waits for the prediction log to write what it holds.
const PREDICTION_LOG_CLOSE: Duration = Duration::from_secs(10);

impl Settings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            max_tensor_elements: self.max_tensor_elements,
            max_rows: self.max_rows,
            body_read_timeout: self.body_read_timeout,
            min_body_bytes_per_second: self.min_body_bytes_per_second,
            ..Limits::default()
        }
    }

    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            workers: self.workers,
            max_queue: self.max_queue,
            load: LoadOptions { intra_op_threads: self.intra_op_threads, device: self.device.clone() },
            batching: self.batching.clone(),
            inline_below: self.inline_below,
            opportunistic: self.opportunistic,
        }
    }

    /// The pool of a model with limits of its own; what it leaves out is the server's.
    pub fn pool_for(&self, limits: &ModelLimits) -> PoolConfig {
        let pool = self.pool();
        PoolConfig {
            workers: limits.workers.unwrap_or(pool.workers),
            max_queue: limits.max_queue.unwrap_or(pool.max_queue),
            load: LoadOptions {
                intra_op_threads: limits.intra_op_threads.unwrap_or(self.intra_op_threads),
                device: limits.device.clone().unwrap_or_else(|| self.device.clone()),
            },
            batching: limits.batching.clone().unwrap_or(pool.batching.clone()),
            ..pool
        }
    }

    /// Lambda's pool: an instance gets one event at a time, so one worker, no batching, and
    /// never a request waiting to join another.
    pub fn direct_pool(&self) -> PoolConfig {
        PoolConfig { workers: 1, batching: None, opportunistic: Opportunistic::Off, ..self.pool() }
    }

    fn connections(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections.unwrap_or_else(crate::serve::default_max_connections),
            // Hyper's own cap, past which it refuses without a body: twice the limit that
            // answers in JSON (REST) or with RESOURCE_EXHAUSTED (gRPC).
            max_head_bytes: (self.max_header_bytes * 2).max(16 * 1024),
        }
    }

    fn drain(&self) -> Drain {
        Drain { delay: self.shutdown_delay, grace: self.shutdown_grace }
    }

    fn fleet(&self) -> FleetConfig {
        FleetConfig { replica: self.replica.clone(), lease_ttl: self.lease_ttl, live: Duration::from_secs(3) }
    }
}

/// One model's own limits, where they differ from the server's (`models[]` in the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelLimits {
    pub workers: Option<usize>,
    pub max_queue: Option<usize>,
    pub intra_op_threads: Option<usize>,
    /// `None`: the server's device.
    pub device: Option<Device>,
    /// `None`: the server's batching; `Some(None)`: none for this model; `Some(Some(b))`: `b`.
    /// Batching depends on a model's shapes, so a listed model has its own or none.
    pub batching: Option<Option<Batching>>,
}

/// A model the server starts with.
pub struct Model {
    pub name: String,
    pub version: String,
    /// The ONNX model (a file in another format is converted before it gets here).
    pub bytes: Arc<[u8]>,
    /// What every version answers before it serves (a registry version adds its own sample).
    pub warm_up: WarmUp,
    /// Where it came from, for messages.
    pub described_as: String,
    /// Its queue, workers and batching, where they are not the server's.
    pub limits: ModelLimits,
    /// The tensors its configuration declares (a Triton `config.pbtxt`), checked against the
    /// model's own signature once it loads: a model that does not match is not served.
    pub declared: Option<Declared>,
}

/// Tensors a model's configuration declares, as V2 names them: datatype `FP32`, shape with a
/// first dimension of -1 where the model batches; -1 matches any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Where they are declared (`DIR/fraud/config.pbtxt`), for messages.
    pub source: String,
    pub inputs: Vec<modelship_inference::TensorSpec>,
    pub outputs: Vec<modelship_inference::TensorSpec>,
}

impl Declared {
    /// Every problem of `signature` against the declaration, one line each.
    pub fn problems(&self, signature: &modelship_inference::Signature) -> Vec<String> {
        let mut problems = Vec::new();
        for (kind, declared, actual) in [("input", &self.inputs, &signature.inputs), ("output", &self.outputs, &signature.outputs)] {
            for d in declared {
                let Some(a) = actual.iter().find(|a| a.name == d.name) else {
                    let names: Vec<&str> = actual.iter().map(|a| a.name.as_str()).collect();
                    problems.push(format!("{} declares {kind} '{}', and the model has no such {kind} (its {kind}s: {})", self.source, d.name, names.join(", ")));
                    continue;
                };
                if a.datatype != d.datatype {
                    problems.push(format!("{} declares {kind} '{}' as {}, and the model's is {}", self.source, d.name, d.datatype.as_str(), a.datatype.as_str()));
                }
                let fits = a.shape.len() == d.shape.len() && a.shape.iter().zip(&d.shape).all(|(a, d)| *a < 0 || *d < 0 || a == d);
                if !fits {
                    problems.push(format!(
                        "{} declares {kind} '{}' with shape {:?} (with the batch dimension, -1 for any size), and the model's is {:?}",
                        self.source, d.name, d.shape, a.shape
                    ));
                }
            }
        }
        problems
    }
}

/// Where the model came from, which decides what is followed and where versions come from.
pub enum Source {
    /// A file, followed (when `follow`) by its contents' digest; `prepare` converts new contents
    /// that are not ONNX.
    File { path: PathBuf, digest: String, follow: bool, prepare: Option<Prepare> },
    /// A registry reference; an alias is followed. `record` is the version served first.
    Registry { registry: Arc<Registry>, reference: ModelRef, record: VersionRecord },
}

/// The feature store the server's models share, and each model's feature spec by model name,
/// checked against that model once it loads. A model without a spec takes its features in the
/// request; a spec with no features keeps the store connected for readiness only.
pub struct Features {
    pub store: modelship_features::StoreConfig,
    pub specs: std::collections::BTreeMap<String, modelship_features::spec::SpecConfig>,
}

/// Everything a server is built from.
pub struct Config {
    pub settings: Settings,
    pub credentials: Credentials,
    /// Where the admin token came from, for the log (never the token).
    pub token_source: String,
    pub tls: Option<Tls>,
    /// The models to serve, each with where it came from; the first is the server's own model
    /// (what `/v1/predict` answers, what `features` enrich).
    pub models: Vec<(Model, Source)>,
    pub features: Option<Features>,
    /// Where the repository API loads other models from.
    pub repository: Option<Arc<Registry>>,
    /// When the process started: the startup time reported counts from it.
    pub started: Instant,
}

/// Why a build did not give a server.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Shutdown was asked for while the model loaded or warmed up; the listener has drained.
    #[error("shutdown requested while the model was starting")]
    Stopped,
    #[error("{0}")]
    Failed(String),
}

fn failed(message: impl std::fmt::Display) -> BuildError {
    BuildError::Failed(message.to_string())
}

/// Where a running server listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// A running server.
pub struct App {
    server: Server,
    pub state: AppState,
    pub addresses: Addresses,
    /// Each model served and the version it started at, the server's own first.
    pub models: Vec<(String, String)>,
    pub startup_seconds: f64,
    grace: Duration,
}

impl App {
    /// The one machine-readable line a started server prints: where it listens.
    pub fn ready_line(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "ready",
            "http": self.addresses.http.to_string(),
            "grpc": self.addresses.grpc.map(|a| a.to_string()),
            "admin": self.addresses.admin.to_string(),
            "model": self.models[0].0,
            "version": self.models[0].1,
            "models": self.models.iter().map(|(name, version)| serde_json::json!({"name": name, "version": version})).collect::<Vec<_>>(),
            "startup_seconds": self.startup_seconds,
        })
    }

    /// Serves until `shutdown`, then drains (the drain delay, then in-flight requests within the
    /// grace period) and stops every background task.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> DrainOutcome {
        let outcome = self.server.run_until(shutdown).await;
        if let Some(log) = self.state.predictions.get() {
            log.close(PREDICTION_LOG_CLOSE).await;
        }
        if let Some(tracing) = self.state.tracing.get() {
            // The last spans: flushed off the reactor (the gRPC exporter's channel runs on it).
            let tracing = Arc::clone(tracing);
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        }
        match outcome {
            DrainOutcome::Complete => tracing::info!("drained; exiting"),
            DrainOutcome::GraceExpired => {
                tracing::warn!(grace_s = self.grace.as_secs_f64(), "the shutdown grace period ran out; requests still in flight were cut off")
            }
        }
        outcome
    }
}

async fn bind(host: &str, port: u16, what: &str) -> Result<(TcpListener, SocketAddr), BuildError> {
    let listener = TcpListener::bind((host, port)).await.map_err(|e| failed(format!("cannot listen on {host}:{port}{what}: {e}")))?;
    let address = listener.local_addr().map_err(|e| failed(format!("cannot read the bound address: {e}")))?;
    Ok((listener, address))
}

impl Config {
    /// Starts the server: the HTTP listener answers probes from the first moment ("starting"
    /// until every model answered its warm-up); each model is loaded and warmed up in turn; then
    /// every component starts, one traffic writer, rollout loop and fleet beat per model. A model
    /// that does not load or answer is a failed build, never a server answering 500. `shutdown`
    /// during the start drains what was started.
    pub async fn build(self, backend: Arc<dyn Backend>, shutdown: &CancellationToken) -> Result<App, BuildError> {
        let Config { settings, credentials, token_source, tls, models, features, repository, started } = self;
        check_names(&models)?;
        if let Some(unknown) = features.iter().flat_map(|f| f.specs.keys()).find(|name| !models.iter().any(|(m, _)| &m.name == *name)) {
            return Err(failed(format!("a feature spec names model '{unknown}', which this server does not serve")));
        }
        let (listener, http) = bind(&settings.host, settings.port, "").await?;
        let (admin_listener, admin_address) = bind(&settings.admin_host, settings.admin_port, " for the admin API (--admin-port)").await?;
        // Bound now so the port is ours; served once the models are loaded (connections wait in
        // the backlog until then).
        #[cfg(feature = "grpc")]
        let (grpc_listener, grpc_address) = {
            let (l, a) = bind(&settings.host, settings.grpc_port, " for gRPC (--grpc-port)").await?;
            (l, Some(a))
        };
        #[cfg(not(feature = "grpc"))]
        let grpc_address: Option<SocketAddr> = None;
        let store = crate::control::open(&settings.control_store, &settings.state_dir.join("traffic.db")).map_err(failed)?;

        let state = AppState::with_residency(settings.limits(), credentials, settings.residency);
        state.health.set_unready_without_store(settings.unready_without_store);
        if let Some(log) = &settings.prediction_log {
            let store = modelship_predictions::LogStore::open(&log.url).map_err(failed)?;
            // The location, never the URL: a PostgreSQL URL may hold a password.
            let location = store.location().to_owned();
            let metrics = modelship_predictions::LogMetrics::new(state.metrics.registry()).map_err(failed)?;
            let writer = modelship_predictions::LogSettings { replica: Some(settings.replica.clone()), ..log.log.clone() };
            let _ = state.predictions.set(modelship_predictions::PredictionLog::start(store, writer, metrics));
            tracing::info!(store = %location, "keeping predictions in the prediction log");
        }
        if let Some(trace) = &settings.tracing {
            let tracing = crate::trace::Tracing::start(trace).map_err(failed)?;
            tracing::info!(protocol = ?trace.protocol, sample_ratio = trace.ratio, "tracing requests with OpenTelemetry (OTLP)");
            let _ = state.tracing.set(Arc::new(tracing));
        }
        if !settings.notifications.is_empty() {
            let notifier = crate::notify::Notifier::start(settings.notifications.clone(), &settings.replica, state.metrics.registry(), &state.tasks).map_err(failed)?;
            // Names and kinds only: a sink's URL may be a credential.
            let sinks: Vec<String> = settings.notifications.iter().map(|s| format!("{} ({})", s.name, s.kind.as_str())).collect();
            tracing::info!(sinks = %sinks.join(", "), "telling rollout events to the notification sinks");
            let _ = state.notifier.set(notifier);
        }
        // One feature store for every model that has a feature spec (each checked once its model loads).
        let mut feature_services = match &features {
            None => None,
            Some(features) => Some((feature_store(features, &state).map_err(failed)?, std::collections::BTreeMap::new())),
        };
        let primary = models[0].0.name.clone();
        state.models.set_primary(&primary);
        let mut server = Server::new(Arc::clone(&state.health), state.tasks.clone(), settings.drain(), settings.connections());
        for (model, _) in &models {
            state.models.loading(&model.name, &model.version);
        }
        // The listener serves probes while the models load: /health/startup says "starting".
        let rest = match &settings.path_prefix {
            Some(prefix) => crate::routes::under_prefix(crate::routes::app(state.clone()), prefix),
            None => crate::routes::app(state.clone()),
        };
        server.serve("http", listener, rest, tls.clone());

        // Repository loads answer the server's warm-up requests (`Repository::new` drops the
        // sample: it is the first model's own).
        let repository_warm_up = models[0].0.warm_up.clone();
        let mut loaded_models = Vec::with_capacity(models.len());
        for (model, source) in models {
            // Each may rest to stay within the bound on loaded models, and load again from its source.
            let origin = match &source {
                Source::Registry { registry, reference, .. } => Origin::Registry { registry: Arc::clone(registry), model: reference.name().to_owned() },
                Source::File { path, digest, prepare, .. } => {
                    Origin::File { path: path.clone(), digest: digest.clone(), base: model.version.clone(), prepare: prepare.clone() }
                }
            };
            let (spec, loaded) = match start_model(&state, &backend, &settings, model, &source, shutdown, &http, tls.is_some()).await {
                Ok(started) => started,
                Err(Some((spec, error))) => return Err(stop_failed(&state, &spec, server, error).await),
                Err(None) => {
                    server.run_until(std::future::ready(())).await;
                    return Err(BuildError::Stopped);
                }
            };
            if let Some((store, services)) = &mut feature_services
                && let Some(config) = features.as_ref().and_then(|f| f.specs.get(&spec.name))
            {
                match feature_service(config, &loaded.info.signature, store, &spec.name) {
                    Ok(Some(service)) => {
                        services.insert(spec.name.clone(), service);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(stop_failed(&state, &spec, server, e).await),
                }
            }
            state.residency.register(&spec.name, spec.clone(), origin, Arc::clone(&backend));
            state.models.publish(&spec.name, Served::single(Arc::new(loaded)));
            // Every model answered once; past the bound, the least recently used rests.
            state.residency.settle(&spec.name);
            loaded_models.push((spec, source));
        }

        if let Some((store, models)) = feature_services {
            let monitored = Arc::clone(&store);
            state.tasks.spawn("feature-store-monitor", move |_| monitored.monitor());
            let _ = state.features.set(crate::state::FeatureServices { store, models });
        }

        // Every model's source is checked before any background work starts: a start that fails
        // on the second model has run no rollout loop of the first.
        let mut traffics = Vec::with_capacity(loaded_models.len());
        for (spec, source) in loaded_models {
            let (registry, registry_model, traffic_source) = match &source {
                Source::Registry { registry, reference, .. } => (Some(Arc::clone(registry)), reference.name().to_owned(), TrafficSource::registry(reference)),
                Source::File { path, .. } => (None, spec.name.clone(), TrafficSource::file(path)),
            };
            let traffic = Arc::new(
                Traffic::new(registry, registry_model, Arc::clone(&backend), spec.clone(), Arc::clone(&store), settings.keep_warm)
                    .with_source(traffic_source),
            );
            if let Err(e) = traffic.check_source().await {
                return Err(stop_failed(&state, &spec, server, e).await);
            }
            traffics.push((traffic, spec, source));
        }
        let mut controls = Vec::with_capacity(traffics.len());
        let mut followers = Vec::new();
        for (traffic, spec, source) in traffics {
            if let Err(e) = traffic.resume(&state).await {
                tracing::warn!(model = %spec.name, error = %e, "cannot restore the recorded routing; serving the stable version only");
            }
            if store.kind() != "embedded" {
                // Other replicas commit revisions too: apply each one (pushed, and re-read every second).
                if spec.name == primary {
                    let _ = state.fleet.set((Arc::clone(&store), spec.name.clone()));
                }
                let (app, traffic) = (state.clone(), Arc::clone(&traffic));
                tracing::info!(model = %spec.name, store = store.kind(), replica = %settings.replica, "following the fleet's routing in the control store");
                state.tasks.spawn("control-store-follow", move |_| traffic.follow_store(app, Duration::from_secs(1)));
            }
            // One rollout lease per model: each model's rollout is led by whichever replica holds
            // its lease, so the models' rollouts run and fail independently.
            let rollouts = Arc::new(Rollouts::new(Arc::clone(&traffic), settings.fleet()));
            let (leader, app) = (Arc::clone(&rollouts), state.clone());
            state.tasks.spawn_cooperative("rollout-loop", move |stop| leader.run(app, stop));
            let (member, app, beat, admin) = (Arc::clone(&rollouts), state.clone(), Arc::clone(&traffic), admin_address.to_string());
            state.tasks.spawn("fleet-beat", move |_| crate::fleet::run(app, beat, member, Some(admin)));
            followers.push((Arc::clone(&traffic), source, spec.version.clone()));
            controls.push(crate::admin::Controls { traffic, rollouts });
        }
        let configured: Vec<String> = controls.iter().map(|c| c.traffic.spec.name.clone()).collect();
        let served: Vec<(String, String)> = controls.iter().map(|c| (c.traffic.spec.name.clone(), c.traffic.spec.version.clone())).collect();
        let repository = Arc::new(Repository::new(repository, Arc::clone(&backend), settings.pool(), repository_warm_up, configured));
        #[cfg(feature = "grpc")]
        {
            let grpc = crate::grpc::Grpc::new(state.clone(), Some(Arc::clone(&repository)));
            server.serve("grpc", grpc_listener, crate::grpc::router(grpc), tls.clone());
            tracing::info!(grpc_address = %grpc_address.map(|a| a.to_string()).unwrap_or_default(), "gRPC listening");
        }
        let admin = AdminState::serving(state.clone(), controls, repository);
        server.serve("admin", admin_listener, crate::admin::app(admin), tls.clone());
        tracing::info!(%admin_address, %token_source, "admin API listening");
        let startup_seconds = state.health.mark_started().max(started.elapsed().as_secs_f64());

        for (traffic, source, version) in followers {
            match source {
                Source::Registry { registry, reference: ModelRef::Alias(name, alias), .. } => {
                    tracing::info!(model = %name, alias = %alias, poll_s = settings.poll.as_secs_f64(), "following the alias");
                    let follow = Follow { registry, traffic, model: name, alias, poll: settings.poll };
                    let app = state.clone();
                    state.tasks.spawn("alias-follow", move |_| follow_alias(app, follow));
                }
                Source::File { path, digest, follow: true, prepare } => {
                    tracing::info!(path = %path.display(), poll_s = settings.poll.as_secs_f64(), "following the model file");
                    let follow = FollowFile { prepare, traffic, path, base_version: version, poll: settings.poll };
                    let app = state.clone();
                    state.tasks.spawn("file-follow", move |_| follow_file(app, follow, digest));
                }
                _ => {}
            }
        }
        let addresses = Addresses { http, grpc: grpc_address, admin: admin_address };
        Ok(App { server, state, addresses, models: served, startup_seconds, grace: settings.shutdown_grace })
    }
}

/// Two models of one name would share a table entry: refused before anything starts.
fn check_names(models: &[(Model, Source)]) -> Result<(), BuildError> {
    if models.is_empty() {
        return Err(failed("no model to serve"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (model, _) in models {
        if !seen.insert(model.name.as_str()) {
            return Err(failed(format!(
                "two models are named '{}'; give each a name of its own (models[].name in the configuration file, or --name for the first)",
                model.name
            )));
        }
    }
    Ok(())
}

/// Loads one model and warms it up. Returns its spec and the model, ready to publish; on
/// failure, the spec and why (`None`: shutdown was asked for).
#[allow(clippy::too_many_arguments, reason = "the build's own parts, passed down once")]
async fn start_model(
    state: &AppState,
    backend: &Arc<dyn Backend>,
    settings: &Settings,
    model: Model,
    source: &Source,
    shutdown: &CancellationToken,
    http: &SocketAddr,
    tls: bool,
) -> Result<(ModelSpec, LoadedModel), Option<(ModelSpec, String)>> {
    let Model { name, version, bytes, warm_up, described_as: described, limits, declared } = model;
    let spec = ModelSpec { name, version, pool: settings.pool_for(&limits), warm_up };
    // The version served first: its own sample, when the registry holds one.
    let first_warm_up = match source {
        Source::Registry { registry, record, .. } => {
            crate::residency::warm_up_for(registry, record, &spec.warm_up).await.map_err(|e| Some((spec.clone(), e.to_string())))?
        }
        Source::File { .. } => spec.warm_up.clone(),
    };
    tracing::info!(address = %http, tls, model = %spec.name, version = %spec.version, source = %described, "loading model");
    let loading = {
        let (backend, metrics, spec) = (Arc::clone(backend), Arc::clone(&state.metrics), spec.clone());
        tokio::task::spawn_blocking(move || LoadedModel::load(backend, bytes, &spec, &metrics))
    };
    let loaded = tokio::select! {
        loaded = loading => loaded,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested while the model was loading");
            return Err(None);
        }
    };
    let loaded = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => return Err(Some((spec, format!("cannot load model {described}: {e}")))),
        Err(e) => return Err(Some((spec, format!("model loading stopped unexpectedly: {e}")))),
    };
    if let Some(declared) = &declared {
        let problems = declared.problems(&loaded.info.signature);
        if !problems.is_empty() {
            return Err(Some((spec, format!("model {described} does not match its configuration:\n  - {}", problems.join("\n  - ")))));
        }
    }
    tracing::info!(
        model = %loaded.name, version = %loaded.version, load_seconds = loaded.load_seconds,
        inputs = ?loaded.info.signature.input_names(), outputs = ?loaded.info.signature.output_names(),
        skipped_outputs = ?loaded.info.skipped_outputs, "model loaded"
    );
    let warming = tokio::select! {
        warmed = loaded.warm_up(&first_warm_up) => warmed,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested while the model was warming up");
            return Err(None);
        }
    };
    if let Err(e) = warming {
        return Err(Some((spec, format!("model {described} loads but cannot answer, so it is not served: {e}"))));
    }
    tracing::info!(model = %loaded.name, version = %loaded.version, requests = first_warm_up.requests, "warm-up answered");
    Ok((spec, loaded))
}

/// The state one invocation at a time is answered from, without listeners (Lambda's cold
/// start): the model loaded with [`Settings::direct_pool`] and warmed up, no admin token
/// (inference API keys only), no traffic writer, no background work.
pub async fn build_direct(settings: &Settings, credentials: Credentials, model: Model, backend: Arc<dyn Backend>) -> Result<AppState, BuildError> {
    build_listenerless(settings, settings.direct_pool(), credentials, model, backend).await
}

/// The listener-less build of `modelship predict`: the model with the server's pool (its
/// workers run chunks side by side), loaded and warmed up as a served version is.
pub async fn build_batch(settings: &Settings, model: Model, backend: Arc<dyn Backend>, features: Option<&Features>) -> Result<AppState, BuildError> {
    let pool = settings.pool_for(&model.limits);
    let name = model.name.clone();
    let state = build_listenerless(settings, pool, Credentials::default(), model, backend).await?;
    // Rows by entity: the model's features from the store, as a server adds them.
    if let Some(features) = features
        && let Some(config) = features.specs.get(&name)
    {
        let store = feature_store(features, &state).map_err(failed)?;
        let served = state.models.served(&name).map_err(|e| failed(e.to_string()))?;
        let loaded = served.version(&name, &served.table.stable).map_err(|e| failed(e.to_string()))?;
        let mut models = std::collections::BTreeMap::new();
        if let Some(service) = feature_service(config, &loaded.info.signature, &store, &name).map_err(failed)? {
            models.insert(name.clone(), service);
        }
        // Connected before the first chunk (a server connects in the background and reports
        // readiness; a batch has nothing to do until then).
        let monitored = Arc::clone(&store);
        state.tasks.spawn("feature-store-monitor", move |_| monitored.monitor());
        let deadline = std::time::Instant::now() + features.store.timeout.max(Duration::from_secs(10));
        while !store.is_connected() {
            if std::time::Instant::now() > deadline {
                return Err(failed(format!("cannot connect to the feature store at {}", modelship_features::store::redact(&features.store.url))));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = state.features.set(crate::state::FeatureServices { store, models });
    }
    Ok(state)
}

async fn build_listenerless(settings: &Settings, pool: PoolConfig, credentials: Credentials, model: Model, backend: Arc<dyn Backend>) -> Result<AppState, BuildError> {
    let state = AppState::with_credentials(settings.limits(), credentials);
    let spec = ModelSpec { name: model.name.clone(), version: model.version.clone(), pool, warm_up: model.warm_up };
    let described = model.described_as;
    let loaded = {
        let (metrics, spec, bytes) = (Arc::clone(&state.metrics), spec.clone(), model.bytes);
        tokio::task::spawn_blocking(move || LoadedModel::load(backend, bytes, &spec, &metrics))
            .await
            .map_err(|e| failed(format!("model loading stopped unexpectedly: {e}")))?
            .map_err(|e| failed(format!("cannot load model {described}: {e}")))?
    };
    tracing::info!(model = %loaded.name, version = %loaded.version, load_seconds = loaded.load_seconds, inputs = ?loaded.info.signature.input_names(), "model loaded");
    // A cold start whose model cannot answer is an init error, never a function answering 500.
    loaded.warm_up(&spec.warm_up).await.map_err(|e| failed(format!("model {described} loads but cannot answer, so it is not served: {e}")))?;
    state.models.set_primary(&spec.name);
    state.models.publish(&spec.name, Served::single(Arc::new(loaded)));
    state.health.mark_started();
    Ok(state)
}

/// A start that failed after the HTTP listener began: the model is marked failed (readiness
/// says why), the listener drains, and the build fails with `error`.
async fn stop_failed(state: &AppState, spec: &ModelSpec, server: Server, error: String) -> BuildError {
    state.models.failed(&spec.name, &spec.version, error.clone());
    server.run_until(std::future::ready(())).await;
    BuildError::Failed(error)
}

/// The feature store the models share (its metrics registered once).
fn feature_store(features: &Features, state: &AppState) -> Result<Arc<modelship_features::Store>, String> {
    let metrics = modelship_features::FeatureMetrics::register(state.metrics.registry()).map_err(|e| format!("cannot register the feature metrics: {e}"))?;
    let store = modelship_features::Store::new(&features.store, metrics)?;
    tracing::info!(
        store_url = %modelship_features::store::redact(&features.store.url), timeout_ms = features.store.timeout.as_millis() as u64,
        cache_ttl_s = features.store.cache_ttl.as_secs(), models = ?features.specs.keys().collect::<Vec<_>>(), "feature store configured"
    );
    Ok(store)
}

/// Model `name`'s feature spec checked against its signature; `None` for a spec with no
/// features (the store is then connected for readiness only, and requests carry their features).
fn feature_service(
    config: &modelship_features::spec::SpecConfig,
    signature: &modelship_inference::Signature,
    store: &Arc<modelship_features::Store>,
    name: &str,
) -> Result<Option<Arc<modelship_features::FeatureService>>, String> {
    if config.features.is_empty() && config.key.is_none() {
        tracing::info!(model = %name, "no features are configured for this model, so its requests must carry their features");
        return Ok(None);
    }
    let spec = modelship_features::FeatureSpec::new(config, signature)
        .map_err(|problems| format!("the feature spec of model '{name}' does not fit it:\n  - {}", problems.join("\n  - ")))?;
    tracing::info!(model = %name, features = spec.features.len(), "feature spec checked against the model");
    Ok(Some(Arc::new(modelship_features::FeatureService { spec: Some(spec), store: Arc::clone(store) })))
}
