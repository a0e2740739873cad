//! The pods and what keeps them up: Deployments (one per track), their HPAs, the
//! PodDisruptionBudget, the control store's RBAC and the Prometheus Adapter rule.

use std::collections::BTreeMap;

use super::api::*;
use super::{RATE_METRIC, REQUEST_COUNTER, api::Labels, app_selector, config_map_name, meta, mesh_free, track_selector};
use crate::description::{self, Deployment, KubeStrategy, MODEL_DIR, Mesh, STATE_DIR, UID};

/// One Deployment of the deployment: what it runs and how many.
pub struct Track {
    pub track: &'static str,
    pub name: String,
    pub deployment_file: &'static str,
    /// Its HPA's file, when the HPA owns its replica count.
    pub hpa_file: Option<&'static str>,
    /// A fixed count (no HPA).
    pub replicas: Option<u32>,
    pub image: String,
    pub version: Option<String>,
    /// The artifact the init container fetches.
    pub digest: Option<String>,
}

/// Where the init container puts a fetched model, in the pod's model volume.
const FETCHED_MODEL: &str = "model.onnx";

pub fn tracks(d: &Deployment) -> Vec<Track> {
    let k = &d.kubernetes;
    let stable = |track: &'static str, name: String, deployment_file, hpa_file| Track {
        track,
        name,
        deployment_file,
        hpa_file: Some(hpa_file),
        replicas: None,
        image: server_image(d, &d.image.tag, k.image_digest.as_deref()),
        version: d.model.version.clone(),
        digest: k.artifact.as_ref().map(|a| a.digest.clone()),
    };
    let candidate = |track: &'static str, name: String, deployment_file, hpa_file: Option<&'static str>, replicas| {
        let c = k.candidate.clone().unwrap_or_default();
        let tag = c.tag.clone().unwrap_or_else(|| d.image.tag.clone());
        // The stable image's digest pins the candidate only when both run the same tag.
        let image_digest = c.image_digest.clone().or_else(|| if tag == d.image.tag { k.image_digest.clone() } else { None });
        Track {
            track,
            name,
            deployment_file,
            hpa_file,
            replicas,
            image: server_image(d, &tag, image_digest.as_deref()),
            version: Some(c.version.clone()),
            digest: c.digest.clone().or_else(|| k.artifact.as_ref().map(|a| a.digest.clone())),
        }
    };
    match (k.strategy, k.mesh) {
        (KubeStrategy::Rolling, _) | (KubeStrategy::Canary | KubeStrategy::Shadow, Mesh::None) => {
            vec![stable("stable", d.name.clone(), "deployment.yaml", "hpa.yaml")]
        }
        (KubeStrategy::BlueGreen, _) => vec![
            stable("blue", format!("{}-blue", d.name), "deployment-blue.yaml", "hpa-blue.yaml"),
            candidate("green", format!("{}-green", d.name), "deployment-green.yaml", Some("hpa-green.yaml"), None),
        ],
        (KubeStrategy::Canary | KubeStrategy::Shadow, _) => vec![
            stable("stable", d.name.clone(), "deployment.yaml", "hpa.yaml"),
            candidate("canary", format!("{}-canary", d.name), "deployment-canary.yaml", None, Some(k.traffic.replicas)),
        ],
    }
}

/// The image of a tag, or pinned by digest (the Jobs' and the init container's: the CPU image).
pub(super) fn image(d: &Deployment, tag: &str, digest: Option<&str>) -> String {
    match digest {
        Some(digest) => format!("{}@{digest}", d.image.name),
        None => format!("{}:{tag}", d.image.name),
    }
}

/// The serving pods' image: the GPU variant's (`TAG-gpu`) with `image.gpu`. A digest pins what
/// it names (with `image.gpu`, give the GPU image's digest).
fn server_image(d: &Deployment, tag: &str, digest: Option<&str>) -> String {
    match digest {
        None if d.image.gpu => format!("{}:{tag}-gpu", d.image.name),
        _ => image(d, tag, digest),
    }
}

