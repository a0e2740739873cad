//! `stack.yml` for `docker stack deploy`: N replicas behind the routing mesh (or DNS round robin,
//! `swarm.endpoint_mode: dnsrr`, where the kernel has no IPVS), rolling updates
//! (`update_config`: parallelism, delay, start-first, rollback on failure, monitor), automatic
//! rollback settings, a restart policy, the binary's own health check, Redis, and the fleet
//! control store when the description names one.
//!
//! Swarm ignores `depends_on`, `restart` and `security_opt`, so they are not written. The
//! serving config travels as a Swarm config (every node gets it); a mounted model or registry
//! directory must exist on every node that runs a replica (bake the model, or use a registry on
//! shared storage, for more than one node). Each replica slot's state directory is a volume of
//! its own. The admin API is never published: it is reached with
//! `docker exec` on the replica, or over the stack's network when `ports.publish_admin` is set.

use std::collections::BTreeMap;

use crate::compose_file::{
    self, ComposeFile, ConfigFile, ConfigRef, Deploy, Mount, Port, RestartPolicy, Service, UpdateConfig, Volume, dur,
};
use crate::description::{self, Deployment, EndpointMode, STATE_DIR};
use crate::prometheus::{self, Discovery};
use crate::{GeneratedFile, Provenance};

pub const FILE: &str = "stack.yml";
pub const PROMETHEUS_FILE: &str = "prometheus.yml";

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let s = &d.strategy;
    let update = UpdateConfig {
        parallelism: s.parallelism,
        delay: dur(&s.delay),
        failure_action: Some(enum_name(&s.failure_action)),
        monitor: dur(&s.monitor),
        max_failure_ratio: s.max_failure_ratio.parse().unwrap_or(0.0),
        order: enum_name(&s.order),
    };
    // A rollback replaces every replica at once with the previous image, keeping capacity up.
    let rollback = UpdateConfig { parallelism: 0, delay: "0s".to_owned(), failure_action: Some("pause".to_owned()), ..update.clone() };
    let r = &d.restart;
    let restart = RestartPolicy { condition: enum_name(&r.condition), delay: dur(&r.delay), max_attempts: r.max_attempts, window: dur(&r.window) };

    let mut volumes: Vec<Mount> =
        compose_file::volumes(d).into_iter().filter(|v| !v.ends_with(description::CONFIG_PATH_RO)).map(Mount::Short).collect();
    // Each replica slot keeps its own state (traffic history, admin token) in a volume of its
    // own (`{{.Task.Slot}}` in its name): replicas on one node must not share one SQLite history,
    // and a replaced task restores its slot's routing. The fleet store is what makes them one.
    volumes.push(Mount::Short(format!("state:{STATE_DIR}")));
    volumes.push(Mount::tmpfs("/tmp"));
    let mut configs = BTreeMap::new();
    let mut config_refs = Vec::new();
    if let Some(config) = &d.config {
        configs.insert("serving".to_owned(), ConfigFile { file: config.clone() });
        config_refs.push(ConfigRef { source: "serving".to_owned(), target: description::CONFIG_PATH.to_owned() });
    }
    let (endpoint_mode, ports) = match d.swarm.endpoint_mode {
        EndpointMode::Vip => {
            let mut ports: Vec<Port> = compose_file::ports(d).into_iter().map(Port::Short).collect();
            ports.retain(|p| !matches!(p, Port::Short(s) if s.starts_with("127.0.0.1:")));
            ("vip", ports)
        }
        // Swarm refuses ingress (routing-mesh) ports on a DNS round-robin service.
        EndpointMode::Dnsrr => {
            let host = |port: u16| Port::Long { target: port, published: port, protocol: "tcp", mode: "host" };
            ("dnsrr", if d.ports.publish { vec![host(d.ports.http), host(d.ports.grpc)] } else { Vec::new() })
        }
    };
    let server = Service {
        image: d.image.served_reference(),
        command: compose_file::command(d),
        environment: compose_file::environment(d),
        ports,
        volumes,
        configs: config_refs,
        read_only: Some(true),
        cap_drop: vec!["ALL".to_owned()],
        healthcheck: Some(compose_file::healthcheck(d)),
        stop_grace_period: Some(compose_file::stop_grace_period(d)),
        deploy: Some(Deploy {
            mode: Some("replicated"),
            replicas: Some(d.replicas()),
            endpoint_mode: Some(endpoint_mode),
            update_config: Some(update),
            rollback_config: Some(rollback),
            restart_policy: Some(restart.clone()),
            resources: compose_file::limits(d, true),
        }),
        ..Service::default()
    };
    let mut services = BTreeMap::new();
    if let Some(store) = d.feature_store.as_ref().filter(|s| s.service) {
        let mut redis = compose_file::redis(&store.image);
        redis.deploy =
            Some(Deploy { replicas: Some(1), endpoint_mode: Some(endpoint_mode), restart_policy: Some(restart.clone()), ..Deploy::default() });
        services.insert(store.host.clone(), redis);
    }
    let mut files = Vec::new();
    if let Some(prom) = &d.prometheus {
        configs.insert("prometheus".to_owned(), ConfigFile { file: format!("./{PROMETHEUS_FILE}") });
        configs.insert("prometheus-rules".to_owned(), ConfigFile { file: format!("./{}", crate::alerts::FILE) });
        services.insert(
            "prometheus".to_owned(),
            Service {
                image: prom.image.clone(),
                configs: vec![
                    ConfigRef { source: "prometheus".to_owned(), target: "/etc/prometheus/prometheus.yml".to_owned() },
                    ConfigRef { source: "prometheus-rules".to_owned(), target: prometheus::RULES_PATH.to_owned() },
                ],
                deploy: Some(Deploy { replicas: Some(1), restart_policy: Some(restart), ..Deploy::default() }),
                ..Service::default()
            },
        );
        if let Some(text) = prometheus::render(d, Discovery::SwarmTasks, &header) {
            files.push(GeneratedFile { path: PROMETHEUS_FILE, contents: text });
        }
        files.push(GeneratedFile { path: crate::alerts::FILE, contents: crate::alerts::render(d, &header) });
    }
    services.insert(d.name.clone(), server);
    let stack = ComposeFile {
        version: "3.8",
        services,
        volumes: BTreeMap::from([("state".to_owned(), Volume { name: Some(format!("{}-{{{{.Task.Slot}}}}-state", d.name)) })]),
        networks: BTreeMap::new(),
        configs,
    };
    files.insert(0, GeneratedFile { path: FILE, contents: stack.to_yaml(&header) });
    files
}

/// An enum's name as the description (and so Compose) spells it.
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
