//! The Compose file format (version 3.8, which both `docker-compose` 1.29 and `docker stack
//! deploy` read) as typed values: the generators build these and [`crate::yaml`] writes them,
//! every string double-quoted. Only the keys the generators use are here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::description::{self, BINARY, Deployment, Healthcheck, REGISTRY_DIR};

#[derive(Debug, Clone, Serialize)]
pub struct ComposeFile {
    pub version: &'static str,
    pub services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, ConfigFile>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Service {
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<DependsOn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthcheckSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
}

/// A volume entry: `SOURCE:TARGET[:ro]`, or the long form for a tmpfs.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Mount {
    Short(String),
    Tmpfs {
        #[serde(rename = "type")]
        kind: &'static str,
        target: String,
    },
}

impl Mount {
    pub fn tmpfs(target: &str) -> Mount {
        Mount::Tmpfs { kind: "tmpfs", target: target.to_owned() }
    }
}

/// The list form works in both tools (the long form with conditions is Compose-only).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DependsOn {
    List(Vec<String>),
    Conditions(BTreeMap<String, Condition>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub condition: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub retries: u32,
    pub start_period: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Deploy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateConfig {
    pub parallelism: u32,
    pub delay: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    pub monitor: String,
    pub max_failure_ratio: f64,
    pub order: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartPolicy {
    pub condition: String,
    pub delay: String,
    pub max_attempts: u32,
    pub window: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<Reservations>,
}

/// What a container is given for itself: GPUs, as Compose (devices) or Swarm (generic
/// resources, advertised by each node's engine) asks for them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reservations {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generic_resources: Vec<GenericResource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceRequest {
    pub driver: &'static str,
    pub count: u32,
    pub capabilities: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenericResource {
    pub discrete_resource_spec: DiscreteResource,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiscreteResource {
    pub kind: &'static str,
    pub value: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Volume {
    /// The engine's name for it; Swarm expands `{{.Task.Slot}}` and the like in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigFile {
    pub file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigRef {
    pub source: String,
    pub target: String,
}

impl ComposeFile {
    /// The YAML text, after the provenance header.
    pub fn to_yaml(&self, header: &str) -> String {
        let body = crate::yaml::to_string(self);
        format!("{header}{body}")
    }
}

/// The server's health check: the binary itself asks its own readiness probe.
pub fn healthcheck(d: &Deployment) -> HealthcheckSpec {
    let h: &Healthcheck = &d.healthcheck;
    HealthcheckSpec {
        test: ["CMD", BINARY, "healthcheck", "--port"].map(str::to_owned).into_iter().chain([d.ports.http.to_string()]).collect(),
        interval: dur(&h.interval),
        timeout: dur(&h.timeout),
        retries: h.retries,
        start_period: dur(&h.start_period),
    }
}

/// A validated description's duration, as Compose writes it.
pub fn dur(value: &str) -> String {
    description::duration("", value, &mut Vec::new())
}

/// The server's environment: the seed's variables, then the description's own.
pub fn environment(d: &Deployment) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("MODEL_PATH".to_owned(), d.model_path());
    env.insert("MODELSHIP_ADMIN_URL".to_owned(), d.admin_url());
    if let Some(name) = &d.model.name {
        env.insert("MODEL_NAME".to_owned(), name.clone());
    }
    if let Some(version) = &d.model.version {
        env.insert("MODEL_VERSION".to_owned(), version.clone());
    }
    if d.config.is_some() {
        env.insert("CONFIG_PATH".to_owned(), description::CONFIG_PATH.to_owned());
    }
    if d.model.registry.is_some() {
        env.insert("MODELSHIP_REGISTRY".to_owned(), REGISTRY_DIR.to_owned());
    }
    if let Some(store) = &d.feature_store {
        env.insert("REDIS_HOST".to_owned(), store.host.clone());
        env.insert("REDIS_PORT".to_owned(), store.port.to_string());
    }
    if let Some(url) = &d.control_store {
        env.insert("MODELSHIP_CONTROL_STORE".to_owned(), url.clone());
    }
    // Given a GPU, the server must use it: a start without one fails rather than serving slowly.
    if d.gpus() > 0 {
        env.insert("MODELSHIP_DEVICE".to_owned(), "cuda".to_owned());
    }
    for (k, v) in &d.env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// `serve` on the description's ports with its drain timing and, when published, the admin API
/// on every interface of the container.
pub fn command(d: &Deployment) -> Vec<String> {
    let p = &d.ports;
    let mut cmd = vec![
        "serve".to_owned(),
        "--port".to_owned(),
        p.http.to_string(),
        "--grpc-port".to_owned(),
        p.grpc.to_string(),
        "--admin-port".to_owned(),
        p.admin.to_string(),
        "--shutdown-delay".to_owned(),
        trim_float(description::seconds(&d.drain.delay)),
        "--shutdown-grace".to_owned(),
        trim_float(description::seconds(&d.drain.grace)),
    ];
    if d.ports.publish_admin {
        cmd.extend(["--admin-host".to_owned(), "0.0.0.0".to_owned()]);
    }
    cmd
}

/// Long enough for the drain delay and grace, plus 5 s for the process to exit.
pub fn stop_grace_period(d: &Deployment) -> String {
    let total = description::seconds(&d.drain.delay) + description::seconds(&d.drain.grace) + 5.0;
    format!("{}s", total.ceil())
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") }
}

/// Published ports: HTTP and gRPC on every host interface, the admin API (when published) on the
/// host's loopback only.
/// A published port: `HOST:CONTAINER` or the long syntax (needed for Swarm's host mode).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Port {
    Short(String),
    Long { target: u16, published: u16, protocol: &'static str, mode: &'static str },
}

/// The published ports, short syntax: HTTP and gRPC unless `ports.publish` is off, the admin
/// port on the host's loopback when `ports.publish_admin` is on.
pub fn ports(d: &Deployment) -> Vec<String> {
    let p = &d.ports;
    let mut ports = if p.publish { vec![format!("{0}:{0}", p.http), format!("{0}:{0}", p.grpc)] } else { Vec::new() };
    if p.publish_admin {
        ports.push(format!("127.0.0.1:{0}:{0}", p.admin));
    }
    ports
}

/// Bind mounts, with host paths as the description gives them (already relative to the output
/// directory, as the CLI writes them).
pub fn volumes(d: &Deployment) -> Vec<String> {
    let mut volumes = Vec::new();
    if let (Some(dir), description::Delivery::Mount) = (d.model_host_dir(), d.model.delivery()) {
        volumes.push(format!("{dir}:{}:ro", description::MODEL_DIR));
    }
    if let Some(dir) = &d.model.registry_dir {
        // Read-write: SQLite's write-ahead log needs its shared-memory file beside the catalog.
        volumes.push(format!("{dir}:{REGISTRY_DIR}"));
    }
    if let Some(config) = &d.config {
        volumes.push(format!("{config}:{}:ro", description::CONFIG_PATH));
    }
    volumes
}

pub fn limits(d: &Deployment, swarm: bool) -> Option<Resources> {
    let r = &d.resources;
    let limits = (r.cpus.is_some() || r.memory.is_some()).then(|| Limits { cpus: r.cpus.map(trim_float), memory: r.memory.clone() });
    // Compose asks the engine for NVIDIA devices; Swarm has no device requests, so a task
    // reserves the nodes' advertised `NVIDIA-GPU` generic resources instead.
    let reservations = (d.gpus() > 0).then(|| {
        if swarm {
            Reservations { generic_resources: vec![GenericResource { discrete_resource_spec: DiscreteResource { kind: "NVIDIA-GPU", value: d.gpus() } }], ..Reservations::default() }
        } else {
            Reservations { devices: vec![DeviceRequest { driver: "nvidia", count: d.gpus(), capabilities: vec!["gpu"] }], ..Reservations::default() }
        }
    });
    (limits.is_some() || reservations.is_some()).then_some(Resources { limits, reservations })
}

/// A Redis service for the feature store, in memory only.
pub fn redis(image: &str) -> Service {
    Service {
        image: image.to_owned(),
        // No persistence: features are reloaded with `modelship features load`. Protected mode off
        // because the service is reached only over the deployment's own network.
        command: ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"].map(str::to_owned).to_vec(),
        healthcheck: Some(HealthcheckSpec {
            test: ["CMD", "redis-cli", "ping"].map(str::to_owned).to_vec(),
            interval: "5s".to_owned(),
            timeout: "3s".to_owned(),
            retries: 10,
            start_period: "5s".to_owned(),
        }),
        ..Service::default()
    }
}
