//! A Grafana dashboard of one model's versions, from modelship's own metrics: the traffic split,
//! requests, error rate and latency quantiles per version, the score distribution, the queue,
//! shadow agreement and the rollout's step, phase and check verdicts, with the rollout's steps
//! and routing changes as annotations. Variables: the Prometheus data source, the model and its
//! versions.
//!
//! Written by `modelship deploy alerts` beside the rules, and as a ConfigMap labelled
//! `grafana_dashboard` by `deploy k8s` (the label Grafana's dashboard sidecar looks for). Every
//! PromQL expression is parsed by `promtool` in the deploy crate's tests; Grafana itself does not
//! run there.

use serde_json::{Value, json};

use crate::description::Deployment;

/// The dashboard's file name.
pub const FILE: &str = "grafana-dashboard.json";

/// Every PromQL expression the dashboard holds (panels' targets and annotations), as written,
/// with Grafana's variables in them.
pub fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push(expr.to_owned());
        }
    }
    out
}

fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

fn target(expr: &str, legend: &str, ref_id: &str) -> Value {
    json!({"datasource": datasource(), "expr": expr, "legendFormat": legend, "refId": ref_id})
}

/// A panel at (x, y), w by h grid units.
fn panel(id: u32, kind: &str, title: &str, description: &str, unit: &str, grid: (u32, u32, u32, u32), targets: Vec<Value>) -> Value {
    let (x, y, w, h) = grid;
    json!({
        "id": id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource(),
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
    })
}

