//! Which keys of a description a target does not read, so the CLI can say so instead of dropping
//! them without a word (`replicas: 3` under `deploy compose` runs one server).
//!
//! One description serves every target (the README's `deploy.yaml` feeds docker, compose and
//! swarm in turn), so an ignored key is a warning, never a refusal: the same file must stay
//! usable for the target that does read it. The image (`deploy docker`) is part of every other
//! target and is never warned about.

use crate::Target;
use crate::description::{AzureFunctions, CloudRun, Deployment, Healthcheck, Kubernetes, Lambda, Restart, Strategy, SwarmOptions};

/// A key set in the description that `target` ignores, and the targets that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub key: &'static str,
    /// The value as set, for the message (`3`), when it is short.
    pub value: Option<String>,
    pub used_by: &'static [Target],
}

impl Ignored {
    /// `replicas (3) is ignored by compose: swarm and k8s use it`
    pub fn message(&self, target: Target) -> String {
        let value = self.value.as_ref().map(|v| format!(" ({v})")).unwrap_or_default();
        let users: Vec<&str> = self.used_by.iter().map(|t| t.cli_name()).collect();
        let users = match users.as_slice() {
            [one] => format!("{one} uses it"),
            [init @ .., last] => format!("{} and {last} use it", init.join(", ")),
            [] => "no target uses it".to_owned(),
        };
        format!("the description's {}{value} is ignored by {}: {users}", self.key, target.cli_name())
    }
}

/// Every key the description sets (differs from its default) that `target` does not read.
pub fn ignored(target: Target, d: &Deployment) -> Vec<Ignored> {
    if matches!(target, Target::Docker | Target::Alerts) {
        return Vec::new();
    }
    let candidates: [(&'static str, bool, Option<String>, &'static [Target]); 12] = [
        ("replicas", d.replicas() != 1, Some(d.replicas().to_string()), &[Target::Swarm, Target::Kubernetes]),
        ("strategy", d.strategy != Strategy::default(), None, &[Target::Swarm]),
        ("restart", d.restart != Restart::default(), None, &[Target::Swarm]),
        // Kubernetes has its own per probe (kubernetes.probes).
        ("healthcheck", d.healthcheck != Healthcheck::default(), None, &[Target::Compose, Target::Swarm]),
        ("swarm", d.swarm != SwarmOptions::default(), None, &[Target::Swarm]),
        ("prometheus", d.prometheus.is_some(), None, &[Target::Compose, Target::Swarm]),
        ("kubernetes", d.kubernetes != Kubernetes::default(), None, &[Target::Kubernetes]),
        ("lambda", d.lambda != Lambda::default(), None, &[Target::Lambda]),
        ("cloudrun", d.cloudrun != CloudRun::default(), None, &[Target::CloudRun]),
        ("azure_functions", d.azure_functions != AzureFunctions::default(), None, &[Target::AzureFunctions]),
        // A function app's settings are its own (az functionapp config appsettings set).
        ("env", !d.env.is_empty(), None, &[Target::Docker, Target::Compose, Target::Swarm, Target::Kubernetes, Target::Lambda, Target::CloudRun]),
        ("config", d.config.is_some(), None, &[Target::Docker, Target::Compose, Target::Swarm, Target::Kubernetes]),
    ];
    candidates
        .into_iter()
        .filter(|(_, set, _, used_by)| *set && !used_by.contains(&target))
        .map(|(key, _, value, used_by)| Ignored { key, value, used_by })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::parse;

    fn check(target: Target, yaml: &str, expected: &[&str]) {
        let d = parse(&format!("name: fraud\nmodel: {{file: m.onnx}}\n{yaml}")).unwrap();
        let got: Vec<String> = ignored(target, &d).iter().map(|i| i.message(target)).collect();
        assert_eq!(got, expected, "{target:?} with {yaml:?}");
    }

    #[test]
    fn each_target_names_the_keys_it_ignores_and_who_reads_them() {
        let everything = "replicas: 3\nstrategy: {delay: 5s}\nrestart: {max_attempts: 5}\nswarm: {endpoint_mode: dnsrr}\nprometheus: {}\n\
                          kubernetes: {namespace: ml}\nlambda: {memory: 2048}\n";
        let table: &[(Target, &str, &[&str])] = &[
            (Target::Compose, "", &[]),
            (Target::Compose, "replicas: 1\nstrategy: {delay: 10s}\n", &[]),
            (Target::Compose, "replicas: 3\n", &["the description's replicas (3) is ignored by compose: swarm and k8s use it"]),
            (
                Target::Compose,
                everything,
                &[
                    "the description's replicas (3) is ignored by compose: swarm and k8s use it",
                    "the description's strategy is ignored by compose: swarm uses it",
                    "the description's restart is ignored by compose: swarm uses it",
                    "the description's swarm is ignored by compose: swarm uses it",
                    "the description's kubernetes is ignored by compose: k8s uses it",
                    "the description's lambda is ignored by compose: lambda uses it",
                ],
            ),
            (
                Target::Swarm,
                everything,
                &["the description's kubernetes is ignored by swarm: k8s uses it", "the description's lambda is ignored by swarm: lambda uses it"],
            ),
            (
                Target::Kubernetes,
                everything,
                &[
                    "the description's strategy is ignored by k8s: swarm uses it",
                    "the description's restart is ignored by k8s: swarm uses it",
                    "the description's swarm is ignored by k8s: swarm uses it",
                    "the description's prometheus is ignored by k8s: compose and swarm use it",
                    "the description's lambda is ignored by k8s: lambda uses it",
                ],
            ),
            (
                Target::Lambda,
                everything,
                &[
                    "the description's replicas (3) is ignored by lambda: swarm and k8s use it",
                    "the description's strategy is ignored by lambda: swarm uses it",
                    "the description's restart is ignored by lambda: swarm uses it",
                    "the description's swarm is ignored by lambda: swarm uses it",
                    "the description's prometheus is ignored by lambda: compose and swarm use it",
                    "the description's kubernetes is ignored by lambda: k8s uses it",
                ],
            ),
            // The image is part of every target: nothing is ignored by it.
            (Target::Docker, everything, &[]),
            (
                Target::AzureFunctions,
                "env: {LOG_LEVEL: INFO}\nconfig: serving.yaml\n",
                &[
                    "the description's env is ignored by azure-functions: docker, compose, swarm, k8s, lambda and cloudrun use it",
                    "the description's config is ignored by azure-functions: docker, compose, swarm and k8s use it",
                ],
            ),
        ];
        for (target, yaml, expected) in table {
            check(*target, yaml, expected);
        }
    }
}
