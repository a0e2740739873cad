//! Google Cloud Run: a Knative `serving.knative.dev/v1` Service, the YAML `gcloud run services
//! replace` takes, and `cloudrun.sh`, the gcloud commands that apply it, promote a canary and
//! roll it back.
//!
//! The container: the image's `serve`, listening on the `PORT` Cloud Run gives (the container
//! port, `ports.http`); Cloud Run resolves the image's tag to a digest when it creates a
//! revision, so a revision never changes under a moved tag. Startup and liveness probes on the
//! server's health endpoints; a request limit, concurrency and instance bounds; CPU always
//! allocated (the server polls a followed alias and writes the prediction log between
//! requests); SIGTERM's 10 s before SIGKILL hold the drain (no delay: Cloud Run stops routing
//! first). A model file is baked into the image; a registry model (`NAME@ALIAS`) is followed from
//! the registry's bucket through Cloud Storage's S3-compatible API, its HMAC keys from Secret
//! Manager. A canary sends a share to the new revision beside a named stable one, each with a
//! traffic tag (its own URL), and is promoted with `update-traffic --to-latest`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::description::{Deployment, binary_quantity};
use crate::kubernetes::api::{EnvVar, Labels};
use crate::{GeneratedFile, Provenance};

pub const SERVICE: &str = "service.yaml";
pub const SCRIPT: &str = "cloudrun.sh";

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Service {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    spec: ServiceSpec,
}

#[derive(Debug, Default, Serialize)]
struct Meta {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: Labels,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: Labels,
}

#[derive(Debug, Serialize)]
struct ServiceSpec {
    template: Template,
    traffic: Vec<Traffic>,
}

#[derive(Debug, Serialize)]
struct Template {
    metadata: Meta,
    spec: RevisionSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevisionSpec {
    container_concurrency: u32,
    timeout_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_name: Option<String>,
    containers: Vec<Container>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    args: Vec<String>,
    ports: Vec<Port>,
    env: Vec<EnvVar>,
    resources: Resources,
    startup_probe: Probe,
    liveness_probe: Probe,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    /// `http1`: Cloud Run speaks HTTP/1.1 to the container (the REST API; gRPC would need h2c on
    /// this one port).
    name: &'static str,
    container_port: u16,
}

#[derive(Debug, Serialize)]
struct Resources {
    limits: Labels,
}

/// A probe on the container's port (Knative takes no other port).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    initial_delay_seconds: u32,
    period_seconds: u32,
    timeout_seconds: u32,
    failure_threshold: u32,
}

