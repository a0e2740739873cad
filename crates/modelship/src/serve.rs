//! `modelship serve`: load one model and serve it until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use modelship_inference::{Backend, LoadOptions};
use modelship_onnx::OnnxBackend;
use modelship_registry::{ModelRef, NoProgress, Registry, RegistryConfig};
use modelship_server::admin::AdminState;
use modelship_server::follow::{Follow, FollowFile, follow_alias, follow_file};
use modelship_server::rollouts::{FleetConfig, Rollouts};
use modelship_server::repository::Repository;
use modelship_server::traffic::{Source as TrafficSource, Traffic};
use modelship_server::model::{LoadedModel, ModelSlot, ModelSpec, Served, WarmUp, WarmUpSample};
use modelship_server::pool::PoolConfig;
use modelship_server::auth::Credentials;
use modelship_server::{AppState, ConnectionLimits, Drain, DrainOutcome, Limits, Server, Tls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::config::{self, AdminConfig, ProcessEnv, ServeConfig};

pub fn main(args: ServeArgs) -> ExitCode {
    let started = Instant::now();
    let env = ProcessEnv;
    let file = match config::config_path(&args, &env) {
        Some(path) => match config::load_file(&path) {
            Ok(raw) => raw,
            Err(e) => return usage_error(&e.to_string()),
        },
        None => config::RawConfig::default(),
    };
    let config = match config::resolve(file, &env, &args) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.to_string()),
    };
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("modelship-io").build() {
        Ok(rt) => rt,
        Err(e) => return failure(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(config, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn failure(error: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{error:#}"), "modelship stopped");
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

async fn run(config: ServeConfig, started: Instant) -> anyhow::Result<()> {
    // Signals are watched from the start: SIGTERM during a long model load stops the server too.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let onnx = OnnxBackend::new(config.ort_lib.as_deref())?;
    tracing::info!(library = %onnx.library().display(), "ONNX Runtime loaded");
    let backend: Arc<dyn Backend> = Arc::new(onnx);
    let source = ModelSource::of(&config)?;
    // A served file is followed by its contents' digest (the volume-mount workflow): the file's
    // own bytes, before any conversion.
    let (model, registry_record, file_digest) = source.read(&config, backend.as_ref()).await?;
    let registry_version = registry_record.as_ref().map(|r| r.version.clone());
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let admin_listener = TcpListener::bind((config.admin.host.as_str(), config.admin.port))
        .await
        .with_context(|| format!("cannot listen on {}:{} for the admin API (--admin-port)", config.admin.host, config.admin.port))?;
    let admin_address = admin_listener.local_addr().context("cannot read the bound admin address")?;
    // Bound now so the port is ours; served once the model is loaded (connections wait in the
    // backlog until then).
    #[cfg(feature = "grpc")]
    let grpc_listener = TcpListener::bind((config.host.as_str(), config.grpc_port))
        .await
        .with_context(|| format!("cannot listen on {}:{} for gRPC (--grpc-port)", config.host, config.grpc_port))?;
    #[cfg(feature = "grpc")]
    let grpc_address = Some(grpc_listener.local_addr().context("cannot read the bound gRPC address")?);
    #[cfg(not(feature = "grpc"))]
    let grpc_address: Option<std::net::SocketAddr> = None;
    let (admin_token, token_source) = admin_token(&config.admin)?;
    let api_keys = api_keys(&config.security)?;
    let tls = match &config.security.tls {
        Some((cert, key)) => Some(Tls::from_pem_files(cert, key).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let store = modelship_server::control::open(&config.admin.control_store, &config.admin.state_dir.join("traffic.db"))
        .map_err(|e| anyhow::anyhow!(e))?;

    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        max_header_bytes: config.max_header_bytes,
        max_tensor_elements: config.max_tensor_elements,
        max_rows: config.max_rows,
        body_read_timeout: config.body_read_timeout,
        min_body_bytes_per_second: config.min_body_bytes_per_second,
        ..Limits::default()
    };
    let state = AppState::with_credentials(limits, Credentials::new(Some(&admin_token), &api_keys));
    state.models.set_primary(&config.model_name);
    let spec = ModelSpec {
        name: config.model_name.clone(),
        version: registry_version.unwrap_or_else(|| config.model_version.clone()),
        pool: PoolConfig {
            workers: config.workers,
            max_queue: config.max_queue,
            load: LoadOptions { intra_op_threads: config.intra_op_threads },
            batching: config.batching.clone(),
            inline_below: config.inline_below,
            opportunistic: config.opportunistic,
        },
        // The server's own: every registry version adds its own sample to it when it loads.
        warm_up: warm_up(&config)?,
    };
    // The version served first: its own sample, when the registry holds one.
    let startup_warm_up = match (&source, &registry_record) {
        (ModelSource::Registry { registry, .. }, Some(record)) => {
            modelship_server::traffic::warm_up_for(registry, record, &spec.warm_up).await.map_err(|e| anyhow::anyhow!(e))?
        }
        _ => spec.warm_up.clone(),
    };
    let drain = Drain { delay: config.shutdown_delay, grace: config.shutdown_grace };
    let connections = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections.unwrap_or_else(modelship_server::default_max_connections),
        // Hyper's own cap, past which it refuses without a body: twice the limit that answers
        // in JSON (REST) or with RESOURCE_EXHAUSTED (gRPC).
        max_head_bytes: (config.max_header_bytes * 2).max(16 * 1024),
    };
    let mut server = Server::new(Arc::clone(&state.health), state.tasks.clone(), drain, connections);
    state.models.set(&spec.name, ModelSlot::Loading { version: spec.version.clone() });
    // The listener serves probes while the model loads: /health/startup says "starting" until then.
    server.serve("http", listener, modelship_server::routes::app(state.clone()), tls.clone());
    tracing::info!(%address, tls = tls.is_some(), model = %spec.name, version = %spec.version, source = %source, "loading model");

    let loading = {
        let (backend, metrics, spec) = (Arc::clone(&backend), Arc::clone(&state.metrics), spec.clone());
        tokio::task::spawn_blocking(move || LoadedModel::load(backend, model, &spec, &metrics))
    };
    let loaded = tokio::select! {
        loaded = loading => loaded,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested while the model was loading");
            server.run_until(std::future::ready(())).await;
            return Ok(());
        }
    };
    let model = match loaded {
        Ok(Ok(model)) => model,
        failed => {
            let e = match failed {
                Ok(Err(e)) => anyhow::anyhow!("cannot load model {source}: {e}"),
                Err(e) => anyhow::anyhow!("model loading stopped unexpectedly: {e}"),
                Ok(Ok(_)) => unreachable!("matched above"),
            };
            state.models.set(&spec.name, ModelSlot::Failed { version: spec.version.clone(), error: e.to_string() });
            server.run_until(std::future::ready(())).await;
            return Err(e);
        }
    };
    tracing::info!(
        model = %model.name, version = %model.version, load_seconds = model.load_seconds,
        inputs = ?model.info.signature.input_names(), outputs = ?model.info.signature.output_names(),
        skipped_outputs = ?model.info.skipped_outputs, "model loaded"
    );
    // A model that loads but cannot answer is a failed start, never a server answering 500.
    let warming = tokio::select! {
        warmed = model.warm_up(&startup_warm_up) => warmed,
        () = shutdown.cancelled() => {
            tracing::info!("shutdown requested while the model was warming up");
            server.run_until(std::future::ready(())).await;
            return Ok(());
        }
    };
    if let Err(e) = warming {
        let e = anyhow::anyhow!("model {source} loads but cannot answer, so it is not served: {e}");
        state.models.set(&spec.name, ModelSlot::Failed { version: spec.version.clone(), error: e.to_string() });
        server.run_until(std::future::ready(())).await;
        return Err(e);
    }
    tracing::info!(model = %model.name, version = %model.version, requests = startup_warm_up.requests, "warm-up answered");
    if let Some(features) = &config.features {
        let service = feature_service(features, &model.info.signature, &state)?;
        let store = Arc::clone(&service.store);
        state.tasks.spawn("feature-store-monitor", move |_| store.monitor());
        let _ = state.features.set(service);
    }
    let served = Served::single(Arc::new(model));
    state.metrics.publish_traffic(&spec.name, &served);
    state.models.set(&spec.name, ModelSlot::Ready(Arc::new(served)));
    let (registry, registry_model) = match &source {
        ModelSource::Registry { registry, reference } => (Some(Arc::clone(registry)), reference.name().to_owned()),
        ModelSource::File(_) => (None, spec.name.clone()),
    };
    let store_kind = store.kind();
    let traffic_source = match &source {
        ModelSource::Registry { reference, .. } => TrafficSource::registry(reference),
        ModelSource::File(path) => TrafficSource::file(path),
    };
    let traffic = Arc::new(
        Traffic::new(registry, registry_model, Arc::clone(&backend), spec.clone(), store, config.admin.keep_warm).with_source(traffic_source),
    );
    if let Err(e) = traffic.check_source().await {
        state.models.set(&spec.name, ModelSlot::Failed { version: spec.version.clone(), error: e.clone() });
        server.run_until(std::future::ready(())).await;
        bail!("{e}");
    }
    if let Err(e) = traffic.resume(&state).await {
        tracing::warn!(model = %spec.name, error = %e, "cannot restore the recorded routing; serving the stable version only");
    }
    if store_kind != "embedded" {
        // Other replicas commit revisions too: apply each one (pushed, and re-read every second).
        let _ = state.fleet.set((Arc::clone(&traffic.store), spec.name.clone()));
        let (app, traffic) = (state.clone(), Arc::clone(&traffic));
        tracing::info!(model = %spec.name, store = store_kind, replica = %config.admin.replica, "following the fleet's routing in the control store");
        state.tasks.spawn("control-store-follow", move |_| modelship_server::control::follow(app, traffic, Duration::from_secs(1)));
    }
    let fleet = FleetConfig { replica: config.admin.replica.clone(), lease_ttl: config.admin.lease_ttl, live: Duration::from_secs(3) };
    let rollouts = Arc::new(Rollouts::new(Arc::clone(&traffic), fleet));
    {
        let (leader, app) = (Arc::clone(&rollouts), state.clone());
        state.tasks.spawn_cooperative("rollout-loop", move |stop| leader.run(app, stop));
        let (member, app, traffic, admin) = (Arc::clone(&rollouts), state.clone(), Arc::clone(&traffic), admin_address.to_string());
        state.tasks.spawn("fleet-beat", move |_| modelship_server::fleet::run(app, traffic, member, Some(admin)));
    }
    let repository =
        Arc::new(Repository::new(repository_registry(&source, &config), Arc::clone(&backend), spec.pool.clone(), spec.warm_up.clone(), spec.name.clone()));
    #[cfg(feature = "grpc")]
    {
        let grpc = modelship_server::grpc::Grpc::new(state.clone(), Some(Arc::clone(&repository)));
        server.serve("grpc", grpc_listener, modelship_server::grpc::router(grpc), tls.clone());
        tracing::info!(grpc_address = %grpc_address.map(|a| a.to_string()).unwrap_or_default(), "gRPC listening");
    }
    let admin = AdminState::new(state.clone(), Arc::clone(&traffic), rollouts, repository);
    server.serve("admin", admin_listener, modelship_server::admin::app(admin), tls.clone());
    tracing::info!(%admin_address, %token_source, "admin API listening");
    let startup_seconds = state.health.mark_started().max(started.elapsed().as_secs_f64());
    announce_ready(address, admin_address, grpc_address, &spec, startup_seconds);
    if let ModelSource::Registry { registry, reference: ModelRef::Alias(name, alias) } = &source {
        let follow = Follow {
            registry: Arc::clone(registry),
            traffic: Arc::clone(&traffic),
            model: name.clone(),
            alias: alias.clone(),
            poll: config.registry_poll,
        };
        tracing::info!(model = %name, alias = %alias, poll_s = config.registry_poll.as_secs_f64(), "following the alias");
        let app = state.clone();
        state.tasks.spawn("alias-follow", move |_| follow_alias(app, follow));
    }
    if let (ModelSource::File(path), Some(digest)) = (&source, file_digest)
        && config.watch_file
    {
        // New contents in another format are converted as at startup (a sandboxed child process).
        let prepare: modelship_server::follow::Prepare = {
            let (path, flags, backend) = (path.clone(), config.convert.clone(), Arc::clone(&backend));
            Arc::new(move |bytes: Vec<u8>| {
                let converter = crate::convert::converter(&flags, &ProcessEnv).map_err(|e| format!("{e:#}"))?;
                let options = crate::convert::options(&flags, &path.display().to_string()).map_err(|e| format!("{e:#}"))?;
                converter
                    .prepare(&path, bytes.into(), &options, backend.as_ref(), &crate::convert::log_line)
                    .map(|p| p.onnx().to_vec())
                    .map_err(|e| e.to_string())
            })
        };
        let follow = FollowFile {
            prepare: Some(prepare),
            traffic: Arc::clone(&traffic),
            path: path.clone(),
            base_version: spec.version.clone(),
            poll: config.registry_poll,
        };
        tracing::info!(path = %path.display(), poll_s = config.registry_poll.as_secs_f64(), "following the model file");
        let app = state.clone();
        state.tasks.spawn("file-follow", move |_| follow_file(app, follow, digest));
    }

    match server.run_until(shutdown.cancelled()).await {
        DrainOutcome::Complete => tracing::info!("drained; exiting"),
        DrainOutcome::GraceExpired => tracing::warn!(
            grace_s = config.shutdown_grace.as_secs_f64(),
            "the shutdown grace period ran out; requests still in flight were cut off"
        ),
    }
    Ok(())
}

/// What each version must answer before it serves: `model.warmup_requests`, and the sample file.
pub(crate) fn warm_up(config: &ServeConfig) -> anyhow::Result<WarmUp> {
    let sample = match &config.warmup_sample {
        None => None,
        Some(path) => {
            let meta = std::fs::metadata(path).with_context(|| format!("cannot read the warm-up sample {} (model.warmup_sample)", path.display()))?;
            if !meta.is_file() || meta.len() > config.max_body_bytes as u64 {
                bail!(
                    "the warm-up sample {} must be a regular file of at most server.max_body_bytes ({} bytes)",
                    path.display(),
                    config.max_body_bytes
                );
            }
            let body = std::fs::read(path).with_context(|| format!("cannot read the warm-up sample {}", path.display()))?;
            Some(Arc::new(WarmUpSample::from_v2_json(&path.display().to_string(), &body).map_err(|e| anyhow::anyhow!(e))?))
        }
    };
    Ok(WarmUp { requests: config.warmup_requests, sample })
}

/// Inference API keys: the key file's and `MODELSHIP_API_KEYS`'s. None means inference is open.
fn api_keys(security: &config::SecurityConfig) -> anyhow::Result<Vec<String>> {
    let mut keys = security.api_keys_env.clone();
    if let Some(path) = &security.api_keys_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the API keys file {}", path.display()))?;
        keys.extend(modelship_server::auth::read_api_keys(&text, &path.display().to_string()).map_err(|e| anyhow::anyhow!(e))?);
        if keys.is_empty() {
            bail!("the API keys file {} holds no key; add keys (one a line) or drop --api-keys-file", path.display());
        }
    }
    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "inference needs an API key");
    }
    Ok(keys)
}

/// The feature store and the feature spec checked against the served model's signature.
fn feature_service(
    features: &config::FeaturesConfig,
    signature: &modelship_inference::Signature,
    state: &AppState,
) -> anyhow::Result<Arc<modelship_features::FeatureService>> {
    let metrics = modelship_features::FeatureMetrics::register(state.metrics.registry())
        .map_err(|e| anyhow::anyhow!("cannot register the feature metrics: {e}"))?;
    let store = modelship_features::Store::new(
        &modelship_features::StoreConfig {
            url: features.store_url.clone(),
            timeout: features.timeout,
            cache_ttl: features.cache_ttl,
            cache_max_entries: features.cache_max_entries,
        },
        metrics,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let spec = if features.spec.features.is_empty() && features.spec.key.is_none() {
        tracing::info!(store_url = %config::redact_url(&features.store_url), "feature store connected for readiness only: no features.features are configured, so requests must carry their features");
        None
    } else {
        Some(modelship_features::FeatureSpec::new(&features.spec, signature).map_err(|problems| {
            anyhow::anyhow!("the feature spec does not fit the model:\n  - {}", problems.join("\n  - "))
        })?)
    };
    tracing::info!(
        store_url = %config::redact_url(&features.store_url), timeout_ms = features.timeout.as_millis() as u64,
        cache_ttl_s = features.cache_ttl.as_secs(), features = spec.as_ref().map_or(0, |s| s.features.len()), "feature store configured"
    );
    Ok(Arc::new(modelship_features::FeatureService { spec, store }))
}

/// The registry the repository API loads from: the one the model came from, else the configured
/// registry when it exists (a server of a file never creates one).
fn repository_registry(source: &ModelSource, config: &ServeConfig) -> Option<Arc<Registry>> {
    let registry = match source {
        ModelSource::Registry { registry, .. } => return Some(Arc::clone(registry)),
        ModelSource::File(_) => RegistryConfig { root: config.registry_root.clone(), artifacts: None },
    };
    // A directory that holds no registry stays without one; a bucket is opened as it is.
    if registry.bucket().is_none() && !registry.root.join("registry.db").exists() {
        return None;
    }
    Registry::open(&registry)
        .map_err(|e| tracing::warn!(error = %e, registry = %config.registry_root.display(), "cannot open the registry for the repository API"))
        .ok()
        .map(Arc::new)
}

/// The admin token and where it came from (for the log): `MODELSHIP_ADMIN_TOKEN` (its length
/// checked by `config::resolve`), else the token file, else a new random token written to the
/// token file (mode 0600). The token itself is never logged.
fn admin_token(admin: &AdminConfig) -> anyhow::Result<(String, String)> {
    if let Some(token) = &admin.token {
        return Ok((token.clone(), "MODELSHIP_ADMIN_TOKEN".to_owned()));
    }
    let path = &admin.token_file;
    let source = path.display().to_string();
    if path.exists() {
        let token = std::fs::read_to_string(path).with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let token = token.trim().to_owned();
        if token.len() < config::MIN_ADMIN_TOKEN {
            bail!(
                "the admin token in {} is shorter than {} characters; use a longer one or delete the file to get a new one",
                path.display(),
                config::MIN_ADMIN_TOKEN
            );
        }
        return Ok((token, source));
    }
    let mut random = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random).context("cannot read /dev/urandom")?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the admin token file {}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    tracing::info!(token_file = %path.display(), "generated an admin token");
    Ok((token, source))
}

/// Where the served model comes from: a file, or a registry reference.
enum ModelSource {
    File(PathBuf),
    Registry { registry: Arc<Registry>, reference: ModelRef },
}

impl ModelSource {
    /// A path that exists is a file; otherwise `NAME@ALIAS`, `NAME:VERSION` or `NAME` is a
    /// registry reference.
    fn of(config: &ServeConfig) -> anyhow::Result<Self> {
        let path = &config.model_path;
        if !path.exists()
            && let Some(text) = path.to_str().filter(|t| ModelRef::looks_like_reference(t))
        {
            let reference = ModelRef::parse(text)?;
            let registry = Registry::open(&RegistryConfig { root: config.registry_root.clone(), artifacts: None })
                .with_context(|| format!("cannot open the registry at {}", config.registry_root.display()))?;
            return Ok(ModelSource::Registry { registry: Arc::new(registry), reference });
        }
        Ok(ModelSource::File(path.clone()))
    }

    /// The ONNX model's bytes, the registry version when there is one, and a file's digest.
    /// A file in another format is converted first (in a sandboxed child process, proven equal,
    /// cached by its digest); one that is no model is refused. Registry artifacts are checked
    /// against their digest.
    async fn read(&self, config: &ServeConfig, backend: &dyn Backend) -> anyhow::Result<(Arc<[u8]>, Option<modelship_registry::VersionRecord>, Option<String>)> {
        match self {
            ModelSource::File(path) => {
                let bytes = crate::convert::read_model_file(path)?;
                let digest = modelship_server::follow::digest(&bytes);
                let prepared = crate::convert::prepare_bytes(path, bytes, &config.convert, backend, &ProcessEnv, &crate::convert::log_line).await?;
                Ok((prepared.onnx().to_vec().into(), None, Some(digest)))
            }
            ModelSource::Registry { registry, reference } => {
                let record = registry.resolve(reference).await?;
                let bytes = registry.artifact(&record, &NoProgress).await?;
                Ok((bytes.to_vec().into(), Some(record), None))
            }
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::File(path) => write!(f, "{}", path.display()),
            ModelSource::Registry { registry, reference } => write!(f, "{reference} (registry {})", registry.root().display()),
        }
    }
}

/// The one machine-readable line on standard output: where the server listens, once it is ready.
fn announce_ready(
    address: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    grpc: Option<std::net::SocketAddr>,
    spec: &ModelSpec,
    startup_seconds: f64,
) {
    use std::io::Write;
    let line = serde_json::json!({
        "event": "ready",
        "http": address.to_string(),
        "grpc": grpc.map(|a| a.to_string()),
        "admin": admin.to_string(),
        "model": spec.name,
        "version": spec.version,
        "startup_seconds": startup_seconds,
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
