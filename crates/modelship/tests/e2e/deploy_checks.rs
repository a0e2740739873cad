//! Deploys that check before they act: `deploy compose --apply` names the description keys it
//! ignores, refuses a registry the container's user cannot write, a busy host port and a
//! missing image before any container starts, and `--down` leaves nothing of its own behind.
//! Regenerating into a folder removes what the previous generation wrote and no longer writes,
//! and never a user's file. Every example in `modelship deploy`'s help generates as written.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::docker::{IMAGE, REDIS_IMAGE, docker, engine, image, registry_with_two_versions, sh, wait_ready};
use crate::support::{command, free_port, model, root};

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What the Compose project `name` has on the engine: containers, networks, volumes.
fn leftovers(name: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={name}");
    [&["ps", "-aq"][..], &["network", "ls", "-q"], &["volume", "ls", "-q"]]
        .iter()
        .flat_map(|args| docker(&[args, &["--filter", &filter][..]].concat()).lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Takes the project down when dropped, also when the test fails midway.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = command().args(["deploy", "compose", "--down", "--name", self.0]).output();
    }
}

#[test]
fn compose_apply_checks_first_then_runs_and_down_removes_all_it_made() {
    let Some(_engine) = engine("compose_apply_checks_first_then_runs_and_down_removes_all_it_made") else { return };
    image();
    let name = "mschecks";
    let _cleanup = Down(name);
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_two_versions(dir.path());
    // As a host user's registry usually is: theirs, not writable by uid 10001.
    sh(Command::new("chmod").args(["-R", "go-w"]).arg(&registry));
    let (http, grpc, admin) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("deploy.yaml"),
        format!(
            "name: {name}\nmodel: {{registry: fraud@production, registry_dir: registry}}\nreplicas: 3\nstrategy: {{delay: 5s}}\n\
             image: {{name: modelship-e2e, tag: test}}\nports: {{http: {http}, grpc: {grpc}, admin: {admin}}}\n\
             feature_store: {{service: true, image: '{REDIS_IMAGE}'}}\n\
             healthcheck: {{interval: 1s, timeout: 2s, start_period: 20s, retries: 3}}\ndrain: {{delay: 0s, grace: 5s}}\n"
        ),
    )
    .unwrap();
    let apply = |extra: &[&str]| run(command().current_dir(dir.path()).args(["deploy", "compose", "--file", "deploy.yaml", "--out", "out", "--apply", "--no-build"]).args(extra));

    // Every problem at once, and nothing started.
    let busy = TcpListener::bind(("0.0.0.0", http)).unwrap();
    let (ok, _, stderr) = apply(&[]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("warning: the description's replicas (3) is ignored by compose: swarm and k8s use it"), "{stderr}");
    assert!(stderr.contains("warning: the description's strategy is ignored by compose: swarm uses it"), "{stderr}");
    assert!(stderr.contains("nothing was started; --apply checked first and found:"), "{stderr}");
    assert!(stderr.contains(&format!("host port {http} (ports.http) is in use: stop what listens there, or set ports.http in the description to a free port")), "{stderr}");
    assert!(stderr.contains("is not writable by the container's user (uid 10001)") && stderr.contains("registry.db"), "{stderr}");
    // The description's tag carries the image's digest: the image built under `test` is not it.
    assert!(stderr.contains("the image modelship-e2e:test-") && stderr.contains("modelship deploy docker --apply"), "{stderr}");
    assert!(leftovers(name).is_empty(), "a refused --apply made {:?}", leftovers(name));
    drop(busy);

    // The fix the refusal names works as written: the container then serves from the registry,
    // and the host's user keeps its access.
    let fix = stderr.split("keep yours: `").nth(1).and_then(|rest| rest.split('`').next()).unwrap().to_owned();
    assert!(fix.starts_with("setfacl "), "{fix}");
    if Command::new("setfacl").arg("--version").output().is_ok_and(|o| o.status.success()) {
        sh(Command::new("sh").arg("-c").arg(&fix).current_dir(dir.path()));
    } else {
        eprintln!("setfacl is not installed (apt-get install acl): using the refusal's other fix");
        sh(Command::new("chmod").args(["-R", "a+rwX"]).arg(&registry));
    }
    let (ok, stdout, stderr) = apply(&["--image", IMAGE]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("image {IMAGE} (--no-build: used as it is)")), "{stdout}");
    wait_ready(&format!("http://127.0.0.1:{http}/health/ready"), Duration::from_secs(90), || {
        run(Command::new("docker-compose").args(["-p", name, "-f"]).arg(dir.path().join("out/docker-compose.yml")).args(["logs", "--no-color", "--tail", "30"])).1
    });
    // `modelship traffic status` in the container finds the admin API (MODELSHIP_ADMIN_URL).
    let server = docker(&["ps", "-q", "--filter", &format!("label=com.docker.compose.project={name}"), "--filter", &format!("label=com.docker.compose.service={name}")]);
    let status = docker(&["exec", &server, "/usr/local/bin/modelship", "traffic", "status", "fraud"]);
    assert!(status.contains("fraud"), "{status}");
    // The host's tools still write the registry the container uses.
    sh(command().args(["models", "alias", "fraud", "production", "2", "--registry"]).arg(&registry));

    let down = || run(command().current_dir(dir.path()).args(["deploy", "compose", "--file", "deploy.yaml", "--down"]));
    let (ok, stdout, stderr) = down();
    assert!(ok && stdout.contains(&format!("took down the Compose project {name}")), "{stdout}{stderr}");
    assert!(leftovers(name).is_empty(), "--down left {:?}", leftovers(name));
    assert!(registry.join("registry.db").is_file(), "--down never touches the user's files");
    let (ok, stdout, _) = down();
    assert!(ok && stdout.contains(&format!("nothing to take down: no container, network or volume of the Compose project {name}")), "{stdout}");
}

