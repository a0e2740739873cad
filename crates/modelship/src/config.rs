//! Serving configuration: raw layers (file, environment, flags) merged by precedence, then one
//! pure [`resolve`] that checks everything and reports every problem at once.
//!
//! Precedence, lowest first: built-in defaults < config file < environment < command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{LogFormatArg, ServeArgs};

/// The config file, in the seed's `serving.yaml` shape. Every key optional; unknown keys are
/// collected (with their full path) and reported by [`load_file`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawConfig {
    #[serde(default)]
    pub model: RawModel,
    /// More models served beside `model`, each with its own routing and rollouts.
    #[serde(default)]
    pub models: Vec<RawMoreModel>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub features: Option<RawFeatures>,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub admin: RawAdmin,
    /// A Triton model repository whose models are served beside (or as) the others.
    pub model_repository: Option<PathBuf>,
    /// Where predictions are kept as data.
    #[serde(default)]
    pub prediction_log: Option<RawPredictionLog>,
    /// Who is told of rollout events, and how.
    #[serde(default)]
    pub notifications: Option<RawNotifications>,
    /// OpenTelemetry traces of requests.
    #[serde(default)]
    pub tracing: RawTracing,
}

/// `tracing`: off unless `enabled` (or `OTEL_TRACES_EXPORTER=otlp`). Where spans go, and their
/// batching, come from the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawTracing {
    pub enabled: Option<bool>,
    /// The share of new traces recorded (a sampled caller's trace is always continued).
    pub sample_ratio: Option<f64>,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: Option<String>,
    /// `service.name` when OTEL_SERVICE_NAME does not give one (default `modelship`).
    pub service_name: Option<String>,
}

/// `notifications`: the sinks rollout events go to, and how hard each is tried.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawNotifications {
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// The bound on one attempt (default 5).
    pub timeout_seconds: Option<f64>,
    /// Attempts after the first (default 5).
    pub retries: Option<u32>,
    /// The first wait between attempts, doubled each time (default 0.5).
    pub backoff_seconds: Option<f64>,
}

/// One sink: exactly one of `webhook`, `slack_env`/`slack_file` or `alertmanager`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawSink {
    pub name: Option<String>,
    /// A URL that gets every event as JSON, signed when a secret is given.
    pub webhook: Option<String>,
    /// The HMAC-SHA256 key of a webhook, from an environment variable or a file.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// A Slack-compatible incoming webhook URL: a credential, so only from the environment or
    /// a file (`slack:` with the URL itself is refused).
    pub slack: Option<String>,
    pub slack_env: Option<String>,
    pub slack_file: Option<PathBuf>,
    /// Alertmanager's base URL (`http://alertmanager:9093`).
    pub alertmanager: Option<String>,
    /// The events it wants (default: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// `info` (default), `warning` or `critical`.
    pub min_severity: Option<String>,
}

/// `prediction_log`: the store and how the writer samples and batches.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawPredictionLog {
    /// A directory, `file:///DIR` or `s3://BUCKET/PREFIX`.
    pub url: Option<String>,
    #[serde(default)]
    pub sample: RawSampling,
    /// Rates of their own for some models, by name: `{fraud: {stable: 0.01}}` (roles left out
    /// take `sample`'s).
    #[serde(default)]
    pub models: BTreeMap<String, RawSampling>,
    /// Records waiting to be written before new ones are dropped.
    pub queue: Option<usize>,
    pub roll_rows: Option<usize>,
    pub roll_bytes: Option<usize>,
    pub roll_seconds: Option<f64>,
}

/// `prediction_log.sample`: the share of each role's predictions kept, 0 to 1.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawSampling {
    pub stable: Option<f64>,
    pub candidate: Option<f64>,
    pub shadow: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawAdmin {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub keep_warm_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawRegistry {
    pub path: Option<PathBuf>,
    pub poll_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawModel {
    pub name: Option<String>,
    pub version: Option<String>,
    pub path: Option<PathBuf>,
    pub intra_op_threads: Option<usize>,
    pub max_queue: Option<usize>,
    /// Requests estimated to run faster than this run on the calling thread (0: never).
    pub inline_below_microseconds: Option<u64>,
    /// Serve a changed model file's new contents without a restart (default true).
    pub watch: Option<bool>,
    pub dynamic_batching: Option<RawBatching>,
    /// Join concurrent requests already waiting into one run, for a model that passes the
    /// row-independence probe at load (default true).
    pub opportunistic_batching: Option<bool>,
    /// Requests a version must answer before it serves (default 2: zeros, then drawn rows).
    pub warmup_requests: Option<usize>,
    /// A V2 inference request (JSON) holding the model's own inputs, sent first at warm-up.
    pub warmup_sample: Option<PathBuf>,
    /// `cpu` (default), `auto` (the GPU when one works) or `cuda[:N]`.
    pub device: Option<String>,
    /// How a session uses the GPU.
    pub gpu: Option<RawGpu>,
}

/// `model.gpu`: the GPU's settings for every session on it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    /// The session's device memory arena's ceiling, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// `next_power_of_two` (default) or `same_as_requested`.
    pub arena_extend: Option<String>,
    pub tensorrt: Option<bool>,
    pub cuda_graph: Option<bool>,
    pub separate_copy_stream: Option<bool>,
    pub fallback_to_cpu: Option<bool>,
}

/// One entry of `models`: a file or registry model, and its name (default: the file's stem or
/// the registry name) and version (default: `model.version`, a registry version's own).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawMoreModel {
    pub name: Option<String>,
    pub path: PathBuf,
    pub version: Option<String>,
    /// This model's own workers, queue and threads per inference (default: the server's
    /// `server.workers`, `model.max_queue`, `model.intra_op_threads`), and its batching (default:
    /// none, since batching depends on the model's shapes).
    pub workers: Option<usize>,
    pub max_queue: Option<usize>,
    pub intra_op_threads: Option<usize>,
    pub dynamic_batching: Option<RawBatching>,
    /// Its own device (default: `model.device`), with `model.gpu`'s settings.
    pub device: Option<String>,
    /// Its own feature spec, looked up in the server's feature store (`features.store_url`).
    pub features: Option<RawModelFeatures>,
    /// The tensors a Triton repository's `config.pbtxt` declares (never in the file itself).
    #[serde(skip)]
    pub declared: Option<modelship_server::Declared>,
}

/// A listed model's feature spec: the keys of the `features` section that describe a model's
/// features (the store and its cache are the server's).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawModelFeatures {
    pub key: Option<String>,
    #[serde(default)]
    pub storage: modelship_features::spec::Storage,
    pub input: Option<String>,
    #[serde(default)]
    pub on_store_error: modelship_features::spec::Fallback,
    #[serde(default)]
    pub on_missing_entity: modelship_features::spec::Fallback,
    #[serde(default)]
    pub features: Vec<modelship_features::spec::FeatureDef>,
}