pub fn deployment(d: &Deployment, t: &Track) -> Object<Spec<DeploymentSpec>> {
    let selector = track_selector(d, t.track);
    let mut pod_labels = super::labels(d);
    pod_labels.insert(super::COMPONENT.to_owned(), super::SERVER.to_owned());
    pod_labels.extend(selector.clone());
    let port = d.ports.http.to_string();
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), port),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    let delay = description::seconds(&d.drain.delay).ceil() as u64;
    let grace = description::seconds(&d.drain.grace).ceil() as u64;
    let spec = PodSpec {
        service_account_name: d.name.clone(),
        // Only the control store needs the API server.
        automount_service_account_token: mesh_free(d),
        enable_service_links: false,
        security_context: pod_security(),
        // The preStop sleep, the drain, and 5 s for the process to exit.
        termination_grace_period_seconds: delay + grace + 5,
        init_containers: t.digest.as_ref().map(|digest| fetch_container(d, t, digest)).into_iter().collect(),
        containers: vec![server(d, t, delay)],
        volumes: volumes(d, t),
        affinity: Affinity {
            pod_anti_affinity: PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: vec![WeightedAffinityTerm {
                    weight: 100,
                    pod_affinity_term: AffinityTerm { label_selector: LabelSelector { match_labels: selector.clone() }, topology_key: "kubernetes.io/hostname" },
                }],
            },
        },
        topology_spread_constraints: vec![TopologySpread {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone",
            when_unsatisfiable: "ScheduleAnyway",
            label_selector: LabelSelector { match_labels: selector.clone() },
        }],
        node_selector: if d.gpus() > 0 { d.kubernetes.gpu.node_selector.clone() } else { Labels::new() },
        tolerations: if d.gpus() > 0 { d.kubernetes.gpu.tolerations.clone() } else { Vec::new() },
    };
    Object {
        api_version: "apps/v1",
        kind: "Deployment",
        metadata: meta(d, &t.name),
        body: Spec {
            spec: DeploymentSpec {
                replicas: t.replicas,
                revision_history_limit: 5,
                selector: LabelSelector { match_labels: selector },
                strategy: DeploymentStrategy { kind: "RollingUpdate", rolling_update: RollingUpdate { max_surge: 1, max_unavailable: 0 } },
                template: PodTemplate { metadata: Metadata { labels: pod_labels, annotations, ..Metadata::default() }, spec },
            },
        },
    }
}

/// Every pod's: uid and gid 10001, never root, the runtime's default seccomp profile.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext { run_as_non_root: true, run_as_user: UID, run_as_group: UID, fs_group: UID, seccomp_profile: SeccompProfile { kind: "RuntimeDefault" } }
}

pub(super) fn security() -> ContainerSecurityContext {
    ContainerSecurityContext { allow_privilege_escalation: false, read_only_root_filesystem: true, run_as_non_root: true, capabilities: Capabilities { drop: vec!["ALL"] } }
}

/// The model's path in the container.
pub(super) fn model_path(d: &Deployment, t: &Track) -> String {
    match (&t.digest, d.model_file_name()) {
        (Some(_), _) | (None, None) => format!("{MODEL_DIR}/{FETCHED_MODEL}"),
        (None, Some(file)) => format!("{MODEL_DIR}/{file}"),
    }
}

/// `modelship models fetch`: the artifact from the registry's object storage, its SHA-256
/// checked, into the pod's model volume. Only this container sees the AWS keys.
pub(super) fn fetch_container(d: &Deployment, t: &Track, digest: &str) -> Container {
    let k = &d.kubernetes;
    let store = k.artifact.as_ref().map(|a| a.store.clone()).unwrap_or_default();
    let secret = k.aws.secret.clone().unwrap_or_else(|| format!("{}-aws", d.name));
    let mut env = vec![EnvVar::secret("AWS_ACCESS_KEY_ID", &secret, "AWS_ACCESS_KEY_ID"), EnvVar::secret("AWS_SECRET_ACCESS_KEY", &secret, "AWS_SECRET_ACCESS_KEY")];
    if let Some(region) = &k.aws.region {
        env.push(EnvVar::value("AWS_REGION", region));
    }
    if let Some(endpoint) = &k.aws.endpoint {
        env.push(EnvVar::value("AWS_ENDPOINT_URL", endpoint));
        if endpoint.starts_with("http://") {
            env.push(EnvVar::value("AWS_ALLOW_HTTP", "true"));
        }
    }
    Container {
        name: "fetch-model".to_owned(),
        image: t.image.clone(),
        image_pull_policy: "IfNotPresent",
        args: ["models", "fetch", "--artifacts", &store, digest, "--out", &format!("{MODEL_DIR}/{FETCHED_MODEL}")].map(str::to_owned).to_vec(),
        env,
        resources: resources(d),
        volume_mounts: vec![VolumeMount { name: "model", mount_path: MODEL_DIR.to_owned(), read_only: None, sub_path: None }],
        security_context: security(),
        ..Container::default()
    }
}

