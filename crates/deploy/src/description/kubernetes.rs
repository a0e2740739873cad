//! The description's `kubernetes:` section: what only a cluster needs. Every key has the seed's
//! default, so a description written for Compose or Swarm renders for Kubernetes too once the
//! model can reach a pod (baked into the image, or an artifact in the registry's object storage).
//!
//! ```yaml
//! kubernetes:
//!   namespace: fraud                       # default: the deployment's name
//!   artifact: {store: s3://models/fraud, digest: sha256:...}   # fetched by the init container
//!   aws: {secret: fraud-aws, region: eu-west-1}                 # a Secret's NAME, never its values
//!   image_digest: sha256:...               # pin the image (server and init container) by digest
//!   resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: "1", memory: 1Gi}}
//!   autoscaling: {min_replicas: 3, max_replicas: 20, cpu_percent: 70, requests_per_second: "100"}
//!   disruption: {min_available: 2}      # the PodDisruptionBudget
//!   probes:                                # seconds; each probe and field on its own
//!     startup: {initial_delay: 5, period: 5, timeout: 5, failures: 30}
//!     readiness: {initial_delay: 10, period: 5, timeout: 3, failures: 2}
//!     liveness: {initial_delay: 15, period: 10, timeout: 5, failures: 3}
//!   network_policy: true                   # clients reach only the HTTP and gRPC ports
//!   ingress: {host: fraud.example.com, tls_secret: fraud-tls, class: nginx}
//!   strategy: rolling                      # rolling | blue-green | canary | shadow
//!   mesh: istio                            # canary and shadow: istio | gateway-api | none
//!   traffic: {weight: 5%, header: {name: x-canary, value: "true"}, mirror: 100%, replicas: 1}
//!   candidate: {version: "1.3.0", digest: sha256:..., tag: "0.2.0"}
//!   blue_green: {active: blue}
//!   gateway: {name: public, namespace: gateway-system}          # the HTTPRoute's parent
//!   rollout: {spec: rollout.yaml}          # canary/shadow with a mesh: a Job runs `modelship controller`
//!   batch: {claim: scoring, input: in/rows.parquet, output: out/preds.parquet, id_column: id}
//!                                          # a Job runs `modelship predict` over a PersistentVolumeClaim
//! ```

use serde::{Deserialize, Serialize};

use super::{Deployment, is_dns_label};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kubernetes {
    /// Every object's namespace [default: the deployment's name].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The model's artifact in the registry's object storage, fetched (and its digest checked)
    /// by an init container running the modelship image itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    pub aws: Aws,
    /// `sha256:HEX` of the image: the pods run `image.name@sha256:HEX` instead of the tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub resources: KubeResources,
    pub autoscaling: Autoscaling,
    pub disruption: Disruption,
    pub probes: Probes,
    /// Where GPU pods may run (with `image.gpu`).
    pub gpu: GpuScheduling,
    /// Write a NetworkPolicy: anyone may reach the HTTP and gRPC ports, the admin port (when
    /// `ports.publish_admin` opens it) only the namespace's pods labelled
    /// `modelship.dev/operator: "true"` [default: true].
    pub network_policy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    pub strategy: KubeStrategy,
    pub mesh: Mesh,
    pub traffic: Traffic,
    /// The version that blue-green (green), canary and shadow run beside the stable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    pub blue_green: BlueGreen,
    pub gateway: Gateway,
    /// A rollout of the candidate driven through the mesh's route by a Job running
    /// `modelship controller` (canary or shadow with `mesh: istio` or `gateway-api`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutJob>,
    /// Batch scoring: a Job running `modelship predict` on a file of a PersistentVolumeClaim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchJob>,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            namespace: None,
            artifact: None,
            aws: Aws::default(),
            image_digest: None,
            resources: KubeResources::default(),
            autoscaling: Autoscaling::default(),
            disruption: Disruption::default(),
            probes: Probes::default(),
            gpu: GpuScheduling::default(),
            network_policy: true,
            ingress: None,
            strategy: KubeStrategy::default(),
            mesh: Mesh::default(),
            traffic: Traffic::default(),
            candidate: None,
            blue_green: BlueGreen::default(),
            gateway: Gateway::default(),
            rollout: None,
            batch: None,
        }
    }
}