/// `model.dynamic_batching`, with Triton's field names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawBatching {
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_microseconds: Option<u64>,
    #[serde(default)]
    pub preferred_batch_size: Vec<usize>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawServer {
    pub host: Option<String>,
    /// The REST API also under this path (`/api`: Azure Functions' custom handlers).
    pub path_prefix: Option<String>,
    pub port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub workers: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub shutdown_grace_seconds: Option<f64>,
    pub shutdown_delay_seconds: Option<f64>,
    pub api_keys_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub header_read_timeout_seconds: Option<f64>,
    /// The longest wait for the next bytes of a request body.
    pub body_read_timeout_seconds: Option<f64>,
    /// The slowest a request body may arrive on average, once its first timeout has passed.
    pub min_body_bytes_per_second: Option<u64>,
    /// Open connections per listener; past it, the oldest one still waiting for its client is closed.
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_tensor_elements: Option<usize>,
    pub max_rows: Option<usize>,
    /// Where routing revisions are committed: `embedded`, `redis://HOST:PORT[/DB]`,
    /// `redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]` or `kubernetes[://NAMESPACE]`.
    pub control_store: Option<String>,
    /// This replica's name in the fleet.
    pub replica: Option<String>,
    /// Seconds the rollout leader's lease lives unless renewed.
    pub lease_ttl_seconds: Option<f64>,
    /// Seconds without an answer from the fleet's control store after which this replica reports
    /// itself not ready (unset: ready whatever the store does).
    pub unready_without_store_seconds: Option<f64>,
    /// Models with a version in memory at once; past it the least recently used one is unloaded.
    pub max_loaded_models: Option<usize>,
    /// The loaded models' size together (each counted at its file size or resident growth).
    pub max_loaded_bytes: Option<u64>,
    /// The longest a request waits for an unloaded model to load again.
    pub load_wait_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawFeatures {
    pub store_url: Option<String>,
    /// Seconds a fetched entity is cached.
    pub cache_ttl: Option<u64>,
    pub cache_max_entries: Option<u64>,
    /// The longest a request waits for the store, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The key pattern, e.g. `features:customer:{customer_id}`.
    pub key: Option<String>,
    #[serde(default)]
    pub storage: modelship_features::spec::Storage,
    /// The model input the features build (default: the model's only input).
    pub input: Option<String>,
    #[serde(default)]
    pub on_store_error: modelship_features::spec::Fallback,
    #[serde(default)]
    pub on_missing_entity: modelship_features::spec::Fallback,
    #[serde(default)]
    pub features: Vec<modelship_features::spec::FeatureDef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// Tracing, from the file's `tracing:` and the standard OpenTelemetry variables (which win):
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off, `OTEL_TRACES_EXPORTER=otlp`
/// on; `OTEL_TRACES_SAMPLER_ARG` is the ratio of a (parent-based) ratio sampler;
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL` the protocol.
fn resolve_tracing(raw: &RawTracing, env: &dyn Env, problems: &mut Vec<String>) -> Option<modelship_server::trace::TraceSettings> {
    use modelship_server::trace::{Protocol, TraceSettings};
    let mut enabled = raw.enabled.unwrap_or(false);
    match env.get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("otlp") => enabled = true,
        Some("none") => enabled = false,
        Some("") | None => {}
        Some(other) => problems.push(format!("OTEL_TRACES_EXPORTER '{other}' is not supported; modelship exports otlp (or none)")),
    }
    if env.get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        enabled = false;
    }
    let mut ratio = raw.sample_ratio.unwrap_or(1.0);
    match env.get("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_traceidratio") => {
            if let Some(arg) = env.get("OTEL_TRACES_SAMPLER_ARG") {
                match arg.trim().parse::<f64>() {
                    Ok(r) => ratio = r,
                    Err(_) => problems.push(format!("OTEL_TRACES_SAMPLER_ARG '{arg}' is not a number between 0 and 1")),
                }
            }
        }
        Some("parentbased_always_on") => ratio = 1.0,
        Some("parentbased_always_off") => ratio = 0.0,
        Some(other) => problems.push(format!(
            "OTEL_TRACES_SAMPLER '{other}' is not supported: modelship always continues a sampled caller's trace; use parentbased_traceidratio (with OTEL_TRACES_SAMPLER_ARG), parentbased_always_on or parentbased_always_off"
        )),
    }
    if !(0.0..=1.0).contains(&ratio) {
        problems.push(format!("the trace sample ratio is {ratio}; it must be between 0 and 1 (tracing.sample_ratio, OTEL_TRACES_SAMPLER_ARG)"));
    }
    let protocol_name = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL")).or_else(|| raw.protocol.clone());
    let protocol = match protocol_name.as_deref().map(str::trim) {
        None | Some("") => Protocol::Grpc,
        Some(p) => Protocol::parse(p).unwrap_or_else(|| {
            problems.push(format!("the OTLP protocol '{p}' is not grpc or http/protobuf (tracing.protocol, OTEL_EXPORTER_OTLP_PROTOCOL)"));
            Protocol::Grpc
        }),
    };
    enabled.then(|| TraceSettings { protocol, ratio, service: raw.service_name.clone().unwrap_or_else(|| "modelship".to_owned()) })
}

/// The checked notification sinks (the problems said). Secrets are read here, from the
/// environment or a file, and never written anywhere.
fn resolve_notifications(raw: &RawNotifications, env: &dyn Env, problems: &mut Vec<String>) -> Vec<modelship_server::notify::SinkSettings> {
    use modelship_server::notify::{EventKind, Secret, Severity, SinkKind, SinkSettings};
    let timeout = seconds("notifications.timeout_seconds", raw.timeout_seconds.unwrap_or(5.0), problems);
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(120) {
        problems.push("notifications.timeout_seconds must be between 0.1 and 120".to_owned());
    }
    let retries = raw.retries.unwrap_or(5);
    if retries > 20 {
        problems.push(format!("notifications.retries is {retries}; at most 20"));
    }
    let backoff = seconds("notifications.backoff_seconds", raw.backoff_seconds.unwrap_or(0.5), problems);
    if backoff < Duration::from_millis(10) || backoff > Duration::from_secs(30) {
        problems.push("notifications.backoff_seconds must be between 0.01 and 30 (the wait doubles from it, up to 30 s)".to_owned());
    }
    let mut names = std::collections::BTreeSet::new();
    let mut sinks = Vec::new();
    for (i, sink) in raw.sinks.iter().enumerate() {
        let at = format!("notifications.sinks[{i}]");
        let secret = |var: &Option<String>, file: &Option<PathBuf>, what: &str, problems: &mut Vec<String>| -> Option<Secret> {
            match (var, file) {
                (Some(var), None) => match env.get(var).filter(|v| !v.trim().is_empty()) {
                    Some(v) => Some(Secret(v.trim().to_owned())),
                    None => {
                        problems.push(format!("{at}: the environment variable {var} ({what}) is not set"));
                        None
                    }
                },
                (None, Some(path)) => match std::fs::read_to_string(path) {
                    Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_owned())),
                    Ok(_) => {
                        problems.push(format!("{at}: {} ({what}) is empty", path.display()));
                        None
                    }
                    Err(e) => {
                        problems.push(format!("{at}: cannot read {} ({what}): {e}", path.display()));
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    problems.push(format!("{at}: give {what} from the environment or a file, not both"));
                    None
                }
                (None, None) => None,
            }
        };
        let url_ok = |key: &str, url: &str, problems: &mut Vec<String>| {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!("{at}.{key} must be an http:// or https:// URL"));
            }
        };
        let slack = secret(&sink.slack_env, &sink.slack_file, "the Slack webhook URL", problems);
        let kind = match (&sink.webhook, sink.slack.is_some() || sink.slack_env.is_some() || sink.slack_file.is_some(), &sink.alertmanager) {
            (Some(url), false, None) => {
                url_ok("webhook", url, problems);
                Some(SinkKind::Webhook { url: url.clone(), secret: secret(&sink.secret_env, &sink.secret_file, "the webhook's signing secret", problems) })
            }
            (None, true, None) if sink.slack.is_some() => {
                problems.push(format!("{at}.slack: a Slack webhook URL is a credential; give it as slack_env (an environment variable) or slack_file, not in the configuration"));
                None
            }
            (None, true, None) => slack.map(|url| {
                url_ok("slack", &url.0, problems);
                SinkKind::Slack { url }
            }),
            (None, false, Some(url)) => {
                url_ok("alertmanager", url, problems);
                Some(SinkKind::Alertmanager { url: url.clone() })
            }
            _ => {
                problems.push(format!("{at} must name exactly one of webhook, slack_env (or slack_file) and alertmanager"));
                None
            }
        };
        if kind.as_ref().is_some_and(|k| !matches!(k, SinkKind::Webhook { .. })) && (sink.secret_env.is_some() || sink.secret_file.is_some()) {
            problems.push(format!("{at}: secret_env and secret_file sign webhook bodies; a Slack or Alertmanager sink takes none"));
        }
        let mut events = Vec::new();
        for e in &sink.events {
            match EventKind::parse(e) {
                Some(k) => events.push(k),
                None => problems.push(format!(
                    "{at}.events: '{e}' is not an event; use {}",
                    EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
        let min_severity = match sink.min_severity.as_deref() {
            None => Severity::Info,
            Some(s) => Severity::parse(s).unwrap_or_else(|| {
                problems.push(format!("{at}.min_severity '{s}' is not info, warning or critical"));
                Severity::Info
            }),
        };
        if !events.is_empty() && events.iter().all(|e| e.severity() < min_severity) {
            problems.push(format!("{at}: every event it names is below its min_severity ({}), so it would be told nothing", min_severity.as_str()));
        }
        let Some(kind) = kind else { continue };
        let name = sink.name.clone().unwrap_or_else(|| format!("{}-{}", kind.as_str(), i + 1));
        if !names.insert(name.clone()) {
            problems.push(format!("{at}: the sink name '{name}' is used twice; names must be unique"));
        }
        sinks.push(SinkSettings { name, kind, events, min_severity, timeout, retries, backoff });
    }
    sinks
}

/// The checked prediction log, or `None` with the problems said (or when it names no store).
fn resolve_prediction_log(raw: &RawPredictionLog, problems: &mut Vec<String>) -> Option<modelship_server::PredictionLogSettings> {
    let Some(url) = raw.url.clone().filter(|u| !u.trim().is_empty()) else {
        problems.push("prediction_log is set without a url; give a directory or s3://BUCKET/PREFIX (--prediction-log)".to_owned());
        return None;
    };
    let defaults = modelship_predictions::LogSettings::default();
    let mut rates = |key: &str, raw: &RawSampling, base: modelship_predictions::Sampling| {
        let mut rate = |role: &str, value: Option<f64>, default: f64| {
            let v = value.unwrap_or(default);
            if !(0.0..=1.0).contains(&v) {
                problems.push(format!("{key}.{role} is {v}; it must be between 0 and 1 (0.01 keeps 1 %)"));
            }
            v
        };
        modelship_predictions::Sampling {
            stable: rate("stable", raw.stable, base.stable),
            candidate: rate("candidate", raw.candidate, base.candidate),
            shadow: rate("shadow", raw.shadow, base.shadow),
        }
    };
    let sampling = rates("prediction_log.sample", &raw.sample, modelship_predictions::Sampling::default());
    let models = raw.models.iter().map(|(name, own)| (name.clone(), rates(&format!("prediction_log.models.{name}"), own, sampling))).collect();
    let queue = raw.queue.unwrap_or(defaults.queue);
    check_range("prediction_log.queue", queue, 1, 10_000_000, problems);
    let roll_rows = raw.roll_rows.unwrap_or(defaults.roll_rows);
    check_range("prediction_log.roll_rows", roll_rows, 1, 100_000_000, problems);
    let roll_bytes = raw.roll_bytes.unwrap_or(defaults.roll_bytes);
    check_range("prediction_log.roll_bytes", roll_bytes, 1024, 1 << 32, problems);
    let roll_interval = seconds("prediction_log.roll_seconds", raw.roll_seconds.unwrap_or(defaults.roll_interval.as_secs_f64()), problems);
    if roll_interval < Duration::from_millis(100) || roll_interval > Duration::from_secs(3600) {
        problems.push("prediction_log.roll_seconds must be between 0.1 and 3600".to_owned());
    }
    Some(modelship_server::PredictionLogSettings {
        url,
        log: modelship_predictions::LogSettings { sampling, models, queue, roll_rows, roll_bytes, roll_interval, replica: None },
    })
}

/// A fully checked serving configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub model_name: String,
    pub model_version: String,
    pub model_path: PathBuf,
    /// The first model's own limits and declared tensors (a Triton repository's model served
    /// as the server's own); none for a model given as MODEL or model.path.
    pub model_limits: modelship_server::ModelLimits,
    pub model_declared: Option<modelship_server::Declared>,
    /// Models served beside the first (`models` in the file, then MORE arguments).
    pub more_models: Vec<MoreModel>,
    pub intra_op_threads: usize,
    /// Where sessions run.
    pub device: modelship_inference::Device,
    pub max_queue: usize,
    /// See [`modelship_server::Settings::inline_below`].
    pub inline_below: Duration,
    /// Follow a served file's contents (`model.watch`), polled every `registry_poll`.
    pub watch_file: bool,
    /// Dynamic batching; `None` runs each request on its own.
    pub batching: Option<modelship_server::Batching>,
    /// See [`modelship_server::Opportunistic`].
    pub opportunistic: modelship_server::Opportunistic,
    pub host: String,
    pub path_prefix: Option<String>,
    pub port: u16,
    pub grpc_port: u16,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub security: SecurityConfig,
    /// Per-request bounds beyond the body size.
    pub max_header_bytes: usize,
    pub max_tensor_elements: usize,
    pub max_rows: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub min_body_bytes_per_second: u64,
    /// `None`: derived from the process's file limit.
    pub max_connections: Option<usize>,
    /// The bound on loaded models (`server.max_loaded_models`, `server.max_loaded_bytes`,
    /// `server.load_wait_seconds`).
    pub residency: modelship_server::residency::ResidencyLimits,
    /// See [`modelship_server::WarmUp`].
    pub warmup_requests: usize,
    pub warmup_sample: Option<PathBuf>,
    pub log: LogConfig,
    pub ort_lib: Option<PathBuf>,
    pub features: Option<FeaturesConfig>,
    /// The registry to resolve `NAME@ALIAS` / `NAME:VERSION` models from.
    pub registry_root: PathBuf,
    /// How often a followed alias is checked.
    pub registry_poll: Duration,
    pub admin: AdminConfig,
    /// How a model file in another format than ONNX is converted (flags only).
    pub convert: crate::cli::ConvertFlags,
    /// Where predictions are kept (`prediction_log`, `--prediction-log`).
    pub prediction_log: Option<modelship_server::PredictionLogSettings>,
    /// Where rollout events are told (`notifications.sinks`).
    pub notifications: Vec<modelship_server::notify::SinkSettings>,
    /// OpenTelemetry traces, when on.
    pub tracing: Option<modelship_server::trace::TraceSettings>,
}

/// A model served beside the first.
#[derive(Debug, Clone, PartialEq)]
pub struct MoreModel {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// Where its limits are its own.
    pub limits: modelship_server::ModelLimits,
    /// The tensors its Triton configuration declares.
    pub declared: Option<modelship_server::Declared>,
    /// Its own feature spec (in the server's feature store).
    pub features: Option<modelship_features::spec::SpecConfig>,
}

/// Inference API keys and TLS. The key file is read when the server starts (`resolve` reads
/// no files).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecurityConfig {
    pub api_keys_file: Option<PathBuf>,
    /// `MODELSHIP_API_KEYS`: comma-separated keys (added to the file's).
    pub api_keys_env: Vec<String>,
    /// Certificate chain and private key, PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The shortest admin token accepted from any source (like an API key): a shorter one could be
/// guessed.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// The admin (control) API: its own listener, always behind a bearer token.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub host: String,
    pub port: u16,
    /// `MODELSHIP_ADMIN_TOKEN`; else read from `token_file`; else generated into `token_file`.
    pub token: Option<String>,
    pub token_file: PathBuf,
    /// Traffic history and other server state.
    pub state_dir: PathBuf,
    pub keep_warm: Duration,
    /// `embedded` (STATE_DIR/traffic.db) or a `redis://` URL the fleet shares.
    pub control_store: String,
    /// This replica's name in the fleet: `server.replica`, else `POD_NAME`, else HOST-PID.
    pub replica: String,
    /// How long a dead rollout leader holds its rollout up at most.
    pub lease_ttl: Duration,
    /// Not ready once the control store has not answered this long (`None`: ready regardless).
    pub unready_without_store: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeaturesConfig {
    pub store_url: String,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub timeout: Duration,
    /// Checked against the model's signature once it is loaded; with no features listed, the
    /// store is only connected (readiness follows it) and requests by entity are refused.
    pub spec: modelship_features::spec::SpecConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: tracing::Level,
    pub json: bool,
    /// Fields added to every log line (`pod_name`, `pod_namespace` when set).
    pub static_fields: BTreeMap<&'static str, String>,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads a config file. Unknown keys are errors that name the key with its full path.
pub fn load_file(path: &Path) -> Result<RawConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("cannot read config file {}: {e}", path.display())]))?;
    parse_file(&text).map_err(|problems| {
        ConfigErrors(problems.into_iter().map(|p| format!("{}: {p}", path.display())).collect())
    })
}

