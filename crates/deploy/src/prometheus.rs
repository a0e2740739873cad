//! `prometheus.yml` for the Prometheus service beside the server: it scrapes every replica.

use serde::Serialize;

use crate::compose_file::dur;
use crate::description::Deployment;

#[derive(Serialize)]
struct Config {
    global: Global,
    /// The alerting rules, beside this file in the container.
    rule_files: Vec<String>,
    scrape_configs: Vec<Scrape>,
}

/// Where the rules file is in the Prometheus container.
pub const RULES_PATH: &str = "/etc/prometheus/modelship-alerts.yml";

#[derive(Serialize)]
struct Global {
    scrape_interval: String,
    evaluation_interval: String,
}

#[derive(Serialize)]
struct Scrape {
    job_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    static_configs: Vec<Static>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dns_sd_configs: Vec<Dns>,
}

#[derive(Serialize)]
struct Static {
    targets: Vec<String>,
}

#[derive(Serialize)]
struct Dns {
    names: Vec<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    port: u16,
}

/// How Prometheus finds the servers.
pub enum Discovery {
    /// One server, by its service name (Compose).
    Service,
    /// Every replica, by the Swarm DNS name `tasks.SERVICE` (one A record per task).
    SwarmTasks,
}

pub fn render(d: &Deployment, discovery: Discovery, header: &str) -> Option<String> {
    let prom = d.prometheus.as_ref()?;
    let service = &d.name;
    let scrape = match discovery {
        Discovery::Service => Scrape {
            job_name: service.clone(),
            static_configs: vec![Static { targets: vec![format!("{service}:{}", d.ports.http)] }],
            dns_sd_configs: Vec::new(),
        },
        Discovery::SwarmTasks => Scrape {
            job_name: service.clone(),
            static_configs: Vec::new(),
            dns_sd_configs: vec![Dns { names: vec![format!("tasks.{service}")], kind: "A", port: d.ports.http }],
        },
    };
    let interval = dur(&prom.scrape_interval);
    let config = Config { global: Global { scrape_interval: interval.clone(), evaluation_interval: interval }, rule_files: vec![RULES_PATH.to_owned()], scrape_configs: vec![scrape] };
    Some(format!("{header}{}", crate::yaml::to_string(&config)))
}
