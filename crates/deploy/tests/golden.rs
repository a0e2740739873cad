//! Golden files: every generator's output for a few descriptions, compared byte for byte with
//! `tests/golden/CASE/FILE`. A changed output is a reviewed diff: run
//! `UPDATE_GOLDEN=1 cargo test -p modelship-deploy --test golden` and read `git diff`.

use std::path::{Path, PathBuf};

use modelship_deploy::{Provenance, Target, description, render};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Renders `target` for the description `case.yaml` and compares every file.
fn check(case: &str, target: Target) {
    let dir = golden_dir().join(case);
    let text = std::fs::read_to_string(dir.join("deploy.yaml")).unwrap();
    let mut deployment = description::parse(&text).unwrap();
    deployment.settle(target);
    if target == Target::Kubernetes
        && let Some(config) = &deployment.config
    {
        // The CLI reads the serving config for the ConfigMap; so does the test, beside the case.
        deployment.config_contents = Some(std::fs::read_to_string(dir.join(config)).unwrap());
    }
    if let Some(rollout) = &deployment.kubernetes.rollout {
        deployment.rollout_contents = Some(std::fs::read_to_string(dir.join(&rollout.spec)).unwrap());
    }
    deployment.validate_for(target).unwrap();
    let target_name = serde_json::to_value(target).unwrap().as_str().unwrap().to_owned();
    let command = target.cli_name();
    let files = render(target, &deployment, &Provenance::new(format!("modelship deploy {command} --file deploy.yaml --out .")));
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for file in &files {
        let path = dir.join(target_name.as_str()).join(file.path);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &file.contents).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != file.contents {
            stale.push(format!("{}:\n{}", path.display(), file.contents));
        }
    }
    let mut names: Vec<String> = files.iter().map(|f| f.path.to_owned()).collect();
    names.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.join(target_name.as_str()))
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    on_disk.sort();
    assert!(update || names == on_disk, "{case}/{target_name}: generated {names:?}, golden has {on_disk:?}");
    assert!(stale.is_empty(), "outputs differ from the golden files (UPDATE_GOLDEN=1 to accept, then review the diff):\n{}", stale.join("\n"));
}

#[test]
fn mounted_model_with_redis_and_prometheus() {
    for target in [Target::Docker, Target::Compose, Target::Swarm] {
        check("seed", target);
    }
}

#[test]
fn baked_model_built_from_source_with_a_gpu_variant() {
    check("source-gpu", Target::Docker);
}

#[test]
fn registry_model_with_a_fleet_store() {
    for target in [Target::Compose, Target::Swarm] {
        check("registry-fleet", target);
    }
}

#[test]
fn a_gpu_deployment_on_every_orchestrator() {
    for target in [Target::Docker, Target::Compose, Target::Swarm, Target::Kubernetes] {
        check("gpu", target);
    }
}

#[test]
fn swarm_without_a_routing_mesh() {
    check("swarm-dnsrr", Target::Swarm);
}

#[test]
fn kubernetes_every_strategy() {
    for case in ["k8s-defaults", "k8s-rolling", "k8s-blue-green", "k8s-canary-istio", "k8s-shadow-istio", "k8s-canary-gateway", "k8s-shadow-gateway", "k8s-mesh-free"] {
        check(case, Target::Kubernetes);
    }
}

#[test]
fn cloud_run_baked_and_a_canary_from_a_bucket() {
    for case in ["cloudrun-baked", "cloudrun-canary"] {
        check(case, Target::CloudRun);
    }
}

#[test]
fn azure_functions_custom_handler() {
    check("azure-functions", Target::AzureFunctions);
}

#[test]
fn lambda_packaged_from_s3_and_behind_a_function_url() {
    for case in ["lambda-seed", "lambda-s3", "lambda-url", "lambda-image"] {
        check(case, Target::Lambda);
    }
}