fn parse_file(text: &str) -> Result<RawConfig, Vec<String>> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    let mut unknown = Vec::new();
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawConfig = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
        .map_err(|e| vec![e.to_string()])?;
    if unknown.is_empty() {
        Ok(raw)
    } else {
        Err(unknown
            .into_iter()
            .map(|k| format!("unknown key '{k}' (known sections: model, server, features, logging, registry, admin; see `modelship serve --help`)"))
            .collect())
    }
}

/// The environment, as a lookup function, so tests never touch the process environment.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// Which config file to read: `--config`, else `CONFIG_PATH`.
pub fn config_path(args: &ServeArgs, env: &dyn Env) -> Option<PathBuf> {
    args.config.clone().or_else(|| env.get("CONFIG_PATH").map(PathBuf::from))
}

/// Merges the layers by precedence and checks the result.
pub fn resolve(file: RawConfig, env: &dyn Env, args: &ServeArgs) -> Result<ServeConfig, ConfigErrors> {
    let mut problems = Vec::new();
    let mut raw = file;

    // Environment over file.
    if let Some(v) = env.get("MODEL_PATH") {
        raw.model.path = Some(v.into());
    }
    if let Some(v) = env.get("MODEL_NAME") {
        raw.model.name = Some(v);
    }
    if let Some(v) = env.get("MODEL_VERSION") {
        raw.model.version = Some(v);
    }
    if let Some(v) = env.get("LOG_LEVEL") {
        raw.logging.level = Some(v);
    }
    if let Some(v) = env.get("LOG_FORMAT") {
        raw.logging.format = Some(v);
    }
    // The port a platform gives the container: Azure Functions' custom handler contract, then
    // Cloud Run's (and Knative's, Heroku's) `PORT`. A flag or `--port` still wins.
    let platform_port = ["FUNCTIONS_CUSTOMHANDLER_PORT", "PORT"].into_iter().find_map(|key| env.get(key).map(|v| (key, v)));
    if let (None, Some((key, v))) = (args.port, platform_port) {
        match v.trim().parse::<u16>() {
            Ok(port) => raw.server.port = Some(port),
            Err(_) => problems.push(format!("{key} '{v}' is not a port number (0-65535)")),
        }
    }
    if let Some(v) = env.get("MODELSHIP_DEVICE") {
        raw.model.device = Some(v);
    }
    if let Some(v) = env.get("MODELSHIP_CONTROL_STORE") {
        raw.server.control_store = Some(v);
    }
    if let Some(v) = env.get("MODELSHIP_REPLICA").or_else(|| env.get("POD_NAME")) {
        raw.server.replica = Some(v);
    }
    let mut ort_lib = env.get("ORT_DYLIB_PATH").map(PathBuf::from);
    // The seeds' Compose, Swarm and Kubernetes files point the server at Redis this way.
    if let Some(host) = env.get("REDIS_HOST") {
        let features = raw.features.get_or_insert_with(RawFeatures::default);
        match redis_address(features.store_url.as_deref(), &host, env.get("REDIS_PORT").as_deref()) {
            Ok(url) => features.store_url = Some(url),
            Err(e) => problems.push(e),
        }
    } else if let (Some(port), Some(features)) = (env.get("REDIS_PORT"), raw.features.as_mut())
        && let Some(url) = features.store_url.as_deref()
        && let Some(host) = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned))
    {
        match redis_address(Some(url), &host, Some(&port)) {
            Ok(url) => features.store_url = Some(url),
            Err(e) => problems.push(e),
        }
    }

    // Flags over environment.
    let a = args.clone();
    // `--models A,B,...`: the first is the server's own unless a MODEL argument names one.
    let mut listed = a.models.clone().into_iter();
    let first = a.model.clone().or_else(|| listed.next());
    overlay(&mut raw.model.path, first);
    overlay(&mut raw.model.name, a.name);
    overlay(&mut raw.model.version, a.model_version);
    overlay(&mut raw.model.intra_op_threads, a.intra_op_threads);
    overlay(&mut raw.model.device, a.device.clone());
    overlay(&mut raw.model.max_queue, a.max_queue);
    overlay(&mut raw.server.host, a.host);
    overlay(&mut raw.server.path_prefix, a.path_prefix);
    overlay(&mut raw.server.port, a.port);
    overlay(&mut raw.server.grpc_port, a.grpc_port);
    if a.max_batch_size.is_some() || a.max_queue_delay_us.is_some() {
        let b = raw.model.dynamic_batching.get_or_insert_with(RawBatching::default);
        overlay(&mut b.max_batch_size, a.max_batch_size);
        overlay(&mut b.max_queue_delay_microseconds, a.max_queue_delay_us);
    }
    if a.no_opportunistic_batching {
        raw.model.opportunistic_batching = Some(false);
    }
    overlay(&mut raw.server.workers, a.workers);
    overlay(&mut raw.server.max_body_bytes, a.max_body_bytes);
    overlay(&mut raw.server.shutdown_grace_seconds, a.shutdown_grace);
    overlay(&mut raw.server.shutdown_delay_seconds, a.shutdown_delay);
    overlay(&mut raw.server.api_keys_file, a.api_keys_file);
    overlay(&mut raw.server.tls_cert_file, a.tls_cert);
    overlay(&mut raw.server.tls_key_file, a.tls_key);
    overlay(&mut raw.server.header_read_timeout_seconds, a.header_read_timeout);
    overlay(&mut raw.server.body_read_timeout_seconds, a.body_read_timeout);
    overlay(&mut raw.server.max_connections, a.max_connections);
    overlay(&mut raw.server.max_loaded_models, a.max_loaded_models);
    if a.prediction_log.is_some() || a.prediction_log_sample.is_some() {
        let log = raw.prediction_log.get_or_insert_with(RawPredictionLog::default);
        overlay(&mut log.url, a.prediction_log.clone());
        if let Some(sample) = &a.prediction_log_sample {
            for (role, rate) in &sample.0 {
                match role.as_str() {
                    "stable" => log.sample.stable = Some(*rate),
                    "candidate" => log.sample.candidate = Some(*rate),
                    _ => log.sample.shadow = Some(*rate),
                }
            }
        }
    }
    overlay(&mut raw.server.max_loaded_bytes, a.max_loaded_bytes);
    overlay(&mut raw.model.warmup_requests, a.warmup_requests);
    overlay(&mut raw.model.warmup_sample, a.warmup_sample.clone());
    overlay(&mut raw.server.control_store, a.control_store.clone());
    overlay(&mut raw.server.replica, a.replica.clone());
    overlay(&mut raw.server.lease_ttl_seconds, a.lease_ttl);
    overlay(&mut raw.server.unready_without_store_seconds, a.unready_without_store);
    overlay(&mut raw.logging.level, a.log_level);
    overlay(
        &mut raw.logging.format,
        a.log_format.map(|f| match f {
            LogFormatArg::Json => "json".to_owned(),
            LogFormatArg::Text => "text".to_owned(),
        }),
    );
    overlay(&mut ort_lib, a.ort_lib);
    overlay(&mut raw.registry.path, a.registry);
    overlay(&mut raw.registry.poll_seconds, a.poll_interval);
    let registry_root = crate::registry_config::registry_root(raw.registry.path.clone(), env);
    overlay(&mut raw.admin.host, a.admin_host);
    overlay(&mut raw.admin.port, a.admin_port);
    overlay(&mut raw.admin.token_file, a.admin_token_file);
    overlay(&mut raw.admin.state_dir, a.state_dir);
    overlay(&mut raw.admin.keep_warm_seconds, a.keep_warm);
    let state_dir = raw.admin.state_dir.clone().unwrap_or_else(|| crate::registry_config::state_dir(env));
    let admin = AdminConfig {
        host: raw.admin.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
        // With `--port 0` (tests, several servers on one machine) the admin port is free too.
        port: raw.admin.port.unwrap_or(if raw.server.port == Some(0) { 0 } else { 8001 }),
        token: env.get("MODELSHIP_ADMIN_TOKEN"),
        token_file: raw.admin.token_file.clone().unwrap_or_else(|| state_dir.join("admin-token")),
        keep_warm: seconds("admin.keep_warm_seconds", raw.admin.keep_warm_seconds.unwrap_or(1800.0), &mut problems),
        state_dir,
        control_store: raw.server.control_store.clone().unwrap_or_else(|| "embedded".to_owned()),
        replica: raw.server.replica.clone().unwrap_or_else(default_replica),
        lease_ttl: seconds("server.lease_ttl_seconds", raw.server.lease_ttl_seconds.unwrap_or(10.0), &mut problems),
        unready_without_store: raw.server.unready_without_store_seconds.map(|s| seconds("server.unready_without_store_seconds", s, &mut problems)),
    };
    if admin.unready_without_store.is_some_and(|d| d < Duration::from_secs(1) || d > Duration::from_secs(86_400)) {
        problems.push("server.unready_without_store_seconds must be between 1 and 86400".to_owned());
    }
    if modelship_registry::name::check_name(&admin.replica).is_err() {
        problems.push(format!(
            "server.replica '{}' is not a usable replica name: use 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            admin.replica
        ));
    }
    if admin.lease_ttl < Duration::from_secs(1) || admin.lease_ttl > Duration::from_secs(300) {
        problems.push("server.lease_ttl_seconds must be between 1 and 300".to_owned());
    }
    if let Err(e) = modelship_server::control::check_setting(&admin.control_store) {
        problems.push(format!("server.control_store: {e}"));
    }
    let registry_poll = seconds("registry.poll_seconds", raw.registry.poll_seconds.unwrap_or(2.0), &mut problems);
    if registry_poll < Duration::from_millis(50) {
        problems.push("registry.poll_seconds must be at least 0.05".to_owned());
    }

    let gpu = resolve_gpu(raw.model.gpu.as_ref(), &admin.state_dir, &mut problems);
    // A Triton repository's KIND_GPU is a default: a device the operator gave (--device,
    // MODELSHIP_DEVICE, model.device) decides for its models too.
    if raw.model.device.is_some() {
        for more in raw.models.iter_mut().filter(|m| m.declared.is_some()) {
            more.device = None;
        }
    }
    // A file that lists its models under `models:` alone (or a Triton repository served alone):
    // the first is the server's own. A repository's model keeps what its config.pbtxt says.
    let promoted = usize::from(raw.model.path.is_none() && !raw.models.is_empty());
    let (mut model_limits, mut model_declared) = (modelship_server::ModelLimits::default(), None);
    if promoted == 1 && raw.models[0].declared.is_some() {
        let first = raw.models.remove(0);
        let key = |field: &str| format!("the {field} of model {}", first.path.display());
        model_limits = entry_limits(&first, &key, &gpu, &mut problems);
        model_declared = first.declared;
        // A repository's model is named by its directory and versioned by its version directory.
        for (what, given, own) in [("name (--name, MODEL_NAME)", &raw.model.name, &first.name), ("version (--model-version, MODEL_VERSION)", &raw.model.version, &first.version)] {
            if let (Some(given), Some(own)) = (given, own)
                && given != own
            {
                problems.push(format!(
                    "the model {what} is '{given}', and the model repository's first model, served as the server's own, is '{own}' by its directories; drop the setting or rename the directory"
                ));
            }
        }
        raw.model.path = Some(first.path);
        raw.model.name = first.name;
        raw.model.version = first.version;
    } else if promoted == 1 {
        let first = raw.models.remove(0);
        if first.workers.is_some() || first.max_queue.is_some() || first.intra_op_threads.is_some() || first.dynamic_batching.is_some() {
            problems.push(
                "models[0] is the server's own model (the file has no model.path): set its workers, queue and batching as server.workers and model.*, not in its entry".to_owned(),
            );
        }
        raw.model.path = Some(first.path);
        raw.model.name = raw.model.name.take().or(first.name);
        raw.model.version = raw.model.version.take().or(first.version);
    }

    // Checks.
    let model_path = raw.model.path.clone().unwrap_or_else(|| {
        problems.push(
            "no model given: pass MODEL.onnx (`modelship serve model.onnx`), set model.path in the config file, or set MODEL_PATH"
                .to_owned(),
        );
        PathBuf::new()
    });
    let model_name = raw.model.name.clone().unwrap_or_else(|| default_name(&model_path));
    check_name("model name", &model_name, &mut problems);
    let model_version = raw.model.version.clone().unwrap_or_else(|| "1".to_owned());
    check_name("model version", &model_version, &mut problems);
    let mut more_models = Vec::new();
    let mut names = std::collections::BTreeSet::from([model_name.clone()]);
    let given = raw
        .models
        .iter()
        .cloned()
        .chain(args.more.iter().chain(listed.as_slice()).map(|path| RawMoreModel { path: path.clone(), ..RawMoreModel::default() }));
    let in_file = raw.models.len();
    for (i, more) in given.enumerate() {
        // Entries of the file are named by their index; the others (MORE, --models) by their path.
        let path = more.path.display().to_string();
        let from_file = i < in_file && more.declared.is_none();
        let key = move |field: &str| if from_file { format!("models[{}].{field}", i + promoted) } else { format!("the {field} of model {path}") };
        let name = more.name.clone().unwrap_or_else(|| default_name(&more.path));
        check_name(&key("name"), &name, &mut problems);
        let version = more.version.clone().unwrap_or_else(|| model_version.clone());
        check_name(&key("version"), &version, &mut problems);
        if !names.insert(name.clone()) {
            problems.push(format!(
                "two models are named '{name}' ({}); name one with models[].name in the config file (or --name for the first)",
                more.path.display()
            ));
        }
        let limits = entry_limits(&more, &key, &gpu, &mut problems);
        let features = more.features.map(|f| {
            if raw.features.as_ref().and_then(|s| s.store_url.as_ref()).is_none() {
                problems.push(format!("{} is set, and there is no feature store to look its features up in: set features.store_url", key("features")));
            }
            modelship_features::spec::SpecConfig {
                input: f.input,
                key: f.key,
                storage: f.storage,
                features: f.features,
                on_store_error: f.on_store_error,
                on_missing_entity: f.on_missing_entity,
            }
        });
        more_models.push(MoreModel { name, version, path: more.path, limits, declared: more.declared, features });
    }

    let device = device(raw.model.device.as_deref(), "model.device", &gpu, &mut problems);
    // One session per worker, and on a GPU each holds the weights and an arena of its own: one
    // worker, whose session takes the queued requests together (opportunistic joining) and
    // keeps the card busy, unless server.workers says otherwise. `auto` may land on the CPU, so
    // it keeps the CPU's default.
    let workers = raw.server.workers.unwrap_or_else(|| if matches!(device, modelship_inference::Device::Cuda(_)) { 1 } else { default_workers() });
    check_range("server.workers", workers, 1, 256, &mut problems);
    let intra_op_threads = raw.model.intra_op_threads.unwrap_or(1);
    check_range("model.intra_op_threads", intra_op_threads, 1, 256, &mut problems);
    let max_queue = raw.model.max_queue.unwrap_or(128);
    check_range("model.max_queue", max_queue, 1, 1_000_000, &mut problems);
    let inline_below_us = raw
        .model
        .inline_below_microseconds
        .unwrap_or(modelship_server::DEFAULT_INLINE_BELOW.as_micros() as u64);
    if inline_below_us > 1_000 {
        problems.push(format!(
            "model.inline_below_microseconds is {inline_below_us}; it must be at most 1000 (longer runs on the calling thread would stall other requests)"
        ));
    }
    let max_body_bytes = raw.server.max_body_bytes.unwrap_or(16 * 1024 * 1024);
    check_range("server.max_body_bytes", max_body_bytes, 1024, 1 << 31, &mut problems);
    let shutdown_grace = seconds("server.shutdown_grace_seconds", raw.server.shutdown_grace_seconds.unwrap_or(30.0), &mut problems);
    let shutdown_delay = seconds("server.shutdown_delay_seconds", raw.server.shutdown_delay_seconds.unwrap_or(0.0), &mut problems);
    let max_header_bytes = raw.server.max_header_bytes.unwrap_or(64 * 1024);
    check_range("server.max_header_bytes", max_header_bytes, 1024, 1 << 20, &mut problems);
    let max_tensor_elements = raw.server.max_tensor_elements.unwrap_or(16 * 1024 * 1024);
    check_range("server.max_tensor_elements", max_tensor_elements, 1, 1 << 31, &mut problems);
    let max_rows = raw.server.max_rows.unwrap_or(65_536);
    check_range("server.max_rows", max_rows, 1, 1 << 24, &mut problems);
    let header_read_timeout =
        seconds("server.header_read_timeout_seconds", raw.server.header_read_timeout_seconds.unwrap_or(10.0), &mut problems);
    if header_read_timeout < Duration::from_millis(100) {
        problems.push("server.header_read_timeout_seconds must be at least 0.1".to_owned());
    }
    let body_read_timeout =
        seconds("server.body_read_timeout_seconds", raw.server.body_read_timeout_seconds.unwrap_or(10.0), &mut problems);
    if body_read_timeout < Duration::from_millis(100) || body_read_timeout > Duration::from_secs(3600) {
        problems.push("server.body_read_timeout_seconds must be between 0.1 and 3600".to_owned());
    }
    let min_body_bytes_per_second = raw.server.min_body_bytes_per_second.unwrap_or(modelship_server::DEFAULT_MIN_BODY_RATE);
    check_range("server.min_body_bytes_per_second", usize::try_from(min_body_bytes_per_second).unwrap_or(usize::MAX), 1, 1 << 30, &mut problems);
    if let Some(n) = raw.server.max_connections {
        check_range("server.max_connections", n, 16, 1_000_000, &mut problems);
    }
    if let Some(n) = raw.server.max_loaded_models {
        check_range("server.max_loaded_models", n, 1, 1_000_000, &mut problems);
    }
    if raw.server.max_loaded_bytes == Some(0) {
        problems.push("server.max_loaded_bytes is 0; it must be a number of bytes above 0 (leave it out for no bound)".to_owned());
    }
    let residency = modelship_server::residency::ResidencyLimits {
        max_models: raw.server.max_loaded_models,
        max_bytes: raw.server.max_loaded_bytes,
        load_wait: seconds(
            "server.load_wait_seconds",
            raw.server.load_wait_seconds.unwrap_or(modelship_server::residency::DEFAULT_LOAD_WAIT.as_secs_f64()),
            &mut problems,
        ),
    };
    let warmup_requests = raw.model.warmup_requests.unwrap_or(modelship_server::DEFAULT_WARM_UP_REQUESTS);
    check_range("model.warmup_requests", warmup_requests, 1, 1000, &mut problems);
    let tls = match (raw.server.tls_cert_file.clone(), raw.server.tls_key_file.clone()) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push("server.tls_cert_file is set but server.tls_key_file is not; TLS needs both (--tls-cert and --tls-key)".to_owned());
            None
        }
        (None, Some(_)) => {
            problems.push("server.tls_key_file is set but server.tls_cert_file is not; TLS needs both (--tls-cert and --tls-key)".to_owned());
            None
        }
    };
    if admin.token.as_ref().is_some_and(|t| t.len() < MIN_ADMIN_TOKEN) {
        problems.push(format!(
            "MODELSHIP_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN} characters; set a longer token (it is not shown), or unset it to use the token file"
        ));
    }
    let api_keys_env: Vec<String> =
        env.get("MODELSHIP_API_KEYS").map(|v| v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
    if api_keys_env.iter().any(|k| k.len() < 16) {
        problems.push("MODELSHIP_API_KEYS holds a key shorter than 16 characters; use longer keys (they are not shown)".to_owned());
    }
    let security = SecurityConfig { api_keys_file: raw.server.api_keys_file.clone(), api_keys_env, tls };

    let host = raw.server.host.clone().unwrap_or_else(|| "0.0.0.0".to_owned());
    let path_prefix = raw.server.path_prefix.clone();
    if let Some(prefix) = &path_prefix
        && !(prefix.len() > 1
            && prefix.len() <= 64
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && !prefix.contains("//")
            && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)))
    {
        problems.push(format!("server.path_prefix '{prefix}' is not a path prefix: write /api (a leading /, no trailing /, letters, digits, '-', '_', '.')"));
    }
    if let Some(prefix) = &path_prefix
        && let Some(first) = prefix.trim_start_matches('/').split('/').next()
        && ["v1", "v2", "health", "metrics", "openapi.json", "predict", "feedback"].contains(&first)
    {
        problems.push(format!("server.path_prefix '{prefix}' starts with /{first}, a path of the API itself, which it would hide; use another, e.g. /api"));
    }
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        problems.push(format!("server.host '{host}' is not an address or host name"));
    }
    let port = raw.server.port.unwrap_or(8000);
    let grpc_port = raw.server.grpc_port.unwrap_or(if port == 0 { 0 } else { 8081 });
    if grpc_port != 0 && grpc_port == port {
        problems.push(format!("server.grpc_port {grpc_port} is the HTTP port too; give gRPC its own port"));
    }
    let batching = raw.model.dynamic_batching.as_ref().map(|b| resolve_batching(b, "model.dynamic_batching", &mut problems));

    let prediction_log = raw.prediction_log.as_ref().and_then(|p| resolve_prediction_log(p, &mut problems));
    let notifications = raw.notifications.as_ref().map(|n| resolve_notifications(n, env, &mut problems)).unwrap_or_default();
    let tracing = resolve_tracing(&raw.tracing, env, &mut problems);

    let level = raw.logging.level.as_deref().unwrap_or("info");
    let level = parse_level(level).unwrap_or_else(|| {
        problems.push(format!("logging.level '{level}' is not one of error, warn, info, debug, trace"));
        tracing::Level::INFO
    });
    let json = match raw.logging.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => {
            problems.push(format!("logging.format '{other}' is not json or text"));
            true
        }
    };
    let mut static_fields = BTreeMap::new();
    for (key, var) in [("pod_name", "POD_NAME"), ("pod_namespace", "POD_NAMESPACE")] {
        if let Some(v) = env.get(var) {
            static_fields.insert(key, v);
        }
    }

    let features = raw.features.as_ref().and_then(|f| {
        let url = f.store_url.clone()?;
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push(format!("features.store_url '{}' must start with redis:// or rediss://", redact_url(&url)));
        }
        let timeout_ms = f.timeout_ms.unwrap_or(100);
        if !(1..=60_000).contains(&timeout_ms) {
            problems.push(format!("features.timeout_ms is {timeout_ms}; it must be between 1 and 60000"));
        }
        let cache_max_entries = f.cache_max_entries.unwrap_or(100_000);
        Some(FeaturesConfig {
            store_url: url,
            cache_ttl: Duration::from_secs(f.cache_ttl.unwrap_or(300)),
            cache_max_entries,
            timeout: Duration::from_millis(timeout_ms),
            spec: modelship_features::spec::SpecConfig {
                input: f.input.clone(),
                key: f.key.clone(),
                storage: f.storage,
                features: f.features.clone(),
                on_store_error: f.on_store_error,
                on_missing_entity: f.on_missing_entity,
            },
        })
    });

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(ServeConfig {
        convert: args.convert.clone(),
        prediction_log,
        notifications,
        tracing,
        model_name,
        model_version,
        model_path,
        model_limits,
        model_declared,
        more_models,
        intra_op_threads,
        device,
        max_queue,
        inline_below: Duration::from_micros(inline_below_us),
        watch_file: raw.model.watch.unwrap_or(true),
        batching,
        opportunistic: if raw.model.opportunistic_batching.unwrap_or(true) {
            modelship_server::Opportunistic::Auto
        } else {
            modelship_server::Opportunistic::Off
        },
        host,
        path_prefix,
        port,
        grpc_port,
        workers,
        max_body_bytes,
        shutdown_grace,
        shutdown_delay,
        security,
        max_header_bytes,
        max_tensor_elements,
        max_rows,
        header_read_timeout,
        body_read_timeout,
        min_body_bytes_per_second,
        max_connections: raw.server.max_connections,
        residency,
        warmup_requests,
        warmup_sample: raw.model.warmup_sample.clone(),
        log: LogConfig { level, json, static_fields },
        ort_lib,
        features,
        registry_root,
        registry_poll,
        admin,
    })
}

