//! The deployment description: one YAML file (plus the CLI's flags) that every target reads.
//!
//! ```yaml
//! name: fraud                       # project, stack and service name
//! model:
//!   file: models/fraud.onnx         # a host file: mounted read-only (replace it to update), or
//!   delivery: mount                 #   `bake`d into the image
//!   # registry: fraud@production    # or fetched from a registry at start (and followed)
//!   # registry_dir: registry        #   the registry directory, mounted into the container
//!   name: fraud                     # served name and version (MODEL_NAME, MODEL_VERSION)
//!   version: "1"
//! config: serving.yaml              # optional serving config, mounted read-only (CONFIG_PATH)
//! image: {name: modelship, tag: "0.1.0", build: binary, gpu: false, features: [s3]}
//! replicas: 3
//! resources: {cpus: 1.0, memory: 512M}
//! ports: {http: 8000, grpc: 8081, admin: 8001, publish_admin: false}
//! feature_store: {service: true}    # Redis beside the server; REDIS_HOST/REDIS_PORT point at it
//! control_store: redis://redis:6379/1   # the fleet store (only emitted when set)
//! strategy: {parallelism: 1, delay: 10s, order: start-first, failure_action: rollback, monitor: 30s}
//! restart: {condition: on-failure, delay: 5s, max_attempts: 3}
//! drain: {delay: 5s, grace: 30s}
//! prometheus: {}                    # a Prometheus scraping every replica
//! kubernetes: {namespace: ml, strategy: canary, mesh: istio}   # see [`Kubernetes`]
//! lambda: {architecture: arm64, memory: 1024, deployment: Linear10PercentEvery1Minute}   # see [`Lambda`]
//! ```
//!
//! Host paths are relative to the description's directory; the CLI rewrites them relative to
//! the output directory (see [`relative_path`]) before rendering, so the generated files can be
//! committed and moved together.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Target;

mod azure;
mod cloudrun;
mod kubernetes;
mod lambda;

pub use azure::*;
pub use cloudrun::*;
pub use kubernetes::*;
pub use lambda::*;

/// Every problem found in a description, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid deployment description:\n  - {}", .0.join("\n  - "))]
pub struct DescriptionError(pub Vec<String>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub name: String,
    pub model: Model,
    /// Host path of a serving config (`serving.yaml`), mounted at [`CONFIG_PATH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default)]
    pub image: Image,
    /// [default: 3 on Kubernetes (the guide's Deployment), 1 elsewhere; see [`Deployment::settle`]]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub ports: Ports,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_store: Option<FeatureStore>,
    /// The fleet control store URL (`redis://...`): passed as `MODELSHIP_CONTROL_STORE` only when
    /// set, so that the replicas share one routing table and one rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_store: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default)]
    pub drain: Drain,
    #[serde(default)]
    pub healthcheck: Healthcheck,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    /// The alerting rules' thresholds (the rules are written for Compose and Swarm with a
    /// `prometheus:`, by `deploy alerts`, and as a `PrometheusRule` by `deploy k8s` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
    #[serde(default)]
    pub swarm: SwarmOptions,
    #[serde(default)]
    pub kubernetes: Kubernetes,
    #[serde(default)]
    pub lambda: Lambda,
    #[serde(default)]
    pub cloudrun: CloudRun,
    #[serde(default)]
    pub azure_functions: AzureFunctions,
    /// The serving config's text, which the CLI reads from `config` (the Kubernetes target puts
    /// it in a ConfigMap; the others mount the file).
    #[serde(skip)]
    pub config_contents: Option<String>,
    /// The rollout spec's text (`kubernetes.rollout.spec`), which the CLI reads for its ConfigMap.
    #[serde(skip)]
    pub rollout_contents: Option<String>,
    /// Extra environment for the server (never secrets: they belong in files or the
    /// orchestrator's secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The replicas of a Kubernetes deployment that does not say (the guide's: 3, HPA 3-20, PDB 2).
pub const KUBERNETES_REPLICAS: u32 = 3;

/// Where the serving config is mounted in the container.
pub const CONFIG_PATH: &str = "/etc/modelship/serving.yaml";
/// The config's bind mount suffix (Swarm passes the config as a Swarm config instead).
pub const CONFIG_PATH_RO: &str = "/etc/modelship/serving.yaml:ro";
/// The directory a mounted or baked model lives in, in the container.
pub const MODEL_DIR: &str = "/models";
/// The server's state directory (traffic history, admin token), owned by the image's user.
pub const STATE_DIR: &str = "/var/lib/modelship";
/// Where a mounted registry lives, in the container.
pub const REGISTRY_DIR: &str = "/var/lib/modelship/registry";
/// The binary, in the image.
pub const BINARY: &str = "/usr/local/bin/modelship";
/// The image's user and group (no name resolution needed in a scratch image).
pub const UID: u32 = 10001;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A host ONNX file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// [default: `mount`; `bake` on Azure Functions; see [`Deployment::settle`]]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// A registry reference (`NAME@ALIAS`, `NAME:VERSION`, `NAME`) instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The host registry directory mounted at [`REGISTRY_DIR`] (with `registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Model {
    /// How the file reaches the container: the description's choice or `mount`.
    pub fn delivery(&self) -> Delivery {
        self.delivery.unwrap_or_default()
    }
}