/// With `image.gpu`: the pods ask for `resources.gpus` of `nvidia.com/gpu` (the NVIDIA device
/// plugin's resource) and go to the GPU nodes: a node selector (the GPU operator's feature
/// discovery label by default) and tolerations for the taint GPU node pools carry (GKE and AKS
/// taint them `nvidia.com/gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuScheduling {
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl Default for GpuScheduling {
    fn default() -> Self {
        GpuScheduling {
            node_selector: std::collections::BTreeMap::from([("nvidia.com/gpu.present".to_owned(), "true".to_owned())]),
            tolerations: vec![Toleration { key: "nvidia.com/gpu".to_owned(), operator: "Exists".to_owned(), value: None, effect: Some("NoSchedule".to_owned()) }],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    pub key: String,
    /// `Exists` or `Equal`.
    #[serde(default = "exists")]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; none: every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

fn exists() -> String {
    "Exists".to_owned()
}

impl GpuScheduling {
    fn check(&self, p: &mut Vec<String>) {
        for (k, v) in &self.node_selector {
            if k.is_empty() || k.len() > 253 || !k.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c)) || v.len() > 63 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
                p.push(format!("kubernetes.gpu.node_selector '{k}: {v}' is not a label key and value"));
            }
        }
        for t in &self.tolerations {
            if !matches!(t.operator.as_str(), "Exists" | "Equal") {
                p.push(format!("kubernetes.gpu.tolerations: operator '{}' is not Exists or Equal", t.operator));
            }
            if t.operator == "Exists" && t.value.is_some() {
                p.push(format!("kubernetes.gpu.tolerations: '{}' has operator Exists and a value; Exists takes none", t.key));
            }
            if let Some(effect) = &t.effect
                && !matches!(effect.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute")
            {
                p.push(format!("kubernetes.gpu.tolerations: effect '{effect}' is not NoSchedule, PreferNoSchedule or NoExecute"));
            }
            if t.key.is_empty() || !t.key.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c)) {
                p.push(format!("kubernetes.gpu.tolerations: key '{}' is not a taint key", t.key));
            }
        }
    }
}

/// The server container's probes. Unset fields take the guide's values: startup 5/5/5/30,
/// readiness 10/5/3/2, liveness 15/10/5/3 (initial delay, period, timeout in seconds, failures).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probes {
    pub startup: ProbeTiming,
    pub readiness: ProbeTiming,
    pub liveness: ProbeTiming,
}

/// One probe's timing; what is unset comes from [`Probes::resolved`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeTiming {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
}

/// A probe's timing with every field known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: u32,
    pub period: u32,
    pub timeout: u32,
    pub failures: u32,
}

impl Probes {
    /// The guide's Deployment: `(initial delay, period, timeout, failures)`.
    pub const STARTUP: Timing = Timing { initial_delay: 5, period: 5, timeout: 5, failures: 30 };
    pub const READINESS: Timing = Timing { initial_delay: 10, period: 5, timeout: 3, failures: 2 };
    pub const LIVENESS: Timing = Timing { initial_delay: 15, period: 10, timeout: 5, failures: 3 };

    /// `(startup, readiness, liveness)`, each field the description's or the guide's.
    pub fn resolved(&self) -> [Timing; 3] {
        let fill = |t: &ProbeTiming, d: Timing| Timing {
            initial_delay: t.initial_delay.unwrap_or(d.initial_delay),
            period: t.period.unwrap_or(d.period),
            timeout: t.timeout.unwrap_or(d.timeout),
            failures: t.failures.unwrap_or(d.failures),
        };
        [fill(&self.startup, Self::STARTUP), fill(&self.readiness, Self::READINESS), fill(&self.liveness, Self::LIVENESS)]
    }

    pub(super) fn check(&self, key: &str, p: &mut Vec<String>) {
        for (name, t) in ["startup", "readiness", "liveness"].into_iter().zip(self.resolved()) {
            for (field, value, low, high) in
                [("initial_delay", t.initial_delay, 0, 3600), ("period", t.period, 1, 3600), ("timeout", t.timeout, 1, 3600), ("failures", t.failures, 1, 1000)]
            {
                if value < low || value > high {
                    p.push(format!("{key}.{name}.{field} is {value}; it must be between {low} and {high}"));
                }
            }
        }
    }
}

/// `kubernetes.batch`: the claim holding the rows, and the paths in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchJob {
    /// The PersistentVolumeClaim (in the namespace) the Job reads the rows from and writes to.
    pub claim: String,
    /// The rows, a path in the claim: `.csv` or `.parquet`.
    pub input: String,
    /// The predictions, a path in the claim: `.parquet`, `.csv` or `.jsonl`.
    pub output: String,
    /// A column naming each row, copied to the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutJob {
    /// The rollout spec (a host file, relative to the description): its `to` is the candidate,
    /// its checks PromQL queries. It goes into a ConfigMap the Job mounts.
    pub spec: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `s3://bucket[/prefix]`, as `modelship models push` wrote it (`--artifacts`).
    pub store: String,
    /// `sha256:HEX`: the version's digest (`modelship models show NAME@ALIAS --output json`).
    pub digest: String,
}

/// The S3 client's settings. Credentials come from a Secret the cluster already holds
/// (`kubectl create secret generic NAME --from-literal=AWS_ACCESS_KEY_ID=...`): the generated
/// files name it and never carry a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aws {
    /// The Secret's name, with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` [default: NAME-aws].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO...), `AWS_ENDPOINT_URL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Requests and limits as Kubernetes quantities. Unset limits come from the description's
/// `resources` (cpus, memory); unset requests are half a CPU and the memory limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeResources {
    pub requests: Quantities,
    pub limits: Quantities,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quantities {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Autoscaling {
    /// [default: `replicas`]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    pub max_replicas: u32,
    /// Average CPU use, in percent of the request.
    pub cpu_percent: u32,
    /// Average requests per second per pod (the pods metric `http_requests_per_second`), a quantity.
    pub requests_per_second: String,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling { min_replicas: None, max_replicas: 20, cpu_percent: 70, requests_per_second: "100".to_owned() }
    }
}