/// The store URL with its host (and port) replaced by `REDIS_HOST` (and `REDIS_PORT`): the file's
/// scheme, credentials and database stay; with no URL, `redis://HOST:PORT`. `REDIS_PORT` may be
/// a number or, as Kubernetes writes it for a Service named `redis`, `tcp://ADDRESS:PORT`.
fn redis_address(url: Option<&str>, host: &str, port: Option<&str>) -> Result<String, String> {
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .or_else(|| p.strip_prefix("tcp://").and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()))
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("REDIS_PORT '{p}' is not a port number (1-65535) or tcp://ADDRESS:PORT"))?,
        ),
    };
    let mut parsed = url::Url::parse(url.unwrap_or("redis://localhost:6379"))
        .map_err(|e| format!("features.store_url '{}' is not a URL ({e}), so REDIS_HOST cannot be applied to it", redact_url(url.unwrap_or(""))))?;
    let bracketed = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    parsed.set_host(Some(&bracketed)).map_err(|e| format!("REDIS_HOST '{host}' is not a host name or address ({e})"))?;
    if port.is_some() || url.is_none() {
        parsed.set_port(Some(port.unwrap_or(6379))).map_err(|()| format!("cannot set the port of features.store_url to {port:?}"))?;
    }
    let mut text = parsed.to_string();
    // `Url` writes an empty path as "/"; the store's URLs in messages and tests have none.
    if parsed.path() == "/" && !url.is_some_and(|u| u.ends_with('/')) {
        text.pop();
    }
    Ok(text)
}

