//! The batch Job (`kubernetes.batch`): `modelship predict` over a file of a PersistentVolumeClaim,
//! the same image and model as the Deployment (baked in, or fetched and checked by the init
//! container). A Job, because scoring ends. A pod that dies (evicted, out of memory, its node
//! drained) is replaced and resumes from the part files the dead one left beside the output on the
//! claim; exit 2 (a usage error: the command or its files are wrong) fails the Job at once.

use std::collections::BTreeMap;

use super::api::*;
use super::workload::{fetch_container, model_path, pod_security, resources, security, tracks};
use super::{Files, meta};
use crate::description::Deployment;

/// Where the claim is mounted in the Job's container.
pub const DATA_DIR: &str = "/data";

pub fn objects(d: &Deployment, files: &mut Files) {
    let Some(batch) = &d.kubernetes.batch else { return };
    // The stable track: its image, version and model.
    let Some(track) = tracks(d).into_iter().next() else { return };
    let mut args: Vec<String> = vec!["predict".into(), model_path(d, &track), "--input".into(), format!("{DATA_DIR}/{}", batch.input), "--output".into(), format!("{DATA_DIR}/{}", batch.output), "--json".into()];
    if let Some(id) = &batch.id_column {
        args.extend(["--id-column".to_owned(), id.clone()]);
    }
    let mut mounts = vec![
        VolumeMount { name: "data", mount_path: DATA_DIR.to_owned(), read_only: None, sub_path: None },
        VolumeMount { name: "tmp", mount_path: "/tmp".to_owned(), read_only: None, sub_path: None },
    ];
    let mut volumes = vec![
        Volume { name: "data", config_map: None, empty_dir: None, persistent_volume_claim: Some(ClaimVolume { claim_name: batch.claim.clone() }) },
        Volume { name: "tmp", config_map: None, empty_dir: Some(EmptyDir { size_limit: Some("64Mi".to_owned()) }), persistent_volume_claim: None },
    ];
    if track.digest.is_some() {
        mounts.push(VolumeMount { name: "model", mount_path: crate::description::MODEL_DIR.to_owned(), read_only: Some(true), sub_path: None });
        volumes.push(Volume { name: "model", config_map: None, empty_dir: Some(EmptyDir { size_limit: None }), persistent_volume_claim: None });
    }
    let mut env = vec![EnvVar::field("POD_NAME", "metadata.name"), EnvVar::value("MODEL_NAME", &d.served_name())];
    if let Some(v) = &track.version {
        env.push(EnvVar::value("MODEL_VERSION", v));
    }
    let container = Container {
        name: "predict".to_owned(),
        image: track.image.clone(),
        image_pull_policy: "IfNotPresent",
        args,
        env,
        resources: resources(d),
        volume_mounts: mounts,
        security_context: security(),
        ..Container::default()
    };
    let mut pod_labels = super::component_labels(d, "batch");
    pod_labels.insert(super::TRACK.to_owned(), "batch".to_owned());
    files.add("job-batch.yaml", &Object {
        api_version: "batch/v1",
        kind: "Job",
        metadata: meta(d, &format!("{}-batch", d.name)),
        body: Spec {
            spec: JobSpec {
                backoff_limit: 6,
                // Exit 2 is a usage error (arguments, paths, parts of another run): a retry would
                // fail the same way.
                pod_failure_policy: PodFailurePolicy {
                    rules: vec![PodFailureRule { action: "FailJob", on_exit_codes: ExitCodes { container_name: "predict", operator: "In", values: vec![2] } }],
                },
                template: JobTemplate {
                    metadata: Metadata { labels: pod_labels, annotations: BTreeMap::new(), ..Metadata::default() },
                    spec: JobPodSpec {
                        service_account_name: d.name.clone(),
                        automount_service_account_token: false,
                        enable_service_links: false,
                        restart_policy: "Never",
                        security_context: pod_security(),
                        init_containers: track.digest.as_ref().map(|digest| fetch_container(d, &track, digest)).into_iter().collect(),
                        containers: vec![container],
                        volumes,
                    },
                },
            },
        },
    });
}
