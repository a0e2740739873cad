//! The description's `cloudrun:` section: what only Google Cloud Run needs. Every key has a
//! default, so `deploy cloudrun --name N --model M.onnx --delivery bake` renders a service (the
//! model baked into the image `deploy docker --delivery bake` builds).
//!
//! ```yaml
//! cloudrun:
//!   region: europe-west1                 # for the gcloud commands
//!   project: my-project                  # [default: gcloud's configured project]
//!   concurrency: 80                      # requests one instance takes at once (containerConcurrency)
//!   min_instances: 1                     # kept warm (0: scale to zero, cold starts)
//!   max_instances: 20
//!   timeout: 60s                         # a request's limit, at most 3600 s
//!   cpu: "2"                             # per instance [default: resources.cpus, else 1]
//!   memory: 2Gi                          # [default: resources.memory, else 1Gi]
//!   ingress: all                         # all | internal | internal-and-cloud-load-balancing
//!   service_account: serving@my-project.iam.gserviceaccount.com
//!   bucket: {store: s3://models/fraud, endpoint: https://storage.googleapis.com, secret: modelship-hmac}
//!                                        # a registry model (NAME@ALIAS) from a bucket, keys from Secret Manager
//!   canary: {stable: fraud-00007-abc, percent: 5}   # the new revision beside a named stable one
//!   probes: {startup: {failures: 60}}    # as kubernetes.probes (readiness is not used)
//! ```

use serde::{Deserialize, Serialize};

