//! The description's `lambda:` section: what only AWS Lambda needs. Every key has a default
//! (the seed's: 1024 MB, 30 s, `POST /predict`, provisioned concurrency 5, alias `live`,
//! `Linear10PercentEvery1Minute`).
//!
//! ```yaml
//! lambda:
//!   architecture: arm64                 # x86_64 | arm64
//!   package: zip                        # zip (the bootstrap as a custom runtime) | image (a container image, up to 10 GB)
//!   memory: 1024                        # MB, 128-10240
//!   timeout: 30s                        # at most 900 s
//!   api: rest                           # rest (API Gateway REST API) | http (HTTP API) | url (function URL, IAM auth)
//!   provisioned_concurrency: 5          # 0: none
//!   reserved_concurrency: 0             # the most instances at once (0: no reservation)
//!   dead_letter_queue: true             # failed asynchronous invocations kept in SQS (14 days)
//!   alias: live
//!   deployment: Linear10PercentEvery1Minute   # or Canary10Percent5Minutes, AllAtOnce... (PRESETS)
//!   alarms: {server_errors: 0, latency_p99_ms: 500}   # roll back past these, per minute
//!   check: {features: [[0.01, 0.02, 1.1, 0.015]]}     # what the traffic hooks send
//!   artifact: {store: s3://models/fraud, digest: sha256:...}   # fetch at cold start; else package model.file
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Artifact, Deployment, check_digest};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lambda {
    pub architecture: Architecture,
    /// How the function is packaged: a zip with the bootstrap (custom runtime), or a container
    /// image FROM scratch whose entrypoint is the bootstrap (large models: images take 10 GB).
    pub package: PackageKind,
    /// Megabytes of memory (CPU grows with it: one vCPU at 1,769 MB).
    pub memory: u32,
    pub timeout: String,
    pub api: ApiKind,
    pub provisioned_concurrency: u32,
    /// The most concurrent executions (`ReservedConcurrentExecutions`): a flood cannot take the
    /// account's whole concurrency, nor run up an unbounded bill; 0 (the default) sets none, as
    /// Lambda refuses a reservation that leaves the account under its unreserved minimum (a new
    /// account's quota can be 10).
    pub reserved_concurrency: u32,
    /// An SQS queue for asynchronous invocations that failed every retry.
    pub dead_letter_queue: bool,
    pub alias: String,
    /// A CodeDeploy preset ([`PRESETS`]).
    pub deployment: String,
    pub alarms: Alarms,
    /// The request the pre- and post-traffic hooks send; when absent, the CLI makes one row of
    /// zeros the width of `model.file`'s input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// The model in the registry's artifact store, fetched (and its digest checked) at cold
    /// start; without it, `model.file` is packaged beside the bootstrap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
}

impl Default for Lambda {
    fn default() -> Self {
        Lambda {
            architecture: Architecture::X86_64,
            package: PackageKind::Zip,
            memory: 1024,
            timeout: "30s".to_owned(),
            api: ApiKind::Rest,
            provisioned_concurrency: 5,
            reserved_concurrency: 0,
            dead_letter_queue: true,
            alias: "live".to_owned(),
            deployment: "Linear10PercentEvery1Minute".to_owned(),
            alarms: Alarms::default(),
            check: None,
            artifact: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    #[default]
    Zip,
    Image,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The Rust target the bootstrap is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64-unknown-linux-gnu",
            Architecture::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The `onnxruntime` wheel's platform tag (glibc 2.28; Amazon Linux 2023 has 2.34).
    pub fn wheel_platform(self) -> &'static str {
        match self {
            Architecture::X86_64 => "manylinux_2_27_x86_64",
            Architecture::Arm64 => "manylinux_2_28_aarch64",
        }
    }
}

/// Which API Gateway (or none) fronts the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// An API Gateway REST API (the seed's `Api` event).
    Rest,
    /// An API Gateway HTTP API.
    Http,
    /// A function URL with IAM authentication.
    Url,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alarms {
    /// 5xx answers per minute (the function's own metric) above which a deployment rolls back.
    pub server_errors: u32,
    /// The new version's p99 duration per minute, in milliseconds, above which it rolls back.
    pub latency_p99_ms: u32,
}

impl Default for Alarms {
    fn default() -> Self {
        Alarms { server_errors: 0, latency_p99_ms: 1000 }
    }
}

/// The hooks' request: `/v1/predict` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub features: Value,
}

/// CodeDeploy's predefined Lambda deployment configurations, as SAM names them.
pub const PRESETS: [&str; 17] = [
    "Canary10Percent5Minutes",
    "Canary10Percent10Minutes",
    "Canary10Percent15Minutes",
    "Canary10Percent30Minutes",
    "Linear10PercentEvery1Minute",
    "Linear10PercentEvery2Minutes",
    "Linear10PercentEvery3Minutes",
    "Linear10PercentEvery10Minutes",
    "AllAtOnce",
    "AllAtOncePhased",
    "CanaryPhased10Percent5Minutes",
    "CanaryPhased10Percent10Minutes",
    "CanaryPhased10Percent15Minutes",
    "CanaryPhased10Percent30Minutes",
    "LinearPhased10PercentEvery1Minute",
    "LinearPhased10PercentEvery2Minutes",
    "LinearPhased10PercentEvery10Minutes",
];

