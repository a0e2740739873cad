//! Kubernetes manifests, one file per object plus a `kustomization.yaml` that lists them
//! (`kubectl apply -k DIR`), for four strategies (`kubernetes.strategy`):
//!
//! - `rolling` (the seed's): one Deployment replaced pod by pod, maxSurge 1, maxUnavailable 0.
//! - `blue-green`: Deployments `NAME-blue` (the model) and `NAME-green` (the candidate); the
//!   Service selects the active colour, `NAME-preview` the other. Switching is one change of the
//!   Service's selector (`kubernetes.blue_green.active`, or `kubectl patch`).
//! - `canary` and `shadow`, three ways (`kubernetes.mesh`): Istio (one Service, a DestinationRule
//!   with a subset per track, a VirtualService with the header route, the weights and the
//!   mirror), Gateway API (a Service per track, an HTTPRoute with weighted `backendRefs`, a
//!   header match and `RequestMirror`), or none: one Deployment whose pods hold both versions and
//!   split by basis points themselves, sharing the routing table through the control store.
//!
//! Every strategy gets the Namespace, the ServiceAccount, the serving config as a ConfigMap, the
//! Service, an HPA (autoscaling/v2: CPU and the pods metric `http_requests_per_second`, with
//! scale-up and scale-down behaviour) per Deployment the traffic scales, a PodDisruptionBudget,
//! the Ingress (nginx, TLS) unless the Gateway API routes, and the Prometheus Adapter rule that
//! turns `modelship_requests_total` into `http_requests_per_second`.
//!
//! Weight precision: the description's percentages are basis points, as the server's router
//! keeps them. Istio's route weights are whole percents, so an Istio canary refuses a weight
//! finer than 1 % (its mirror percentage is a double and keeps basis points); Gateway API
//! weights are relative integers, written as basis points summing to 10000, and its mirror is a
//! whole `percent` or a `fraction` over 10000.
//!
//! Batch scoring (`kubernetes.batch`): a Job runs `modelship predict` over a file of a
//! PersistentVolumeClaim; a retried pod resumes from the parts the killed one left on the claim.
//!
//! A pod: the model reaches it baked into the image, or by an init container that runs the
//! modelship image itself (`modelship models fetch`, which checks the artifact's SHA-256) with
//! AWS keys from a Secret the cluster holds (named, never written); probes on the server's
//! `/health/startup`, `/health/ready` and `/health/live` by port name; a preStop sleep of
//! `drain.delay` (the kubelet's own sleep action, Kubernetes 1.30 and later: the image has no
//! shell) while endpoints and load balancers forget the pod, then SIGTERM and the server's drain
//! within `drain.grace`; a read-only root filesystem, no capability, uid 10001; preferred
//! anti-affinity across nodes and an even spread across zones; Prometheus scrape annotations;
//! `POD_NAME` and `POD_NAMESPACE` for the log lines.

pub mod api;
mod batch;
mod controller;
mod traffic;
mod workload;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::description::{Deployment, KubeStrategy, Mesh};
use crate::{GeneratedFile, Provenance};
use api::{Data, Empty, Kustomization, Labels, Metadata, Object, ServiceAccount, Spec};