/// How a model file reaches the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Its directory is mounted read-only; replacing the file updates what is served.
    #[default]
    Mount,
    /// Copied into the image: the image alone is the deployment.
    Bake,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Image {
    pub name: String,
    pub tag: String,
    pub build: Build,
    /// Also write `Dockerfile.gpu` (ONNX Runtime's CUDA build on a CUDA base image).
    pub gpu: bool,
    /// The `onnxruntime` wheel whose library goes into the image (source builds).
    pub ort_version: String,
    pub bases: Bases,
    /// Cargo features of the image's binary beyond the default ones (`grpc`, `parquet`): `s3`,
    /// `kubernetes`. What the description itself needs is added (see [`Deployment::features`]).
    pub features: Vec<String>,
}

/// The cargo features an image's binary may be built with, beyond the defaults.
pub const FEATURES: [&str; 2] = ["kubernetes", "s3"];

impl Default for Image {
    fn default() -> Self {
        Image {
            name: "modelship".to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
            build: Build::default(),
            gpu: false,
            ort_version: "1.31.1".to_owned(),
            bases: Bases::default(),
            features: Vec::new(),
        }
    }
}

impl Image {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    /// The GPU variant's reference (`Dockerfile.gpu`): the tag with `-gpu`.
    pub fn gpu_reference(&self) -> String {
        format!("{}:{}", self.name, self.gpu_tag())
    }

    pub fn gpu_tag(&self) -> String {
        format!("{}-gpu", self.tag)
    }

    /// What the containers run: the GPU variant with `gpu`, else the CPU image.
    pub fn served_reference(&self) -> String {
        if self.gpu { self.gpu_reference() } else { self.reference() }
    }
}

/// How the image gets its binary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Build {
    /// Package a built `modelship` and its ONNX Runtime library, staged beside the Dockerfile
    /// (`modelship deploy docker --apply` stages the running binary itself).
    #[default]
    Binary,
    /// Compile from the repository in a Rust image and take the library from the PyPI wheel.
    Source,
}

/// The images the Dockerfile's stages start from, as build arguments with public defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bases {
    /// The stage that collects the libraries (needs bash, ldd and coreutils).
    pub tools: String,
    pub rust: String,
    pub python: String,
    /// The GPU variant's final stage (CUDA 13 and cuDNN 9, as onnxruntime-gpu 1.31 needs).
    pub cuda: String,
}

impl Default for Bases {
    fn default() -> Self {
        Bases {
            tools: "debian:bookworm-slim".to_owned(),
            rust: "rust:1.92-slim-bookworm".to_owned(),
            python: "python:3.11-slim-bookworm".to_owned(),
            // onnxruntime-gpu 1.31 links CUDA 13 (libcublasLt.so.13) and cuDNN 9.
            cuda: "nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU limit per replica, e.g. 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit per replica: a number with b, k, m or g (`512M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs per replica, with `image.gpu` [default: 1 with `image.gpu`, else none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub http: u16,
    pub grpc: u16,
    pub admin: u16,
    /// The admin API listens on the container's loopback unless this is set; then it listens on
    /// every interface of the container and is published on the host's loopback only.
    pub publish_admin: bool,
    /// Publish the HTTP and gRPC ports on the host (default). Off, only clients on the
    /// deployment's own network reach the server (a load balancer of your own, other services).
    pub publish: bool,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { http: 8000, grpc: 8081, admin: 8001, publish_admin: false, publish: true }
    }
}

/// Swarm-only settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmOptions {
    pub endpoint_mode: EndpointMode,
}

/// How Swarm spreads connections over a service's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per service and the ingress routing mesh for published ports (IPVS in
    /// the kernel of every node).
    #[default]
    Vip,
    /// The service name resolves to every replica's address, round robin; published ports are
    /// host-mode (one replica per node and port). For kernels without IPVS, or an external
    /// load balancer.
    Dnsrr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureStore {
    /// Run Redis as a service of the deployment, named `host`.
    pub service: bool,
    pub image: String,
    pub host: String,
    pub port: u16,
}