/// The PodDisruptionBudget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disruption {
    /// [default: 2, or one less than the fewest replicas there can be when that is less; no
    /// budget for a single replica]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_available: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    pub host: String,
    /// The TLS certificate's Secret (kubernetes.io/tls) [default: NAME-tls].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    #[serde(default = "nginx")]
    pub class: String,
}

fn nginx() -> String {
    "nginx".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeStrategy {
    /// One Deployment replaced pod by pod (maxSurge 1, maxUnavailable 0).
    #[default]
    Rolling,
    /// Two Deployments (blue runs the model, green the candidate); the Service selects the
    /// active one, a preview Service the other.
    BlueGreen,
    /// The candidate beside stable, with a share of the requests and every `x-canary: true` one.
    Canary,
    /// The candidate gets a copy of the requests; its answers are discarded.
    Shadow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mesh {
    /// VirtualService + DestinationRule.
    #[default]
    Istio,
    /// HTTPRoute with weighted backendRefs.
    GatewayApi,
    /// One Deployment whose pods load both versions and split by basis points themselves
    /// (`modelship traffic` / `rollout`), sharing the routing table through the control store.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// The candidate's share (canary), a percentage: `5%`, `0.25%`.
    pub weight: String,
    /// Requests with this header go to the candidate (canary).
    pub header: Header,
    /// The share of requests copied to the candidate (shadow).
    pub mirror: String,
    /// The candidate's replicas (canary and shadow with a mesh).
    pub replicas: u32,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { weight: "5%".to_owned(), header: Header::default(), mirror: "100%".to_owned(), replicas: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl Default for Header {
    fn default() -> Self {
        Header { name: "x-canary".to_owned(), value: "true".to_owned() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Its `MODEL_VERSION`.
    pub version: String,
    /// Its artifact in `kubernetes.artifact.store` [default: the stable one's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its image tag [default: `image.tag`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Its image digest [default: `kubernetes.image_digest` when the tag is the same].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlueGreen {
    pub active: Color,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    #[default]
    Blue,
    Green,
}

impl Color {
    pub fn name(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

/// The Gateway an HTTPRoute attaches to (the cluster's, not generated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    pub name: String,
    /// [default: the route's own namespace]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway { name: "gateway".to_owned(), namespace: None, section_name: None }
    }
}

/// The longest suffix a generated object name gets (`-adapter-rules`, `-preview`...), so that
/// `NAME` plus it stays a DNS-1123 label.
pub const LONGEST_SUFFIX: usize = "-adapter-rules".len();

impl Deployment {
    pub fn namespace(&self) -> &str {
        self.kubernetes.namespace.as_deref().unwrap_or(&self.name)
    }

    /// What only the Kubernetes target needs, on top of [`Deployment::validate`].
    pub(super) fn kubernetes_problems(&self, p: &mut Vec<String>) {
        let k = &self.kubernetes;
        if self.name.len() > 63 - LONGEST_SUFFIX {
            p.push(format!("name '{}' is longer than {} characters; objects are named NAME-adapter-rules and the like, which must stay DNS-1123 labels (63)", self.name, 63 - LONGEST_SUFFIX));
        }
        if let Some(ns) = &k.namespace
            && !is_dns_label(ns)
        {
            p.push(format!("kubernetes.namespace '{ns}' is not a DNS-1123 label: 1-63 lowercase letters, digits and '-', starting with a letter"));
        }
        k.probes.check("kubernetes.probes", p);
        k.gpu.check(p);
        match (&k.artifact, &self.model.file, self.model.delivery()) {
            (Some(a), file, _) => {
                if !a.store.strip_prefix("s3://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c))) {
                    p.push(format!("kubernetes.artifact.store '{}' is not an s3://bucket/prefix URL", a.store));
                }
                check_digest("kubernetes.artifact.digest", &a.digest, p);
                if file.is_some() && self.model.delivery() == super::Delivery::Bake {
                    p.push("kubernetes.artifact and model.delivery: bake both give the model; keep one".to_owned());
                }
            }
            (None, Some(_), super::Delivery::Bake) => {}
            (None, Some(_), super::Delivery::Mount) => p.push(
                "model.file with delivery: mount names a file on this machine, which no pod can mount: bake it (model.delivery: bake) or give kubernetes.artifact (the registry's S3 store and the digest)".to_owned(),
            ),
            (None, None, _) => p.push(
                "a registry model reaches a pod by its artifact: give kubernetes.artifact {store: s3://..., digest: sha256:...} (the registry's --artifacts URL and the version's digest: modelship models show NAME@ALIAS --output json)".to_owned(),
            ),
        }
        match (&self.config, &self.config_contents) {
            (Some(config), None) => p.push(format!("config {config}: its contents go into a ConfigMap and were not read")),
            (_, Some(text)) if text.len() > 1_000_000 => p.push("config is over 1 MB, more than a ConfigMap holds".to_owned()),
            _ => {}
        }
        if self.model.registry_dir.is_some() {
            p.push("model.registry_dir is a host directory, which no pod can mount; give kubernetes.artifact instead".to_owned());
        }
        if let Some(rollout) = &k.rollout {
            if !(matches!(k.strategy, KubeStrategy::Canary | KubeStrategy::Shadow) && k.mesh != Mesh::None) {
                p.push("kubernetes.rollout drives a mesh's route: it needs strategy canary or shadow with mesh istio or gateway-api (without a mesh the pods run rollouts themselves: modelship rollout start)".to_owned());
            }
            super::check_host_path("kubernetes.rollout.spec", &rollout.spec, p);
            match &self.rollout_contents {
                None => p.push(format!("kubernetes.rollout.spec {}: its contents go into a ConfigMap and were not read", rollout.spec)),
                Some(text) if text.len() > 1_000_000 => p.push("kubernetes.rollout.spec is over 1 MB, more than a ConfigMap holds".to_owned()),
                Some(_) => {}
            }
        }
        if let Some(batch) = &k.batch {
            check_batch(batch, p);
        }
        if let Some(secret) = &k.aws.secret
            && !is_dns_subdomain(secret)
        {
            p.push(format!("kubernetes.aws.secret '{secret}' is not a Secret name (a DNS-1123 subdomain)"));
        }
        for (what, value) in [("kubernetes.aws.region", &k.aws.region), ("kubernetes.aws.endpoint", &k.aws.endpoint)] {
            if let Some(v) = value
                && (v.is_empty() || v.chars().any(|c| c.is_control() || c == ' '))
            {
                p.push(format!("{what} '{}' is empty or holds a space or a control character", v.escape_debug()));
            }
        }
        if let Some(e) = &k.aws.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            p.push(format!("kubernetes.aws.endpoint '{e}' is not an http:// or https:// URL"));
        }
        if let Some(digest) = &k.image_digest {
            check_digest("kubernetes.image_digest", digest, p);
        }
        let r = &k.resources;
        for (what, value, parse) in [
            ("kubernetes.resources.requests.cpu", &r.requests.cpu, cpu_millis as fn(&str) -> Option<f64>),
            ("kubernetes.resources.limits.cpu", &r.limits.cpu, cpu_millis),
            ("kubernetes.resources.requests.memory", &r.requests.memory, quantity),
            ("kubernetes.resources.limits.memory", &r.limits.memory, quantity),
        ] {
            if let Some(v) = value
                && !parse(v).is_some_and(|x| x > 0.0)
            {
                p.push(format!("{what} '{v}' is not a positive Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)"));
            }
        }
        if let (Some(req), Some(lim)) = (cpu_millis(&self.cpu_request()), cpu_millis(&self.cpu_limit()))
            && req > lim
        {
            p.push(format!("kubernetes.resources: the CPU request {} is above the limit {}", self.cpu_request(), self.cpu_limit()));
        }
        if let (Some(req), Some(lim)) = (quantity(&self.memory_request()), quantity(&self.memory_limit()))
            && req > lim
        {
            p.push(format!("kubernetes.resources: the memory request {} is above the limit {}", self.memory_request(), self.memory_limit()));
        }
        let a = &k.autoscaling;
        let min = self.min_replicas();
        if min == 0 {
            p.push("kubernetes.autoscaling.min_replicas is 0; the HPA needs at least one replica".to_owned());
        }
        if a.max_replicas < min || a.max_replicas > 1000 {
            p.push(format!("kubernetes.autoscaling.max_replicas is {}; it must be between min_replicas ({min}) and 1000", a.max_replicas));
        }
        if !(1..=100).contains(&a.cpu_percent) {
            p.push(format!("kubernetes.autoscaling.cpu_percent is {}; it must be between 1 and 100", a.cpu_percent));
        }
        if !quantity(&a.requests_per_second).is_some_and(|x| x > 0.0) {
            p.push(format!("kubernetes.autoscaling.requests_per_second '{}' is not a positive quantity (e.g. 100, 2500m)", a.requests_per_second));
        }
        // A PDB that allows no eviction blocks every node drain for good.
        let floor = min.min(self.replicas());
        if let Some(n) = k.disruption.min_available
            && (n >= floor || n == 0)
        {
            p.push(format!(
                "kubernetes.disruption.min_available is {n}; it must be at least 1 and below the {floor} replicas there can be (at {floor} or more no pod could ever be evicted and node drains would hang)"
            ));
        }
        if let Some(ingress) = &k.ingress {
            if !is_dns_subdomain(&ingress.host) || ingress.host.starts_with('*') {
                p.push(format!("kubernetes.ingress.host '{}' is not a host name (a DNS-1123 subdomain)", ingress.host));
            }
            if let Some(s) = &ingress.tls_secret
                && !is_dns_subdomain(s)
            {
                p.push(format!("kubernetes.ingress.tls_secret '{s}' is not a Secret name (a DNS-1123 subdomain)"));
            }
            if !is_dns_subdomain(&ingress.class) {
                p.push(format!("kubernetes.ingress.class '{}' is not an IngressClass name", ingress.class));
            }
        }
        let t = &k.traffic;
        let weight = percent_bp("kubernetes.traffic.weight", &t.weight, p);
        let mirror = percent_bp("kubernetes.traffic.mirror", &t.mirror, p);
        if !is_header_name(&t.header.name) {
            p.push(format!("kubernetes.traffic.header.name '{}' is not a lowercase HTTP header name (letters, digits, '-')", t.header.name));
        }
        if t.header.value.is_empty() || t.header.value.len() > 4096 || t.header.value.chars().any(|c| c.is_control()) {
            p.push(format!("kubernetes.traffic.header.value '{}' must be 1-4096 characters with no control character", t.header.value.escape_debug()));
        }
        let meshed = matches!(k.strategy, KubeStrategy::Canary | KubeStrategy::Shadow) && k.mesh != Mesh::None;
        if meshed
            && k.mesh == Mesh::Istio
            && let Some(w) = weight
            && !w.is_multiple_of(100)
        {
            p.push(format!("kubernetes.traffic.weight '{}': Istio route weights are whole percents; use mesh: gateway-api (basis points) or none", t.weight));
        }
        if meshed && (t.replicas == 0 || t.replicas > 1000) {
            p.push(format!("kubernetes.traffic.replicas is {}; the candidate needs between 1 and 1000", t.replicas));
        }
        if k.strategy == KubeStrategy::Canary && weight == Some(10_000) {
            p.push("kubernetes.traffic.weight is 100%: that is a promotion, not a canary; use strategy: rolling or blue-green".to_owned());
        }
        if k.strategy == KubeStrategy::Shadow && mirror == Some(0) {
            p.push("kubernetes.traffic.mirror is 0%: the shadow would see no request".to_owned());
        }
        let needs_candidate = k.strategy == KubeStrategy::BlueGreen || meshed;
        match &k.candidate {
            None if needs_candidate => p.push(format!(
                "kubernetes.strategy {} runs a second version: give kubernetes.candidate {{version, digest or tag}} in the description, e.g. `kubernetes: {{candidate: {{version: \"2\", tag: 0.2.0}}}}` (a new image tag) or `{{version: \"2\", digest: sha256:...}}` (a new model artifact)",
                serde_json::to_value(k.strategy).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            )),
            None => {}
            Some(c) => {
                if !(super::is_plain_name(&c.version) && c.version.len() <= 128) {
                    p.push(format!("kubernetes.candidate.version '{}' is not valid: use 1-128 letters, digits, '.', '_' or '-'", c.version));
                }
                if let Some(d) = &c.digest {
                    check_digest("kubernetes.candidate.digest", d, p);
                    if k.artifact.is_none() {
                        p.push("kubernetes.candidate.digest needs kubernetes.artifact (the store it is in)".to_owned());
                    }
                }
                if let Some(d) = &c.image_digest {
                    check_digest("kubernetes.candidate.image_digest", d, p);
                }
                if let Some(tag) = &c.tag
                    && !super::is_tag(tag)
                {
                    p.push(format!("kubernetes.candidate.tag '{tag}' is not a valid image tag"));
                }
                let same_model = c.digest.is_none() || c.digest == k.artifact.as_ref().map(|a| a.digest.clone());
                let same_image = c.tag.as_ref().is_none_or(|t| *t == self.image.tag) && c.image_digest.as_ref().is_none_or(|d| Some(d) == k.image_digest.as_ref());
                if same_model && same_image {
                    p.push("kubernetes.candidate runs what stable runs: give it another digest (model) or tag (image)".to_owned());
                }
            }
        }
        if !is_dns_subdomain(&k.gateway.name) {
            p.push(format!("kubernetes.gateway.name '{}' is not a Gateway name", k.gateway.name));
        }
        if let Some(ns) = &k.gateway.namespace
            && !is_dns_label(ns)
        {
            p.push(format!("kubernetes.gateway.namespace '{ns}' is not a DNS-1123 label"));
        }
        if let Some(s) = &k.gateway.section_name
            && !is_dns_subdomain(s)
        {
            p.push(format!("kubernetes.gateway.section_name '{s}' is not a listener name"));
        }
    }

    /// The PDB's minAvailable, or `None` for no budget (one replica).
    pub fn min_available(&self) -> Option<u32> {
        let floor = self.min_replicas().min(self.replicas());
        match self.kubernetes.disruption.min_available {
            Some(n) => Some(n),
            None => (floor > 1).then(|| 2.min(floor - 1)),
        }
    }

    pub fn min_replicas(&self) -> u32 {
        self.kubernetes.autoscaling.min_replicas.unwrap_or(self.replicas())
    }

    pub fn cpu_limit(&self) -> String {
        self.kubernetes.resources.limits.cpu.clone().unwrap_or_else(|| match self.resources.cpus {
            Some(cpus) => cpu_quantity(cpus),
            None => "1".to_owned(),
        })
    }

    pub fn cpu_request(&self) -> String {
        self.kubernetes.resources.requests.cpu.clone().unwrap_or_else(|| "500m".to_owned())
    }

    pub fn memory_limit(&self) -> String {
        self.kubernetes.resources.limits.memory.clone().unwrap_or_else(|| match &self.resources.memory {
            Some(m) => binary_quantity(m),
            None => "1Gi".to_owned(),
        })
    }

    pub fn memory_request(&self) -> String {
        self.kubernetes.resources.requests.memory.clone().unwrap_or_else(|| self.memory_limit())
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub(super) fn check_digest(what: &str, digest: &str, p: &mut Vec<String>) {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    if !ok {
        p.push(format!("{what} '{digest}' is not sha256: followed by 64 lowercase hex digits"));
    }
}

/// A percentage (`5%`, `0.25%`, `100%`) in basis points, or why not.
pub fn percent_bp(what: &str, value: &str, p: &mut Vec<String>) -> Option<u32> {
    let number = value.strip_suffix('%').map(str::trim).and_then(|n| n.parse::<f64>().ok()).filter(|n| n.is_finite());
    let Some(n) = number else {
        p.push(format!("{what} '{value}' is not a percentage: write e.g. 5% or 0.25%"));
        return None;
    };
    let bp = n * 100.0;
    if !(0.0..=10_000.0).contains(&bp) {
        p.push(format!("{what} '{value}' is not between 0% and 100%"));
        return None;
    }
    if (bp - bp.round()).abs() > 1e-6 {
        p.push(format!("{what} '{value}' is finer than a basis point (0.01%)"));
        return None;
    }
    Some(bp.round() as u32)
}

/// Basis points of a validated percentage.
pub fn bp(value: &str) -> u32 {
    percent_bp("", value, &mut Vec::new()).unwrap_or(0)
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
/// A path inside the claim: relative, plain characters, no `..`, with `extensions`.
fn check_claim_path(what: &str, path: &str, extensions: &[&str], p: &mut Vec<String>) {
    let plain = !path.is_empty()
        && path.len() <= 512
        && !path.starts_with('/')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && path.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c));
    if !plain {
        p.push(format!("{what} '{path}' must be a relative path in the claim (letters, digits, '-', '_', '.', '/'; no '..')"));
    } else if !extensions.iter().any(|e| path.to_ascii_lowercase().ends_with(e)) {
        p.push(format!("{what} '{path}' must end in {}", extensions.join(", ")));
    }
}

fn check_batch(batch: &BatchJob, p: &mut Vec<String>) {
    if !is_dns_subdomain(&batch.claim) {
        p.push(format!("kubernetes.batch.claim '{}' is not a PersistentVolumeClaim name (a DNS-1123 subdomain)", batch.claim));
    }
    check_claim_path("kubernetes.batch.input", &batch.input, &[".csv", ".parquet"], p);
    check_claim_path("kubernetes.batch.output", &batch.output, &[".parquet", ".csv", ".jsonl"], p);
    if batch.input == batch.output {
        p.push("kubernetes.batch.input and output are the same file".to_owned());
    }
    if let Some(id) = &batch.id_column
        && (id.is_empty() || id.len() > 256 || id.chars().any(char::is_control))
    {
        p.push(format!("kubernetes.batch.id_column '{id}' is not a column name"));
    }
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) && !l.ends_with('-') && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && !s.starts_with('-')
}

/// A Kubernetes quantity's value (`500m`, `1.5`, `512Mi`, `1G`, `1e3`), or `None`.
pub fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (number, factor) = SUFFIXES.iter().find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f))).unwrap_or_else(|| match s.strip_suffix('E') {
        Some(n) => (n, 1e18),
        None => (s, 1.0),
    });
    // The number part: digits with at most one '.', optionally a sign (and an exponent
    // only without a suffix).
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    let (mantissa, exponent) = match digits.split_once(['e', 'E']) {
        Some((m, e)) if factor == 1.0 => (m, Some(e)),
        Some(_) => return None,
        None => (digits, None),
    };
    let plain = |t: &str| !t.is_empty() && t.chars().filter(|c| *c == '.').count() <= 1 && t.chars().all(|c| c.is_ascii_digit() || c == '.') && t != ".";
    let integer = |t: &str| {
        let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    if !plain(mantissa) || exponent.is_some_and(|e| !integer(e)) {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn cpu_millis(s: &str) -> Option<f64> {
    quantity(s).map(|cores| cores * 1000.0)
}

/// CPUs as a quantity: `1`, `1.5` → `1500m`.
fn cpu_quantity(cpus: f64) -> String {
    let millis = (cpus * 1000.0).round() as u64;
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{millis}m") }
}

/// A Compose size (`512M`, `1g`, `100k`, `123b`) as the binary quantity it means (`512Mi`).
pub(crate) fn binary_quantity(size: &str) -> String {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    match size[digits.len()..].to_ascii_lowercase().as_str() {
        "k" => format!("{digits}Ki"),
        "m" => format!("{digits}Mi"),
        "g" => format!("{digits}Gi"),
        _ => digits.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;
    use crate::description::parse;

    const DIGEST: &str = "sha256:608b7f20d1df7c0f9a312f0628d17de46bf7f86818eb8bd91288370100261c1b";

    /// The problems of a Kubernetes description: a base whose top-level lines `top` adds to or
    /// replaces, and the `kubernetes:` section.
    fn problems(top: &str, kubernetes: &str) -> Vec<String> {
        let base = ["name: fraud\n", "model: {registry: fraud@production}\n", "replicas: 3\n"];
        let kept: String = base.iter().filter(|line| !top.lines().any(|t| t.split(':').next() == line.split(':').next())).copied().collect();
        let text = format!("{kept}{top}kubernetes: {kubernetes}\n");
        let text = text.replace("ARTIFACT", &format!("artifact: {{store: s3://models/fraud, digest: '{DIGEST}'}}"));
        match parse(&text).and_then(|d| d.validate_for(Target::Kubernetes).map(|()| d)) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn hostile_options_are_refused_before_anything_is_written() {
        assert_eq!(problems("", "{ARTIFACT}"), Vec::<String>::new());
        let table: &[(&str, &str, &[&str])] = &[
            ("", "{ARTIFACT, namespace: ML_Serving}", &["kubernetes.namespace 'ML_Serving' is not a DNS-1123 label: 1-63 lowercase letters, digits and '-', starting with a letter"]),
            ("name: fraud.v2\n", "{ARTIFACT}", &["name 'fraud.v2' is not valid: use 1-63 lowercase letters, digits and '-', starting with a letter (it names the project, stack and services)"]),
            (
                "name: fraud-detection-model-serving-for-payments-in-europe\n",
                "{ARTIFACT}",
                &["name 'fraud-detection-model-serving-for-payments-in-europe' is longer than 49 characters; objects are named NAME-adapter-rules and the like, which must stay DNS-1123 labels (63)"],
            ),
            ("replicas: 0\n", "{ARTIFACT}", &[
                "replicas is 0; it must be between 1 and 1000",
                "kubernetes.autoscaling.min_replicas is 0; the HPA needs at least one replica",
            ]),
            ("ports: {http: 8000, grpc: 8000}\n", "{ARTIFACT}", &["ports.grpc 8000 is ports.http too; give each listener its own port"]),
            ("", "{ARTIFACT, strategy: canary, traffic: {weight: 150%}, candidate: {version: '2', tag: '9'}}", &["kubernetes.traffic.weight '150%' is not between 0% and 100%"]),
            ("", "{ARTIFACT, strategy: canary, traffic: {weight: 2.5%}, candidate: {version: '2', tag: '9'}}", &[
                "kubernetes.traffic.weight '2.5%': Istio route weights are whole percents; use mesh: gateway-api (basis points) or none",
            ]),
            ("", "{ARTIFACT, strategy: canary, traffic: {weight: 100%}, candidate: {version: '2', tag: '9'}}", &[
                "kubernetes.traffic.weight is 100%: that is a promotion, not a canary; use strategy: rolling or blue-green",
            ]),
            ("", "{ARTIFACT, strategy: shadow, traffic: {mirror: 101%}, candidate: {version: '2', tag: '9'}}", &["kubernetes.traffic.mirror '101%' is not between 0% and 100%"]),
            ("", "{ARTIFACT, strategy: canary}", &["kubernetes.strategy canary runs a second version: give kubernetes.candidate {version, digest or tag} in the description, e.g. `kubernetes: {candidate: {version: \"2\", tag: 0.2.0}}` (a new image tag) or `{version: \"2\", digest: sha256:...}` (a new model artifact)"]),
            ("", "{ARTIFACT, strategy: canary, mesh: none, candidate: {version: '2', tag: '9'}, rollout: {spec: 'a:b.yaml'}}", &[
                "kubernetes.rollout drives a mesh's route: it needs strategy canary or shadow with mesh istio or gateway-api (without a mesh the pods run rollouts themselves: modelship rollout start)",
                "kubernetes.rollout.spec 'a:b.yaml' holds ':' ',' or a control character, which volume definitions cannot carry; rename the path",
                "kubernetes.rollout.spec a:b.yaml: its contents go into a ConfigMap and were not read",
            ]),
            ("", "{ARTIFACT, strategy: blue-green, candidate: {version: '2'}}", &["kubernetes.candidate runs what stable runs: give it another digest (model) or tag (image)"]),
            ("", "{ARTIFACT, batch: {claim: Scoring_Data, input: ../etc/passwd, output: /abs/out.parquet}}", &[
                "kubernetes.batch.claim 'Scoring_Data' is not a PersistentVolumeClaim name (a DNS-1123 subdomain)",
                "kubernetes.batch.input '../etc/passwd' must be a relative path in the claim (letters, digits, '-', '_', '.', '/'; no '..')",
                "kubernetes.batch.output '/abs/out.parquet' must be a relative path in the claim (letters, digits, '-', '_', '.', '/'; no '..')",
            ]),
            ("", "{ARTIFACT, batch: {claim: data, input: rows.txt, output: rows.txt}}", &[
                "kubernetes.batch.input 'rows.txt' must end in .csv, .parquet",
                "kubernetes.batch.output 'rows.txt' must end in .parquet, .csv, .jsonl",
                "kubernetes.batch.input and output are the same file",
            ]),
            ("", "{ARTIFACT, disruption: {min_available: 3}}", &[
                "kubernetes.disruption.min_available is 3; it must be at least 1 and below the 3 replicas there can be (at 3 or more no pod could ever be evicted and node drains would hang)",
            ]),
            ("", "{ARTIFACT, autoscaling: {min_replicas: 2, max_replicas: 1}}", &["kubernetes.autoscaling.max_replicas is 1; it must be between min_replicas (2) and 1000"]),
            ("", "{ARTIFACT, probes: {liveness: {period: 0, failures: 5000}, startup: {initial_delay: 7200}}}", &[
                "kubernetes.probes.startup.initial_delay is 7200; it must be between 0 and 3600",
                "kubernetes.probes.liveness.period is 0; it must be between 1 and 3600",
                "kubernetes.probes.liveness.failures is 5000; it must be between 1 and 1000",
            ]),
            ("resources: {gpus: 2}\n", "{ARTIFACT}", &["resources.gpus needs image.gpu: true (the CUDA image, Dockerfile.gpu); the CPU image cannot use a GPU"]),
            ("image: {gpu: true}\nresources: {gpus: 0}\n", "{ARTIFACT, gpu: {node_selector: {'a b': x}, tolerations: [{key: nvidia.com/gpu, operator: Exists, value: x, effect: Sometimes}]}}", &[
                "resources.gpus is 0; give 1 to 16 (a model runs on one card; more let several listed models each have one)",
                "kubernetes.gpu.node_selector 'a b: x' is not a label key and value",
                "kubernetes.gpu.tolerations: 'nvidia.com/gpu' has operator Exists and a value; Exists takes none",
                "kubernetes.gpu.tolerations: effect 'Sometimes' is not NoSchedule, PreferNoSchedule or NoExecute",
            ]),
            ("", "{ARTIFACT, autoscaling: {cpu_percent: 0, requests_per_second: fast}}", &[
                "kubernetes.autoscaling.cpu_percent is 0; it must be between 1 and 100",
                "kubernetes.autoscaling.requests_per_second 'fast' is not a positive quantity (e.g. 100, 2500m)",
            ]),
            ("", "{ARTIFACT, resources: {requests: {cpu: 2, memory: 2Gi}, limits: {cpu: 1, memory: 1Gi}}}", &[
                "kubernetes.resources: the CPU request 2 is above the limit 1",
                "kubernetes.resources: the memory request 2Gi is above the limit 1Gi",
            ]),
            ("", "{ARTIFACT, resources: {limits: {memory: 1GB}}}", &["kubernetes.resources.limits.memory '1GB' is not a positive Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)"]),
            ("", "{ARTIFACT, ingress: {host: 'fraud example.com', tls_secret: Fraud_TLS}}", &[
                "kubernetes.ingress.host 'fraud example.com' is not a host name (a DNS-1123 subdomain)",
                "kubernetes.ingress.tls_secret 'Fraud_TLS' is not a Secret name (a DNS-1123 subdomain)",
            ]),
            ("", "{ARTIFACT, strategy: canary, traffic: {header: {name: 'X-Canary', value: ''}}, candidate: {version: '2', tag: '9'}}", &[
                "kubernetes.traffic.header.name 'X-Canary' is not a lowercase HTTP header name (letters, digits, '-')",
                "kubernetes.traffic.header.value '' must be 1-4096 characters with no control character",
            ]),
            ("", "{artifact: {store: 'https://bucket', digest: 'sha256:abc'}, aws: {secret: AWS}}", &[
                "kubernetes.artifact.store 'https://bucket' is not an s3://bucket/prefix URL",
                "kubernetes.artifact.digest 'sha256:abc' is not sha256: followed by 64 lowercase hex digits",
                "kubernetes.aws.secret 'AWS' is not a Secret name (a DNS-1123 subdomain)",
            ]),
            ("", "{}", &["a registry model reaches a pod by its artifact: give kubernetes.artifact {store: s3://..., digest: sha256:...} (the registry's --artifacts URL and the version's digest: modelship models show NAME@ALIAS --output json)"]),
        ];
        for (top, kubernetes, want) in table {
            assert_eq!(problems(top, kubernetes), *want, "{top}{kubernetes}");
        }
        // A host file cannot reach a pod unless it is baked.
        let d = parse("name: fraud\nmodel: {file: models/fraud.onnx}\n").unwrap();
        assert_eq!(d.validate_for(Target::Kubernetes).unwrap_err().0, [
            "model.file with delivery: mount names a file on this machine, which no pod can mount: bake it (model.delivery: bake) or give kubernetes.artifact (the registry's S3 store and the digest)"
        ]);
        assert!(d.validate_for(Target::Compose).is_ok());
    }

    #[test]
    fn quantities_parse_as_kubernetes_reads_them() {
        for (text, value) in [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("512Mi", 536870912.0), ("1G", 1e9), ("1e3", 1000.0), ("100", 100.0), ("2500m", 2.5)] {
            assert_eq!(quantity(text), Some(value), "{text}");
        }
        for bad in ["", "m", "1.2.3", "lots", "5 Mi", "1e3Mi", "1MiB", "-"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
        assert_eq!((cpu_quantity(1.0), cpu_quantity(0.25), binary_quantity("512M"), binary_quantity("2g")), ("1".into(), "250m".into(), "512Mi".into(), "2Gi".into()));
    }

    #[test]
    fn percentages_are_basis_points() {
        let mut p = Vec::new();
        assert_eq!([percent_bp("w", "5%", &mut p), percent_bp("w", "0.25%", &mut p), percent_bp("w", "100%", &mut p)], [Some(500), Some(25), Some(10_000)]);
        assert!(p.is_empty());
        assert_eq!([percent_bp("w", "150%", &mut p), percent_bp("w", "5", &mut p), percent_bp("w", "0.001%", &mut p)], [None, None, None]);
        assert_eq!(p, ["w '150%' is not between 0% and 100%", "w '5' is not a percentage: write e.g. 5% or 0.25%", "w '0.001%' is finer than a basis point (0.01%)"]);
    }
}
