//! `modelship deploy docker|compose|swarm|k8s|lambda`: reads the description (file, then flags),
//! writes the files the pure generators of `modelship-deploy` render, and with `--apply` hands
//! them to the real tool (`docker build`, `docker-compose up`, `docker stack deploy`). Kubernetes
//! manifests and SAM templates are only written: nothing here talks to a cluster or to AWS.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use modelship_deploy::description::{self, Artifact, Build, Check, Delivery, Deployment, FeatureStore, Prometheus};
use modelship_deploy::manifest::{self, Stale};
use modelship_deploy::{GeneratedFile, Provenance, Target, docker};
use serde::Serialize;

use crate::deploy_preflight::{self as preflight, NeededImage, Published};
use crate::cli::{DeliveryArg, DeployArgs, DeployOptions, DeployTarget, K8sOptions, K8sStrategyArg, MeshArg, OutputFormat};
use crate::lambda::{ApiArg, ArchitectureArg, LambdaOptions, PackageArg};

pub fn main(args: DeployArgs) -> ExitCode {
    let (target, options, k8s, lambda) = match args.target {
        DeployTarget::Docker(o) => (Target::Docker, o, None, None),
        DeployTarget::Compose(o) => (Target::Compose, o, None, None),
        DeployTarget::Swarm(o) => (Target::Swarm, o, None, None),
        DeployTarget::K8s(o) => (Target::Kubernetes, o.common.clone(), Some(o), None),
        DeployTarget::Lambda(o) => (Target::Lambda, o.common.clone(), None, Some(o)),
        DeployTarget::Cloudrun(o) => (Target::CloudRun, o, None, None),
        DeployTarget::AzureFunctions(o) => (Target::AzureFunctions, o, None, None),
        DeployTarget::Alerts(o) => (Target::Alerts, o, None, None),
        DeployTarget::Ci(o) => return crate::deploy_ci::main(&o),
    };
    let flags = Flags { k8s: k8s.as_ref(), lambda: lambda.as_ref() };
    if options.down {
        return match down(target, &options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(target, &options, flags) {
        Ok(summary) => {
            print(&summary, options.output);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the command did, for people (`--output table`) or scripts (`--output json`).
#[derive(Debug, Serialize)]
struct Summary {
    target: Target,
    out: PathBuf,
    files: Vec<WrittenFile>,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<Applied>,
}

#[derive(Debug, Serialize)]
struct WrittenFile {
    path: PathBuf,
    bytes: usize,
}

#[derive(Debug, Default, Serialize)]
struct Applied {
    /// Seconds `docker build` took, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    build_seconds: Option<f64>,
    /// The image's size as the engine reports it, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_bytes: Option<u64>,
    /// What was started: `docker-compose up -d` or `docker stack deploy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
}

/// The flags only one target has.
#[derive(Clone, Copy)]
struct Flags<'a> {
    k8s: Option<&'a K8sOptions>,
    lambda: Option<&'a LambdaOptions>,
}

fn run(target: Target, o: &DeployOptions, flags: Flags<'_>) -> anyhow::Result<Summary> {
    if target == Target::Kubernetes && o.apply {
        bail!("deploy k8s writes manifests and applies nothing: review them, then `kubectl apply -k {}`", o.out.display());
    }
    if target == Target::AzureFunctions && o.apply {
        bail!("deploy azure-functions writes the app's files and applies nothing: `make -f {0}/Makefile package`, then `az functionapp deployment source config-zip --src {0}/app.zip`", o.out.display());
    }
    if target == Target::CloudRun && o.apply {
        bail!("deploy cloudrun writes a Knative Service and applies nothing: push the image, then `bash {}/cloudrun.sh` (gcloud run services replace)", o.out.display());
    }
    if target == Target::Alerts && o.apply {
        bail!("deploy alerts writes rules and a dashboard and applies nothing: add {0}/modelship-alerts.yml to rule_files in prometheus.yml, and import {0}/grafana-dashboard.json in Grafana", o.out.display());
    }
    if target == Target::Lambda && o.apply {
        bail!(
            "deploy lambda writes a SAM template and applies nothing: `make -f {0}/Makefile package`, then `sam deploy --template-file {0}/template.yaml --guided`",
            o.out.display()
        );
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let (mut deployment, base) = load(target, o, flags, &cwd)?;
    let out = normalize(&cwd.join(&o.out));
    // Host paths: absolute first (relative to the description), then, for Compose and Swarm,
    // relative to the output directory, where those files are read.
    let absolute = |p: &str| normalize(&base.join(p)).to_string_lossy().into_owned();
    let mut model_file = deployment.model.file.as_deref().map(absolute);
    // A pickle, XGBoost or LightGBM model is converted here, once (cached), and the containers
    // get the ONNX file: nothing in them converts or unpickles.
    if let Some(file) = &model_file
        && let Some(onnx) = converted_model(Path::new(file), &out, &o.convert)?
    {
        deployment.model.file = Some(onnx.to_string_lossy().into_owned());
        model_file = Some(onnx.to_string_lossy().into_owned());
    }
    let registry_dir = deployment.model.registry_dir.as_deref().map(absolute);
    let config_file = deployment.config.as_deref().map(absolute);
    let relative = |p: &str| description::relative_path(&out.to_string_lossy(), &absolute(p));
    if target != Target::Docker {
        deployment.model.file = deployment.model.file.as_deref().map(relative);
        deployment.model.registry_dir = deployment.model.registry_dir.as_deref().map(relative);
        deployment.config = deployment.config.as_deref().map(relative);
    } else if deployment.image.build == Build::Source {
        // The repository is the context: the model is copied from where it is in it.
        deployment.model.file = model_file.as_deref().map(|f| description::relative_path(&base.to_string_lossy(), f).trim_start_matches("./").to_owned());
    }
    if target == Target::Kubernetes
        && let Some(path) = &config_file
    {
        // The ConfigMap carries the file itself.
        deployment.config_contents = Some(std::fs::read_to_string(path).with_context(|| format!("cannot read the serving config {path} for its ConfigMap"))?);
    }
    if target == Target::Lambda
        && deployment.lambda.check.is_none()
        && let Some(path) = &model_file
    {
        deployment.lambda.check = zero_row(Path::new(path)).map(|features| Check { features });
    }
    if target == Target::Kubernetes
        && let Some(rollout) = deployment.kubernetes.rollout.clone()
    {
        let path = absolute(&rollout.spec);
        deployment.rollout_contents = Some(std::fs::read_to_string(&path).with_context(|| format!("cannot read the rollout spec {path} for its ConfigMap"))?);
        check_rollout(&deployment, Path::new(&path))?;
    }
    deployment.validate_for(target)?;
    // A Kubernetes pod gets its model from the image or the artifact store, never this machine.
    if !matches!(target, Target::Kubernetes | Target::Alerts)
        && let Some(file) = &model_file
        && !Path::new(file).is_file()
    {
        bail!("the model file {file} does not exist; give an existing .onnx file (model.file, or --model)");
    }

    for ignored in modelship_deploy::ignored::ignored(target, &deployment) {
        eprintln!("warning: {}", ignored.message(target));
    }
    // A tag typed on the command line (--image NAME:TAG) is the caller's; the description's gets
    // the digest of what goes into the image, so no image of an older description or binary
    // is ever taken for this one.
    let typed_tag = o.image.as_deref().is_some_and(|i| i.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/')));
    if matches!(target, Target::Docker | Target::Compose | Target::Swarm) && !typed_tag {
        deployment.image.tag = content_tag(&deployment, model_file.as_deref())?;
    }

    let provenance = Provenance::new(command_line());
    let mut files = modelship_deploy::render(target, &deployment, &provenance);
    let builds = o.apply && (target == Target::Docker || !o.no_build);
    if builds && target != Target::Docker {
        // Compose and Swarm need the Dockerfile too; it is written beside their files.
        files.extend(docker::render(&deployment, &provenance));
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let written = write_generation(&out, target, &files)?;
    let mut summary = Summary { target, out: out.clone(), files: written, image: deployment.image.reference(), applied: None };
    if !o.apply {
        return Ok(summary);
    }
    preflight_checks(&deployment, target, o, registry_dir.as_deref().map(Path::new))?;
    let mut applied = Applied::default();
    if builds {
        let built = build_image(&deployment, &out, &base, model_file.as_deref())?;
        applied.build_seconds = Some(built);
        applied.image_bytes = image_size(&deployment.image.reference());
    }
    match target {
        Target::Docker | Target::Kubernetes | Target::Lambda | Target::CloudRun | Target::AzureFunctions | Target::Alerts => {}
        Target::Compose => {
            let file = out.join(modelship_deploy::compose::FILE);
            let mut cmd = compose_command()?;
            cmd.args(["-p", &deployment.name, "-f"]).arg(&file).args(["up", "-d", "--remove-orphans"]);
            run_tool(cmd, "docker-compose up", "is the Docker engine running? (its output is below)")?;
            applied.started = Some(format!("docker-compose -p {} -f {} up -d", deployment.name, file.display()));
        }
        Target::Swarm => {
            let file = out.join(modelship_deploy::swarm::FILE);
            let mut cmd = Command::new("docker");
            cmd.args(["stack", "deploy", "--prune", "-c"]).arg(&file).arg(&deployment.name);
            run_tool(cmd, "docker stack deploy", "is this engine a swarm manager? `docker swarm init` makes it one")?;
            applied.started = Some(format!("docker stack deploy -c {} {}", file.display(), deployment.name));
        }
    }
    summary.applied = Some(applied);
    Ok(summary)
}

/// The description's tag with the digest of the build's inputs: the Dockerfile (rendered without
/// its header, which names the command line), this binary, the ONNX Runtime library it packages
/// and a baked model. A source build's binary is compiled from the repository, which is not
/// hashed: this binary's digest stands for its version there.
fn content_tag(d: &Deployment, model_file: Option<&str>) -> anyhow::Result<String> {
    let mut inputs: Vec<(&str, String)> =
        docker::render(d, &Provenance::new("modelship deploy")).into_iter().map(|f| (f.path, manifest::digest(f.contents.as_bytes()))).collect();
    let exe = std::env::current_exe().context("cannot find this binary to digest it")?;
    inputs.push((docker::STAGED_BINARY, file_digest(&exe)?));
    if d.image.build == Build::Binary
        && let Ok(library) = modelship_onnx::library::locate(std::env::var_os("ORT_DYLIB_PATH").as_deref().map(Path::new))
    {
        inputs.push((docker::STAGED_LIBRARY, file_digest(&library)?));
    }
    if d.model.delivery() == Delivery::Bake
        && let Some(file) = model_file
    {
        inputs.push((docker::STAGED_MODEL_DIR, file_digest(Path::new(file))?));
    }
    Ok(docker::content_tag(&d.image.tag, &inputs))
}

/// `sha256:HEX` of a file, read in pieces (a debug binary is hundreds of megabytes).
fn file_digest(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {} to digest it", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {} to digest it", path.display()))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Writes this generation's files and `.modelship-generated`, removing the files the previous
/// generation of this target wrote and this one does not, unless they changed since.
fn write_generation(out: &Path, target: Target, files: &[GeneratedFile]) -> anyhow::Result<Vec<WrittenFile>> {
    let manifest_path = out.join(manifest::FILE);
    let previous = std::fs::read_to_string(&manifest_path).map(|t| manifest::parse(&t)).unwrap_or_default();
    let written = write(out, files)?;
    let digests: Vec<(&str, String)> = files.iter().map(|f| (f.path, manifest::digest(f.contents.as_bytes()))).collect();
    let (next, stale) = manifest::reconcile(&previous, target, &digests, |p| std::fs::read(out.join(p)).ok().map(|b| manifest::digest(&b)));
    for file in stale {
        match file {
            Stale::Remove(path) => {
                let path = out.join(path);
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}, which this generation no longer writes", path.display()))?;
                eprintln!("removed {}: the previous generation wrote it, this one does not", path.display());
            }
            Stale::KeepEdited(path) => eprintln!(
                "warning: kept {}: the previous generation wrote it and this one does not, but it changed since; remove it if it is not yours",
                out.join(path).display()
            ),
        }
    }
    let tmp = out.join(format!("{}.tmp", manifest::FILE));
    std::fs::write(&tmp, manifest::render(&next)).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &manifest_path).with_context(|| format!("cannot write {}", manifest_path.display()))?;
    Ok(written)
}

/// What `--apply` checks before it builds or starts anything, every problem at once.
fn preflight_checks(d: &Deployment, target: Target, o: &DeployOptions, registry_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if matches!(target, Target::Compose | Target::Swarm) {
        if let Some(dir) = registry_dir {
            problems.extend(registry_check(dir));
        }
        problems.extend(ports_check(d, target));
    }
    for image in needed_images(d, target, o) {
        if let Err(pull) = have_image(&image.reference) {
            problems.push(preflight::image_problem(&image, &pull));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!("nothing was started; --apply checked first and found:\n  - {}", problems.join("\n  - "))
}

fn registry_check(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Some(format!(
            "the registry directory {} does not exist: push a model into it first (`modelship models push NAME FILE.onnx --registry {0}`), or fix model.registry_dir",
            dir.display()
        ));
    };
    let access = |path: &Path, meta: &std::fs::Metadata| {
        // Without getfacl (package acl) a file is judged by its mode bits alone.
        let acl = Command::new("getfacl").args(["-cn", "--"]).arg(path).output().ok().filter(|o| o.status.success());
        let acl = acl.map(|o| preflight::parse_acl(&String::from_utf8_lossy(&o.stdout))).unwrap_or_default();
        preflight::Access { uid: meta.uid(), gid: meta.gid(), mode: meta.mode(), acl }
    };
    let mut files = vec![(dir.display().to_string(), access(dir, &meta), true)];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("registry.db")
            && let Ok(meta) = entry.metadata()
        {
            files.push((path.display().to_string(), access(&path, &meta), false));
        }
    }
    preflight::registry_problem(dir, &files)
}

fn ports_check(d: &Deployment, target: Target) -> Vec<String> {
    let mut wanted = Vec::new();
    if d.ports.publish {
        wanted.push(Published { port: d.ports.http, key: "ports.http", loopback: false });
        wanted.push(Published { port: d.ports.grpc, key: "ports.grpc", loopback: false });
    }
    if target == Target::Compose {
        if d.ports.publish_admin {
            wanted.push(Published { port: d.ports.admin, key: "ports.admin", loopback: true });
        }
        if let Some(prom) = &d.prometheus {
            wanted.push(Published { port: prom.port, key: "prometheus.port", loopback: true });
        }
    }
    let listing = match target {
        Target::Swarm => docker_lines(&["service", "ls", "--filter", &format!("label=com.docker.stack.namespace={}", d.name), "--format", "{{.Ports}}"]),
        _ => docker_lines(&["ps", "--filter", &format!("label=com.docker.compose.project={}", d.name), "--format", "{{.Ports}}"]),
    };
    let own = preflight::published_ports(&listing.join("\n"));
    let in_use = |p: &Published| {
        let host = if p.loopback { "127.0.0.1" } else { "0.0.0.0" };
        std::net::TcpListener::bind((host, p.port)).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    };
    preflight::port_problems(&wanted, in_use, &own)
}

/// The images `--apply` runs or builds from, each with the key that names it and its remedy.
fn needed_images(d: &Deployment, target: Target, o: &DeployOptions) -> Vec<NeededImage> {
    let mut images = Vec::new();
    let builds = target == Target::Docker || !o.no_build;
    if builds {
        let bases = &d.image.bases;
        let mut base = |reference: &str, key: &'static str, remedy: &str| images.push(NeededImage { reference: reference.to_owned(), key, remedy: remedy.to_owned() });
        base(&bases.tools, "image.bases.tools", "pass --tools-image with a Debian-like image this engine has (bash, ldd, cp; in modelship's repository, scripts/docker-test-images.sh builds modelship-test/bookworm:12)");
        if d.image.build == Build::Source {
            base(&bases.rust, "image.bases.rust", "set image.bases.rust to a Rust image this engine has, or use image.build: binary");
        }
        if d.image.build == Build::Source || d.image.gpu {
            base(&bases.python, "image.bases.python", "set image.bases.python to a Python image this engine has (it downloads the onnxruntime wheel)");
        }
        if d.image.gpu {
            base(&bases.cuda, "image.bases.cuda", "set image.bases.cuda to a CUDA 13 + cuDNN 9 runtime image this engine has, or drop image.gpu");
        }
    } else {
        images.push(NeededImage {
            reference: d.image.served_reference(),
            key: "--no-build",
            remedy: "--no-build runs the image as it is: build it with `modelship deploy docker --apply` and the same description \
                     (the tag carries the digest of the description's image and of this binary), or drop --no-build, \
                     or name an image this engine has with --image NAME:TAG"
                .to_owned(),
        });
    }
    if matches!(target, Target::Compose | Target::Swarm) {
        if let Some(store) = d.feature_store.as_ref().filter(|s| s.service) {
            images.push(NeededImage { reference: store.image.clone(), key: "feature_store.image", remedy: preflight::auxiliary_remedy("feature_store.image", "modelship-test/redis:7") });
        }
        if let Some(prom) = &d.prometheus {
            images.push(NeededImage { reference: prom.image.clone(), key: "prometheus.image", remedy: preflight::auxiliary_remedy("prometheus.image", "modelship-test/prometheus:2") });
        }
    }
    images
}

/// Ok when the engine has the image or pulls it; else the pull's last line.
fn have_image(reference: &str) -> Result<(), String> {
    if Command::new("docker").args(["image", "inspect", reference]).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    match Command::new("docker").args(["pull", "-q", reference]).stdin(std::process::Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("docker pull failed").to_owned()),
        Err(e) => Err(format!("cannot run docker: {e}")),
    }
}

/// A docker listing's non-empty lines (none when docker fails: the checks then find nothing).
fn docker_lines(args: &[&str]) -> Vec<String> {
    let Ok(out) = Command::new("docker").args(args).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// `--down`: removes what `--apply` started, found by the label Compose or Swarm puts on it:
/// containers, networks and the project's or stack's own volumes. Bind-mounted host
/// directories are not volumes, so no file of the user's is touched.
fn down(target: Target, o: &DeployOptions) -> anyhow::Result<()> {
    let (kind, label) = match target {
        Target::Compose => ("Compose project", "com.docker.compose.project"),
        Target::Swarm => ("Swarm stack", "com.docker.stack.namespace"),
        other => bail!("--down takes down what `deploy compose --apply` or `deploy swarm --apply` started; deploy {} starts nothing", other.cli_name()),
    };
    let name = down_name(o)?;
    let filter = format!("label={label}={name}");
    let list = |what: &[&str]| -> anyhow::Result<Vec<String>> {
        let out = Command::new("docker").args(what).args(["--filter", &filter]).output().context("cannot run docker (is it installed?)")?;
        if !out.status.success() {
            bail!("docker {} failed: {} (is the Docker engine running?)", what.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
    };
    let services = if target == Target::Swarm { list(&["service", "ls", "-q"])? } else { Vec::new() };
    let containers = list(&["ps", "-aq"])?;
    let networks = list(&["network", "ls", "-q"])?;
    let volumes = own_volumes(target, &name, list(&["volume", "ls", "-q"])?);
    if services.is_empty() && containers.is_empty() && networks.is_empty() && volumes.is_empty() {
        println!("nothing to take down: no container, network or volume of the {kind} {name} (`modelship deploy {} --apply` makes them)", target.cli_name());
        return Ok(());
    }
    if target == Target::Swarm {
        if !services.is_empty() {
            let mut cmd = Command::new("docker");
            cmd.args(["stack", "rm", &name]);
            run_tool(cmd, "docker stack rm", "is this engine the swarm's manager?")?;
        }
        // The stack's tasks stop after `stack rm` returns; their volumes are in use until then.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        while !list(&["ps", "-aq"])?.is_empty() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    let remove = |args: &[&str], ids: Vec<String>, what: &str| -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = Command::new("docker");
        cmd.args(args).args(&ids);
        run_tool(cmd, what, "is the Docker engine running?")
    };
    remove(&["rm", "-f", "-v"], list(&["ps", "-aq"])?, "docker rm")?;
    // Networks go once their containers are gone (`stack rm` removes its own, in the background).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let mut left = list(&["network", "ls", "-q"])?;
    while !left.is_empty() && target == Target::Swarm && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        left = list(&["network", "ls", "-q"])?;
    }
    remove(&["network", "rm"], left, "docker network rm")?;
    remove(&["volume", "rm"], own_volumes(target, &name, list(&["volume", "ls", "-q"])?), "docker volume rm")?;
    let summary = serde_json::json!({"target": target, "down": name, "services": services.len(), "containers": containers.len(), "networks": networks.len(), "volumes": volumes.len()});
    if o.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("summary serializes"));
    } else {
        let services = if target == Target::Swarm { format!("{} service(s), ", services.len()) } else { String::new() };
        println!("took down the {kind} {name}: {services}{} container(s), {} network(s), {} volume(s) removed", containers.len(), networks.len(), volumes.len());
    }
    Ok(())
}

/// The labelled volumes plus, for a stack, its replica slots' state volumes by the names the
/// stack file gives them (`NAME-3-state`), which the engine creates on each node.
fn own_volumes(target: Target, name: &str, mut labelled: Vec<String>) -> Vec<String> {
    if target == Target::Swarm {
        for volume in docker_lines(&["volume", "ls", "-q", "--filter", &format!("name={name}-")]) {
            if is_slot_volume(name, &volume) && !labelled.contains(&volume) {
                labelled.push(volume);
            }
        }
    }
    labelled
}

fn is_slot_volume(name: &str, volume: &str) -> bool {
    volume.strip_prefix(name).and_then(|r| r.strip_prefix('-')).and_then(|r| r.strip_suffix("-state")).is_some_and(|slot| !slot.is_empty() && slot.chars().all(|c| c.is_ascii_digit()))
}

/// The deployment's name for `--down`: `--name`, else the description's `name:`.
fn down_name(o: &DeployOptions) -> anyhow::Result<String> {
    if let Some(name) = &o.name {
        return Ok(name.clone());
    }
    let file = o.file.clone().or_else(|| Some(PathBuf::from("deploy.yaml")).filter(|p| p.is_file()));
    let Some(file) = file else { bail!("--down needs the deployment's name: --name NAME, or --file DESCRIPTION with `name:` in it") };
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read the deployment description {}", file.display()))?;
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
    match value.get("name").and_then(|n| n.as_str()) {
        Some(name) => Ok(name.to_owned()),
        None => bail!("{} has no `name:`; --down needs the deployment's name (--name NAME)", file.display()),
    }
}

/// One row of zeros as wide as the model's `[N, F]` input: the traffic hooks' default request.
fn zero_row(model: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(model).ok()?;
    let meta = modelship_registry::onnx_meta::read(&bytes).ok()?;
    let [input] = meta.inputs.as_slice() else { return None };
    let width = usize::try_from(*input.shape.get(1)?).ok().filter(|w| *w > 0)?;
    Some(serde_json::json!([vec![0; width]]))
}

/// The description: the file (`--file`, else `./deploy.yaml` when present), then the flags.
/// Returns it with the directory its host paths are relative to.
fn load(target: Target, o: &DeployOptions, flags: Flags<'_>, cwd: &Path) -> anyhow::Result<(Deployment, PathBuf)> {
    let file = o.file.clone().or_else(|| Some(PathBuf::from("deploy.yaml")).filter(|p| p.is_file()));
    let (mut value, base) = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the deployment description {}", path.display()))?;
            let value: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
            let dir = normalize(&cwd.join(path)).parent().map(Path::to_path_buf).unwrap_or_else(|| cwd.to_path_buf());
            (value, dir)
        }
        None => (serde_yaml_ng::Value::Mapping(Default::default()), cwd.to_path_buf()),
    };
    if value.is_null() {
        value = serde_yaml_ng::Value::Mapping(Default::default());
    }
    // --model replaces the description's model source: a registry reference drops its file (and
    // a bake, which needs one), a file drops its registry.
    if let Some(model) = &o.model
        && let Some(section) = value.get_mut("model").and_then(serde_yaml_ng::Value::as_mapping_mut)
    {
        let reference = modelship_registry::ModelRef::looks_like_reference(model) && !Path::new(model).exists();
        let drop: &[&str] = if reference { &["file", "delivery"] } else { &["registry", "registry_dir"] };
        for key in drop {
            section.remove(*key);
        }
    }
    let mut set = |path: &[&str], v: serde_yaml_ng::Value| -> anyhow::Result<()> {
        let mut node = &mut value;
        for key in &path[..path.len() - 1] {
            let map = node.as_mapping_mut().with_context(|| format!("{} in the description must be a mapping", path[..path.len() - 1].join(".")))?;
            node = map.entry((*key).into()).or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
        }
        let map = node.as_mapping_mut().with_context(|| format!("{} in the description must be a mapping", path[..path.len() - 1].join(".")))?;
        map.insert(path[path.len() - 1].into(), v);
        Ok(())
    };
    let text = |s: &str| serde_yaml_ng::Value::String(s.to_owned());
    let path_text = |p: &Path| serde_yaml_ng::Value::String(cwd.join(p).to_string_lossy().into_owned());
    if let Some(name) = &o.name {
        set(&["name"], text(name))?;
    }
    if let Some(model) = &o.model {
        if modelship_registry::ModelRef::looks_like_reference(model) && !Path::new(model).exists() {
            set(&["model", "registry"], text(model))?;
        } else {
            set(&["model", "file"], path_text(Path::new(model)))?;
        }
    }
    if let Some(delivery) = o.delivery {
        set(&["model", "delivery"], text(match delivery { DeliveryArg::Mount => "mount", DeliveryArg::Bake => "bake" }))?;
    }
    if let Some(dir) = &o.registry_dir {
        set(&["model", "registry_dir"], path_text(dir))?;
    }
    if let Some(config) = &o.config {
        set(&["config"], path_text(config))?;
    }
    if let Some(image) = &o.image {
        let (name, tag) = match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (image.as_str(), None),
        };
        set(&["image", "name"], text(name))?;
        if let Some(tag) = tag {
            set(&["image", "tag"], text(tag))?;
        }
    }
    if let Some(replicas) = o.replicas {
        set(&["replicas"], serde_yaml_ng::Value::Number(replicas.into()))?;
    }
    if o.gpu {
        set(&["image", "gpu"], serde_yaml_ng::Value::Bool(true))?;
    }
    if let Some(tools) = &o.tools_image {
        set(&["image", "bases", "tools"], text(tools))?;
    }
    if let Some(url) = &o.control_store {
        set(&["control_store"], text(url))?;
    }
    if let Some(k) = flags.k8s {
        if let Some(strategy) = k.strategy {
            let name = match strategy {
                K8sStrategyArg::Rolling => "rolling",
                K8sStrategyArg::BlueGreen => "blue-green",
                K8sStrategyArg::Canary => "canary",
                K8sStrategyArg::Shadow => "shadow",
            };
            set(&["kubernetes", "strategy"], text(name))?;
        }
        if let Some(mesh) = k.mesh {
            set(&["kubernetes", "mesh"], text(match mesh { MeshArg::Istio => "istio", MeshArg::GatewayApi => "gateway-api", MeshArg::None => "none" }))?;
        }
        if let Some(ns) = &k.namespace {
            set(&["kubernetes", "namespace"], text(ns))?;
        }
        if let Some(weight) = &k.weight {
            set(&["kubernetes", "traffic", "weight"], text(weight))?;
        }
        if let Some(mirror) = &k.mirror {
            set(&["kubernetes", "traffic", "mirror"], text(mirror))?;
        }
        if let Some(digest) = &k.image_digest {
            set(&["kubernetes", "image_digest"], text(digest))?;
        }
    }
    if let Some(l) = flags.lambda {
        if let Some(arch) = l.architecture {
            set(&["lambda", "architecture"], text(match arch { ArchitectureArg::X86_64 => "x86_64", ArchitectureArg::Arm64 => "arm64" }))?;
        }
        if let Some(memory) = l.memory {
            set(&["lambda", "memory"], serde_yaml_ng::Value::Number(memory.into()))?;
        }
        if let Some(timeout) = &l.timeout {
            set(&["lambda", "timeout"], text(timeout))?;
        }
        if let Some(package) = l.package {
            set(&["lambda", "package"], text(match package { PackageArg::Zip => "zip", PackageArg::Image => "image" }))?;
        }
        if let Some(api) = l.api {
            set(&["lambda", "api"], text(match api { ApiArg::Rest => "rest", ApiArg::Http => "http", ApiArg::Url => "url" }))?;
        }
        if let Some(n) = l.provisioned_concurrency {
            set(&["lambda", "provisioned_concurrency"], serde_yaml_ng::Value::Number(n.into()))?;
        }
        if let Some(preset) = &l.deployment {
            set(&["lambda", "deployment"], text(preset))?;
        }
    }
    let mut deployment: Deployment = match serde_yaml_ng::from_value(value) {
        Ok(d) => d,
        Err(e) if e.to_string().contains("missing field `name`") => {
            bail!("the deployment needs a name: pass --name NAME or set `name:` in the description ({e})")
        }
        Err(e) if e.to_string().contains("missing field `model`") => {
            bail!("the deployment needs a model: pass --model FILE.onnx (or NAME@ALIAS) or set `model:` in the description ({e})")
        }
        Err(e) => bail!("invalid deployment description{}: {e}", file.map(|f| format!(" {}", f.display())).unwrap_or_default()),
    };
    deployment.settle(target);
    if o.redis && deployment.feature_store.is_none() {
        deployment.feature_store = Some(FeatureStore::default());
    }
    if o.prometheus && deployment.prometheus.is_none() {
        deployment.prometheus = Some(Prometheus::default());
    }
    if let Some(l) = flags.lambda {
        if let (Some(store), Some(digest)) = (&l.artifacts, &l.digest) {
            deployment.lambda.artifact = Some(Artifact { store: store.clone(), digest: digest.clone() });
        }
        if let Some(rows) = &l.check {
            let features = serde_json::from_str(rows).with_context(|| format!("--check '{rows}' is not JSON rows, e.g. '[[0.1, 0.2, 1.1, 0.02]]'"))?;
            deployment.lambda.check = Some(Check { features });
        }
    }
    Ok((deployment, base))
}