pub const KUSTOMIZATION: &str = "kustomization.yaml";
/// The label that tells the tracks (stable, canary, blue, green) of one deployment apart.
pub const TRACK: &str = "modelship.dev/track";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// What a pod of the deployment is: [`SERVER`] for the serving pods (what the PDB and the
/// NetworkPolicy select), `rollout` and `batch` for the Jobs' pods.
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const SERVER: &str = "server";
/// The label of the pods allowed to reach the admin port (when `ports.publish_admin` opens it).
pub const OPERATOR: &str = "modelship.dev/operator";
/// The pods metric the HPA scales on, as the Prometheus Adapter rule names it.
pub const RATE_METRIC: &str = "http_requests_per_second";
/// The server's request counter the rate is computed from.
pub const REQUEST_COUNTER: &str = "modelship_requests_total";

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let mut files = Files { header: header.clone(), files: Vec::new() };
    let ns = d.namespace().to_owned();

    files.add("namespace.yaml", &Object { api_version: "v1", kind: "Namespace", metadata: Metadata { name: Some(ns.clone()), labels: labels(d), ..Metadata::default() }, body: Empty {} });
    let mesh_free = mesh_free(d);
    files.add("serviceaccount.yaml", &Object {
        api_version: "v1",
        kind: "ServiceAccount",
        metadata: meta(d, &d.name),
        // Only the mesh-free pods talk to the API server (the control store).
        body: ServiceAccount { automount_service_account_token: mesh_free },
    });
    if d.config.is_some() {
        let data = BTreeMap::from([("serving.yaml".to_owned(), d.config_contents.clone().unwrap_or_default())]);
        files.add("configmap-serving.yaml", &Object { api_version: "v1", kind: "ConfigMap", metadata: meta(d, &config_map_name(d)), body: Data { data } });
    }
    for track in workload::tracks(d) {
        files.add(track.deployment_file, &workload::deployment(d, &track));
        if let Some(file) = track.hpa_file {
            files.add(file, &workload::hpa(d, &track));
        }
    }
    for (file, service) in traffic::services(d) {
        files.add(file, &service);
    }
    if let Some(pdb) = workload::pdb(d) {
        files.add("pdb.yaml", &pdb);
    }
    if let Some(policy) = workload::network_policy(d) {
        files.add("networkpolicy.yaml", &policy);
    }
    if let Some(ingress) = traffic::ingress(d) {
        files.add("ingress.yaml", &ingress);
    }
    traffic::routes(d, &mut files);
    if mesh_free {
        let (role, binding) = workload::control_store_access(d);
        files.add("role.yaml", &role);
        files.add("rolebinding.yaml", &binding);
    }
    controller::objects(d, &mut files);
    batch::objects(d, &mut files);
    files.add("prometheus-adapter-rules.yaml", &workload::adapter_rules(d));
    if d.alerts.is_some() {
        // The Prometheus Operator's rule object (its CRD must be installed), and the dashboard
        // as the ConfigMap Grafana's dashboard sidecar picks up by its label.
        let rules = crate::alerts::rules(d);
        files.add("prometheusrule.yaml", &Object { api_version: "monitoring.coreos.com/v1", kind: "PrometheusRule", metadata: meta(d, &format!("{}-alerts", d.name)), body: Spec { spec: rules } });
        let mut metadata = meta(d, &format!("{}-dashboard", d.name));
        metadata.labels.insert("grafana_dashboard".to_owned(), "1".to_owned());
        let dashboard = crate::dashboard::render(d, &provenance.command);
        files.add("configmap-grafana-dashboard.yaml", &Object { api_version: "v1", kind: "ConfigMap", metadata, body: Data { data: BTreeMap::from([(format!("{}.json", d.name), dashboard)]) } });
    }

    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: files.files.iter().map(|f| f.path).collect(),
    };
    let mut out = vec![GeneratedFile { path: KUSTOMIZATION, contents: format!("{header}{}", crate::yaml::to_string(&kustomization)) }];
    out.append(&mut files.files);
    out
}

/// The files, each headed by the provenance.
pub(crate) struct Files {
    header: String,
    files: Vec<GeneratedFile>,
}

impl Files {
    pub(crate) fn add<T: Serialize>(&mut self, path: &'static str, object: &T) {
        self.files.push(GeneratedFile { path, contents: format!("{}{}", self.header, crate::yaml::to_string(object)) });
    }
}

/// Canary or shadow with no mesh: the pods split by themselves, through the control store.
pub(crate) fn mesh_free(d: &Deployment) -> bool {
    matches!(d.kubernetes.strategy, KubeStrategy::Canary | KubeStrategy::Shadow) && d.kubernetes.mesh == Mesh::None
}

/// The labels every object carries.
fn labels(d: &Deployment) -> Labels {
    BTreeMap::from([(NAME_LABEL.to_owned(), d.name.clone()), ("app.kubernetes.io/managed-by".to_owned(), "modelship".to_owned())])
}

/// A pod's labels: every object's and what it is ([`COMPONENT`]).
fn component_labels(d: &Deployment, component: &str) -> Labels {
    let mut l = labels(d);
    l.insert(COMPONENT.to_owned(), component.to_owned());
    l
}

/// A namespaced object's metadata.
fn meta(d: &Deployment, name: &str) -> Metadata {
    Metadata { name: Some(name.to_owned()), namespace: Some(d.namespace().to_owned()), labels: labels(d), annotations: Labels::new() }
}

fn config_map_name(d: &Deployment) -> String {
    format!("{}-serving", d.name)
}

/// The pods of the whole deployment (every track).
fn app_selector(d: &Deployment) -> Labels {
    BTreeMap::from([(NAME_LABEL.to_owned(), d.name.clone())])
}

fn track_selector(d: &Deployment, track: &str) -> Labels {
    let mut s = app_selector(d);
    s.insert(TRACK.to_owned(), track.to_owned());
    s
}