impl Default for FeatureStore {
    fn default() -> Self {
        FeatureStore { service: true, image: "redis:7.4-bookworm".to_owned(), host: "redis".to_owned(), port: 6379 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Strategy {
    /// Replicas replaced at a time.
    pub parallelism: u32,
    /// Wait between batches.
    pub delay: String,
    pub order: Order,
    pub failure_action: FailureAction,
    /// How long a new task is watched for failure.
    pub monitor: String,
    /// Failed tasks tolerated during an update, as a fraction.
    pub max_failure_ratio: String,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            parallelism: 1,
            delay: "10s".to_owned(),
            order: Order::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor: "30s".to_owned(),
            max_failure_ratio: "0".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// The new task is started (and healthy) before the old one stops: no capacity dip.
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Rollback,
    Pause,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    pub condition: RestartCondition,
    pub delay: String,
    pub max_attempts: u32,
    pub window: String,
}

impl Default for Restart {
    fn default() -> Self {
        Restart { condition: RestartCondition::OnFailure, delay: "5s".to_owned(), max_attempts: 3, window: "120s".to_owned() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    OnFailure,
    Any,
    None,
}

/// What SIGTERM does: readiness turns 503 and the server keeps accepting for `delay` (while load
/// balancers take it out), then drains in-flight requests within `grace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Drain {
    pub delay: String,
    pub grace: String,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { delay: "5s".to_owned(), grace: "30s".to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Healthcheck {
    pub interval: String,
    pub timeout: String,
    pub start_period: String,
    pub retries: u32,
}

impl Default for Healthcheck {
    fn default() -> Self {
        Healthcheck { interval: "10s".to_owned(), timeout: "3s".to_owned(), start_period: "30s".to_owned(), retries: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    pub image: String,
    /// Published on the host's loopback.
    pub port: u16,
    pub scrape_interval: String,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus { image: "prom/prometheus:v2.53.4".to_owned(), port: 9090, scrape_interval: "5s".to_owned() }
    }
}

/// The alerting rules' thresholds and how long each condition must last (`for:`). Durations are
/// PromQL's (`30s`, `5m`, `1h`, `1d`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    /// Each rule's `runbook_url` is this plus `#` and the alert's name in lower case.
    pub runbook_url: String,
    /// The Prometheus job that scrapes the servers (`up{job=...}`); default: the deployment's name.
    pub job: Option<String>,
    /// The window rates are taken over.
    pub rate_window: String,
    /// The share of a version's requests that may fail with a server error.
    pub error_rate: f64,
    pub error_rate_for: String,
    pub latency_p99_seconds: f64,
    pub latency_for: String,
    pub no_traffic_for: String,
    pub not_ready_for: String,
    /// How full a version's queue may be (0 to 1).
    pub queue_saturation: f64,
    pub queue_for: String,
    pub store_down_for: String,
    /// A rollout that has not changed step or phase for this long is stuck.
    pub rollout_stuck_after: String,
    /// How long a rolled-back rollout keeps its alert firing.
    pub rolled_back_window: String,
    /// How far the mean score of `drift_window` may move from that of the `drift_baseline`
    /// before it.
    pub drift_mean_shift: f64,
    pub drift_window: String,
    pub drift_baseline: String,
    pub drift_for: String,
    /// Labels every rule carries beside `severity` (`team: ml`).
    pub labels: BTreeMap<String, String>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            runbook_url: "https://github.com/modelship/modelship/blob/main/docs/src/guides/observability.md".to_owned(),
            job: None,
            rate_window: "5m".to_owned(),
            error_rate: 0.05,
            error_rate_for: "5m".to_owned(),
            latency_p99_seconds: 0.5,
            latency_for: "10m".to_owned(),
            no_traffic_for: "15m".to_owned(),
            not_ready_for: "5m".to_owned(),
            queue_saturation: 0.8,
            queue_for: "5m".to_owned(),
            store_down_for: "1m".to_owned(),
            rollout_stuck_after: "2h".to_owned(),
            rolled_back_window: "30m".to_owned(),
            drift_mean_shift: 0.1,
            drift_window: "1h".to_owned(),
            drift_baseline: "1d".to_owned(),
            drift_for: "30m".to_owned(),
            labels: BTreeMap::new(),
        }
    }
}

impl Alerts {
    fn check(&self, p: &mut Vec<String>) {
        for (key, value) in [
            ("rate_window", &self.rate_window),
            ("error_rate_for", &self.error_rate_for),
            ("latency_for", &self.latency_for),
            ("no_traffic_for", &self.no_traffic_for),
            ("not_ready_for", &self.not_ready_for),
            ("queue_for", &self.queue_for),
            ("store_down_for", &self.store_down_for),
            ("rollout_stuck_after", &self.rollout_stuck_after),
            ("rolled_back_window", &self.rolled_back_window),
            ("drift_window", &self.drift_window),
            ("drift_baseline", &self.drift_baseline),
            ("drift_for", &self.drift_for),
        ] {
            if !is_promql_duration(value) {
                p.push(format!("alerts.{key} '{value}' is not a Prometheus duration; write e.g. 30s, 5m, 1h or 1d"));
            }
        }
        for (key, value, low, high) in [
            ("error_rate", self.error_rate, 0.0, 1.0),
            ("queue_saturation", self.queue_saturation, 0.0, 1.0),
            ("latency_p99_seconds", self.latency_p99_seconds, 0.0, 3600.0),
            ("drift_mean_shift", self.drift_mean_shift, 0.0, f64::MAX),
        ] {
            if !(value > low && value <= high) {
                p.push(format!("alerts.{key} is {value}; it must be above {low} and at most {high}"));
            }
        }
        if !(self.runbook_url.starts_with("https://") || self.runbook_url.starts_with("http://")) {
            p.push(format!("alerts.runbook_url '{}' must be an http(s) URL", self.runbook_url));
        }
        let name = |s: &str| s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        for (key, value) in &self.labels {
            if !name(key) || key == "severity" || key.starts_with("__") {
                p.push(format!("alerts.labels: '{key}' is not a label name this can set ([a-zA-Z_][a-zA-Z0-9_]*, not severity)"));
            }
            if value.contains(['\n', '\r']) {
                p.push(format!("alerts.labels.{key} holds a line break"));
            }
        }
        if let Some(job) = &self.job
            && (job.is_empty() || job.contains(['"', '\\', '\n']))
        {
            p.push(format!("alerts.job '{job}' is not a job name"));
        }
    }
}

/// A PromQL duration as Prometheus reads one: NUMBER UNIT parts, units largest first (`1h30m`),
/// among y, w, d, h, m, s, ms, not zero.
pub fn is_promql_duration(s: &str) -> bool {
    promql_seconds(s).is_some()
}

/// How long a PromQL duration is, in whole seconds (rounded up); `None` when it is not one.
pub fn promql_seconds(s: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [("y", 365 * 86_400_000), ("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("ms", 1), ("m", 60_000), ("s", 1000)];
    // Largest first; `ms` is checked before `m` when reading, but ranks last.
    let rank = |u: &str| ["y", "w", "d", "h", "m", "s", "ms"].iter().position(|x| *x == u);
    let (mut rest, mut ms, mut last) = (s, 0u64, None::<usize>);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, size) = UNITS.into_iter().find(|(u, _)| rest.starts_with(u))?;
        let r = rank(unit)?;
        if last.is_some_and(|l| l >= r) {
            return None;
        }
        last = Some(r);
        ms = ms.checked_add(n.checked_mul(size)?)?;
        rest = &rest[unit.len()..];
    }
    (ms > 0).then(|| ms.div_ceil(1000))
}

/// Reads a description. Unknown keys are errors naming the key and the keys allowed there.
pub fn parse(text: &str) -> Result<Deployment, DescriptionError> {
    serde_yaml_ng::from_str(text).map_err(|e| DescriptionError(vec![e.to_string()]))
}

/// A Compose duration (`10s`, `1m30s`, `250ms`) from a humane one, or why not.
pub fn duration(what: &str, value: &str, problems: &mut Vec<String>) -> String {
    match humantime::parse_duration(value) {
        Ok(d) => compose_duration(d),
        Err(e) => {
            problems.push(format!("{what} '{value}' is not a duration ({e}); write e.g. 10s, 1m30s or 500ms"));
            String::new()
        }
    }
}

fn compose_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Seconds as the server's flags take them.
pub fn seconds(value: &str) -> f64 {
    humantime::parse_duration(value).map_or(0.0, |d| d.as_secs_f64())
}

impl Deployment {
    /// The cargo features the image's binary needs beyond the default ones, sorted:
    /// `image.features`, plus `s3` when a Kubernetes init container fetches the model's artifact
    /// from object storage or Cloud Run follows a registry in a bucket, plus `kubernetes` when the pods
    /// keep the fleet's state in the Kubernetes API (a mesh-free canary or shadow with no other
    /// control store) or a rollout Job runs `modelship controller`.
    pub fn features(&self) -> Vec<&str> {
        let mut features: Vec<&str> = self.image.features.iter().map(String::as_str).collect();
        if self.kubernetes.artifact.as_ref().is_some_and(|a| a.store.starts_with("s3://")) || self.cloudrun.bucket.is_some() {
            features.push("s3");
        }
        if (crate::kubernetes::mesh_free(self) && self.control_store.is_none()) || self.kubernetes.rollout.is_some() {
            features.push("kubernetes");
        }
        features.sort_unstable();
        features.dedup();
        features
    }

    /// GPUs per replica: `resources.gpus`, 1 with `image.gpu`, else 0.
    pub fn gpus(&self) -> u32 {
        self.resources.gpus.unwrap_or(u32::from(self.image.gpu))
    }

    /// The replicas: the description's, or 1 where no target default was settled.
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }

    /// Fills in what the description leaves to the target: on Kubernetes, the guide's 3 replicas
    /// (so HPA 3-20 and a PodDisruptionBudget of 2); on Azure Functions, `delivery: bake` for a
    /// file (the app's package carries it; no image is built). Kubernetes and Cloud Run run an
    /// image that `deploy docker` builds, which bakes a file only when told: there `bake` is
    /// never assumed. Every CLI path calls this before validating and rendering.
    pub fn settle(&mut self, target: Target) {
        if target == Target::Kubernetes {
            self.replicas.get_or_insert(KUBERNETES_REPLICAS);
        }
        if target == Target::AzureFunctions && self.model.file.is_some() {
            self.model.delivery.get_or_insert(Delivery::Bake);
        }
    }

    /// Checks everything and reports every problem at once.
    pub fn validate(&self) -> Result<(), DescriptionError> {
        let mut problems = Vec::new();
        self.problems(&mut problems);
        if problems.is_empty() { Ok(()) } else { Err(DescriptionError(problems)) }
    }

    /// [`Deployment::validate`] and what `target` alone needs (a cluster cannot mount a host
    /// file, for one), every problem at once.
    pub fn validate_for(&self, target: Target) -> Result<(), DescriptionError> {
        let mut problems = Vec::new();
        self.problems(&mut problems);
        if target == Target::Kubernetes {
            self.kubernetes_problems(&mut problems);
        }
        if target == Target::Lambda {
            self.lambda_problems(&mut problems);
        }
        if target == Target::CloudRun {
            self.cloudrun_problems(&mut problems);
        }
        if target == Target::AzureFunctions {
            self.azure_problems(&mut problems);
        }
        if problems.is_empty() { Ok(()) } else { Err(DescriptionError(problems)) }
    }

    fn problems(&self, p: &mut Vec<String>) {
        if !is_dns_label(&self.name) {
            p.push(format!(
                "name '{}' is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter (it names the project, stack and services)",
                self.name
            ));
        }
        match (&self.model.file, &self.model.registry) {
            (None, None) => p.push("model: give `file` (an ONNX file on this machine) or `registry` (NAME@ALIAS, NAME:VERSION)".to_owned()),
            (Some(_), Some(_)) => p.push("model: give `file` or `registry`, not both".to_owned()),
            (Some(file), None) => {
                check_host_path("model.file", file, p);
                let name = file.rsplit('/').next().unwrap_or(file);
                if !name.ends_with(".onnx") || !is_plain_name(name) {
                    p.push(format!(
                        "model.file '{file}' must name an .onnx file whose name is letters, digits, '.', '_' or '-' (it becomes {MODEL_DIR}/NAME in the container)"
                    ));
                }
                if self.model.registry_dir.is_some() {
                    p.push("model.registry_dir goes with model.registry, not model.file".to_owned());
                }
            }
            (None, Some(reference)) => {
                if !is_reference(reference) {
                    p.push(format!("model.registry '{reference}' is not NAME, NAME:VERSION or NAME@ALIAS"));
                }
                if let Some(dir) = &self.model.registry_dir {
                    check_host_path("model.registry_dir", dir, p);
                }
                if self.model.delivery() == Delivery::Bake {
                    p.push("model.delivery: bake needs model.file (a registry model is fetched at start)".to_owned());
                }
            }
        }
        for (what, value) in [("model.name", &self.model.name), ("model.version", &self.model.version)] {
            if let Some(v) = value
                && !(is_plain_name(v) && v.len() <= 128)
            {
                p.push(format!("{what} '{v}' is not valid: use 1-128 letters, digits, '.', '_' or '-'"));
            }
        }
        if let Some(config) = &self.config {
            check_host_path("config", config, p);
        }
        if !is_image_name(&self.image.name) {
            p.push(format!("image.name '{}' is not an image repository (lowercase letters, digits, '.', '_', '-', '/', ':' for a registry port)", self.image.name));
        }
        if !is_tag(&self.image.tag) {
            p.push(format!("image.tag '{}' is not valid: 1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-'", self.image.tag));
        }
        for f in &self.image.features {
            if !FEATURES.contains(&f.as_str()) {
                p.push(format!("image.features '{f}' is not a feature the image can be built with: use {}", FEATURES.join(", ")));
            }
        }
        if !is_plain_name(&self.image.ort_version) {
            p.push(format!("image.ort_version '{}' is not a version", self.image.ort_version));
        }
        let b = &self.image.bases;
        for (what, value) in [("image.bases.tools", &b.tools), ("image.bases.rust", &b.rust), ("image.bases.python", &b.python), ("image.bases.cuda", &b.cuda)] {
            if !is_image_reference(value) {
                p.push(format!("{what} '{value}' is not an image reference (REPOSITORY[:TAG])"));
            }
        }
        if let Some(replicas) = self.replicas
            && (replicas == 0 || replicas > 1000)
        {
            p.push(format!("replicas is {replicas}; it must be between 1 and 1000"));
        }
        if let Some(cpus) = self.resources.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            p.push(format!("resources.cpus is {cpus}; it must be more than 0"));
        }
        if let Some(gpus) = self.resources.gpus {
            if !self.image.gpu {
                p.push("resources.gpus needs image.gpu: true (the CUDA image, Dockerfile.gpu); the CPU image cannot use a GPU".to_owned());
            }
            if gpus == 0 || gpus > 16 {
                p.push(format!("resources.gpus is {gpus}; give 1 to 16 (a model runs on one card; more let several listed models each have one)"));
            }
        }
        if let Some(memory) = &self.resources.memory
            && !is_memory(memory)
        {
            p.push(format!("resources.memory '{memory}' is not a size: a number with b, k, m or g, e.g. 512M"));
        }
        let ports = [("ports.http", self.ports.http), ("ports.grpc", self.ports.grpc), ("ports.admin", self.ports.admin)];
        for (i, (what, port)) in ports.iter().enumerate() {
            if *port == 0 {
                p.push(format!("{what} is 0; a deployment needs fixed ports"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == port) {
                p.push(format!("{what} {port} is {other} too; give each listener its own port"));
            }
        }
        if let Some(store) = &self.feature_store {
            if !is_dns_label(&store.host) && !is_host(&store.host) {
                p.push(format!("feature_store.host '{}' is not a host name", store.host));
            }
            if store.service && !is_dns_label(&store.host) {
                p.push(format!("feature_store.host '{}' names the Redis service: use lowercase letters, digits and '-'", store.host));
            }
            if store.service && !is_image_reference(&store.image) {
                p.push(format!("feature_store.image '{}' is not an image reference", store.image));
            }
            if store.port == 0 {
                p.push("feature_store.port is 0".to_owned());
            }
        }
        if let Some(url) = &self.control_store {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                p.push("control_store must be a redis:// or rediss:// URL".to_owned());
            }
            if url.split("://").nth(1).is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@')) {
                p.push("control_store carries credentials; generated files are not the place for secrets: give them to the orchestrator as a secret".to_owned());
            }
        }
        if self.strategy.parallelism == 0 {
            p.push("strategy.parallelism is 0; at least one replica must be replaced at a time".to_owned());
        }
        if !self.strategy.max_failure_ratio.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) {
            p.push(format!("strategy.max_failure_ratio '{}' must be a fraction between 0 and 1", self.strategy.max_failure_ratio));
        }
        for (what, value) in [
            ("strategy.delay", &self.strategy.delay),
            ("strategy.monitor", &self.strategy.monitor),
            ("restart.delay", &self.restart.delay),
            ("restart.window", &self.restart.window),
            ("drain.delay", &self.drain.delay),
            ("drain.grace", &self.drain.grace),
            ("healthcheck.interval", &self.healthcheck.interval),
            ("healthcheck.timeout", &self.healthcheck.timeout),
            ("healthcheck.start_period", &self.healthcheck.start_period),
        ] {
            duration(what, value, p);
        }
        if let Some(prom) = &self.prometheus {
            if !is_image_reference(&prom.image) {
                p.push(format!("prometheus.image '{}' is not an image reference", prom.image));
            }
            duration("prometheus.scrape_interval", &prom.scrape_interval, p);
        }
        if let Some(alerts) = &self.alerts {
            alerts.check(p);
        }
        for (key, value) in &self.env {
            if !(key.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            {
                p.push(format!("env key '{key}' is not an environment variable name (A-Z, 0-9, _)"));
            }
            if ["TOKEN", "SECRET", "PASSWORD", "API_KEY"].iter().any(|s| key.contains(s)) {
                p.push(format!("env {key} looks like a secret; generated files are not the place for secrets: use a file or the orchestrator's secrets"));
            }
            if value.contains(['\n', '\r']) {
                p.push(format!("env {key} holds a line break"));
            }
        }
    }

    /// The admin API as seen from inside the server's container (`MODELSHIP_ADMIN_URL`): it
    /// listens on the container's loopback at least, published or not.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.admin)
    }

    /// The file name of the model in the container (`fraud.onnx`), for a file model.
    pub fn model_file_name(&self) -> Option<&str> {
        self.model.file.as_deref().map(|f| f.rsplit('/').next().unwrap_or(f))
    }

    /// `MODEL_PATH` in the container: the model file, or the registry reference.
    pub fn model_path(&self) -> String {
        match (self.model_file_name(), &self.model.registry) {
            (Some(file), _) => format!("{MODEL_DIR}/{file}"),
            (None, Some(reference)) => reference.clone(),
            (None, None) => String::new(),
        }
    }

    /// The host directory that holds the model file (mounted at [`MODEL_DIR`]).
    pub fn model_host_dir(&self) -> Option<&str> {
        let file = self.model.file.as_deref()?;
        Some(match file.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((dir, _)) => dir,
            None => ".",
        })
    }