pub(super) fn resources(d: &Deployment) -> Resources {
    Resources {
        requests: BTreeMap::from([("cpu".to_owned(), d.cpu_request()), ("memory".to_owned(), d.memory_request())]),
        limits: BTreeMap::from([("cpu".to_owned(), d.cpu_limit()), ("memory".to_owned(), d.memory_limit())]),
    }
}

/// The server's: [`resources`] and, with `image.gpu`, its GPUs (a limit is the request for an
/// extended resource).
fn server_resources(d: &Deployment) -> Resources {
    let mut r = resources(d);
    if d.gpus() > 0 {
        r.limits.insert("nvidia.com/gpu".to_owned(), d.gpus().to_string());
    }
    r
}

fn server(d: &Deployment, t: &Track, delay: u64) -> Container {
    // The kubelet's preStop sleep already holds SIGTERM while the pod leaves every endpoint
    // list, so the server's own delay would only wait again.
    let mut args = crate::compose_file::command(d);
    if let Some(i) = args.iter().position(|a| a == "--shutdown-delay") {
        args[i + 1] = "0".to_owned();
    }
    let mut env = vec![EnvVar::field("POD_NAME", "metadata.name"), EnvVar::field("POD_NAMESPACE", "metadata.namespace")];
    let mut values = crate::compose_file::environment(d);
    values.insert("MODEL_PATH".to_owned(), model_path(d, t));
    values.remove("MODELSHIP_REGISTRY");
    match &t.version {
        Some(v) => values.insert("MODEL_VERSION".to_owned(), v.clone()),
        None => values.remove("MODEL_VERSION"),
    };
    if mesh_free(d) && d.control_store.is_none() {
        values.insert("MODELSHIP_CONTROL_STORE".to_owned(), "kubernetes".to_owned());
    }
    // The description's env may not replace the pod's identity.
    values.remove("POD_NAME");
    values.remove("POD_NAMESPACE");
    env.extend(values.iter().map(|(k, v)| EnvVar::value(k, v)));
    let p = &d.ports;
    let mut ports = vec![ContainerPort { name: "http", container_port: p.http, protocol: "TCP" }, ContainerPort { name: "grpc", container_port: p.grpc, protocol: "TCP" }];
    if p.publish_admin {
        ports.push(ContainerPort { name: "admin", container_port: p.admin, protocol: "TCP" });
    }
    let [startup, readiness, liveness] = d.kubernetes.probes.resolved();
    let probe = |path, t: description::Timing| Probe {
        http_get: HttpGet { path, port: "http" },
        initial_delay_seconds: t.initial_delay,
        period_seconds: u64::from(t.period),
        timeout_seconds: u64::from(t.timeout),
        failure_threshold: t.failures,
        success_threshold: 1,
    };
    let mut mounts = vec![
        VolumeMount { name: "model", mount_path: MODEL_DIR.to_owned(), read_only: Some(true), sub_path: None },
        VolumeMount { name: "state", mount_path: STATE_DIR.to_owned(), read_only: None, sub_path: None },
        VolumeMount { name: "tmp", mount_path: "/tmp".to_owned(), read_only: None, sub_path: None },
    ];
    if d.config.is_some() {
        mounts.push(VolumeMount { name: "config", mount_path: description::CONFIG_PATH.to_owned(), read_only: Some(true), sub_path: Some("serving.yaml".to_owned()) });
    }
    // A baked model lives in the image's /models: no volume over it.
    if t.digest.is_none() {
        mounts.remove(0);
    }
    Container {
        name: "server".to_owned(),
        image: t.image.clone(),
        image_pull_policy: "IfNotPresent",
        args,
        ports,
        env,
        resources: server_resources(d),
        volume_mounts: mounts,
        // Startup holds the others off while the model loads (the guide's 5 + 5 x 30 s); then
        // readiness decides the endpoints and liveness restarts a wedged process.
        startup_probe: Some(probe("/health/startup", startup)),
        readiness_probe: Some(probe("/health/ready", readiness)),
        liveness_probe: Some(probe("/health/live", liveness)),
        lifecycle: Some(Lifecycle { pre_stop: PreStop { sleep: Sleep { seconds: delay.max(1) } } }),
        security_context: security(),
    }
}

