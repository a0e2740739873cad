//! Prometheus alerting rules for what the deployment checklist names: errors, latency, no
//! traffic, a server not ready or not scraped, a rollout stuck or rolled back, prediction drift,
//! the feature store or the control store unreachable, queues filling up, and the prediction log
//! or the notifications losing data. Each rule has a `for:`, a severity and a runbook link (the
//! alerts guide, one section per alert).
//!
//! The same groups are written three ways: a rules file (`modelship deploy alerts`, and beside
//! `prometheus.yml` for Compose and Swarm), and a `PrometheusRule` for the Prometheus Operator
//! (`deploy k8s`, when the description has `alerts:`). `promtool check rules` and
//! `promtool test rules` check them (the deploy crate's tests).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::description::{Alerts, Deployment};

/// The rules file's name, beside `prometheus.yml`.
pub const FILE: &str = "modelship-alerts.yml";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFile {
    pub groups: Vec<Group>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The alerts of `d`, with the thresholds of its `alerts:` section (defaults without one).
pub fn rules(d: &Deployment) -> RuleFile {
    let default = Alerts::default();
    let a = d.alerts.as_ref().unwrap_or(&default);
    let job = a.job.clone().unwrap_or_else(|| d.name.clone());
    let rule = |alert: &str, severity: &str, for_: &str, expr: String, summary: &str, description: &str| {
        let mut labels = a.labels.clone();
        labels.insert("severity".to_owned(), severity.to_owned());
        let annotations = BTreeMap::from([
            ("summary".to_owned(), summary.to_owned()),
            ("description".to_owned(), description.to_owned()),
            ("runbook_url".to_owned(), format!("{}#{}", a.runbook_url.trim_end_matches('/'), alert.to_ascii_lowercase())),
        ]);
        Rule { alert: alert.to_owned(), expr, for_: for_.to_owned(), labels, annotations }
    };
    let requests = |window: &str, filter: &str| {
        let selector = if filter.is_empty() { String::new() } else { format!("{{{filter}}}") };
        format!("sum by (model, version) (rate(modelship_requests_total{selector}[{window}]))")
    };
    let serving = vec![
        rule(
            "ModelshipHighErrorRate",
            "critical",
            &a.error_rate_for,
            format!("{} / {} > {}", requests(&a.rate_window, r#"code=~"5..""#), requests(&a.rate_window, ""), a.error_rate),
            "{{ $labels.model }} version {{ $labels.version }} fails {{ $value | humanizePercentage }} of its requests",
            &format!("More than {} of the requests answered by this version failed with a server error over {}. A candidate: the rollout's error_rate check rolls it back; a stable version: look at the server's log for \"inference failed\".", percent(a.error_rate), a.rate_window),
        ),
        rule(
            "ModelshipHighLatency",
            "warning",
            &a.latency_for,
            format!(
                "histogram_quantile(0.99, sum by (model, version, le) (rate(modelship_request_duration_seconds_bucket[{}]))) > {}",
                a.rate_window, a.latency_p99_seconds
            ),
            "{{ $labels.model }} version {{ $labels.version }} answers in {{ $value | humanizeDuration }} at the 99th percentile",
            &format!("The 99th percentile of whole-request latency is above {} s. Look at modelship_queue_duration_seconds (waiting for a worker: add workers or replicas) against modelship_inference_duration_seconds (the model itself).", a.latency_p99_seconds),
        ),
        rule(
            "ModelshipNoTraffic",
            "warning",
            &a.no_traffic_for,
            format!("sum by (model) (rate(modelship_requests_total[{}])) == 0", a.rate_window),
            "{{ $labels.model }} received no requests",
            "The model has answered nothing for a while: its clients may be pointed elsewhere, or a load balancer may have taken every replica out.",
        ),
        rule(
            "ModelshipNotReady",
            "critical",
            &a.not_ready_for,
            "modelship_ready == 0".to_owned(),
            "{{ $labels.instance }} is not ready",
            "The server answers /health/ready with 503: a model that failed to load, a store it needs that does not answer, or a drain. GET /health/ready says which.",
        ),
        rule(
            "ModelshipTargetDown",
            "critical",
            &a.not_ready_for,
            format!(r#"up{{job="{job}"}} == 0"#),
            "Prometheus cannot scrape {{ $labels.instance }}",
            "The server does not answer /metrics: it is down, restarting, or unreachable from Prometheus.",
        ),
        rule(
            "ModelshipQueueSaturated",
            "warning",
            &a.queue_for,
            format!("max by (model, version) (modelship_queue_length / modelship_queue_capacity) > {}", a.queue_saturation),
            "{{ $labels.model }} version {{ $labels.version }}'s queue is {{ $value | humanizePercentage }} full",
            "Requests wait for an inference worker; a full queue answers 429. Add workers (server.workers) or replicas, or turn on dynamic batching.",
        ),
        rule(
            "ModelshipRequestsShed",
            "warning",
            &a.queue_for,
            format!(r#"sum by (model, version) (rate(modelship_request_errors_total{{error="overloaded"}}[{}])) > 0"#, a.rate_window),
            "{{ $labels.model }} version {{ $labels.version }} turns requests away (429, overloaded)",
            "The version's queue was full: clients got 429 with Retry-After.",
        ),
    ];
    let rollouts = vec![
        rule(
            "ModelshipRolloutRolledBack",
            "critical",
            "0s",
            format!(r#"max by (model) (increase(modelship_rollouts_finished_total{{outcome="rolled_back"}}[{}])) > 0"#, a.rolled_back_window),
            "{{ $labels.model }}'s rollout was rolled back",
            "The candidate was rolled back (by its checks, a gate, the deadline or an operator): `modelship rollout status MODEL` and `modelship rollout history MODEL` say why.",
        ),
        rule(
            "ModelshipRolloutStuck",
            "warning",
            "0s",
            format!(
                r#"(time() - max by (model) (modelship_rollout_step_started_timestamp_seconds)) > {} and on (model) (max by (model) (modelship_rollout_phase{{phase=~"progressing|paused|awaiting_approval|awaiting_webhook"}}) == 1)"#,
                crate::description::promql_seconds(&a.rollout_stuck_after).unwrap_or(7200)
            ),
            "{{ $labels.model }}'s rollout has not moved",
            &format!("The rollout has stayed at one step for {}: paused, waiting for an approval or a webhook gate, or its checks inconclusive for want of traffic. `modelship rollout status MODEL` says which.", a.rollout_stuck_after),
        ),
        rule(
            "ModelshipPredictionDrift",
            "warning",
            &a.drift_for,
            format!(
                "abs(sum by (model, version) (rate(modelship_prediction_score_sum[{w}])) / sum by (model, version) (rate(modelship_prediction_score_count[{w}])) - sum by (model, version) (rate(modelship_prediction_score_sum[{b}] offset {w})) / sum by (model, version) (rate(modelship_prediction_score_count[{b}] offset {w}))) > {t}",
                w = a.drift_window,
                b = a.drift_baseline,
                t = a.drift_mean_shift
            ),
            "{{ $labels.model }} version {{ $labels.version }}'s mean score moved by {{ $value }}",
            &format!("The mean score of the last {} is more than {} away from the {} before: the inputs may have drifted (or a client changed what it sends). Compare in the dashboard's score distribution.", a.drift_window, a.drift_mean_shift, a.drift_baseline),
        ),
    ];
    let stores = vec![
        rule(
            "ModelshipFeatureStoreDown",
            "critical",
            &a.store_down_for,
            "modelship_feature_store_up == 0".to_owned(),
            "{{ $labels.instance }} cannot reach the feature store",
            "Requests that need features fail or fall back to defaults (features.on_store_error). Check Redis and the network between.",
        ),
        rule(
            "ModelshipControlStoreDown",
            "critical",
            &a.store_down_for,
            "modelship_control_store_up == 0".to_owned(),
            "{{ $labels.instance }} cannot reach the control store",
            "The replica serves on the last routing it had, but takes no routing change and sends no rollout evidence until the store answers.",
        ),
        rule(
            "ModelshipPredictionLogDropping",
            "warning",
            &a.queue_for,
            format!("sum by (instance, reason) (rate(modelship_prediction_log_dropped_total[{}])) > 0", a.rate_window),
            "{{ $labels.instance }} drops predictions it should keep ({{ $labels.reason }})",
            "The prediction log's queue is full or its store refuses rows: the kept sample is smaller than asked.",
        ),
        rule(
            "ModelshipNotificationsFailing",
            "warning",
            "0s",
            format!(r#"sum by (sink) (increase(modelship_notifications_total{{result=~"failed|dropped"}}[{}])) > 0"#, a.rolled_back_window),
            "Rollout notifications to {{ $labels.sink }} are not delivered",
            "Every attempt to tell the sink failed (or its queue was full): `modelship rollout status MODEL` shows the last deliveries and why.",
        ),
    ];
    RuleFile {
        groups: vec![
            Group { name: "modelship-serving".to_owned(), rules: serving },
            Group { name: "modelship-rollouts".to_owned(), rules: rollouts },
            Group { name: "modelship-stores".to_owned(), rules: stores },
        ],
    }
}

fn percent(share: f64) -> String {
    format!("{}%", (share * 1000.0).round() / 10.0)
}

/// The rules file (`modelship-alerts.yml`).
pub fn render(d: &Deployment, header: &str) -> String {
    format!("{header}{}", crate::yaml::to_string(&rules(d)))
}