/// `CodeDeployHook_` + the name + this: the longest hook function name suffix.
const HOOK_SUFFIX: &str = "-post-traffic";
/// SAM's CodeDeploy role may invoke only functions named so.
pub const HOOK_PREFIX: &str = "CodeDeployHook_";

impl Deployment {
    /// The timeout in whole seconds, as Lambda takes it.
    pub fn lambda_timeout_seconds(&self) -> u64 {
        humantime::parse_duration(&self.lambda.timeout).map_or(0, |d| d.as_secs())
    }

    pub(super) fn lambda_problems(&self, p: &mut Vec<String>) {
        let l = &self.lambda;
        if !(128..=10240).contains(&l.memory) {
            p.push(format!("lambda.memory is {} MB; Lambda allows 128 to 10240", l.memory));
        }
        match humantime::parse_duration(&l.timeout) {
            Ok(d) if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 900 => {
                p.push(format!("lambda.timeout '{}' must be whole seconds between 1s and 900s (15 minutes)", l.timeout));
            }
            Ok(_) => {}
            Err(e) => p.push(format!("lambda.timeout '{}' is not a duration ({e}); write e.g. 30s", l.timeout)),
        }
        if l.provisioned_concurrency > 1000 {
            p.push(format!("lambda.provisioned_concurrency is {}; more than 1000 needs a quota increase and is refused here", l.provisioned_concurrency));
        }
        if l.reserved_concurrency > 1000 {
            p.push(format!("lambda.reserved_concurrency is {}; more than 1000 needs a quota increase and is refused here", l.reserved_concurrency));
        }
        if l.reserved_concurrency > 0 && l.provisioned_concurrency > l.reserved_concurrency {
            p.push(format!(
                "lambda.provisioned_concurrency ({}) is above lambda.reserved_concurrency ({}); Lambda refuses more provisioned than reserved instances",
                l.provisioned_concurrency, l.reserved_concurrency
            ));
        }
        if !(is_alias(&l.alias)) {
            p.push(format!("lambda.alias '{}' is not an alias name: 1-128 letters, digits, '-' or '_', not only digits", l.alias));
        }
        if !PRESETS.contains(&l.deployment.as_str()) {
            p.push(format!("lambda.deployment '{}' is not a CodeDeploy preset; use one of: {}", l.deployment, PRESETS.join(", ")));
        }
        if l.alarms.latency_p99_ms == 0 {
            p.push("lambda.alarms.latency_p99_ms is 0; every invocation would roll the deployment back".to_owned());
        }
        let longest = HOOK_PREFIX.len() + self.name.len() + HOOK_SUFFIX.len();
        if longest > 64 {
            p.push(format!(
                "name '{}' is too long for Lambda: the hook function {HOOK_PREFIX}{}{HOOK_SUFFIX} would be {longest} characters, and Lambda allows 64; use a name of at most {}",
                self.name,
                self.name,
                64 - HOOK_PREFIX.len() - HOOK_SUFFIX.len()
            ));
        }
        match &l.check {
            Some(check) if check.features.as_array().is_none_or(|rows| rows.is_empty()) => {
                p.push("lambda.check.features must be rows of numbers, e.g. [[0.1, 0.2, 0.3, 0.4]]".to_owned());
            }
            Some(_) => {}
            None => p.push(
                "lambda.check: give the request the traffic hooks send, {features: [[...]]} (`modelship deploy lambda` makes a row of zeros from model.file's input width)".to_owned(),
            ),
        }
        match (&l.artifact, &self.model.file) {
            (Some(a), _) => {
                if !a.store.strip_prefix("s3://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/')) {
                    p.push(format!("lambda.artifact.store '{}' must be s3://bucket[/prefix], as `modelship models push` wrote it", a.store));
                } else if a.store.contains(['*', '$', '"', '\\', ' ']) {
                    p.push(format!("lambda.artifact.store '{}' holds a character an IAM resource cannot carry", a.store));
                }
                check_digest("lambda.artifact.digest", &a.digest, p);
            }
            (None, Some(_)) => {}
            (None, None) => p.push(
                "a Lambda function gets its model packaged (model.file) or from S3 (lambda.artifact: {store: s3://..., digest: sha256:...}); a registry alias cannot be followed there".to_owned(),
            ),
        }
        if self.feature_store.is_some() {
            p.push("feature_store is not available on Lambda: requests carry their features".to_owned());
        }
    }

    /// The artifact's bucket and key prefix (no slashes around it).
    pub fn lambda_bucket_and_prefix(&self) -> Option<(&str, &str)> {
        let store = self.lambda.artifact.as_ref()?.store.strip_prefix("s3://")?;
        let (bucket, prefix) = store.split_once('/').unwrap_or((store, ""));
        Some((bucket, prefix.trim_matches('/')))
    }
}