/// Writes each file (atomically: a temporary file renamed), returning what was written.
fn write(out: &Path, files: &[GeneratedFile]) -> anyhow::Result<Vec<WrittenFile>> {
    let mut written = Vec::new();
    for file in files {
        let path = out.join(file.path);
        let tmp = out.join(format!(".{}.tmp", file.path));
        std::fs::write(&tmp, &file.contents).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(WrittenFile { path, bytes: file.contents.len() });
    }
    Ok(written)
}

/// Builds the image; returns the seconds `docker build` took. With `image.build: binary`, this
/// very binary, the ONNX Runtime library it finds and a baked model are staged in `out` first.
fn build_image(d: &Deployment, out: &Path, base: &Path, model_file: Option<&str>) -> anyhow::Result<f64> {
    let context = match d.image.build {
        Build::Binary => {
            stage(out, d, model_file)?;
            out.to_path_buf()
        }
        Build::Source => base.to_path_buf(),
    };
    let started = Instant::now();
    let mut cmd = Command::new("docker");
    cmd.args(["build", "-t", &d.image.reference(), "-f"]).arg(out.join(docker::DOCKERFILE)).arg(&context);
    run_tool(cmd, "docker build", "is the Docker engine running, and can it reach the base images? (--tools-image names a local one)")?;
    if d.image.gpu {
        // The variant the GPU deployments run: the CUDA base and the onnxruntime-gpu wheel.
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-t", &d.image.gpu_reference(), "-f"]).arg(out.join(docker::GPU_DOCKERFILE)).arg(&context);
        run_tool(cmd, "docker build (the GPU image)", "can the engine reach image.bases.cuda and image.bases.python? (set them to images it has)")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The rollout Job's spec must be one the controller runs: it rolls out the candidate, and every
/// check is a PromQL query with weights the mesh can carry.
fn check_rollout(d: &Deployment, path: &Path) -> anyhow::Result<()> {
    let spec = crate::rollout::read_spec(path, None)?;
    let mut problems = Vec::new();
    if let Some(candidate) = &d.kubernetes.candidate
        && spec.to != candidate.version
    {
        problems.push(format!("it rolls out '{}', but kubernetes.candidate.version is '{}'", spec.to, candidate.version));
    }
    match spec.resolve() {
        Ok(plan) => {
            let mesh = if d.kubernetes.mesh == description::Mesh::Istio { modelship_server::mesh::Mesh::Istio } else { modelship_server::mesh::Mesh::Gateway };
            problems.extend(modelship_server::mesh::unsupported(&plan, mesh));
        }
        Err(resolve) => problems.extend(resolve),
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!("the rollout spec {} cannot run in the rollout Job: {}", path.display(), problems.join("; "))
}

/// The optional cargo features this binary was built with (see `modelship_deploy::description::FEATURES`).
fn compiled_features() -> Vec<&'static str> {
    [("kubernetes", cfg!(feature = "kubernetes")), ("s3", cfg!(feature = "s3"))].into_iter().filter(|(_, on)| *on).map(|(f, _)| f).collect()
}

/// A packaged binary must have what the description needs: an image cannot add a feature later.
fn check_features(needed: &[&str], compiled: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needed.iter().copied().filter(|f| !compiled.contains(f)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the image needs a modelship built with the cargo feature(s) {} (image.features, an S3 artifact, a mesh-free store), and this one has not: \
         build it with `cargo build --release -p modelship --features {}` and run that binary, or set image.build: source",
        missing.join(", "),
        needed.join(",")
    )
}

/// For a model file in a format that is converted: the ONNX model, written to
/// `OUT/converted/STEM.onnx` (proven equal, from the conversion cache when converted before).
fn converted_model(file: &Path, out: &Path, flags: &crate::cli::ConvertFlags) -> anyhow::Result<Option<PathBuf>> {
    use modelship_convert::format::Head;
    match crate::convert::file_head(file)? {
        None | Some((Head::MaybeOnnx, _)) => return Ok(None),
        Some((Head::Refused(e), _)) => bail!("the model {} is {e}", file.display()),
        Some((Head::Convertible(_), _)) => {}
    }
    let bytes = crate::convert::read_model_file(file)?;
    let backend = crate::convert::backend(None)?;
    let options = crate::convert::options(flags, &file.display().to_string())?;
    let prepared = crate::convert::prepare_with(file, bytes, flags, options, backend.as_ref(), &crate::config::ProcessEnv, &crate::convert::say)?;
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_owned());
    // Not the image's staging directory (`model/`): staging copies the model there.
    let dir = out.join("converted");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let onnx = dir.join(format!("{stem}.onnx"));
    std::fs::write(&onnx, prepared.onnx()).with_context(|| format!("cannot write {}", onnx.display()))?;
    eprintln!("{} is served as {} (converted to ONNX, proven equal)", file.display(), onnx.display());
    Ok(Some(onnx))
}

fn stage(out: &Path, d: &Deployment, model_file: Option<&str>) -> anyhow::Result<()> {
    check_features(&d.features(), &compiled_features())?;
    let exe = std::env::current_exe().context("cannot find this binary to package it")?;
    let staged = out.join(docker::STAGED_BINARY);
    copy(&exe, &staged)?;
    strip_binary(&staged);
    let library = modelship_onnx::library::locate(std::env::var_os("ORT_DYLIB_PATH").as_deref().map(Path::new))
        .map_err(|e| anyhow::anyhow!("the image needs ONNX Runtime's library: {e}"))?;
    std::fs::create_dir_all(out.join("lib"))?;
    copy(&library, &out.join(docker::STAGED_LIBRARY))?;
    if d.model.delivery() == Delivery::Bake
        && let (Some(file), Some(name)) = (model_file, d.model_file_name())
    {
        std::fs::create_dir_all(out.join(docker::STAGED_MODEL_DIR))?;
        let staged = out.join(docker::STAGED_MODEL_DIR).join(name);
        // A model already where it is staged is not copied onto itself (which would empty it).
        if std::fs::canonicalize(file).ok() != std::fs::canonicalize(&staged).ok() {
            copy(Path::new(file), &staged)?;
        }
    }
    Ok(())
}

/// Drops the staged binary's debug information (line tables: 115 MB of a 149 MB release build)
/// and its symbol table (5.6 MB more): the image carries code, not what describes it. A panic
/// still logs its message and `file:line` (they are data, not symbols); a backtrace shows
/// addresses, which the release binary the image came from names (`addr2line -e`). Needs binutils'
/// `strip`; without it the binary is packaged whole, which only makes the image larger.
fn strip_binary(binary: &Path) {
    match Command::new("strip").arg("--strip-all").arg(binary).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("note: strip --strip-all failed ({}); the image keeps the debug information", String::from_utf8_lossy(&out.stderr).trim()),
        Err(_) => eprintln!("note: no `strip` here (apt-get install binutils); the image keeps the binary's debug information"),
    }
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn image_size(reference: &str) -> Option<u64> {
    let out = Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", reference]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// `docker-compose` (1.x), else the `docker compose` plugin.
fn compose_command() -> anyhow::Result<Command> {
    if Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success()) {
        return Ok(Command::new("docker-compose"));
    }
    if Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success()) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return Ok(cmd);
    }
    bail!("neither docker-compose nor `docker compose` is installed (apt-get install docker-compose)")
}