/// `model.gpu` checked.
fn resolve_gpu(raw: Option<&RawGpu>, state_dir: &Path, problems: &mut Vec<String>) -> modelship_inference::Gpu {
    let engine_cache = Some(state_dir.join("tensorrt-cache"));
    let Some(g) = raw else { return modelship_inference::Gpu { engine_cache, ..modelship_inference::Gpu::default() } };
    let arena_same_as_requested = match g.arena_extend.as_deref() {
        None | Some("next_power_of_two") => false,
        Some("same_as_requested") => true,
        Some(other) => {
            problems.push(format!("model.gpu.arena_extend '{other}' is not next_power_of_two or same_as_requested"));
            false
        }
    };
    if g.memory_limit_bytes == Some(0) {
        problems.push("model.gpu.memory_limit_bytes is 0; leave it out for no limit".to_owned());
    }
    modelship_inference::Gpu {
        id: 0,
        memory_limit: g.memory_limit_bytes,
        arena_same_as_requested,
        tensorrt: g.tensorrt.unwrap_or(false),
        engine_cache,
        cuda_graph: g.cuda_graph.unwrap_or(false),
        separate_copy_stream: g.separate_copy_stream.unwrap_or(false),
        fallback_to_cpu: g.fallback_to_cpu.unwrap_or(false),
    }
}

/// A device setting checked (`cpu` when unset).
fn device(text: Option<&str>, key: &str, gpu: &modelship_inference::Gpu, problems: &mut Vec<String>) -> modelship_inference::Device {
    match text.map(|t| modelship_inference::Device::parse(t, gpu.clone())) {
        None => modelship_inference::Device::Cpu,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            problems.push(format!("{key}: {e}"));
            modelship_inference::Device::Cpu
        }
    }
}

