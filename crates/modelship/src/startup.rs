//! What `serve` (and Lambda's cold start) read and decide before the server is built: the
//! resolved configuration mapped to the server's [`Settings`], the model read (a file converted
//! when it is not ONNX, a registry version checked against its digest), the admin token, the
//! API keys, TLS and the warm-up sample. The server itself is composed in one place,
//! `modelship_server::Config::build`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use modelship_inference::Backend;
use modelship_registry::{ModelRef, NoProgress, Registry, RegistryConfig};
use modelship_server::{Config, Credentials, Declared, Features, Model, ModelLimits, Settings, Source, Tls, WarmUp, WarmUpSample};

use crate::config::{self, AdminConfig, ProcessEnv, ServeConfig};

/// The server's settings from the resolved configuration.
pub fn settings(config: &ServeConfig) -> Settings {
    Settings {
        host: config.host.clone(),
        port: config.port,
        grpc_port: config.grpc_port,
        admin_host: config.admin.host.clone(),
        admin_port: config.admin.port,
        max_body_bytes: config.max_body_bytes,
        max_header_bytes: config.max_header_bytes,
        max_tensor_elements: config.max_tensor_elements,
        max_rows: config.max_rows,
        body_read_timeout: config.body_read_timeout,
        min_body_bytes_per_second: config.min_body_bytes_per_second,
        header_read_timeout: config.header_read_timeout,
        max_connections: config.max_connections,
        shutdown_delay: config.shutdown_delay,
        shutdown_grace: config.shutdown_grace,
        workers: config.workers,
        max_queue: config.max_queue,
        intra_op_threads: config.intra_op_threads,
        device: config.device.clone(),
        path_prefix: config.path_prefix.clone(),
        batching: config.batching.clone(),
        inline_below: config.inline_below,
        opportunistic: config.opportunistic,
        keep_warm: config.admin.keep_warm,
        control_store: config.admin.control_store.clone(),
        state_dir: config.admin.state_dir.clone(),
        replica: config.admin.replica.clone(),
        lease_ttl: config.admin.lease_ttl,
        unready_without_store: config.admin.unready_without_store,
        poll: config.registry_poll,
        residency: config.residency,
        prediction_log: config.prediction_log.clone(),
        notifications: config.notifications.clone(),
        tracing: config.tracing.clone(),
    }
}

