//! Rollouts through a service mesh or a Gateway: the same engine and spec as in-process rollouts,
//! with the split made by an Istio `VirtualService` or a Gateway API `HTTPRoute` instead of the
//! replicas' own routing table.
//!
//! - this module: the pure edit of a route object's spec for a split (weights, the canary
//!   header's rule, the mirror), table-tested on the objects `modelship deploy k8s` generates;
//! - `controller` (feature `kubernetes`): the control loop that judges Prometheus evidence with
//!   the engine, patches the route step by step and records every decision in the control store.
//!
//! The edit only retargets what is there: the rule that matches the canary header sends to the
//! canary while the step lets the header reach it and to stable otherwise; every other rule that
//! sends to stable or the canary gets the step's weights and mirror. Rules, matches and hosts the
//! user wrote stay as they are, and rules for other backends are not touched.
//!
//! Precision follows what each API allows. Istio's route weights are integer percent: the
//! controller refuses a spec whose steps are not whole percents (as `deploy k8s` refuses such a
//! canary), and [`istio_percent`] still rounds defensively, never hiding a side (a candidate with
//! any weight keeps at least 1 %, stable keeps 1 % until the candidate has everything); its mirror
//! percentage is a double and exact. Gateway API weights are integers in any total: the
//! controller writes stable and candidate weights out of 10,000, so every basis point is exact,
//! and the mirror as a fraction of 10,000.

#[cfg(feature = "kubernetes")]
pub mod controller;

use modelship_rollout::check::Check;
use modelship_rollout::spec::{Plan, Step};
use modelship_router::BasisPoints;
use serde_json::{Value, json};

/// Which API carries the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mesh {
    /// `networking.istio.io/v1` `VirtualService`: destinations are subsets of one host.
    Istio,
    /// `gateway.networking.k8s.io/v1` `HTTPRoute`: backends are Services.
    Gateway,
}

impl Mesh {
    pub fn kind(self) -> &'static str {
        match self {
            Mesh::Istio => "VirtualService",
            Mesh::Gateway => "HTTPRoute",
        }
    }
}

/// The two backends a route splits between, named as in the route: Istio subsets (`stable`,
/// `canary` in the generated DestinationRule) or Gateway API Services (`NAME`, `NAME-canary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    pub stable: String,
    pub canary: String,
    /// The header whose rule sends to the canary (`x-canary`), matched case-insensitively.
    pub header: String,
}

/// What the route should do: the step's routing, as the engine's `Action::Route` says, or
/// everything on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub weight: BasisPoints,
    pub shadow: BasisPoints,
    pub header: bool,
}