fn volumes(d: &Deployment, t: &Track) -> Vec<Volume> {
    let empty = |name| Volume { name, config_map: None, empty_dir: Some(EmptyDir { size_limit: None }), persistent_volume_claim: None };
    let mut volumes = Vec::new();
    if t.digest.is_some() {
        volumes.push(empty("model"));
    }
    // The state directory (traffic history, admin token) lives as long as the pod: the fleet
    // store is what outlives it.
    volumes.push(empty("state"));
    volumes.push(Volume { name: "tmp", config_map: None, empty_dir: Some(EmptyDir { size_limit: Some("64Mi".to_owned()) }), persistent_volume_claim: None });
    if d.config.is_some() {
        volumes.push(Volume { name: "config", config_map: Some(ConfigMapVolume { name: config_map_name(d) }), empty_dir: None, persistent_volume_claim: None });
    }
    volumes
}

/// Scales on CPU and on the request rate per pod, up fast (double, or 4 pods, every 15 s) and
/// down slowly (10 % a minute after 5 minutes of lower load).
pub fn hpa(d: &Deployment, t: &Track) -> Object<Spec<HpaSpec>> {
    let a = &d.kubernetes.autoscaling;
    let rules = |window, select_policy, policies| ScalingRules { stabilization_window_seconds: window, select_policy, policies };
    let policy = |kind, value, period_seconds| ScalingPolicy { kind, value, period_seconds };
    Object {
        api_version: "autoscaling/v2",
        kind: "HorizontalPodAutoscaler",
        metadata: meta(d, &t.name),
        body: Spec {
            spec: HpaSpec {
                scale_target_ref: ScaleTarget { api_version: "apps/v1", kind: "Deployment", name: t.name.clone() },
                min_replicas: d.min_replicas(),
                max_replicas: a.max_replicas,
                metrics: vec![
                    Metric::Resource {
                        kind: "Resource",
                        resource: ResourceMetric { name: "cpu", target: MetricTarget { kind: "Utilization", average_utilization: Some(a.cpu_percent), average_value: None } },
                    },
                    Metric::Pods {
                        kind: "Pods",
                        pods: PodsMetric {
                            metric: MetricName { name: RATE_METRIC },
                            target: MetricTarget { kind: "AverageValue", average_utilization: None, average_value: Some(a.requests_per_second.clone()) },
                        },
                    },
                ],
                behavior: Behavior {
                    scale_up: rules(0, "Max", vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
                    scale_down: rules(300, "Min", vec![policy("Percent", 10, 60)]),
                },
            },
        },
    }
}

/// Over every pod of the deployment (all tracks), so a node drain never takes the serving
/// capacity below `minAvailable`.
pub fn pdb(d: &Deployment) -> Option<Object<Spec<PdbSpec>>> {
    let min_available = d.min_available()?;
    Some(Object {
        api_version: "policy/v1",
        kind: "PodDisruptionBudget",
        metadata: meta(d, &d.name),
        body: Spec { spec: PdbSpec { min_available, selector: LabelSelector { match_labels: server_selector(d) } } },
    })
}

/// Istio's sidecar ports Prometheus scrapes: the merged application and agent metrics, Envoy's.
pub const ISTIO_METRICS_MERGED: u16 = 15020;
pub const ISTIO_ENVOY_STATS: u16 = 15090;

/// The serving pods' NetworkPolicy: the HTTP and gRPC ports from anywhere (clients, the
/// ingress controller, the mesh, Prometheus on the HTTP port's `/metrics`); the admin port, when
/// the pods open it (`ports.publish_admin`), only from this namespace's pods labelled
/// `modelship.dev/operator: "true"`; with Istio, its sidecar's metrics ports; nothing else. Egress is left alone (the pods reach the
/// registry's store, Redis and the API server).
pub fn network_policy(d: &Deployment) -> Option<Object<Spec<NetworkPolicySpec>>> {
    if !d.kubernetes.network_policy {
        return None;
    }
    let port = |port| NetworkPolicyPort { protocol: "TCP", port };
    let mut open = vec![port(d.ports.http), port(d.ports.grpc)];
    if d.kubernetes.mesh == Mesh::Istio {
        // An Istio sidecar serves the merged Prometheus metrics on 15020 (its scrape annotation
        // is rewritten to it) and Envoy's own on 15090.
        open.extend([port(ISTIO_METRICS_MERGED), port(ISTIO_ENVOY_STATS)]);
    }
    let mut ingress = vec![NetworkPolicyRule { from: vec![], ports: open }];
    if d.ports.publish_admin {
        let operators = LabelSelector { match_labels: BTreeMap::from([(super::OPERATOR.to_owned(), "true".to_owned())]) };
        ingress.push(NetworkPolicyRule { from: vec![NetworkPolicyPeer { pod_selector: operators }], ports: vec![port(d.ports.admin)] });
    }
    Some(Object {
        api_version: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: meta(d, &d.name),
        body: Spec { spec: NetworkPolicySpec { pod_selector: LabelSelector { match_labels: server_selector(d) }, policy_types: vec!["Ingress"], ingress } },
    })
}

/// The serving pods of every track, not the Jobs' (rollout, batch), which share the app label.
fn server_selector(d: &Deployment) -> Labels {
    let mut s = app_selector(d);
    s.insert(super::COMPONENT.to_owned(), super::SERVER.to_owned());
    s
}

/// What the control store on the Kubernetes API needs (the fleet issue: the routing table in a
/// ConfigMap, the rollout's leader in a Lease), for the pods' ServiceAccount only.
pub fn control_store_access(d: &Deployment) -> (Object<Role>, Object<RoleBinding>) {
    let rule = |api_groups, resources, delete: bool| {
        let mut verbs = vec!["get", "list", "watch", "create", "update", "patch"];
        if delete {
            verbs.push("delete");
        }
        PolicyRule { api_groups, resources, resource_names: vec![], verbs }
    };
    let name = format!("{}-control-store", d.name);
    let role = Object {
        api_version: "rbac.authorization.k8s.io/v1",
        kind: "Role",
        metadata: meta(d, &name),
        // ConfigMaps are deleted too: the evidence log of a replica gone for an hour.
        body: Role { rules: vec![rule(vec![""], vec!["configmaps"], true), rule(vec!["coordination.k8s.io"], vec!["leases"], false)] },
    };
    let binding = Object {
        api_version: "rbac.authorization.k8s.io/v1",
        kind: "RoleBinding",
        metadata: meta(d, &name),
        body: RoleBinding {
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io", kind: "Role", name },
            subjects: vec![Subject { kind: "ServiceAccount", name: d.name.clone(), namespace: d.namespace().to_owned() }],
        },
    };
    (role, binding)
}

/// The Prometheus Adapter rule, as the `config.yaml` of a ConfigMap: the per-pod rate of the
/// server's request counter over 2 minutes, exposed as the pods metric the HPA reads. Prometheus
/// must scrape the pods with their `namespace` and `pod` labels (the annotation-based
/// kubernetes_sd relabelling does); the adapter reads its rules from its own ConfigMap, so
/// merge this rule into it (or mount this one as its `--config`).
pub fn adapter_rules(d: &Deployment) -> Object<Data> {
    let ns = d.namespace();
    let config = AdapterConfig {
        rules: vec![AdapterRule {
            series_query: format!("{REQUEST_COUNTER}{{namespace=\"{ns}\",pod!=\"\"}}"),
            resources: AdapterResources {
                overrides: BTreeMap::from([("namespace", AdapterResource { resource: "namespace" }), ("pod", AdapterResource { resource: "pod" })]),
            },
            name: AdapterName { matches: format!("^{REQUEST_COUNTER}$"), as_name: RATE_METRIC },
            metrics_query: "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)".to_owned(),
        }],
    };
    let mut metadata = meta(d, &format!("{}-adapter-rules", d.name));
    metadata.annotations.insert("modelship.dev/purpose".to_owned(), format!("prometheus-adapter rule: {REQUEST_COUNTER} as the pods metric {RATE_METRIC}"));
    Object { api_version: "v1", kind: "ConfigMap", metadata, body: Data { data: BTreeMap::from([("config.yaml".to_owned(), crate::yaml::to_string(&config))]) } }
}