fn overlay<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The limits of one `models` entry (`key` names its fields in problems).
fn entry_limits(more: &RawMoreModel, key: &dyn Fn(&str) -> String, gpu: &modelship_inference::Gpu, problems: &mut Vec<String>) -> modelship_server::ModelLimits {
    if let Some(w) = more.workers {
        check_range(&key("workers"), w, 1, 256, problems);
    }
    if let Some(q) = more.max_queue {
        check_range(&key("max_queue"), q, 1, 1_000_000, problems);
    }
    if let Some(t) = more.intra_op_threads {
        check_range(&key("intra_op_threads"), t, 1, 256, problems);
    }
    // Batching depends on a model's shapes: a listed model batches only when its entry says so.
    let batching = Some(more.dynamic_batching.as_ref().map(|b| resolve_batching(b, &key("dynamic_batching"), problems)));
    let device = more.device.as_deref().map(|d| device(Some(d), &key("device"), gpu, problems));
    // On a GPU one session (see `workers` in `resolve`) unless the entry says otherwise.
    let workers = more.workers.or_else(|| device.as_ref().filter(|d| matches!(d, modelship_inference::Device::Cuda(_))).map(|_| 1));
    modelship_server::ModelLimits { workers, max_queue: more.max_queue, intra_op_threads: more.intra_op_threads, device, batching }
}

/// `dynamic_batching` (the server's, `model.dynamic_batching`, or one model's) checked; `key`
/// names it in problems.
fn resolve_batching(b: &RawBatching, key: &str, problems: &mut Vec<String>) -> modelship_server::Batching {
    let max_batch_size = b.max_batch_size.unwrap_or(32);
    check_range(&format!("{key}.max_batch_size"), max_batch_size, 1, 65_536, problems);
    let delay = b.max_queue_delay_microseconds.unwrap_or(500);
    if delay > 10_000_000 {
        problems.push(format!("{key}.max_queue_delay_microseconds is {delay}; it must be at most 10000000 (10 s)"));
    }
    let mut preferred = b.preferred_batch_size.clone();
    preferred.sort_unstable();
    preferred.dedup();
    for &p in &preferred {
        if p == 0 || p > max_batch_size {
            problems.push(format!("{key}.preferred_batch_size {p} must be between 1 and max_batch_size ({max_batch_size})"));
        }
    }
    modelship_server::Batching { max_batch_size, max_queue_delay: Duration::from_micros(delay), preferred_batch_sizes: preferred }
}

/// The registry model's name for a reference (`fraud@production`), else the file name without
/// `.onnx`, made into a valid name.
fn default_name(path: &Path) -> String {
    if let Some(reference) = path.to_str().filter(|s| modelship_registry::ModelRef::looks_like_reference(s))
        && let Ok(r) = modelship_registry::ModelRef::parse(reference)
    {
        return r.name().to_owned();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    if name.is_empty() { "model".to_owned() } else { name }
}

/// Names and versions appear in URLs, metric labels and (later) registry paths: letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit, at most 128 characters.
pub fn check_name(what: &str, value: &str, problems: &mut Vec<String>) {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        problems.push(format!(
            "{what} '{value}' is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ));
    }
}

fn check_range(what: &str, value: usize, min: usize, max: usize, problems: &mut Vec<String>) {
    if !(min..=max).contains(&value) {
        problems.push(format!("{what} is {value}; it must be between {min} and {max}"));
    }
}

/// The longest duration any setting takes: longer is a typo (a timeout in milliseconds written
/// as seconds), and far enough beyond it a deadline computed from it overflows.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn seconds(what: &str, value: f64, problems: &mut Vec<String>) -> Duration {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if value <= MAX_SECONDS => d,
        _ => {
            problems.push(format!("{what} is {value}; it must be a number of seconds from 0 to {MAX_SECONDS} (a year)"));
            Duration::ZERO
        }
    }
}

/// Accepts the seed's Python-style names too (`INFO`, `WARNING`).
fn parse_level(level: &str) -> Option<tracing::Level> {
    Some(match level.to_ascii_lowercase().as_str() {
        "error" | "critical" | "fatal" => tracing::Level::ERROR,
        "warn" | "warning" => tracing::Level::WARN,
        "info" => tracing::Level::INFO,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => return None,
    })
}

/// A URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    modelship_features::store::redact(url)
}

