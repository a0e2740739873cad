//! The few Kubernetes, Istio and Gateway API fields the generator writes, as typed values:
//! a misspelt field does not compile, and [`crate::yaml`] writes them with every string quoted.
//! Field names follow the APIs (camelCase); only what the generator uses is here. The tests
//! validate the output against the official schemas (`kubernetes-validate --strict`, the CRDs).

use std::collections::BTreeMap;

use serde::Serialize;

pub type Labels = BTreeMap<String, String>;

/// One object: `apiVersion`, `kind`, `metadata`, then the kind's own fields.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<T: Serialize> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Metadata,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Labels,
}

/// A kind with nothing but its metadata (Namespace).
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
pub struct Spec<T: Serialize> {
    pub spec: T,
}

#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    pub automount_service_account_token: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: Labels,
}

// --- apps/v1 Deployment ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Absent when an HPA owns the count (so that `kubectl apply` does not reset it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    pub revision_history_limit: u32,
    pub selector: LabelSelector,
    pub strategy: DeploymentStrategy,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub rolling_update: RollingUpdate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodTemplate {
    pub metadata: Metadata,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: String,
    pub automount_service_account_token: bool,
    pub enable_service_links: bool,
    pub security_context: PodSecurityContext,
    pub termination_grace_period_seconds: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    pub affinity: Affinity,
    pub topology_spread_constraints: Vec<TopologySpread>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: Labels,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<crate::description::Toleration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    pub run_as_non_root: bool,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub fs_group: u32,
    pub seccomp_profile: SeccompProfile,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeccompProfile {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    pub security_context: ContainerSecurityContext,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: &'static str,
    pub container_port: u16,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

impl EnvVar {
    pub fn value(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.to_owned(), value: Some(value.to_owned()), value_from: None }
    }

    pub fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value: None,
            value_from: Some(EnvSource { field_ref: Some(FieldRef { field_path: path.to_owned() }), secret_key_ref: None }),
        }
    }

    pub fn secret(name: &str, secret: &str, key: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value: None,
            value_from: Some(EnvSource { field_ref: None, secret_key_ref: Some(SecretKeyRef { name: secret.to_owned(), key: key.to_owned() }) }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    pub requests: Labels,
    pub limits: Labels,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: &'static str,
    pub mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http_get: HttpGet,
    pub initial_delay_seconds: u32,
    pub period_seconds: u64,
    pub timeout_seconds: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpGet {
    pub path: &'static str,
    /// A container port's name.
    pub port: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub pre_stop: PreStop,
}

/// The kubelet's own sleep (Kubernetes 1.30+): the image has no shell and no `sleep`.
#[derive(Debug, Clone, Serialize)]
pub struct PreStop {
    pub sleep: Sleep,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sleep {
    pub seconds: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSecurityContext {
    pub allow_privilege_escalation: bool,
    pub read_only_root_filesystem: bool,
    pub run_as_non_root: bool,
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Capabilities {
    pub drop: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimVolume>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVolume {
    pub claim_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigMapVolume {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub pod_anti_affinity: PodAntiAffinity,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAntiAffinity {
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedAffinityTerm>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedAffinityTerm {
    pub weight: u32,
    pub pod_affinity_term: AffinityTerm,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityTerm {
    pub label_selector: LabelSelector,
    pub topology_key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpread {
    pub max_skew: u32,
    pub topology_key: &'static str,
    pub when_unsatisfiable: &'static str,
    pub label_selector: LabelSelector,
}

// --- v1 Service ---

#[derive(Debug, Clone, Serialize)]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: &'static str,
    pub port: u16,
    /// A container port's name.
    pub target_port: &'static str,
    pub protocol: &'static str,
    pub app_protocol: &'static str,
}

// --- autoscaling/v2 HorizontalPodAutoscaler ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    pub scale_target_ref: ScaleTarget,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<Metric>,
    pub behavior: Behavior,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTarget {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Metric {
    Resource {
        #[serde(rename = "type")]
        kind: &'static str,
        resource: ResourceMetric,
    },
    Pods {
        #[serde(rename = "type")]
        kind: &'static str,
        pods: PodsMetric,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceMetric {
    pub name: &'static str,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsMetric {
    pub metric: MetricName,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricName {
    pub name: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_value: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select_policy: &'static str,
    pub policies: Vec<ScalingPolicy>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: u32,
    pub period_seconds: u32,
}

// --- policy/v1 PodDisruptionBudget ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    pub min_available: u32,
    pub selector: LabelSelector,
}

// --- networking.k8s.io/v1 NetworkPolicy ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: LabelSelector,
    pub policy_types: Vec<&'static str>,
    pub ingress: Vec<NetworkPolicyRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyRule {
    /// Absent: from anywhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    pub ports: Vec<NetworkPolicyPort>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    pub pod_selector: LabelSelector,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    pub protocol: &'static str,
    pub port: u16,
}

// --- networking.k8s.io/v1 Ingress ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    pub ingress_class_name: String,
    pub tls: Vec<IngressTls>,
    pub rules: Vec<IngressRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    pub hosts: Vec<String>,
    pub secret_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressRule {
    pub host: String,
    pub http: IngressHttp,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressHttp {
    pub paths: Vec<IngressPath>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPath {
    pub path: &'static str,
    pub path_type: &'static str,
    pub backend: IngressBackend,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressBackend {
    pub service: IngressService,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressService {
    pub name: String,
    pub port: NamedPort,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedPort {
    pub name: &'static str,
}

// --- rbac.authorization.k8s.io/v1 ---

#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub api_groups: Vec<&'static str>,
    pub resources: Vec<&'static str>,
    /// Only these objects (empty: every object of the resources).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    pub verbs: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    pub api_group: &'static str,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
}

// --- networking.istio.io/v1 ---

#[derive(Debug, Clone, Serialize)]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    pub http: Vec<IstioRoute>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioRoute {
    pub name: &'static str,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<IstioMatch>,
    pub route: Vec<IstioDestinationWeight>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<IstioDestination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<IstioPercent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IstioMatch {
    pub headers: BTreeMap<String, IstioStringMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IstioStringMatch {
    pub exact: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IstioDestinationWeight {
    pub destination: IstioDestination,
    /// Whole percents: Istio's weights are integers summing to 100.
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct IstioDestination {
    pub host: String,
    pub subset: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct IstioPercent {
    /// A double: the mirror share is not limited to whole percents.
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationRuleSpec {
    pub host: String,
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subset {
    pub name: &'static str,
    pub labels: Labels,
}

// --- gateway.networking.k8s.io/v1 HTTPRoute ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub name: &'static str,
    pub matches: Vec<HttpRouteMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpRouteMatch {
    pub path: PathMatch,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request_mirror: RequestMirror,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: ServiceRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRef {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendRef {
    pub name: String,
    pub port: u16,
    /// Relative: the generator writes basis points, so the weights sum to 10000.
    pub weight: u32,
}

// --- Prometheus Adapter's rule file (config.yaml of its ConfigMap) ---

#[derive(Debug, Clone, Serialize)]
pub struct AdapterConfig {
    pub rules: Vec<AdapterRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdapterRule {
    pub series_query: String,
    pub resources: AdapterResources,
    pub name: AdapterName,
    pub metrics_query: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterResources {
    pub overrides: BTreeMap<&'static str, AdapterResource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterResource {
    pub resource: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterName {
    pub matches: String,
    #[serde(rename = "as")]
    pub as_name: &'static str,
}

// --- kustomize.config.k8s.io/v1beta1 Kustomization ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub resources: Vec<&'static str>,
}

// --- batch/v1 Job ---

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub backoff_limit: u32,
    pub pod_failure_policy: PodFailurePolicy,
    pub template: JobTemplate,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodFailurePolicy {
    pub rules: Vec<PodFailureRule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodFailureRule {
    pub action: &'static str,
    pub on_exit_codes: ExitCodes,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitCodes {
    pub container_name: &'static str,
    pub operator: &'static str,
    pub values: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobTemplate {
    pub metadata: Metadata,
    pub spec: JobPodSpec,
}

/// A Job's pod: one container, no probes, never restarted in place (the Job retries).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobPodSpec {
    pub service_account_name: String,
    pub automount_service_account_token: bool,
    pub enable_service_links: bool,
    pub restart_policy: &'static str,
    pub security_context: PodSecurityContext,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub volumes: Vec<Volume>,
}
