//! The generated alerting rules and dashboard checked by Prometheus' own `promtool` (Debian's
//! `prometheus` package, installed by scripts/setup.sh --test): the rules parse (`check rules`),
//! each fires on the series it is written for and not on others (`test rules`, with
//! tests/alerts/modelship-alerts.test.yml), the `PrometheusRule` of `deploy k8s` holds the same
//! groups, and every PromQL expression of the Grafana dashboard parses. Grafana itself is not
//! installed here: the dashboard is checked as JSON and as PromQL only.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelship_deploy::description::{Deployment, parse};
use modelship_deploy::{Provenance, Target, alerts, dashboard, render};

fn description(extra: &str) -> Deployment {
    parse(&format!("name: fraud\nmodel: {{file: m.onnx}}\n{extra}")).unwrap()
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); run scripts/setup.sh --test (Debian's prometheus package has it)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alerts")
}

#[test]
fn the_rules_parse_and_fire_on_the_series_they_are_written_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(alerts::FILE), alerts::render(&description(""), "# test\n")).unwrap();
    std::fs::copy(tests_dir().join("modelship-alerts.test.yml"), dir.path().join("modelship-alerts.test.yml")).unwrap();
    let checked = promtool(&["check", "rules", alerts::FILE], dir.path());
    let rules = alerts::rules(&description(""));
    let count: usize = rules.groups.iter().map(|g| g.rules.len()).sum();
    assert!(checked.contains(&format!("{count} rules found")), "{checked}");
    // promtool compares annotations too: the error-rate test checks them in full (templates
    // expanded); the other tests run on a copy whose other rules carry none.
    let mut tested = rules.clone();
    for rule in tested.groups.iter_mut().flat_map(|g| g.rules.iter_mut()).filter(|r| r.alert != "ModelshipHighErrorRate") {
        rule.annotations.clear();
    }
    let text = serde_yaml_ng::to_string(&tested).unwrap();
    std::fs::write(dir.path().join(alerts::FILE), text).unwrap();
    promtool(&["test", "rules", "modelship-alerts.test.yml"], dir.path());
    // Every rule has a for:, a severity and a runbook, and is tested by name.
    let tests = std::fs::read_to_string(tests_dir().join("modelship-alerts.test.yml")).unwrap();
    for rule in rules.groups.iter().flat_map(|g| &g.rules) {
        assert!(["critical", "warning"].contains(&rule.labels["severity"].as_str()), "{}", rule.alert);
        assert!(rule.annotations["runbook_url"].ends_with(&format!("#{}", rule.alert.to_ascii_lowercase())), "{}", rule.alert);
        assert!(!rule.for_.is_empty());
        assert!(tests.contains(&format!("alertname: {}", rule.alert)), "{} has no promtool test", rule.alert);
    }
}

#[test]
fn thresholds_and_labels_come_from_the_description() {
    let d = description("alerts: {error_rate: 0.01, error_rate_for: 30s, labels: {team: ml}, runbook_url: 'https://wiki.example.com/ml/'}\n");
    let rules = alerts::rules(&d);
    let error = rules.groups.iter().flat_map(|g| &g.rules).find(|r| r.alert == "ModelshipHighErrorRate").unwrap();
    assert!(error.expr.ends_with("> 0.01"), "{}", error.expr);
    assert_eq!(error.for_, "30s");
    assert_eq!(error.labels["team"], "ml");
    assert_eq!(error.annotations["runbook_url"], "https://wiki.example.com/ml#modelshiphigherrorrate");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), alerts::render(&d, "")).unwrap();
    promtool(&["check", "rules", "rules.yml"], dir.path());
    // Bad thresholds are refused with the key named.
    for (bad, says) in [
        ("alerts: {error_rate: 2}", "alerts.error_rate is 2"),
        ("alerts: {error_rate_for: 5 minutes}", "alerts.error_rate_for '5 minutes' is not a Prometheus duration"),
        ("alerts: {labels: {severity: page}}", "alerts.labels: 'severity'"),
        ("alerts: {nope: 1}", "unknown field `nope`"),
    ] {
        let problems = match parse(&format!("name: fraud\nmodel: {{file: m.onnx}}\n{bad}\n")) {
            Ok(d) => d.validate_for(Target::Alerts).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(problems.contains(says), "{bad}: {problems}");
    }
}

#[test]
fn compose_swarm_and_kubernetes_carry_the_rules() {
    let provenance = Provenance::new("modelship deploy test");
    for target in [Target::Compose, Target::Swarm] {
        let files = render(target, &description("prometheus: {}\n"), &provenance);
        let rules = files.iter().find(|f| f.path == alerts::FILE).unwrap_or_else(|| panic!("{target:?} writes no rules"));
        let prom = files.iter().find(|f| f.path == "prometheus.yml").unwrap();
        assert!(prom.contents.contains("/etc/prometheus/modelship-alerts.yml"), "{}", prom.contents);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yml"), &rules.contents).unwrap();
        promtool(&["check", "rules", "rules.yml"], dir.path());
    }
    // Kubernetes: only with alerts: (the PrometheusRule needs the Prometheus Operator's CRD).
    let plain = render(Target::Kubernetes, &description(""), &provenance);
    assert!(plain.iter().all(|f| f.path != "prometheusrule.yaml"));
    let files = render(Target::Kubernetes, &description("alerts: {}\n"), &provenance);
    let object: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files.iter().find(|f| f.path == "prometheusrule.yaml").unwrap().contents).unwrap();
    assert_eq!(object["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(object["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), serde_yaml_ng::to_string(&object["spec"]).unwrap()).unwrap();
    promtool(&["check", "rules", "rules.yml"], dir.path());
    let kustomization = &files.iter().find(|f| f.path == "kustomization.yaml").unwrap().contents;
    assert!(kustomization.contains("prometheusrule.yaml") && kustomization.contains("configmap-grafana-dashboard.yaml"), "{kustomization}");
    let configmap: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files.iter().find(|f| f.path == "configmap-grafana-dashboard.yaml").unwrap().contents).unwrap();
    assert_eq!(configmap["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    let json: serde_json::Value = serde_json::from_str(configmap["data"]["fraud.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "modelship-fraud");
}

#[test]
fn every_dashboard_expression_is_promql_that_promtool_parses() {
    let files = render(Target::Alerts, &description(""), &Provenance::new("modelship deploy alerts --file deploy.yaml"));
    let text = &files.iter().find(|f| f.path == dashboard::FILE).unwrap().contents;
    let board: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    assert_eq!(board["description"].as_str().map(|d| d.starts_with("Generated by `modelship deploy alerts --file deploy.yaml`")), Some(true));
    let titles: Vec<&str> = board["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in ["Traffic split", "Error rate", "Latency quantiles", "Score distribution"] {
        assert!(titles.contains(&want), "{titles:?}");
    }
    assert_eq!(board["annotations"]["list"][0]["name"], "Rollout steps");
    let exprs = dashboard::expressions(&board);
    assert!(exprs.len() >= 14, "{exprs:?}");
    // Grafana's variables as Grafana would substitute them, each expression a recording rule.
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "1m").replace("$model", "fraud").replace("$version", ".*");
            serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": e})
        })
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(out.contains(&format!("{} rules found", exprs.len())), "{out}");
}