/// Everything `serve` builds the server from. A file in another format than ONNX is converted
/// here (in a sandboxed child process, proven equal, cached by its digest).
pub async fn server_config(config: &ServeConfig, backend: &Arc<dyn Backend>, started: Instant) -> anyhow::Result<Config> {
    let (admin_token, token_source) = admin_token(&config.admin)?;
    let api_keys = api_keys(&config.security)?;
    let tls = match &config.security.tls {
        Some((cert, key)) => Some(Tls::from_pem_files(cert, key).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let warm_up = warm_up(config)?;
    let first = ModelSource::of(&config.model_path, config)?;
    let repository = repository_registry(&first, config);
    let first = model(config, &config.model_name, &config.model_version, first, warm_up.clone(), backend).await?;
    let mut models = vec![with(first, config.model_limits.clone(), config.model_declared.clone())];
    for more in &config.more_models {
        let source = ModelSource::of(&more.path, config)?;
        // The sample is the first model's inputs: the others warm up on drawn rows.
        let warm_up = WarmUp { sample: None, ..warm_up.clone() };
        let read = model(config, &more.name, &more.version, source, warm_up, backend).await?;
        models.push(with(read, more.limits.clone(), more.declared.clone()));
    }
    let features = features(config);
    Ok(Config {
        settings: settings(config),
        credentials: Credentials::new(Some(&admin_token), &api_keys),
        token_source,
        tls,
        models,
        features,
        repository,
        started,
    })
}

/// The feature store and the specs of the models that have one.
pub fn features(config: &ServeConfig) -> Option<Features> {
    config.features.as_ref().map(|f| Features {
        store: modelship_features::StoreConfig {
            url: f.store_url.clone(),
            timeout: f.timeout,
            cache_ttl: f.cache_ttl,
            cache_max_entries: f.cache_max_entries,
        },
        // The first model's spec is the `features` section's; each listed model may have its own.
        specs: std::iter::once((config.model_name.clone(), f.spec.clone()))
            .chain(config.more_models.iter().filter_map(|m| m.features.clone().map(|spec| (m.name.clone(), spec))))
            .collect(),
    })
}

/// The first model of `config`, read as `serve` reads it (a file converted when it is not ONNX, a
/// registry version checked against its digest): what `modelship predict` scores with.
pub async fn first_model(config: &ServeConfig, backend: &Arc<dyn Backend>) -> anyhow::Result<Model> {
    let source = ModelSource::of(&config.model_path, config)?;
    let (model, _) = model(config, &config.model_name, &config.model_version, source, warm_up(config)?, backend).await?;
    Ok(model)
}

/// `model` with its own limits and declared tensors.
fn with((model, source): (Model, Source), limits: ModelLimits, declared: Option<Declared>) -> (Model, Source) {
    (Model { limits, declared, ..model }, source)
}

/// One model to serve: read (and converted, for a file in another format), named `name`, at
/// `version` unless the registry names its own.
async fn model(
    config: &ServeConfig,
    name: &str,
    version: &str,
    source: ModelSource,
    warm_up: WarmUp,
    backend: &Arc<dyn Backend>,
) -> anyhow::Result<(Model, Source)> {
    let (bytes, record, digest) = source.read(config, backend.as_ref()).await?;
    let model = Model {
        name: name.to_owned(),
        version: record.as_ref().map_or_else(|| version.to_owned(), |r| r.version.clone()),
        bytes,
        warm_up,
        described_as: source.to_string(),
        limits: ModelLimits::default(),
        declared: None,
    };
    let source = match (source, record, digest) {
        (ModelSource::Registry { registry, reference }, Some(record), _) => Source::Registry { registry, reference, record },
        (ModelSource::File(path), _, Some(digest)) => {
            let prepare = config.watch_file.then(|| prepare_followed(config, &path, backend));
            Source::File { path, digest, follow: config.watch_file, prepare }
        }
        _ => unreachable!("a file has a digest, a registry version a record"),
    };
    Ok((model, source))
}

/// How new contents of a followed file in another format become ONNX: converted as at startup
/// (a sandboxed child process).
fn prepare_followed(config: &ServeConfig, path: &std::path::Path, backend: &Arc<dyn Backend>) -> modelship_server::Prepare {
    let (path, flags, backend) = (path.to_path_buf(), config.convert.clone(), Arc::clone(backend));
    Arc::new(move |bytes: Vec<u8>| {
        let converter = crate::convert::converter(&flags, &ProcessEnv).map_err(|e| format!("{e:#}"))?;
        let options = crate::convert::options(&flags, &path.display().to_string()).map_err(|e| format!("{e:#}"))?;
        converter
            .prepare(&path, bytes.into(), &options, backend.as_ref(), &crate::convert::log_line)
            .map(|p| p.onnx().to_vec())
            .map_err(|e| e.to_string())
    })
}

/// What each version must answer before it serves: `model.warmup_requests`, and the sample file.
pub fn warm_up(config: &ServeConfig) -> anyhow::Result<WarmUp> {
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
        keys.extend(modelship_server::read_api_keys(&text, &path.display().to_string()).map_err(|e| anyhow::anyhow!(e))?);
        if keys.is_empty() {
            bail!("the API keys file {} holds no key; add keys (one a line) or drop --api-keys-file", path.display());
        }
    }
    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "inference needs an API key");
    }
    Ok(keys)
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
    fn of(path: &std::path::Path, config: &ServeConfig) -> anyhow::Result<Self> {
        if !path.exists()
            && let Some(text) = path.to_str().filter(|t| ModelRef::looks_like_reference(t))
        {
            let reference = ModelRef::parse(text)?;
            let registry = Registry::open(&RegistryConfig { root: config.registry_root.clone(), artifacts: None })
                .with_context(|| format!("cannot open the registry at {}", config.registry_root.display()))?
                // A remote registry's versions are kept on this host as they are served: a start
                // without the network serves the last one (`modelship_registry::kept`).
                .with_kept_copies(&config.admin.state_dir.join("registry-copies"));
            return Ok(ModelSource::Registry { registry: Arc::new(registry), reference });
        }
        Ok(ModelSource::File(path.to_path_buf()))
    }

    /// The ONNX model's bytes, the registry version when there is one, and a file's digest.
    /// A file in another format is converted first (in a sandboxed child process, proven equal,
    /// cached by its digest); one that is no model is refused. Registry artifacts are checked
    /// against their digest.
    async fn read(&self, config: &ServeConfig, backend: &dyn Backend) -> anyhow::Result<(Arc<[u8]>, Option<modelship_registry::VersionRecord>, Option<String>)> {
        match self {
            ModelSource::File(path) => {
                let bytes = crate::convert::read_model_file(path)?;
                let digest = modelship_server::file_digest(&bytes);
                let prepared = crate::convert::prepare_bytes(path, bytes, &config.convert, backend, &ProcessEnv, &crate::convert::log_line).await?;
                Ok((prepared.onnx().to_vec().into(), None, Some(digest)))
            }
            ModelSource::Registry { registry, reference } => {
                let (record, kept) = registry.resolve_or_kept(reference).await?;
                if let Some(why) = kept {
                    tracing::warn!(model = %reference, version = %record.version, "{why}");
                }
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