    /// The served model name (what URLs and metrics say).
    pub fn served_name(&self) -> String {
        if let Some(n) = &self.model.name {
            return n.clone();
        }
        match (self.model_file_name(), &self.model.registry) {
            (Some(file), _) => file.trim_end_matches(".onnx").to_owned(),
            (None, Some(r)) => r.split(['@', ':']).next().unwrap_or(r).to_owned(),
            (None, None) => String::new(),
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_host(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// Letters, digits, `.`, `_`, `-`, starting with a letter or digit.
fn is_plain_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_reference(s: &str) -> bool {
    let (name, rest) = match s.find(['@', ':']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    is_plain_name(name) && rest.is_none_or(is_plain_name)
}

fn is_tag(s: &str) -> bool {
    s.len() <= 128 && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_image_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

/// `REPOSITORY[:TAG]`, the repository possibly with a registry host and port.
fn is_image_reference(s: &str) -> bool {
    let (repo, tag) = match s.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (s, None),
    };
    is_image_name(repo) && tag.is_none_or(is_tag)
}

fn is_memory(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| "bBkKmMgG".contains(c));
    !digits.is_empty() && s.len() - digits.len() <= 1 && digits.chars().all(|c| c.is_ascii_digit())
}

/// A host path goes into `-v HOST:CONTAINER` and `COPY`: no `:` or `,` (the volume syntax's
/// separators), no control characters, no `..` parts that would climb out of the context.
fn check_host_path(what: &str, path: &str, problems: &mut Vec<String>) {
    if path.is_empty() {
        problems.push(format!("{what} is empty"));
    } else if path.contains([':', ',']) || path.chars().any(char::is_control) {
        problems.push(format!("{what} '{}' holds ':' ',' or a control character, which volume definitions cannot carry; rename the path", path.escape_debug()));
    }
}

/// `to` written relative to the directory `from` (both absolute, normalized), starting with `./`
/// or `../` as Compose wants for a bind mount; `to` unchanged when either is relative.
pub fn relative_path(from: &str, to: &str) -> String {
    if !from.starts_with('/') || !to.starts_with('/') {
        return to.to_owned();
    }
    let from: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let to_parts: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = from.iter().zip(&to_parts).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to_parts[common..]);
    if parts.first() != Some(&"..") {
        parts.insert(0, ".");
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_durations_as_prometheus_reads_them() {
        for (text, seconds) in [("30s", Some(30)), ("5m", Some(300)), ("1h30m", Some(5400)), ("1d", Some(86_400)), ("500ms", Some(1)), ("1w", Some(604_800))] {
            assert_eq!(promql_seconds(text), seconds, "{text}");
        }
        for bad in ["", "0s", "5", "5 minutes", "5m1h", "1m1m", "-5m", "1.5h"] {
            assert_eq!(promql_seconds(bad), None, "{bad}");
        }
    }

    fn problems(yaml: &str) -> Vec<String> {
        match parse(yaml).and_then(|d| d.validate().map(|()| d)) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn the_image_gets_the_features_its_description_needs() {
        let features = |yaml: &str| parse(yaml).unwrap().features().into_iter().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(features("name: fraud\nmodel: {file: m.onnx}\n"), Vec::<String>::new());
        assert_eq!(features("name: fraud\nmodel: {file: m.onnx}\nimage: {features: [s3, kubernetes, s3]}\n"), ["kubernetes", "s3"]);
        let fetched = "name: fraud\nmodel: {registry: fraud@production}\nkubernetes: {artifact: {store: s3://models/fraud, digest: 'sha256:ab'}";
        assert_eq!(features(&format!("{fetched}}}\n")), ["s3"]);
        assert_eq!(features(&format!("{fetched}, strategy: canary, mesh: none}}\n")), ["kubernetes", "s3"], "the pods keep the fleet's state in the API");
        assert_eq!(features(&format!("{fetched}, strategy: canary, mesh: none}}\ncontrol_store: redis://redis:6379\n")), ["s3"], "unless Redis keeps it");
        assert_eq!(problems("name: fraud\nmodel: {file: m.onnx}\nimage: {features: [lambda-runtime]}\n"), ["image.features 'lambda-runtime' is not a feature the image can be built with: use kubernetes, s3"]);
    }

    #[test]
    fn a_minimal_description_is_valid_and_takes_the_defaults() {
        let d = parse("name: fraud\nmodel: {file: models/fraud.onnx}\n").unwrap();
        d.validate().unwrap();
        assert_eq!((d.replicas(), d.ports.http, d.model.delivery(), d.image.build), (1, 8000, Delivery::Mount, Build::Binary));
        assert_eq!((d.model_path().as_str(), d.model_host_dir(), d.served_name().as_str()), ("/models/fraud.onnx", Some("models"), "fraud"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = problems("name: fraud\nmodel: {file: m.onnx}\nreplica: 3\n");
        assert!(e[0].starts_with("unknown field `replica`, expected one of `name`, `model`"), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = problems(
            "name: Fraud_1\nmodel: {file: 'a:b/../x.txt', registry_dir: r}\nreplicas: 0\nports: {http: 8000, grpc: 8000}\n\
             strategy: {delay: soon, parallelism: 0}\ncontrol_store: 'redis://u:pw@h:6379'\nenv: {ADMIN_TOKEN: x, lower: y}\n\
             resources: {memory: lots}\nimage: {tag: '-x', bases: {tools: 'Bad Image'}}\n",
        );
        assert_eq!(
            e,
            [
                "name 'Fraud_1' is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter (it names the project, stack and services)",
                "model.file 'a:b/../x.txt' holds ':' ',' or a control character, which volume definitions cannot carry; rename the path",
                "model.file 'a:b/../x.txt' must name an .onnx file whose name is letters, digits, '.', '_' or '-' (it becomes /models/NAME in the container)",
                "model.registry_dir goes with model.registry, not model.file",
                "image.tag '-x' is not valid: 1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-'",
                "image.bases.tools 'Bad Image' is not an image reference (REPOSITORY[:TAG])",
                "replicas is 0; it must be between 1 and 1000",
                "resources.memory 'lots' is not a size: a number with b, k, m or g, e.g. 512M",
                "ports.grpc 8000 is ports.http too; give each listener its own port",
                "control_store carries credentials; generated files are not the place for secrets: give them to the orchestrator as a secret",
                "strategy.parallelism is 0; at least one replica must be replaced at a time",
                "strategy.delay 'soon' is not a duration (expected number at 0); write e.g. 10s, 1m30s or 500ms",
                "env ADMIN_TOKEN looks like a secret; generated files are not the place for secrets: use a file or the orchestrator's secrets",
                "env key 'lower' is not an environment variable name (A-Z, 0-9, _)",
            ]
        );
    }

    #[test]
    fn a_registry_model_needs_a_reference() {
        assert_eq!(problems("name: f\nmodel: {}\n"), ["model: give `file` (an ONNX file on this machine) or `registry` (NAME@ALIAS, NAME:VERSION)"]);
        assert_eq!(problems("name: f\nmodel: {registry: 'fraud@prod uction'}\n"), ["model.registry 'fraud@prod uction' is not NAME, NAME:VERSION or NAME@ALIAS"]);
        let d = parse("name: f\nmodel: {registry: fraud@production, registry_dir: /srv/registry}\n").unwrap();
        d.validate().unwrap();
        assert_eq!((d.model_path().as_str(), d.served_name().as_str()), ("fraud@production", "fraud"));
    }

    #[test]
    fn paths_relative_to_the_output_directory() {
        assert_eq!(relative_path("/srv/app/deploy", "/srv/app/models"), "../models");
        assert_eq!(relative_path("/srv/app", "/srv/app/models"), "./models");
        assert_eq!(relative_path("/srv/app", "/srv/app"), ".");
        assert_eq!(relative_path("/a/b/c", "/x"), "../../../x");
        assert_eq!(relative_path("/a", "models"), "models");
    }

    #[test]
    fn durations_are_written_as_compose_reads_them() {
        let mut p = Vec::new();
        assert_eq!(duration("d", "1m 30s", &mut p), "90s");
        assert_eq!(duration("d", "250ms", &mut p), "250ms");
        assert!(p.is_empty());
    }
}