fn generate(dir: &Path, args: &[&str]) -> (bool, String, String) {
    run(command().current_dir(dir).args(["deploy"]).args(args))
}

#[test]
fn regenerating_removes_what_the_previous_generation_wrote_and_keeps_the_users_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::copy(model("fraud"), dir.path().join("models/fraud.onnx")).unwrap();
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "name: fraud\nmodel: {file: models/fraud.onnx, delivery: bake}\nkubernetes: {candidate: {version: '2', tag: 0.2.0}}\n",
    )
    .unwrap();
    let k8s = dir.path().join("deploy/k8s");
    let (ok, _, stderr) = generate(dir.path(), &["k8s", "--file", "deploy.yaml", "--out", "deploy/k8s", "--strategy", "canary", "--mesh", "istio", "--weight", "5%"]);
    assert!(ok, "{stderr}");
    for file in ["virtualservice.yaml", "deployment-canary.yaml", "destinationrule.yaml", ".modelship-generated"] {
        assert!(k8s.join(file).is_file(), "{file}");
    }
    std::fs::write(k8s.join("notes.md"), "mine").unwrap();
    let edited = std::fs::read_to_string(k8s.join("destinationrule.yaml")).unwrap() + "# my change\n";
    std::fs::write(k8s.join("destinationrule.yaml"), &edited).unwrap();

    let (ok, _, stderr) = generate(dir.path(), &["k8s", "--file", "deploy.yaml", "--out", "deploy/k8s"]);
    assert!(ok, "{stderr}");
    assert!(!k8s.join("virtualservice.yaml").exists() && !k8s.join("deployment-canary.yaml").exists(), "{stderr}");
    assert!(stderr.contains("removed ") && stderr.contains("virtualservice.yaml: the previous generation wrote it, this one does not"), "{stderr}");
    assert_eq!(std::fs::read_to_string(k8s.join("notes.md")).unwrap(), "mine", "a file no generation wrote is kept");
    assert_eq!(std::fs::read_to_string(k8s.join("destinationrule.yaml")).unwrap(), edited, "an edited one too");
    assert!(stderr.contains("warning: kept ") && stderr.contains("destinationrule.yaml: the previous generation wrote it and this one does not, but it changed since"), "{stderr}");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("virtualservice"), "{kustomization}");

    // Two targets in one folder: compose does not remove the docker target's files.
    let (ok, _, stderr) = generate(dir.path(), &["docker", "--file", "deploy.yaml", "--out", "deploy/shared"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = generate(dir.path(), &["compose", "--file", "deploy.yaml", "--out", "deploy/shared"]);
    assert!(ok, "{stderr}");
    assert!(dir.path().join("deploy/shared/Dockerfile").is_file() && dir.path().join("deploy/shared/docker-compose.yml").is_file());
}

#[test]
fn the_image_tag_carries_the_digest_of_what_goes_into_the_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(model("fraud"), dir.path().join("fraud.onnx")).unwrap();
    let tag = |yaml: &str, extra: &[&str]| {
        std::fs::write(dir.path().join("deploy.yaml"), yaml).unwrap();
        let (ok, stdout, stderr) = generate(dir.path(), &[&["compose", "--file", "deploy.yaml", "--output", "json"][..], extra].concat());
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["image"].as_str().unwrap().to_owned()
    };
    let baked = "name: fraud\nmodel: {file: fraud.onnx, delivery: bake}\nimage: {tag: '1.0'}\n";
    let first = tag(baked, &[]);
    assert!(first.starts_with("modelship:1.0-") && first.len() == "modelship:1.0-".len() + 12, "{first}");
    assert_eq!(tag(baked, &[]), first, "the same inputs, the same tag");
    assert_eq!(tag(&format!("{baked}replicas: 2\n"), &[]), first, "replicas do not change the image");
    assert_ne!(tag("name: fraud\nmodel: {file: fraud.onnx, delivery: mount}\nimage: {tag: '1.0'}\n", &[]), first, "another image");
    assert_eq!(tag(baked, &["--image", "registry.example.com/ml/modelship:abc123"]), "registry.example.com/ml/modelship:abc123", "a typed tag is used as typed");
}