/// Runs a tool with its output shown (build logs go to standard error), failing with what to do.
fn run_tool(mut cmd: Command, what: &str, hint: &str) -> anyhow::Result<()> {
    let output = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("cannot run {what} (is docker installed?)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
        let tail = tail[tail.len().saturating_sub(25)..].join("\n");
        bail!("{what} failed ({}): {hint}\n{tail}", output.status);
    }
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// The command line as typed, quoted where a shell would need it, for the files' header.
pub(crate) fn command_line() -> String {
    let mut args = std::env::args();
    let _ = args.next();
    std::iter::once("modelship".to_owned())
        .chain(args.map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c)) { a } else { format!("'{}'", a.replace('\'', "'\\''")) }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn print(summary: &Summary, format: OutputFormat) {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(summary).expect("summary serializes"));
        return;
    }
    for file in &summary.files {
        println!("wrote {} ({} bytes)", file.path.display(), file.bytes);
    }
    if let Some(applied) = &summary.applied {
        if let Some(seconds) = applied.build_seconds {
            let size = applied.image_bytes.map(|b| format!(", {:.1} MB", b as f64 / 1e6)).unwrap_or_default();
            println!("built {} in {seconds:.1} s{size}", summary.image);
        }
        if applied.build_seconds.is_none() {
            println!("image {} (--no-build: used as it is)", summary.image);
        }
        if let Some(started) = &applied.started {
            println!("started: {started}");
        }
    } else {
        if matches!(summary.target, Target::Docker | Target::Compose | Target::Swarm) {
            println!("image {}", summary.image);
        }
        let next = match summary.target {
            Target::Docker => "add --apply to build the image",
            Target::Compose => "add --apply to build the image and start it (docker-compose up -d)",
            Target::Swarm => "add --apply to build the image and deploy the stack (docker stack deploy)",
            Target::Kubernetes => "review the files, create the Secrets they name (AWS keys, TLS), then kubectl apply -k DIR",
            Target::Lambda if summary.files.iter().any(|f| f.path.ends_with(modelship_deploy::lambda::DOCKERFILE)) => {
                "make -f DIR/Makefile package (builds the bootstrap with --features lambda), then sam build --template-file DIR/template.yaml and sam deploy --guided --resolve-image-repos (the container image)"
            }
            Target::Lambda => "make -f DIR/Makefile package (builds the bootstrap with --features lambda), then sam deploy --template-file DIR/template.yaml --guided",
            Target::AzureFunctions => "make -f DIR/Makefile package, then az functionapp deployment source config-zip -g GROUP -n APP --src DIR/app.zip",
            Target::CloudRun => "push the image to Artifact Registry, then bash DIR/cloudrun.sh (gcloud run services replace DIR/service.yaml)",
            Target::Alerts => "promtool check rules DIR/modelship-alerts.yml, add it to rule_files in prometheus.yml, and import DIR/grafana-dashboard.json in Grafana",
        };
        println!("next: {next}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_slot_volumes_are_its_own_and_nothing_else() {
        for (volume, own) in [("fraud-1-state", true), ("fraud-12-state", true), ("fraud-state", false), ("fraud-x-state", false), ("fraud-1-state2", false), ("fraudx-1-state", false)] {
            assert_eq!(is_slot_volume("fraud", volume), own, "{volume}");
        }
    }

    #[test]
    fn a_packaged_binary_must_have_the_features_the_description_needs() {
        assert!(check_features(&[], &[]).is_ok());
        assert!(check_features(&["s3"], &["kubernetes", "s3"]).is_ok());
        let err = check_features(&["kubernetes", "s3"], &["s3"]).unwrap_err().to_string();
        assert!(err.contains("feature(s) kubernetes") && err.contains("--features kubernetes,s3") && err.contains("image.build: source"), "{err}");
    }
}