/// A replica's default name: the host's name and this process's id (unique on one host, and a
/// restarted process is a new replica).
pub fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).take(100).collect();
    format!("{}-{}", if host.is_empty() { "replica" } else { &host }, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "\
model:
  name: fraud-detection
  version: v1.2.0
  path: /models/model.onnx
server:
  host: 0.0.0.0
  port: 8000
  workers: 4
features:
  store_url: redis://redis:6379
  cache_ttl: 300
logging:
  level: INFO
  format: json
";

    fn env(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    fn check(file: &str, env_pairs: &[(&'static str, &'static str)], args: &[&str]) -> Result<ServeConfig, String> {
        use clap::Parser;
        let raw = parse_file(file).map_err(|p| p.join("\n"))?;
        let cli = crate::cli::Cli::try_parse_from(["modelship", "serve"].iter().chain(args)).map_err(|e| e.to_string())?;
        let crate::cli::Command::Serve(serve) = cli.command else { unreachable!("parsed a serve command") };
        resolve(raw, &env(env_pairs), &serve).map_err(|e| e.to_string())
    }

    #[test]
    fn notification_sinks_take_their_secrets_from_the_environment_only() {
        use modelship_server::notify::{EventKind, Secret, Severity, SinkKind};
        let file = "model: {path: /m.onnx}\nnotifications:\n  retries: 2\n  sinks:\n    - {name: ops, webhook: 'https://hooks.example.com/x', secret_env: HOOK_SECRET, events: [rolled_back, paused]}\n    - {slack_env: SLACK_URL, min_severity: warning}\n    - {name: am, alertmanager: 'http://am:9093'}\n";
        let c = check(file, &[("HOOK_SECRET", "s3cret"), ("SLACK_URL", "https://hooks.slack.com/services/T/B/X")], &[]).unwrap();
        assert_eq!(c.notifications.len(), 3);
        assert_eq!(c.notifications[0].kind, SinkKind::Webhook { url: "https://hooks.example.com/x".into(), secret: Some(Secret("s3cret".into())) });
        assert_eq!((c.notifications[0].events.clone(), c.notifications[0].retries), (vec![EventKind::RolledBack, EventKind::Paused], 2));
        assert_eq!((c.notifications[1].name.as_str(), c.notifications[1].min_severity), ("slack-2", Severity::Warning));
        for (bad, says) in [
            ("- {slack: 'https://hooks.slack.com/services/T/B/X'}", "a Slack webhook URL is a credential"),
            ("- {webhook: 'https://x', secret_env: NOPE}", "the environment variable NOPE"),
            ("- {webhook: 'ftp://x'}", "must be an http:// or https:// URL"),
            ("- {webhook: 'https://x', alertmanager: 'http://am'}", "exactly one of webhook"),
            ("- {webhook: 'https://x', events: [launched]}", "'launched' is not an event"),
            ("- {webhook: 'https://x', events: [promoted], min_severity: warning}", "would be told nothing"),
            ("- {alertmanager: 'http://am', secret_env: HOOK_SECRET}", "a Slack or Alertmanager sink takes none"),
            ("- {name: a, webhook: 'https://x'}\n    - {name: a, webhook: 'https://y'}", "used twice"),
        ] {
            let file = format!("model: {{path: /m.onnx}}\nnotifications:\n  sinks:\n    {bad}\n");
            let err = check(&file, &[("HOOK_SECRET", "s3cret")], &[]).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("hooks.slack.com"), "the Slack URL in an error: {err}");
        }
    }

    #[test]
    fn tracing_is_off_unless_asked_and_the_otel_variables_win() {
        use modelship_server::trace::Protocol;
        let off = check("model: {path: /m.onnx}\n", &[], &[]).unwrap();
        assert_eq!(off.tracing, None);
        let file = "model: {path: /m.onnx}\ntracing: {enabled: true, sample_ratio: 0.5, protocol: http/protobuf}\n";
        let on = check(file, &[], &[]).unwrap().tracing.unwrap();
        assert_eq!((on.ratio, on.protocol, on.service.as_str()), (0.5, Protocol::HttpProtobuf, "modelship"));
        let env = check("model: {path: /m.onnx}\n", &[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")], &[]).unwrap().tracing.unwrap();
        assert_eq!((env.ratio, env.protocol), (0.01, Protocol::Grpc));
        assert_eq!(check(file, &[("OTEL_SDK_DISABLED", "true")], &[]).unwrap().tracing, None);
        assert_eq!(check(file, &[("OTEL_TRACES_EXPORTER", "none")], &[]).unwrap().tracing, None);
        for (pairs, says) in [
            (vec![("OTEL_TRACES_SAMPLER_ARG", "2")], "between 0 and 1"),
            (vec![("OTEL_TRACES_SAMPLER", "traceidratio")], "always continues a sampled caller's trace"),
            (vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "not grpc or http/protobuf"),
            (vec![("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER 'zipkin'"),
        ] {
            let err = check(file, &pairs, &[]).unwrap_err();
            assert!(err.contains(says), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_seed_configmap_is_accepted_as_is() {
        let c = check(SEED, &[], &[]).unwrap();
        assert_eq!(
            (c.model_name.as_str(), c.model_version.as_str(), c.model_path.as_path(), c.host.as_str(), c.port, c.workers),
            ("fraud-detection", "v1.2.0", Path::new("/models/model.onnx"), "0.0.0.0", 8000, 4)
        );
        assert_eq!(c.log.level, tracing::Level::INFO);
        assert!(c.log.json);
        assert_eq!(
            c.features,
            Some(FeaturesConfig {
                store_url: "redis://redis:6379".to_owned(),
                cache_ttl: Duration::from_secs(300),
                cache_max_entries: 100_000,
                timeout: Duration::from_millis(100),
                spec: Default::default(),
            })
        );
    }

    #[test]
    fn precedence_is_default_file_env_flags() {
        let c = check("", &[("MODEL_PATH", "/env.onnx")], &[]).unwrap();
        assert_eq!((c.model_path.to_str().unwrap(), c.model_name.as_str(), c.model_version.as_str(), c.port), ("/env.onnx", "env", "1", 8000));
        let c = check(SEED, &[("MODEL_PATH", "/env.onnx"), ("MODEL_VERSION", "v9"), ("LOG_LEVEL", "DEBUG")], &[]).unwrap();
        assert_eq!((c.model_path.to_str().unwrap(), c.model_version.as_str(), c.log.level), ("/env.onnx", "v9", tracing::Level::DEBUG));
        let c = check(
            SEED,
            &[("MODEL_PATH", "/env.onnx"), ("MODEL_VERSION", "v9")],
            &["/flag.onnx", "--model-version", "v10", "--port", "0", "--log-level", "warn", "--log-format", "text"],
        )
        .unwrap();
        assert_eq!(
            (c.model_path.to_str().unwrap(), c.model_version.as_str(), c.port, c.log.level, c.log.json),
            ("/flag.onnx", "v10", 0, tracing::Level::WARN, false)
        );
    }

    /// Several models: the file's `models` list, then MORE arguments, then `--models`; each named
    /// after its file or registry name unless the file names it; one name per model.
    #[test]
    fn several_models_from_the_file_the_arguments_and_models() {
        let names = |c: &ServeConfig| {
            std::iter::once((c.model_name.clone(), c.model_version.clone(), c.model_path.display().to_string()))
                .chain(c.more_models.iter().map(|m| (m.name.clone(), m.version.clone(), m.path.display().to_string())))
                .collect::<Vec<_>>()
        };
        let file = "model: {path: /m/fraud.onnx, version: v2}\nmodels:\n  - {path: /m/churn.onnx}\n  - {path: /m/x.onnx, name: risk, version: v7}\n";
        let c = check(file, &[], &[]).unwrap();
        let expected = [("fraud", "v2", "/m/fraud.onnx"), ("churn", "v2", "/m/churn.onnx"), ("risk", "v7", "/m/x.onnx")];
        assert_eq!(names(&c), expected.map(|(n, v, p)| (n.to_owned(), v.to_owned(), p.to_owned())));
        // MODEL replaces model.path, as on a server of one model; MORE adds to the list.
        let c = check(file, &[], &["/m/first.onnx", "/m/extra.onnx"]).unwrap();
        assert_eq!(names(&c).iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["first", "churn", "risk", "extra"]);
        let c = check("", &[], &["--models", "fraud@production,churn:3"]).unwrap();
        assert_eq!(names(&c).iter().map(|(n, _, p)| (n.as_str(), p.as_str())).collect::<Vec<_>>(), [("fraud", "fraud@production"), ("churn", "churn:3")]);
        let c = check("", &[], &["/m/a.onnx", "--models", "b.onnx"]).unwrap();
        assert_eq!(names(&c).iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b"], "MODEL first, --models after");
        let e = check("", &[], &["/m/fraud.onnx", "/n/fraud.onnx"]).unwrap_err();
        assert!(e.contains("two models are named 'fraud' (/n/fraud.onnx)") && e.contains("models[].name"), "{e}");
        let e = check("models: [{path: /m/a.onnx, name: 'no/slash'}]\nmodel: {path: /m/b.onnx}\n", &[], &[]).unwrap_err();
        assert!(e.contains("models[0].name 'no/slash' is not valid"), "{e}");
        let e = check("", &[], &["/m/a.onnx", "/m/b c.onnx", "--model-version", "v1"]).map(|c| c.more_models[0].name.clone());
        assert_eq!(e.as_deref(), Ok("b-c"), "a file name becomes a valid name");
        let e = check("", &[], &["/m/a.onnx", "/m/b.onnx", "--model-version", "bad/v"]).unwrap_err();
        assert!(e.contains("the version of model /m/b.onnx 'bad/v' is not valid"), "an argument is named by its path: {e}");
        // A file with a models list alone: the first is the server's own; indices stay the file's.
        let c = check("models:\n  - {path: /m/a.onnx, version: v3}\n  - {path: /m/b.onnx}\n", &[], &[]).unwrap();
        assert_eq!((c.model_name.as_str(), c.model_version.as_str(), c.more_models.len()), ("a", "v3", 1));
        let e = check("models:\n  - {path: /m/a.onnx}\n  - {path: /m/b.onnx, workers: 0}\n", &[], &[]).unwrap_err();
        assert!(e.contains("models[1].workers"), "{e}");
        let e = check("models: [{path: /m/a.onnx, workers: 2}]\n", &[], &[]).unwrap_err();
        assert!(e.contains("models[0] is the server's own model"), "{e}");
    }

    /// The port a platform gives: Azure's custom handler port over `PORT` (Cloud Run) over the
    /// file; `--port` over all.
    #[test]
    fn the_platforms_port() {
        let port = |file: &str, env: &[(&'static str, &'static str)], args: &[&str]| check(file, env, args).map(|c| c.port);
        assert_eq!(port("model: {path: /m.onnx}\n", &[], &[]), Ok(8000));
        assert_eq!(port("model: {path: /m.onnx}\nserver: {port: 9000}\n", &[("PORT", "8080")], &[]), Ok(8080));
        assert_eq!(port("model: {path: /m.onnx}\n", &[("PORT", "8080"), ("FUNCTIONS_CUSTOMHANDLER_PORT", "41234")], &[]), Ok(41234));
        assert_eq!(port("model: {path: /m.onnx}\n", &[("PORT", "8080")], &["--port", "7000"]), Ok(7000));
        assert!(port("model: {path: /m.onnx}\n", &[("PORT", "http")], &[]).unwrap_err().contains("PORT 'http' is not a port number"));
        assert_eq!(port("model: {path: /m.onnx}\n", &[("PORT", "http")], &["--port", "0"]), Ok(0), "a flag wins, whatever the variable holds");
    }

    /// The REST API under a prefix: a plain path, never one of the API's own.
    #[test]
    fn the_path_prefix() {
        assert_eq!(check("model: {path: /m.onnx}\n", &[], &["--path-prefix", "/api"]).map(|c| c.path_prefix), Ok(Some("/api".to_owned())));
        for (bad, why) in [("api", "is not a path prefix"), ("/api/", "is not a path prefix"), ("/", "is not a path prefix"), ("/a b", "is not a path prefix"), ("/health", "starts with /health"), ("/v2/x", "starts with /v2")] {
            let e = check("model: {path: /m.onnx}\n", &[], &["--path-prefix", bad]).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// `model.device` (flag, environment, file) and `model.gpu`; on a GPU one worker unless told.
    #[test]
    fn the_device_and_its_settings() {
        use modelship_inference::{Device, Gpu};
        let c = check("model: {path: /m.onnx}\n", &[], &[]).unwrap();
        assert_eq!(c.device, Device::Cpu);
        let file = "model: {path: /m.onnx, device: auto, gpu: {memory_limit_bytes: 4294967296, arena_extend: same_as_requested, tensorrt: true}}\nmodels: [{path: /m/b.onnx, device: cpu}, {path: /m/c.onnx, device: 'cuda:1'}]\n";
        let c = check(file, &[], &[]).unwrap();
        // TensorRT's engines are kept in the server's state directory.
        let engine_cache = Some(c.admin.state_dir.join("tensorrt-cache"));
        let gpu = Gpu { memory_limit: Some(4 << 30), arena_same_as_requested: true, tensorrt: true, engine_cache: engine_cache.clone(), ..Gpu::default() };
        assert_eq!((c.device.clone(), c.workers), (Device::Auto(gpu.clone()), super::default_workers()), "auto may land on the CPU: the CPU's default");
        assert_eq!((c.more_models[0].limits.device.clone(), c.more_models[0].limits.workers), (Some(Device::Cpu), None));
        assert_eq!((c.more_models[1].limits.device.clone(), c.more_models[1].limits.workers), (Some(Device::Cuda(Gpu { id: 1, ..gpu.clone() })), Some(1)));
        // Flag over environment over file; server.workers wins over the GPU's default.
        let c = check("model: {path: /m.onnx, device: auto}\nserver: {workers: 3}\n", &[("MODELSHIP_DEVICE", "cuda")], &["--device", "cuda:2"]).unwrap();
        assert_eq!((c.device, c.workers), (Device::Cuda(Gpu { id: 2, engine_cache, ..Gpu::default() }), 3));
        let e = check("model: {path: /m.onnx, device: 'cuda:x', gpu: {arena_extend: huge, memory_limit_bytes: 0}}\n", &[], &[]).unwrap_err();
        for needle in ["model.device: device 'cuda:x' is not one of", "model.gpu.arena_extend 'huge'", "model.gpu.memory_limit_bytes is 0"] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        assert!(check("model: {path: /m.onnx, gpu: {streams: 2}}\n", &[], &[]).unwrap_err().contains("streams"));
    }

    /// A model of the list may have its own workers, queue, threads and batching; what it leaves
    /// out is the server's. Each bad value is named with its entry.
    #[test]
    fn a_listed_model_has_limits_of_its_own() {
        let file = "model: {path: /m/fraud.onnx}\nmodels:\n  - {path: /m/churn.onnx, workers: 2, max_queue: 16, dynamic_batching: {max_batch_size: 8, max_queue_delay_microseconds: 200}}\n  - {path: /m/plain.onnx}\n";
        let c = check(file, &[], &[]).unwrap();
        let churn = &c.more_models[0].limits;
        assert_eq!((churn.workers, churn.max_queue, churn.intra_op_threads), (Some(2), Some(16), None));
        assert_eq!(churn.batching.clone().flatten().map(|b| (b.max_batch_size, b.max_queue_delay)), Some((8, Duration::from_micros(200))));
        assert_eq!(c.more_models[1].limits, modelship_server::ModelLimits { batching: Some(None), ..Default::default() }, "no batching of its own: none");
        let e = check("model: {path: /m/a.onnx}\nmodels: [{path: /m/b.onnx, workers: 0, dynamic_batching: {max_batch_size: 0}}]\n", &[], &[]).unwrap_err();
        assert!(e.contains("models[0].workers") && e.contains("models[0].dynamic_batching.max_batch_size"), "{e}");
    }

    /// (file, flags) -> the prediction log resolved, or the problem named.
    #[test]
    fn the_prediction_log_from_the_file_and_the_flags() {
        let ok: Vec<(&str, Vec<&str>, &str, (f64, f64, f64), u64)> = vec![
            ("", vec!["--prediction-log", "preds"], "preds", (1.0, 1.0, 1.0), 60),
            ("prediction_log: {url: s3://b/p, sample: {stable: 0.01}, roll_seconds: 5}\n", vec![], "s3://b/p", (0.01, 1.0, 1.0), 5),
            ("prediction_log: {url: a, sample: {shadow: 0.5}}\n", vec!["--prediction-log", "b", "--prediction-log-sample", "stable=0.1,candidate=0"], "b", (0.1, 0.0, 0.5), 60),
        ];
        for (file, args, url, (stable, candidate, shadow), roll) in ok {
            let mut argv = vec!["/m.onnx"];
            argv.extend(args);
            let log = check(file, &[], &argv).unwrap().prediction_log.unwrap_or_else(|| panic!("{file} {argv:?}"));
            assert_eq!(log.url, url);
            let s = log.log.sampling;
            assert_eq!((s.stable, s.candidate, s.shadow, log.log.roll_interval.as_secs()), (stable, candidate, shadow, roll), "{file}");
        }
        assert!(check("", &[], &["/m.onnx"]).unwrap().prediction_log.is_none(), "off unless asked");
        // A model's own rates: the roles it leaves out take the log's.
        let log = check("prediction_log: {url: p, sample: {stable: 0.1}, models: {fraud: {stable: 1, shadow: 0}}}\n", &[], &["/m.onnx"]).unwrap().prediction_log.unwrap();
        let fraud = log.log.models["fraud"];
        assert_eq!((fraud.stable, fraud.candidate, fraud.shadow, log.log.sampling.stable), (1.0, 1.0, 0.0, 0.1));
        let bad: Vec<(&str, Vec<&str>, &str)> = vec![
            ("prediction_log: {sample: {stable: 0.5}}\n", vec![], "prediction_log is set without a url"),
            ("prediction_log: {url: p, sample: {stable: 2}}\n", vec![], "prediction_log.sample.stable is 2"),
            ("prediction_log: {url: p, roll_seconds: 7200}\n", vec![], "roll_seconds must be between 0.1 and 3600"),
            ("prediction_log: {url: p, queue: 0}\n", vec![], "prediction_log.queue"),
            ("prediction_log: {url: p, models: {fraud: {candidate: -1}}}\n", vec![], "prediction_log.models.fraud.candidate is -1"),
            ("", vec!["--prediction-log", "p", "--prediction-log-sample", "canary=1"], "'canary' is not a role"),
            ("", vec!["--prediction-log", "p", "--prediction-log-sample", "stable=1.5"], "a rate is between 0 and 1"),
        ];
        for (file, args, message) in bad {
            let mut argv = vec!["/m.onnx"];
            argv.extend(args);
            let err = check(file, &[], &argv).unwrap_err();
            assert!(err.contains(message), "{file} {argv:?}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let err = check("model:\n  pth: /m.onnx\nserver:\n  prot: 80\nextra: 1\n", &[], &[]).unwrap_err();
        assert_eq!(
            err,
            "unknown key 'model.pth' (known sections: model, server, features, logging, registry, admin; see `modelship serve --help`)\n\
             unknown key 'server.prot' (known sections: model, server, features, logging, registry, admin; see `modelship serve --help`)\n\
             unknown key 'extra' (known sections: model, server, features, logging, registry, admin; see `modelship serve --help`)"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = check(
            "server: {workers: 0}\nlogging: {level: LOUD, format: xml}\nfeatures: {store_url: 'http://user:secret@host'}\n",
            &[],
            &["--name", "../etc", "--shutdown-grace=-1"],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "invalid configuration:\n  \
             - no model given: pass MODEL.onnx (`modelship serve model.onnx`), set model.path in the config file, or set MODEL_PATH\n  \
             - model name '../etc' is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit\n  \
             - server.workers is 0; it must be between 1 and 256\n  \
             - server.shutdown_grace_seconds is -1; it must be a number of seconds from 0 to 31536000 (a year)\n  \
             - logging.level 'LOUD' is not one of error, warn, info, debug, trace\n  \
             - logging.format 'xml' is not json or text\n  \
             - features.store_url 'http://***@host' must start with redis:// or rediss://"
        );
    }

    #[test]
    fn wrong_value_types_name_the_key() {
        let err = check("server:\n  port: eighty\n", &[], &[]).unwrap_err();
        assert!(err.starts_with("server.port: invalid type: string \"eighty\", expected u16"), "{err}");
    }

    #[test]
    fn redis_host_and_port_point_the_feature_store_like_the_seeds_files() {
        let url = |file: &str, env_pairs: &[(&'static str, &'static str)]| {
            check(file, &[&[("MODEL_PATH", "m.onnx")], env_pairs].concat(), &[]).map(|c| c.features.map(|f| f.store_url))
        };
        // The seed's ConfigMap with the seed's Compose (`redis`) and Kubernetes (`redis-service`) environment.
        assert_eq!(url(SEED, &[("REDIS_HOST", "redis-service")]).unwrap().as_deref(), Some("redis://redis-service:6379"));
        assert_eq!(url(SEED, &[("REDIS_HOST", "redis"), ("REDIS_PORT", "6380")]).unwrap().as_deref(), Some("redis://redis:6380"));
        // Without a config file, REDIS_HOST alone connects the store (readiness follows it).
        assert_eq!(url("", &[("REDIS_HOST", "redis")]).unwrap().as_deref(), Some("redis://redis:6379"));
        // The file's scheme, credentials and database stay; flags still win over nothing here.
        assert_eq!(
            url("features: {store_url: 'rediss://u:pw@old:7000/2'}\n", &[("REDIS_HOST", "new")]).unwrap().as_deref(),
            Some("rediss://u:pw@new:7000/2")
        );
        // Kubernetes' service link variable, and REDIS_PORT alone moving the file's store.
        assert_eq!(url(SEED, &[("REDIS_HOST", "redis"), ("REDIS_PORT", "tcp://10.0.0.7:6390")]).unwrap().as_deref(), Some("redis://redis:6390"));
        assert_eq!(url(SEED, &[("REDIS_PORT", "6391")]).unwrap().as_deref(), Some("redis://redis:6391"));
        // REDIS_PORT alone never turns a store on (Kubernetes sets it for any Service named redis).
        assert_eq!(url("", &[("REDIS_PORT", "6379")]).unwrap(), None);
        assert_eq!(url("", &[("REDIS_HOST", "::1")]).unwrap().as_deref(), Some("redis://[::1]:6379"));
        assert_eq!(
            url(SEED, &[("REDIS_HOST", "redis"), ("REDIS_PORT", "sixty")]).unwrap_err(),
            "invalid configuration:\n  - REDIS_PORT 'sixty' is not a port number (1-65535) or tcp://ADDRESS:PORT"
        );
    }

    #[test]
    fn pod_identity_goes_into_log_fields() {
        let c = check("", &[("MODEL_PATH", "m.onnx"), ("POD_NAME", "fraud-7d9"), ("POD_NAMESPACE", "ml")], &[]).unwrap();
        assert_eq!(c.log.static_fields.get("pod_name").map(String::as_str), Some("fraud-7d9"));
        assert_eq!(c.log.static_fields.get("pod_namespace").map(String::as_str), Some("ml"));
    }

    #[test]
    fn the_replica_is_named_by_flag_env_or_pod_and_the_lease_is_bounded() {
        let m = [("MODEL_PATH", "m.onnx")];
        let c = check("", &m, &[]).unwrap();
        assert!(c.admin.replica.ends_with(&format!("-{}", std::process::id())), "{}", c.admin.replica);
        assert_eq!(c.admin.lease_ttl, Duration::from_secs(10));
        let c = check("", &[m[0], ("POD_NAME", "fraud-7d9")], &[]).unwrap();
        assert_eq!(c.admin.replica, "fraud-7d9");
        let c = check("", &[m[0], ("POD_NAME", "fraud-7d9"), ("MODELSHIP_REPLICA", "edge-1")], &[]).unwrap();
        assert_eq!(c.admin.replica, "edge-1");
        let c = check("server:\n  replica: from-file\n", &[m[0], ("POD_NAME", "pod")], &["--replica", "flag-1", "--lease-ttl", "3"]).unwrap();
        assert_eq!((c.admin.replica.as_str(), c.admin.lease_ttl), ("flag-1", Duration::from_secs(3)));
        let e = check("", &m, &["--replica", "a/b", "--lease-ttl", "0.2"]).unwrap_err();
        assert!(e.contains("server.replica 'a/b' is not a usable replica name") && e.contains("lease_ttl_seconds must be between 1 and 300"), "{e}");
        // The readiness policy without the store: unset by default, from the file or the flag.
        assert_eq!(c.admin.unready_without_store, None);
        let c = check("server:\n  unready_without_store_seconds: 30\n", &m, &[]).unwrap();
        assert_eq!(c.admin.unready_without_store, Some(Duration::from_secs(30)));
        assert_eq!(check("", &m, &["--unready-without-store", "5"]).unwrap().admin.unready_without_store, Some(Duration::from_secs(5)));
        let e = check("", &m, &["--unready-without-store", "0.1"]).unwrap_err();
        assert!(e.contains("unready_without_store_seconds must be between 1 and 86400"), "{e}");
    }

    #[test]
    fn a_short_admin_token_from_the_environment_is_refused() {
        let m = ("MODEL_PATH", "m.onnx");
        for (token, refused) in [("a", true), ("fifteen-chars15", true), ("sixteen-chars-16", false), ("a-much-longer-admin-token", false)] {
            let result = check("", &[m, ("MODELSHIP_ADMIN_TOKEN", token)], &[]);
            match (result, refused) {
                (Err(e), true) => {
                    assert!(e.contains("MODELSHIP_ADMIN_TOKEN is shorter than 16 characters"), "{token}: {e}");
                    assert!(token.len() == 1 || !e.contains(token), "the token is never shown: {e}");
                }
                (Ok(c), false) => assert_eq!(c.admin.token.as_deref(), Some(token)),
                (result, _) => panic!("{token}: {result:?}"),
            }
        }
    }

    #[test]
    fn durations_beyond_a_year_are_refused() {
        let m = [("MODEL_PATH", "m.onnx")];
        for (flag, ok) in [("--shutdown-grace=31536000", true), ("--shutdown-grace=31536001", false), ("--shutdown-grace=1e19", false), ("--shutdown-grace=inf", false)] {
            let result = check("", &m, &[flag]);
            assert_eq!(result.is_ok(), ok, "{flag}: {result:?}");
            if let Err(e) = result {
                assert!(e.contains("from 0 to 31536000 (a year)"), "{flag}: {e}");
            }
        }
    }
}