#[test]
fn every_deploy_help_example_generates_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("registry")).unwrap();
    for name in ["fraud", "nepse"] {
        std::fs::copy(model("fraud"), dir.path().join(format!("models/{name}.onnx"))).unwrap();
    }
    std::fs::copy(root().join("testdata/validate/holdout.csv"), dir.path().join("data/holdout.csv")).unwrap();
    // The description the examples name: every target's keys, a candidate for canary and shadow.
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "name: fraud\nmodel: {file: models/fraud.onnx, delivery: bake}\nreplicas: 3\n\
         kubernetes: {candidate: {version: '2', tag: 0.2.0}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("canary.yaml"), "model: fraud\nfrom: '1'\nto: '2'\nsteps: [{weight: 5%, hold: 1m}]\n").unwrap();
    let mut ran = 0;
    for target in [&["deploy"][..], &["deploy", "k8s"], &["deploy", "lambda"], &["deploy", "ci"]] {
        let help = sh(command().args(target).arg("--help"));
        for argv in crate::help_examples::help_examples(&help) {
            // --apply and --down need an engine: the generation is what is checked here.
            let args: Vec<&str> = argv[1..].iter().map(String::as_str).filter(|a| *a != "--apply" && *a != "--down").collect();
            if argv.iter().any(|a| a == "--down") {
                continue;
            }
            let (ok, stdout, stderr) = run(command().current_dir(dir.path()).args(&args));
            assert!(ok, "`{}` (from `modelship {} --help`) failed:\n{stdout}{stderr}", argv.join(" "), target.join(" "));
            ran += 1;
        }
    }
    assert!(ran >= 15, "only {ran} examples ran");
}