use super::{Deployment, is_dns_label};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudRun {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub ingress: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Where a registry model (`model.registry`) is read from: the registry's bucket through
    /// the S3-compatible API (Cloud Storage's XML API with HMAC keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
    /// Startup and liveness probes (Cloud Run has no readiness probe here); the guide's timings.
    pub probes: super::Probes,
    /// Send `percent` of the requests to the new revision and the rest to `stable`, each
    /// reachable by its tag's URL (`https://stable---SERVICE-...run.app`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

impl Default for CloudRun {
    fn default() -> Self {
        CloudRun {
            region: "us-central1".to_owned(),
            project: None,
            concurrency: 80,
            min_instances: 1,
            max_instances: 20,
            timeout: "60s".to_owned(),
            cpu: None,
            memory: None,
            ingress: "all".to_owned(),
            service_account: None,
            bucket: None,
            probes: super::Probes::default(),
            canary: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// `s3://BUCKET[/PREFIX]`: the registry (`--registry s3://...`).
    pub store: String,
    #[serde(default = "gcs")]
    pub endpoint: String,
    /// The Secret Manager secret holding the HMAC key pair as two versions' worth of env: its
    /// name; the service reads `AWS_ACCESS_KEY_ID` from `NAME-id` and `AWS_SECRET_ACCESS_KEY`
    /// from `NAME-secret` (latest versions).
    pub secret: String,
}

fn gcs() -> String {
    "https://storage.googleapis.com".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The revision serving now (`gcloud run revisions list`).
    pub stable: String,
    /// The new revision's share, a whole percent from 1 to 99.
    pub percent: u32,
}

/// The ingress settings Cloud Run takes.
pub const INGRESS: [&str; 3] = ["all", "internal", "internal-and-cloud-load-balancing"];

impl Deployment {
    pub(super) fn cloudrun_problems(&self, p: &mut Vec<String>) {
        let c = &self.cloudrun;
        if !is_dns_label(&self.name) || self.name.len() > 49 {
            p.push(format!("name '{}' is too long for Cloud Run: a service name and its revision suffix must fit 63 characters, so use at most 49", self.name));
        }
        if !(c.region.len() <= 40 && c.region.split('-').count() >= 2 && c.region.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')) {
            p.push(format!("cloudrun.region '{}' is not a region (e.g. europe-west1)", c.region));
        }
        if let Some(project) = &c.project
            && !((6..=30).contains(&project.len()) && project.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'))
        {
            p.push(format!("cloudrun.project '{project}' is not a project id (6-30 lowercase letters, digits, '-')"));
        }
        if !(1..=1000).contains(&c.concurrency) {
            p.push(format!("cloudrun.concurrency is {}; Cloud Run allows 1 to 1000", c.concurrency));
        }
        if c.max_instances == 0 || c.min_instances > c.max_instances || c.max_instances > 1000 {
            p.push(format!("cloudrun.min_instances {} and max_instances {}: give 0 <= min <= max, max between 1 and 1000", c.min_instances, c.max_instances));
        }
        match humantime::parse_duration(&c.timeout) {
            Ok(d) if d.subsec_nanos() == 0 && (1..=3600).contains(&d.as_secs()) => {}
            _ => p.push(format!("cloudrun.timeout '{}' must be whole seconds between 1s and 3600s", c.timeout)),
        }
        if !INGRESS.contains(&c.ingress.as_str()) {
            p.push(format!("cloudrun.ingress '{}' is not one of {}", c.ingress, INGRESS.join(", ")));
        }
        if let Some(cpu) = &c.cpu
            && !["1", "2", "4", "6", "8"].contains(&cpu.as_str())
        {
            p.push(format!("cloudrun.cpu '{cpu}' is not a Cloud Run CPU count (1, 2, 4, 6 or 8)"));
        }
        if let Some(memory) = &c.memory
            && super::kubernetes::quantity(memory).is_none_or(|bytes| !(512.0 * 1024.0 * 1024.0..=32.0 * 1024.0 * 1024.0 * 1024.0).contains(&bytes))
        {
            p.push(format!("cloudrun.memory '{memory}' is not between 512Mi and 32Gi"));
        }
        if let Some(account) = &c.service_account
            && !(account.contains('@') && account.chars().all(|ch| ch.is_ascii_alphanumeric() || "@.-_".contains(ch)))
        {
            p.push(format!("cloudrun.service_account '{account}' is not a service account email"));
        }
        match (&self.model.file, &self.model.registry, &c.bucket) {
            (Some(_), _, _) if self.model.delivery() != super::Delivery::Bake => {
                p.push("model.file with delivery: mount names a file on this machine, which Cloud Run cannot mount: bake it (--delivery bake, model.delivery: bake, and build the image with the same) or serve model.registry from cloudrun.bucket".to_owned());
            }
            (Some(_), _, Some(_)) => p.push("cloudrun.bucket goes with model.registry (a model read from the registry's bucket), not model.file".to_owned()),
            (None, Some(_), None) => {
                p.push("model.registry needs cloudrun.bucket: the registry's bucket (s3://BUCKET/PREFIX) and the secret holding its HMAC keys".to_owned());
            }
            _ => {}
        }
        if let Some(b) = &c.bucket {
            if !b.store.strip_prefix("s3://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && rest.chars().all(|ch| ch.is_ascii_alphanumeric() || "-._/".contains(ch))) {
                p.push(format!("cloudrun.bucket.store '{}' is not s3://BUCKET[/PREFIX]", b.store));
            }
            if !b.endpoint.starts_with("https://") || b.endpoint.contains(['@', ' ', '"']) {
                p.push(format!("cloudrun.bucket.endpoint '{}' must be an https:// URL without credentials", b.endpoint));
            }
            if !is_dns_label(&b.secret) || b.secret.len() > 200 {
                p.push(format!("cloudrun.bucket.secret '{}' is not a Secret Manager secret name (lowercase letters, digits, '-')", b.secret));
            }
        }
        if let Some(canary) = &c.canary {
            if !(1..=99).contains(&canary.percent) {
                p.push(format!("cloudrun.canary.percent is {}; give a whole percent from 1 to 99", canary.percent));
            }
            if !is_dns_label(&canary.stable) || !canary.stable.starts_with(&format!("{}-", self.name)) {
                p.push(format!("cloudrun.canary.stable '{}' is not a revision of service {} (NAME-00001-abc, as `gcloud run revisions list` shows)", canary.stable, self.name));
            }
        }
        c.probes.check("cloudrun.probes", p);
        // Cloud Run's own bounds for a service's probes: each delay and period at most 240 s,
        // and the startup probe's whole window (period x failures) too.
        let [startup, _, liveness] = c.probes.resolved();
        for (name, t) in [("startup", startup), ("liveness", liveness)] {
            if t.initial_delay > 240 || t.period > 240 {
                p.push(format!("cloudrun.probes.{name}: initial_delay ({} s) and period ({} s) must each be at most 240 s on Cloud Run", t.initial_delay, t.period));
            }
        }
        if startup.period * startup.failures > 240 {
            p.push(format!(
                "cloudrun.probes.startup: period x failures is {} s; Cloud Run allows a startup window of at most 240 s",
                startup.period * startup.failures
            ));
        }
        if c.probes.readiness != super::ProbeTiming::default() {
            p.push("cloudrun.probes.readiness: Cloud Run's services take startup and liveness probes here; leave readiness out".to_owned());
        }
        if self.image.gpu {
            p.push("image.gpu: Cloud Run's GPUs are not generated here; leave image.gpu off for deploy cloudrun (the service runs the CPU image)".to_owned());
        }
        for key in self.env.keys() {
            if RESERVED_ENV.contains(&key.as_str()) {
                p.push(format!("env.{key} is set by Cloud Run itself; leave it out"));
            }
        }
    }
}

/// The variables Cloud Run sets and refuses in a service's env.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

#[cfg(test)]
mod tests {
    use crate::Target;
    use crate::description::parse;

    fn problems(text: &str) -> Vec<String> {
        let mut d = parse(text).unwrap();
        d.settle(Target::CloudRun);
        d.validate_for(Target::CloudRun).err().map(|e| e.0).unwrap_or_default()
    }

    #[test]
    fn hostile_options_are_refused_before_anything_is_written() {
        assert_eq!(problems("name: nepse\nmodel: {file: m.onnx, delivery: bake}\n"), Vec::<String>::new());
        assert!(problems("name: nepse\nmodel: {file: m.onnx}\n")[0].starts_with("model.file with delivery: mount"), "never assumed: the image must be built baked");
        let cases: [(&str, &[&str]); 7] = [
            ("model: {file: m.onnx, delivery: mount}\n", &["model.file with delivery: mount names a file on this machine, which Cloud Run cannot mount"]),
            ("model: {registry: fraud@production}\n", &["model.registry needs cloudrun.bucket"]),
            (
                "model: {registry: fraud@production}\ncloudrun: {bucket: {store: 'gs://x', endpoint: 'http://user:pw@h', secret: 'Keys!'}}\n",
                &["cloudrun.bucket.store 'gs://x' is not s3://BUCKET[/PREFIX]", "cloudrun.bucket.endpoint 'http://user:pw@h' must be an https:// URL without credentials", "cloudrun.bucket.secret 'Keys!' is not a Secret Manager secret name"],
            ),
            (
                "model: {file: m.onnx, delivery: bake}\ncloudrun: {region: 'eu west', project: X, concurrency: 0, min_instances: 5, max_instances: 2, timeout: 2h, ingress: public, cpu: '3', memory: 64Gi, service_account: root}\n",
                &[
                    "cloudrun.region 'eu west' is not a region",
                    "cloudrun.project 'X' is not a project id",
                    "cloudrun.concurrency is 0; Cloud Run allows 1 to 1000",
                    "cloudrun.min_instances 5 and max_instances 2",
                    "cloudrun.timeout '2h' must be whole seconds between 1s and 3600s",
                    "cloudrun.ingress 'public' is not one of all, internal, internal-and-cloud-load-balancing",
                    "cloudrun.cpu '3' is not a Cloud Run CPU count",
                    "cloudrun.memory '64Gi' is not between 512Mi and 32Gi",
                    "cloudrun.service_account 'root' is not a service account email",
                ],
            ),
            ("model: {file: m.onnx, delivery: bake}\ncloudrun: {canary: {stable: other-00001, percent: 100}}\n", &["cloudrun.canary.percent is 100; give a whole percent from 1 to 99", "cloudrun.canary.stable 'other-00001' is not a revision of service nepse"]),
            ("model: {file: m.onnx, delivery: bake}\nenv: {PORT: '9000'}\ncloudrun: {probes: {liveness: {timeout: 0}}}\n", &["env.PORT is set by Cloud Run itself; leave it out", "cloudrun.probes.liveness.timeout is 0"]),
            (
                "model: {file: m.onnx, delivery: bake}\ncloudrun: {probes: {startup: {failures: 60}, liveness: {period: 300}, readiness: {period: 5}}}\n",
                &[
                    "cloudrun.probes.liveness: initial_delay (15 s) and period (300 s) must each be at most 240 s on Cloud Run",
                    "cloudrun.probes.startup: period x failures is 300 s; Cloud Run allows a startup window of at most 240 s",
                    "cloudrun.probes.readiness: Cloud Run's services take startup and liveness probes here",
                ],
            ),
        ];
        for (extra, want) in cases {
            let got = problems(&format!("name: nepse\n{extra}"));
            for w in want {
                assert!(got.iter().any(|g| g.starts_with(w)), "{extra}: {w:?} not in {got:#?}");
            }
            assert_eq!(got.len(), want.len(), "{extra}: {got:#?}");
        }
        assert!(problems(&format!("name: {}\nmodel: {{file: m.onnx, delivery: bake}}\n", "a".repeat(50)))[0].contains("too long for Cloud Run"));
    }
}
