//! The rollout Job (`kubernetes.rollout`): `modelship controller` driving the candidate's canary or
//! shadow through the generated VirtualService or HTTPRoute, judged by the spec's PromQL checks,
//! with its own ServiceAccount and a Role that reaches only that route (get, patch) and the
//! control store's ConfigMaps and Lease.
//!
//! A Job, because a rollout ends: exit 0 (promoted) completes it, exit 2 (rolled back) fails it
//! at once (`podFailurePolicy`), any other failure is retried and the controller resumes the
//! stored rollout at its step; a retry after the rollout ended reports its outcome and starts
//! nothing. The Job is named after the candidate, so a new candidate is a new Job.

use std::collections::BTreeMap;

use super::api::*;
use super::workload::{image, pod_security, security};
use super::{Files, component_labels, meta};
use crate::description::{Deployment, Mesh};

/// Where the Job's container reads the spec.
pub const SPEC_DIR: &str = "/etc/modelship/rollout";

/// The Job's name: `NAME-rollout-VERSION`, the version made a DNS-1123 label and the whole cut
/// to 63 characters.
pub fn job_name(d: &Deployment, version: &str) -> String {
    let slug: String = version.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let name = format!("{}-rollout-{}", d.name, slug.trim_matches('-'));
    name.chars().take(63).collect::<String>().trim_end_matches('-').to_owned()
}

fn controller_name(d: &Deployment) -> String {
    format!("{}-controller", d.name)
}

/// The rollout's objects, when the description asks for one.
pub fn objects(d: &Deployment, files: &mut Files) {
    let k = &d.kubernetes;
    let (Some(_), Some(candidate)) = (&k.rollout, &k.candidate) else { return };
    let ns = d.namespace().to_owned();
    let name = controller_name(d);
    let spec_map = format!("{}-rollout", d.name);
    files.add("configmap-rollout.yaml", &Object {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: meta(d, &spec_map),
        body: Data { data: BTreeMap::from([("rollout.yaml".to_owned(), d.rollout_contents.clone().unwrap_or_default())]) },
    });
    files.add("serviceaccount-controller.yaml", &Object {
        api_version: "v1",
        kind: "ServiceAccount",
        metadata: meta(d, &name),
        body: ServiceAccount { automount_service_account_token: true },
    });
    let (route_group, route_resource, mesh) = match k.mesh {
        Mesh::Istio => ("networking.istio.io", "virtualservices", "istio"),
        _ => ("gateway.networking.k8s.io", "httproutes", "gateway"),
    };
    let store = |api_groups, resources| PolicyRule { api_groups, resources, resource_names: vec![], verbs: vec!["get", "list", "watch", "create", "update", "patch"] };
    files.add("role-controller.yaml", &Object {
        api_version: "rbac.authorization.k8s.io/v1",
        kind: "Role",
        metadata: meta(d, &name),
        body: Role {
            rules: vec![
                // The one route it drives, nothing else of the mesh.
                PolicyRule { api_groups: vec![route_group], resources: vec![route_resource], resource_names: vec![d.name.clone()], verbs: vec!["get", "patch"] },
                store(vec![""], vec!["configmaps"]),
                store(vec!["coordination.k8s.io"], vec!["leases"]),
            ],
        },
    });
    files.add("rolebinding-controller.yaml", &Object {
        api_version: "rbac.authorization.k8s.io/v1",
        kind: "RoleBinding",
        metadata: meta(d, &name),
        body: RoleBinding {
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io", kind: "Role", name: name.clone() },
            subjects: vec![Subject { kind: "ServiceAccount", name: name.clone(), namespace: ns.clone() }],
        },
    });
    let stable = d.model.version.clone().unwrap_or_else(|| "1".to_owned());
    let mut args: Vec<String> = vec!["controller".into(), d.served_name(), "--spec".into(), format!("{SPEC_DIR}/rollout.yaml"), "--stable".into(), stable];
    args.extend(["--mesh", mesh, "--route", &d.name, "--namespace", &ns].map(str::to_owned));
    if k.mesh != Mesh::Istio {
        args.extend(["--stable-backend".to_owned(), d.name.clone(), "--canary-backend".to_owned(), format!("{}-canary", d.name)]);
    }
    args.extend(["--header".to_owned(), k.traffic.header.name.clone(), "--control-store".to_owned(), format!("kubernetes://{ns}"), "--output".to_owned(), "json".to_owned()]);
    let container = Container {
        name: "controller".to_owned(),
        image: image(d, &d.image.tag, k.image_digest.as_deref()),
        image_pull_policy: "IfNotPresent",
        args,
        env: vec![EnvVar::field("POD_NAME", "metadata.name")],
        resources: Resources {
            requests: BTreeMap::from([("cpu".to_owned(), "50m".to_owned()), ("memory".to_owned(), "64Mi".to_owned())]),
            limits: BTreeMap::from([("cpu".to_owned(), "500m".to_owned()), ("memory".to_owned(), "256Mi".to_owned())]),
        },
        volume_mounts: vec![VolumeMount { name: "rollout", mount_path: SPEC_DIR.to_owned(), read_only: Some(true), sub_path: None }],
        security_context: security(),
        ..Container::default()
    };
    files.add("job-rollout.yaml", &Object {
        api_version: "batch/v1",
        kind: "Job",
        metadata: meta(d, &job_name(d, &candidate.version)),
        body: Spec {
            spec: JobSpec {
                backoff_limit: 6,
                // Exit 2 is the rollout's verdict (rolled back), not a crash: retrying it would
                // only report it again.
                pod_failure_policy: PodFailurePolicy {
                    rules: vec![PodFailureRule { action: "FailJob", on_exit_codes: ExitCodes { container_name: "controller", operator: "In", values: vec![2] } }],
                },
                template: JobTemplate {
                    metadata: Metadata { labels: component_labels(d, "rollout"), ..Metadata::default() },
                    spec: JobPodSpec {
                        service_account_name: name,
                        automount_service_account_token: true,
                        enable_service_links: false,
                        restart_policy: "Never",
                        security_context: pod_security(),
                        init_containers: vec![],
                        containers: vec![container],
                        volumes: vec![Volume { name: "rollout", config_map: Some(ConfigMapVolume { name: spec_map }), empty_dir: None, persistent_volume_claim: None }],
                    },
                },
            },
        },
    });
}
