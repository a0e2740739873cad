//! `docker-compose.yml`: the server, Redis for the feature store, optionally Prometheus.
//!
//! One server (Compose publishes fixed ports, so `replicas` is the Swarm stack's business). The
//! model directory is mounted read-only; the state directory (traffic history, admin token) is a
//! named volume, so a recreated container keeps its routing. The container's root filesystem is
//! read-only, with every capability dropped.

use std::collections::BTreeMap;

use crate::compose_file::{self, ComposeFile, DependsOn, Deploy, Mount, Service, Volume};
use crate::description::{Deployment, STATE_DIR};
use crate::prometheus::{self, Discovery};
use crate::{GeneratedFile, Provenance};

pub const FILE: &str = "docker-compose.yml";
pub const PROMETHEUS_FILE: &str = "prometheus.yml";

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let state = format!("{}-state", d.name);
    let mut volumes: Vec<Mount> = compose_file::volumes(d).into_iter().map(Mount::Short).collect();
    volumes.push(Mount::Short(format!("{state}:{STATE_DIR}")));
    let mut server = Service {
        image: d.image.served_reference(),
        command: compose_file::command(d),
        environment: compose_file::environment(d),
        ports: compose_file::ports(d).into_iter().map(compose_file::Port::Short).collect(),
        volumes,
        tmpfs: vec!["/tmp".to_owned()],
        read_only: Some(true),
        cap_drop: vec!["ALL".to_owned()],
        security_opt: vec!["no-new-privileges:true".to_owned()],
        healthcheck: Some(compose_file::healthcheck(d)),
        stop_grace_period: Some(compose_file::stop_grace_period(d)),
        restart: Some("unless-stopped".to_owned()),
        deploy: compose_file::limits(d, false).map(|resources| Deploy { resources: Some(resources), ..Deploy::default() }),
        ..Service::default()
    };
    let mut services = BTreeMap::new();
    if let Some(store) = d.feature_store.as_ref().filter(|s| s.service) {
        server.depends_on = Some(DependsOn::List(vec![store.host.clone()]));
        let mut redis = compose_file::redis(&store.image);
        redis.restart = Some("unless-stopped".to_owned());
        services.insert(store.host.clone(), redis);
    }
    let mut files = Vec::new();
    if let Some(prom) = &d.prometheus {
        services.insert(
            "prometheus".to_owned(),
            Service {
                image: prom.image.clone(),
                ports: vec![compose_file::Port::Short(format!("127.0.0.1:{0}:9090", prom.port))],
                volumes: vec![
                    Mount::Short(format!("./{PROMETHEUS_FILE}:/etc/prometheus/prometheus.yml:ro")),
                    Mount::Short(format!("./{}:{}:ro", crate::alerts::FILE, prometheus::RULES_PATH)),
                ],
                depends_on: Some(DependsOn::List(vec![d.name.clone()])),
                restart: Some("unless-stopped".to_owned()),
                ..Service::default()
            },
        );
        if let Some(text) = prometheus::render(d, Discovery::Service, &header) {
            files.push(GeneratedFile { path: PROMETHEUS_FILE, contents: text });
        }
        files.push(GeneratedFile { path: crate::alerts::FILE, contents: crate::alerts::render(d, &header) });
    }
    services.insert(d.name.clone(), server);
    let compose = ComposeFile {
        version: "3.8",
        services,
        volumes: BTreeMap::from([(state, Volume::default())]),
        networks: BTreeMap::new(),
        configs: BTreeMap::new(),
    };
    files.insert(0, GeneratedFile { path: FILE, contents: compose.to_yaml(&header) });
    files
}