/// The dashboard as Grafana's JSON model.
pub fn dashboard(d: &Deployment) -> Value {
    let m = r#"model="$model""#;
    let mv = r#"model="$model", version=~"$version""#;
    let rate = "$__rate_interval";
    let quantile = |q: &str| {
        format!("histogram_quantile({q}, sum by (version, le) (rate(modelship_request_duration_seconds_bucket{{{mv}}}[{rate}])))")
    };
    let panels = vec![
        panel(1, "timeseries", "Traffic split", "Share of live traffic each version gets, by role (stable, candidate, shadow), as the routing table sets it.", "percent", (0, 0, 12, 8), vec![
            target(&format!("max by (version, role) (modelship_traffic_weight_bp{{{m}}}) / 100"), "{{version}} ({{role}})", "A"),
        ]),
        panel(2, "timeseries", "Requests per second", "Requests answered, by version and role.", "reqps", (12, 0, 12, 8), vec![
            target(&format!("sum by (version, role) (rate(modelship_requests_total{{{mv}}}[{rate}]))"), "{{version}} ({{role}})", "A"),
        ]),
        panel(3, "timeseries", "Error rate", "Share of each version's requests that failed with a server error (5xx).", "percentunit", (0, 8, 12, 8), vec![
            target(&format!(
                r#"sum by (version) (rate(modelship_requests_total{{{mv}, code=~"5.."}}[{rate}])) / sum by (version) (rate(modelship_requests_total{{{mv}}}[{rate}]))"#
            ), "{{version}}", "A"),
        ]),
        panel(4, "timeseries", "Latency quantiles", "Whole-request latency (body read to response built) at the 50th, 90th and 99th percentiles, by version.", "s", (12, 8, 12, 8), vec![
            target(&quantile("0.5"), "p50 {{version}}", "A"),
            target(&quantile("0.9"), "p90 {{version}}", "B"),
            target(&quantile("0.99"), "p99 {{version}}", "C"),
        ]),
        {
            let mut heat = panel(5, "heatmap", "Score distribution", "How the model's scores (its first output's first value per request) spread, all selected versions together.", "short", (0, 16, 12, 8), vec![
                json!({"datasource": datasource(), "expr": format!("sum by (le) (rate(modelship_prediction_score_bucket{{{mv}}}[{rate}]))"), "format": "heatmap", "legendFormat": "{{le}}", "refId": "A"}),
            ]);
            heat["options"] = json!({"calculate": false, "yAxis": {"unit": "short"}, "cellGap": 1});
            heat
        },
        panel(6, "timeseries", "Mean score", "Each version's mean score: a shift between versions, or over time, is what the drift alert watches.", "short", (12, 16, 12, 8), vec![
            target(&format!(
                "sum by (version) (rate(modelship_prediction_score_sum{{{mv}}}[{rate}])) / sum by (version) (rate(modelship_prediction_score_count{{{mv}}}[{rate}]))"
            ), "{{version}}", "A"),
        ]),
        panel(7, "stat", "Rollout step", "The step the rollout is at (from 1).", "none", (0, 24, 6, 6), vec![
            target(&format!("max(modelship_rollout_step{{{m}}})"), "step", "A"),
        ]),
        panel(8, "stat", "Rollout phase", "The phase the model's latest rollout is in.", "none", (6, 24, 6, 6), vec![
            target(&format!("max by (phase) (modelship_rollout_phase{{{m}}}) == 1"), "{{phase}}", "A"),
        ]),
        panel(9, "timeseries", "Rollout checks", "Each check's verdict: 2 proven, 1 pass, 0 inconclusive, -1 fail.", "none", (12, 24, 12, 6), vec![
            target(&format!("max by (check) (modelship_rollout_check_verdict{{{m}}})"), "{{check}}", "A"),
        ]),
        panel(10, "timeseries", "Queue", "Requests waiting for a worker, and the queue's size (a full queue answers 429).", "short", (0, 30, 12, 8), vec![
            target(&format!("max by (version) (modelship_queue_length{{{mv}}})"), "waiting {{version}}", "A"),
            target(&format!("max by (version) (modelship_queue_capacity{{{mv}}})"), "capacity {{version}}", "B"),
        ]),
        panel(11, "timeseries", "Shadow comparisons", "Shadow answers compared with the served answer, by result.", "reqps", (12, 30, 12, 8), vec![
            target(&format!("sum by (version, result) (rate(modelship_shadow_comparisons_total{{{m}}}[{rate}]))"), "{{version}} {{result}}", "A"),
        ]),
    ];
    json!({
        "title": format!("modelship: {}", d.name),
        "uid": uid(&d.name),
        "description": "Generated by modelship deploy: one model's versions, traffic split, errors, latency, scores and rollout.",
        "tags": ["modelship"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0},
            {"name": "model", "label": "Model", "type": "query", "datasource": datasource(), "query": {"query": "label_values(modelship_model_info, model)", "refId": "model"}, "definition": "label_values(modelship_model_info, model)", "refresh": 2, "includeAll": false, "multi": false, "current": {}, "sort": 1},
            {"name": "version", "label": "Version", "type": "query", "datasource": datasource(), "query": {"query": "label_values(modelship_model_info{model=\"$model\"}, version)", "refId": "version"}, "definition": "label_values(modelship_model_info{model=\"$model\"}, version)", "refresh": 2, "includeAll": true, "allValue": ".*", "multi": true, "current": {}, "sort": 1},
        ]},
        "annotations": {"list": [
            {"name": "Rollout steps", "datasource": datasource(), "enable": true, "iconColor": "orange", "step": "15s",
             "expr": format!("max by (model) (changes(modelship_rollout_step{{{m}}}[1m])) > 0"), "titleFormat": "rollout step", "textFormat": "{{model}}: the rollout moved to another step"},
            {"name": "Routing changes", "datasource": datasource(), "enable": true, "iconColor": "blue", "step": "15s",
             "expr": format!("max by (model) (changes(modelship_traffic_revision{{{m}}}[1m])) > 0"), "titleFormat": "routing revision", "textFormat": "{{model}}: a new routing revision"},
        ]},
        "panels": panels,
    })
}

/// Grafana's uid: at most 40 characters of letters, digits, `-` and `_`.
fn uid(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    format!("modelship-{clean}").chars().take(40).collect()
}

/// The dashboard file: JSON has no comments, so the command that made it is in its
/// `description`.
pub fn render(d: &Deployment, command: &str) -> String {
    let mut dashboard = dashboard(d);
    dashboard["description"] = Value::String(format!("Generated by `{}`: one model's versions, traffic split, errors, latency, scores and rollout.", command.replace(['\n', '\r'], " ")));
    let mut text = serde_json::to_string_pretty(&dashboard).unwrap_or_default();
    text.push('\n');
    text
}