#[derive(Debug, Serialize)]
struct HttpGet {
    path: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Traffic {
    #[serde(skip_serializing_if = "Option::is_none")]
    latest_revision: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision_name: Option<String>,
    percent: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'static str>,
}

/// Cloud Run's SIGTERM comes 10 s before SIGKILL: the drain takes 8 of them.
const DRAIN_GRACE_SECONDS: u32 = 8;

/// The new revision's name when a canary needs to name it: the service, the image's tag and a
/// digest of the revision's own spec (`revision`'s), so that any change (a new image, env,
/// probes, a moved model) names a new revision and `services replace` never finds the name taken.
fn revision_name(d: &Deployment, revision: &(Labels, RevisionSpec)) -> String {
    use sha2::Digest as _;
    let spec = serde_json::to_vec(revision).expect("the spec serializes");
    let digest = hex::encode(&sha2::Sha256::digest(&spec)[..3]);
    let slug: String = d.image.tag.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let head = format!("{}-{}", d.name, slug.trim_matches('-'));
    let head: String = head.chars().take(63 - 7).collect::<String>().trim_end_matches('-').to_owned();
    format!("{head}-{digest}")
}

/// The CPU count Cloud Run takes: `cloudrun.cpu`, else `resources.cpus` rounded up to one it
/// offers, else 1.
fn cpu(d: &Deployment) -> String {
    if let Some(cpu) = &d.cloudrun.cpu {
        return cpu.clone();
    }
    let wanted = d.resources.cpus.unwrap_or(1.0);
    [1u32, 2, 4, 6, 8].into_iter().find(|n| f64::from(*n) >= wanted).unwrap_or(8).to_string()
}

fn memory(d: &Deployment) -> String {
    d.cloudrun.memory.clone().or_else(|| d.resources.memory.as_deref().map(binary_quantity)).unwrap_or_else(|| "1Gi".to_owned())
}

/// The revision's annotations (scaling and CPU) and spec: what a change of makes a new revision.
fn revision(d: &Deployment) -> (Labels, RevisionSpec) {
    let c = &d.cloudrun;
    let mut env: Vec<EnvVar> = Vec::new();
    let mut values = crate::compose_file::environment(d);
    values.remove("MODELSHIP_REGISTRY");
    if let Some(b) = &c.bucket {
        values.insert("MODELSHIP_REGISTRY".to_owned(), b.store.clone());
        values.insert("AWS_ENDPOINT_URL".to_owned(), b.endpoint.clone());
        values.insert("AWS_REGION".to_owned(), "auto".to_owned());
    }
    env.extend(values.iter().map(|(k, v)| EnvVar::value(k, v)));
    if let Some(b) = &c.bucket {
        // Secret Manager secrets, by name and version: Cloud Run reads them at start; no key
        // is written here.
        env.push(EnvVar::secret("AWS_ACCESS_KEY_ID", &format!("{}-id", b.secret), "latest"));
        env.push(EnvVar::secret("AWS_SECRET_ACCESS_KEY", &format!("{}-secret", b.secret), "latest"));
    }
    let p = &d.ports;
    let args = [
        "serve",
        "--grpc-port",
        &p.grpc.to_string(),
        "--admin-port",
        &p.admin.to_string(),
        "--shutdown-delay",
        "0",
        "--shutdown-grace",
        &DRAIN_GRACE_SECONDS.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let [startup, _, liveness] = c.probes.resolved();
    let probe = |path, t: crate::description::Timing| Probe {
        http_get: HttpGet { path },
        initial_delay_seconds: t.initial_delay,
        period_seconds: t.period,
        timeout_seconds: t.timeout.min(t.period),
        failure_threshold: t.failures,
    };
    let timeout = humantime::parse_duration(&c.timeout).map_or(60, |t| t.as_secs());
    let annotations = BTreeMap::from([
        ("autoscaling.knative.dev/minScale".to_owned(), c.min_instances.to_string()),
        ("autoscaling.knative.dev/maxScale".to_owned(), c.max_instances.to_string()),
        ("run.googleapis.com/cpu-throttling".to_owned(), "false".to_owned()),
        ("run.googleapis.com/startup-cpu-boost".to_owned(), "true".to_owned()),
        ("run.googleapis.com/execution-environment".to_owned(), "gen2".to_owned()),
        ("modelship.dev/model".to_owned(), d.served_name()),
    ]);
    let spec = RevisionSpec {
        container_concurrency: c.concurrency,
        timeout_seconds: timeout,
        service_account_name: c.service_account.clone(),
        containers: vec![Container {
            name: "server",
            image: d.image.reference(),
            args,
            ports: vec![Port { name: "http1", container_port: p.http }],
            env,
            resources: Resources { limits: BTreeMap::from([("cpu".to_owned(), cpu(d)), ("memory".to_owned(), memory(d))]) },
            startup_probe: probe("/health/startup", startup),
            liveness_probe: probe("/health/live", liveness),
        }],
    };
    (annotations, spec)
}

/// The Service; `new` is the new revision's name, when a canary names it.
fn service(d: &Deployment, (annotations, spec): (Labels, RevisionSpec), new: Option<&str>) -> Service {
    let c = &d.cloudrun;
    let traffic = match (&c.canary, new) {
        (Some(canary), Some(new)) => vec![
            Traffic { latest_revision: None, revision_name: Some(canary.stable.clone()), percent: 100 - canary.percent, tag: Some("stable") },
            Traffic { latest_revision: None, revision_name: Some(new.to_owned()), percent: canary.percent, tag: Some("candidate") },
        ],
        _ => vec![Traffic { latest_revision: Some(true), revision_name: None, percent: 100, tag: None }],
    };
    Service {
        api_version: "serving.knative.dev/v1",
        kind: "Service",
        metadata: Meta {
            name: Some(d.name.clone()),
            labels: BTreeMap::from([("cloud.googleapis.com/location".to_owned(), c.region.clone()), ("app.kubernetes.io/managed-by".to_owned(), "modelship".to_owned())]),
            annotations: BTreeMap::from([("run.googleapis.com/ingress".to_owned(), c.ingress.clone())]),
        },
        spec: ServiceSpec {
            template: Template { metadata: Meta { name: new.map(str::to_owned), labels: Labels::new(), annotations }, spec },
            traffic,
        },
    }
}

fn script(d: &Deployment, header: &str, new: Option<&str>) -> String {
    let c = &d.cloudrun;
    let project = c.project.as_ref().map(|p| format!(" --project {p}")).unwrap_or_default();
    let name = &d.name;
    let region = &c.region;
    let mut out = format!("#!/usr/bin/env bash\n{header}");
    out.push_str(&format!(
        "# Cloud Run: apply {SERVICE}, then watch the revision become ready. The image must be in a\n\
         # registry Cloud Run reads (Artifact Registry): build it with `modelship deploy docker --apply\n\
         # --delivery bake --image REGION-docker.pkg.dev/PROJECT/REPO/{image}` (bake: with a model file)\n\
         # and `docker push` it first.\n\
         set -euo pipefail\n\
         cd \"$(dirname \"$0\")\"\n\n\
         gcloud run services replace {SERVICE} --region {region}{project}\n\
         gcloud run services describe {name} --region {region}{project} --format 'value(status.url)'\n\n\
         # The service requires IAM authentication (roles/run.invoker). To open it to everyone:\n\
         #   gcloud run services add-iam-policy-binding {name} --region {region}{project} --member allUsers --role roles/run.invoker\n",
        image = d.image.name.rsplit('/').next().unwrap_or(&d.image.name),
    ));
    if let (Some(canary), Some(new)) = (&c.canary, new) {
        out.push_str(&format!(
            "\n# The canary: {percent}% to {new} (its own URL: the `candidate` tag), the rest to {stable}.\n\
             # Promote:   gcloud run services update-traffic {name} --region {region}{project} --to-latest\n\
             # Roll back: gcloud run services update-traffic {name} --region {region}{project} --to-revisions {stable}=100\n",
            percent = canary.percent,
            stable = canary.stable,
        ));
    }
    out
}

pub fn render(d: &Deployment, provenance: &Provenance) -> Vec<GeneratedFile> {
    let header = provenance.header();
    let revision = revision(d);
    let new = d.cloudrun.canary.as_ref().map(|_| revision_name(d, &revision));
    let service = service(d, revision, new.as_deref());
    vec![
        GeneratedFile { path: SERVICE, contents: format!("{header}{}", crate::yaml::to_string(&service)) },
        GeneratedFile { path: SCRIPT, contents: script(d, &header, new.as_deref()) },
    ]
}