fn is_alias(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !s.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;
    use crate::description::parse;

    fn problems(lambda: &str) -> Vec<String> {
        let mut d = parse(&format!("name: nepse\nmodel: {{file: nepse.onnx}}\nlambda: {lambda}\n")).unwrap();
        d.lambda.check.get_or_insert(Check { features: serde_json::json!([[0, 0, 0, 0]]) });
        match d.validate_for(Target::Lambda) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn the_seed_defaults_are_valid() {
        assert_eq!(problems("{}"), Vec::<String>::new());
        let d = parse("name: nepse\nmodel: {file: nepse.onnx}\n").unwrap();
        assert_eq!((d.lambda.memory, d.lambda_timeout_seconds(), d.lambda.provisioned_concurrency, d.lambda.deployment.as_str()), (1024, 30, 5, "Linear10PercentEvery1Minute"));
    }

    #[test]
    fn hostile_options_are_refused_before_anything_is_written() {
        let cases: [(&str, &[&str]); 9] = [
            ("{provisioned_concurrency: 20, reserved_concurrency: 10}", &["lambda.provisioned_concurrency (20) is above lambda.reserved_concurrency (10); Lambda refuses more provisioned than reserved instances"]),
            ("{memory: 64}", &["lambda.memory is 64 MB; Lambda allows 128 to 10240"]),
            ("{memory: 20000, timeout: 16m}", &["lambda.memory is 20000 MB; Lambda allows 128 to 10240", "lambda.timeout '16m' must be whole seconds between 1s and 900s (15 minutes)"]),
            ("{timeout: 1500ms}", &["lambda.timeout '1500ms' must be whole seconds between 1s and 900s (15 minutes)"]),
            ("{timeout: soon}", &["lambda.timeout 'soon' is not a duration (expected number at 0); write e.g. 30s"]),
            ("{deployment: Linear50PercentEvery1Second}", &["lambda.deployment 'Linear50PercentEvery1Second' is not a CodeDeploy preset; use one of: Canary10Percent5Minutes, Canary10Percent10Minutes, Canary10Percent15Minutes, Canary10Percent30Minutes, Linear10PercentEvery1Minute, Linear10PercentEvery2Minutes, Linear10PercentEvery3Minutes, Linear10PercentEvery10Minutes, AllAtOnce, AllAtOncePhased, CanaryPhased10Percent5Minutes, CanaryPhased10Percent10Minutes, CanaryPhased10Percent15Minutes, CanaryPhased10Percent30Minutes, LinearPhased10PercentEvery1Minute, LinearPhased10PercentEvery2Minutes, LinearPhased10PercentEvery10Minutes"]),
            ("{alias: '42', alarms: {latency_p99_ms: 0}, provisioned_concurrency: 5000}", &[
                "lambda.provisioned_concurrency is 5000; more than 1000 needs a quota increase and is refused here",
                "lambda.alias '42' is not an alias name: 1-128 letters, digits, '-' or '_', not only digits",
                "lambda.alarms.latency_p99_ms is 0; every invocation would roll the deployment back",
            ]),
            ("{artifact: {store: 's3://models/a*', digest: 'sha256:abc'}, check: {features: []}}", &[
                "lambda.check.features must be rows of numbers, e.g. [[0.1, 0.2, 0.3, 0.4]]",
                "lambda.artifact.store 's3://models/a*' holds a character an IAM resource cannot carry",
                "lambda.artifact.digest 'sha256:abc' is not sha256: followed by 64 lowercase hex digits",
            ]),
            ("{architecture: arm64, api: url}", &[]),
        ];
        for (lambda, want) in cases {
            assert_eq!(problems(lambda), want, "{lambda}");
        }
        let long = parse("name: a-very-long-deployment-name-for-lambd\nmodel: {file: m.onnx}\n").unwrap();
        let e = long.validate_for(Target::Lambda).unwrap_err().0;
        assert!(e[0].contains("would be 65 characters, and Lambda allows 64; use a name of at most 36"), "{e:?}");
        assert!(e[1].starts_with("lambda.check: give the request the traffic hooks send"), "{e:?}");
        let unknown = parse("name: n\nmodel: {file: m.onnx}\nlambda: {memroy: 512}\n").unwrap_err();
        assert!(unknown.0[0].starts_with("lambda: unknown field `memroy`"), "{unknown:?}");
        let registry = parse("name: n\nmodel: {registry: fraud@production}\nfeature_store: {}\nlambda: {check: {features: [[1]]}}\n").unwrap();
        assert_eq!(
            registry.validate_for(Target::Lambda).unwrap_err().0,
            [
                "a Lambda function gets its model packaged (model.file) or from S3 (lambda.artifact: {store: s3://..., digest: sha256:...}); a registry alias cannot be followed there",
                "feature_store is not available on Lambda: requests carry their features",
            ]
        );
    }
}