impl Split {
    /// Everything to stable, nothing mirrored: a rollback.
    pub const STABLE: Split = Split { weight: BasisPoints::ZERO, shadow: BasisPoints::ZERO, header: false };
    /// Everything to the candidate: a promotion.
    pub const CANDIDATE: Split = Split { weight: BasisPoints::ALL, shadow: BasisPoints::ZERO, header: true };
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeshError {
    #[error("the {kind} has no {field} list to split")]
    NoRules { kind: &'static str, field: &'static str },
    #[error("no rule of the {kind} sends to '{stable}' or '{canary}'; name the backends with --stable-backend and --canary-backend")]
    NoBackends { kind: &'static str, stable: String, canary: String },
}

/// The problems that keep `plan` from running in controller mode on `mesh` (empty: it can).
pub fn unsupported(plan: &Plan, mesh: Mesh) -> Vec<String> {
    let mut problems = Vec::new();
    for check in &plan.checks {
        if !matches!(check, Check::Prometheus { .. }) {
            problems.push(format!(
                "the {} check needs the replicas' own observations; in controller mode every check is a PromQL query over the pods' metrics, e.g. \
                 `prometheus: {{url: http://prometheus:9090, query: 'sum(rate(modelship_requests_total{{model=\"{{{{model}}}}\",version=\"{{{{candidate}}}}\",code=~\"5..\"}}[1m])) / sum(rate(modelship_requests_total{{model=\"{{{{model}}}}\",version=\"{{{{candidate}}}}\"}}[1m]))', max: 0.01}}`",
                check.name()
            ));
        }
    }
    if plan.checks.is_empty() {
        problems.push("no checks: in controller mode give at least one prometheus check, or the rollout advances on time alone".to_owned());
    }
    for (i, step) in plan.steps.iter().enumerate() {
        if matches!(step, Step::Approve {}) {
            problems.push(format!("steps[{i}] is an approval gate, which needs a server's admin API; use a webhook gate in controller mode"));
        }
        if let (Mesh::Istio, Step::Weight { weight, .. }) = (mesh, step)
            && weight.0.get() % 100 != 0
        {
            problems.push(format!(
                "steps[{i}]: Istio's route weights are whole percents, so {}% cannot be sent as it is; use a whole percent, or a Gateway API HTTPRoute (exact to 0.01%)",
                f64::from(weight.0.get()) / 100.0
            ));
        }
    }
    problems
}

/// Istio's integer percent for `bp` basis points (see the module's note on precision).
pub fn istio_percent(bp: BasisPoints) -> u64 {
    let bp = u64::from(bp.get());
    let percent = (bp + 50) / 100;
    match bp {
        0 => 0,
        10_000 => 100,
        _ => percent.clamp(1, 99),
    }
}

/// The spec of a route object with `split` applied; the rest of the object is the caller's.
pub fn route(mesh: Mesh, spec: &Value, backends: &Backends, split: Split) -> Result<Value, MeshError> {
    let mut spec = spec.clone();
    let field = match mesh {
        Mesh::Istio => "http",
        Mesh::Gateway => "rules",
    };
    let rules = spec.get_mut(field).and_then(Value::as_array_mut).ok_or(MeshError::NoRules { kind: mesh.kind(), field })?;
    let mut edited = 0;
    for rule in rules.iter_mut() {
        let changed = match mesh {
            Mesh::Istio => istio_rule(rule, backends, split),
            Mesh::Gateway => gateway_rule(rule, backends, split),
        };
        edited += usize::from(changed);
    }
    if edited == 0 {
        return Err(MeshError::NoBackends { kind: mesh.kind(), stable: backends.stable.clone(), canary: backends.canary.clone() });
    }
    Ok(spec)
}

fn is_header(name: &str, backends: &Backends) -> bool {
    name.eq_ignore_ascii_case(&backends.header)
}

/// One `http` entry of a VirtualService; false when it does not send to our subsets.
fn istio_rule(rule: &mut Value, backends: &Backends, split: Split) -> bool {
    let ours = |d: &Value| d["destination"]["subset"].as_str().is_some_and(|s| s == backends.stable || s == backends.canary);
    let Some(host) = rule["route"].as_array().and_then(|r| r.iter().find(|d| ours(d))).and_then(|d| d["destination"]["host"].as_str()) else {
        return false;
    };
    let host = host.to_owned();
    let destination = |subset: &str, weight: u64| json!({"destination": {"host": host, "subset": subset}, "weight": weight});
    let header_rule = rule["match"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["headers"].as_object().is_some_and(|h| h.keys().any(|k| is_header(k, backends)))));
    let object = rule.as_object_mut().expect("a route with destinations is an object");
    if header_rule {
        let subset = if split.header { &backends.canary } else { &backends.stable };
        object.insert("route".to_owned(), json!([destination(subset, 100)]));
        return true;
    }
    let canary = istio_percent(split.weight);
    object.insert("route".to_owned(), json!([destination(&backends.stable, 100 - canary), destination(&backends.canary, canary)]));
    if split.shadow.get() > 0 {
        object.insert("mirror".to_owned(), json!({"host": host, "subset": backends.canary}));
        object.insert("mirrorPercentage".to_owned(), json!({"value": f64::from(split.shadow.get()) / 100.0}));
    } else {
        object.remove("mirror");
        object.remove("mirrorPercentage");
    }
    true
}

/// One rule of an HTTPRoute; false when it does not send to our Services.
fn gateway_rule(rule: &mut Value, backends: &Backends, split: Split) -> bool {
    let ours = |r: &Value| r["name"].as_str().is_some_and(|n| n == backends.stable || n == backends.canary);
    let Some(port) = rule["backendRefs"].as_array().and_then(|r| r.iter().find(|r| ours(r))).map(|r| r["port"].clone()) else {
        return false;
    };
    let backend = |name: &str, weight: u32| {
        let mut r = json!({"name": name, "weight": weight});
        if !port.is_null() {
            r["port"] = port.clone();
        }
        r
    };
    let header_rule = rule["matches"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["headers"].as_array().is_some_and(|h| h.iter().any(|h| h["name"].as_str().is_some_and(|n| is_header(n, backends))))));
    let object = rule.as_object_mut().expect("a rule with backends is an object");
    if header_rule {
        let name = if split.header { &backends.canary } else { &backends.stable };
        object.insert("backendRefs".to_owned(), json!([backend(name, 10_000)]));
        return true;
    }
    let canary = u32::from(split.weight.get());
    object.insert("backendRefs".to_owned(), json!([backend(&backends.stable, 10_000 - canary), backend(&backends.canary, canary)]));
    let mirrors_canary = |f: &Value| f["type"] == "RequestMirror" && f["requestMirror"]["backendRef"]["name"] == backends.canary.as_str();
    let mut filters: Vec<Value> = object.get("filters").and_then(Value::as_array).map(|f| f.iter().filter(|f| !mirrors_canary(f)).cloned().collect()).unwrap_or_default();
    if split.shadow.get() > 0 {
        let mut mirror = json!({"name": backends.canary});
        if !port.is_null() {
            mirror["port"] = port.clone();
        }
        filters.push(json!({
            "type": "RequestMirror",
            "requestMirror": {"backendRef": mirror, "fraction": {"numerator": split.shadow.get(), "denominator": 10_000}},
        }));
    }
    if filters.is_empty() {
        object.remove("filters");
    } else {
        object.insert("filters".to_owned(), Value::Array(filters));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Plan {
        let spec: Value = serde_yaml_ng::from_str(yaml).unwrap();
        serde_json::from_value::<modelship_rollout::spec::RolloutSpec>(spec).unwrap().resolve().unwrap()
    }

    const PROMQL: &str = "checks: [{prometheus: {url: 'http://p:9090', query: 'up', max: 1}}]\n";

    #[test]
    fn controller_mode_refuses_what_it_cannot_judge_or_send() {
        // (spec, mesh, problems' beginnings); PROMQL is the one check controller mode judges.
        let table: [(String, Mesh, &[&str]); 6] = [
            ("to: '2'\ncanary: {weights: [5, 50, 100], every: 1m}\n".to_owned(), Mesh::Istio, &["no checks"]),
            ("to: '2'\ncanary: {weights: [5, 100], every: 1m}\nchecks: [{error_rate: {}}]\n".to_owned(), Mesh::Istio, &["the error_rate check needs the replicas' own observations"]),
            (format!("to: '2'\nsteps: [{{weight: {{weight: 10%, hold: 1m}}}}, {{approve: {{}}}}]\n{PROMQL}"), Mesh::Gateway, &["steps[1] is an approval gate"]),
            (format!("to: '2'\ncanary: {{weights: [2.5, 100], every: 1m}}\n{PROMQL}"), Mesh::Istio, &["steps[0]: Istio's route weights are whole percents, so 2.5%"]),
            (format!("to: '2'\ncanary: {{weights: [2.5, 100], every: 1m}}\n{PROMQL}"), Mesh::Gateway, &[]),
            (format!("to: '2'\nsteps: [{{shadow: {{percent: 12.5%, hold: 1m}}}}, {{webhook: {{url: 'http://gate'}}}}, {{weight: {{weight: 100%, hold: 1m}}}}]\n{PROMQL}"), Mesh::Istio, &[]),
        ];
        for (spec, mesh, expected) in table {
            let problems = unsupported(&plan(&spec), mesh);
            assert_eq!(problems.len(), expected.len(), "{spec}: {problems:?}");
            for (p, e) in problems.iter().zip(expected) {
                assert!(p.starts_with(e), "{spec}: {p}");
            }
        }
    }


    fn bp(n: u32) -> BasisPoints {
        BasisPoints::new(n).unwrap()
    }

    fn backends(stable: &str, canary: &str) -> Backends {
        Backends { stable: stable.to_owned(), canary: canary.to_owned(), header: "x-canary".to_owned() }
    }

    /// The generated objects' specs, as `modelship deploy k8s` writes them (the golden files).
    fn golden(case: &str, file: &str) -> Value {
        let path = format!("{}/../deploy/tests/golden/{case}/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let object: Value = serde_yaml_ng::from_str(&text).unwrap();
        object["spec"].clone()
    }

    #[test]
    fn istio_percent_rounds_but_never_hides_a_side() {
        for (bp_in, percent) in [(0, 0), (1, 1), (49, 1), (50, 1), (149, 1), (150, 2), (500, 5), (2_549, 25), (2_550, 26), (9_949, 99), (9_950, 99), (9_999, 99), (10_000, 100)] {
            assert_eq!(istio_percent(bp(bp_in)), percent, "{bp_in} bp");
        }
    }

    #[test]
    fn an_istio_canary_is_weighted_retargeted_and_mirrored() {
        let spec = golden("k8s-canary-istio", "virtualservice.yaml");
        let host = "fraud.ml-serving.svc.cluster.local";
        let b = backends("stable", "canary");
        let dest = |subset: &str, weight: u64| json!({"destination": {"host": host, "subset": subset}, "weight": weight});
        // (split, header rule's subset, weighted rule's routes, mirror percentage)
        let table = [
            (Split { weight: bp(2_500), shadow: BasisPoints::ZERO, header: true }, "canary", json!([dest("stable", 75), dest("canary", 25)]), None),
            (Split { weight: BasisPoints::ZERO, shadow: bp(1_250), header: false }, "stable", json!([dest("stable", 100), dest("canary", 0)]), Some(12.5)),
            (Split { weight: bp(30), shadow: BasisPoints::ZERO, header: true }, "canary", json!([dest("stable", 99), dest("canary", 1)]), None),
            (Split::STABLE, "stable", json!([dest("stable", 100), dest("canary", 0)]), None),
            (Split::CANDIDATE, "canary", json!([dest("stable", 0), dest("canary", 100)]), None),
        ];
        for (split, header_subset, weighted, mirror) in table {
            let out = route(Mesh::Istio, &spec, &b, split).unwrap();
            assert_eq!(out["hosts"], spec["hosts"], "hosts stay");
            assert_eq!(out["http"][0]["match"], spec["http"][0]["match"], "the header match stays");
            assert_eq!(out["http"][0]["route"], json!([dest(header_subset, 100)]), "{split:?}");
            assert_eq!(out["http"][1]["route"], weighted, "{split:?}");
            assert_eq!(out["http"][1]["mirrorPercentage"]["value"].as_f64(), mirror, "{split:?}");
            assert_eq!(out["http"][1]["mirror"].is_null(), mirror.is_none(), "{split:?}");
        }
        // A mirror set by one step is removed by the next that has none.
        let shadowed = route(Mesh::Istio, &spec, &b, Split { weight: BasisPoints::ZERO, shadow: BasisPoints::ALL, header: false }).unwrap();
        assert_eq!(shadowed["http"][1]["mirror"], json!({"host": host, "subset": "canary"}));
        let back = route(Mesh::Istio, &shadowed, &b, Split::STABLE).unwrap();
        assert!(back["http"][1].get("mirror").is_none() && back["http"][1].get("mirrorPercentage").is_none(), "{back}");
    }

    #[test]
    fn a_gateway_route_gets_exact_basis_points_and_a_fractional_mirror() {
        let spec = golden("k8s-canary-gateway", "httproute.yaml");
        let b = backends("fraud", "fraud-canary");
        let out = route(Mesh::Gateway, &spec, &b, Split { weight: bp(37), shadow: bp(1_250), header: true }).unwrap();
        assert_eq!(out["parentRefs"], spec["parentRefs"]);
        assert_eq!(out["rules"][0]["matches"], spec["rules"][0]["matches"]);
        assert_eq!(out["rules"][0]["backendRefs"], json!([{"name": "fraud-canary", "port": 8000, "weight": 10_000}]));
        assert_eq!(
            out["rules"][1]["backendRefs"],
            json!([{"name": "fraud", "port": 8000, "weight": 9_963}, {"name": "fraud-canary", "port": 8000, "weight": 37}])
        );
        assert_eq!(
            out["rules"][1]["filters"],
            json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "fraud-canary", "port": 8000}, "fraction": {"numerator": 1_250, "denominator": 10_000}}}])
        );
        let back = route(Mesh::Gateway, &out, &b, Split::STABLE).unwrap();
        assert_eq!(back["rules"][0]["backendRefs"], json!([{"name": "fraud", "port": 8000, "weight": 10_000}]));
        assert!(back["rules"][1].get("filters").is_none(), "the mirror is gone: {back}");
    }

    #[test]
    fn a_shadow_route_keeps_its_other_filters() {
        let mut spec = golden("k8s-shadow-gateway", "httproute.yaml");
        let header = json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-env", "value": "prod"}]}});
        spec["rules"][0]["filters"].as_array_mut().unwrap().insert(0, header.clone());
        let b = backends("fraud", "fraud-canary");
        let out = route(Mesh::Gateway, &spec, &b, Split { weight: BasisPoints::ZERO, shadow: BasisPoints::ALL, header: false }).unwrap();
        let filters = out["rules"][0]["filters"].as_array().unwrap();
        assert_eq!((filters.len(), &filters[0]), (2, &header), "{out}");
        assert_eq!(filters[1]["requestMirror"]["fraction"], json!({"numerator": 10_000, "denominator": 10_000}));
        let back = route(Mesh::Gateway, &out, &b, Split::STABLE).unwrap();
        assert_eq!(back["rules"][0]["filters"], json!([header]));
    }

    #[test]
    fn routes_that_are_not_ours_are_refused_or_left_alone() {
        let spec = golden("k8s-canary-istio", "virtualservice.yaml");
        assert_eq!(
            route(Mesh::Istio, &spec, &backends("blue", "green"), Split::STABLE).unwrap_err().to_string(),
            "no rule of the VirtualService sends to 'blue' or 'green'; name the backends with --stable-backend and --canary-backend"
        );
        assert_eq!(route(Mesh::Gateway, &spec, &backends("a", "b"), Split::STABLE), Err(MeshError::NoRules { kind: "HTTPRoute", field: "rules" }));
        let mut other = spec.clone();
        other["http"].as_array_mut().unwrap().push(json!({"route": [{"destination": {"host": "other.svc", "subset": "v1"}, "weight": 100}]}));
        let out = route(Mesh::Istio, &other, &backends("stable", "canary"), Split::STABLE).unwrap();
        assert_eq!(out["http"][2], other["http"][2], "another service's rule is not touched");
    }
}
