//! `modelship deploy ci`: the GitHub Actions workflow of the pipeline, from flags (and the
//! deployment description's name and model). The thresholds are read by `modelship validate`'s
//! own parsers, so a threshold the workflow would fail on is refused here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use modelship_deploy::Provenance;
use modelship_deploy::ci::{self, CiTarget, Install, Pipeline};
use modelship_validate::limit::{Bound, Drop, LatencyBudget, parse_bytes};
use serde_json::json;

use crate::cli::OutputFormat;

pub const HELP: &str = "\
Writes .github/workflows/deploy.yml (under --out, default the current directory: run it at the \
repository's root): the seed's pipeline with each step a modelship command and an exit code.
  test        --test-command (default: make test)
  validate    modelship validate MODEL with the thresholds given (--min, --max,
              --max-p99, --max-memory), then against production (--against,
              default NAME@production): the contract, --max-drop and --max-psi
              on the same rows; reports in the job summary and, on a pull
              request, a comment
  build       the image of `modelship deploy docker --apply`, pushed
              (ghcr.io/OWNER/REPO/NAME by default, --image); pushes to --branch
              only, never pull requests
  staging     the target's files applied with the new image, the version pushed
              to the registry under the alias staging, a smoke test (readiness,
              metadata, and with --smoke-request, that the new version answers
              /v1/predict)
  production  behind the environment `production` (give it required reviewers:
              the approval), the image rolled out, the canary as `modelship
              rollout start --wait`, run inside a server's container (exit 0
              promoted, 3 rolled back, 4 timed out), then the alias production
              moves
Targets: kubernetes (kubectl with the environment's KUBECONFIG secret), compose and swarm (a Docker \
host over SSH: DOCKER_HOST variable, SSH_PRIVATE_KEY and SSH_KNOWN_HOSTS secrets), lambda (sam \
build and sam deploy of --sam-template, the canary being its DeploymentPreference; AWS through \
OpenID Connect: AWS_ROLE_ARN and AWS_REGION variables). The servers load versions from the \
registry the workflow pushes to (MODELSHIP_REGISTRY, MODELSHIP_ARTIFACTS repository variables).

Actions are pinned to their current major versions, every job asks only for the permissions it \
uses, secrets reach only the step that needs them and are never printed, and no value is pasted \
into a script: scripts read it from env. The test suite checks every target's workflow with \
actionlint and shellcheck.

Examples:
  modelship deploy ci --model models/fraud.onnx --data data/holdout.csv \\
      --label is_fraud --min auc=0.92 --min accuracy=0.9 --max log_loss=0.3 \\
      --max-drop auc=0.005 --max-p99 20ms
  modelship deploy ci --target compose --file deploy.yaml --spec canary.yaml \\
      --max-p99 5ms
  modelship deploy ci --target lambda --model models/fraud.onnx \\
      --sam-template deploy/template.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CiTargetArg {
    Kubernetes,
    Compose,
    Swarm,
    Lambda,
}

#[derive(Debug, Clone, Args)]
pub struct CiOptions {
    /// Where the pipeline deploys
    #[arg(long, value_enum, default_value_t = CiTargetArg::Kubernetes)]
    pub target: CiTargetArg,
    /// The deployment description the deploy steps use (its name and model are defaults here)
    #[arg(long, short = 'f', value_name = "FILE", default_value = "deploy.yaml")]
    pub file: PathBuf,
    /// The model's name in the registry and on the server [default: the description's name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The ONNX file in the repository the pipeline ships [default: the description's model.file]
    #[arg(long, value_name = "FILE")]
    pub model: Option<String>,
    /// Held-out rows in the repository (.csv or .parquet) for the quality gates
    #[arg(long, value_name = "FILE", requires = "label")]
    pub data: Option<String>,
    /// The data's label column
    #[arg(long, value_name = "COLUMN", requires = "data")]
    pub label: Option<String>,
    /// validate's floors, METRIC=VALUE (repeatable)
    #[arg(long, value_name = "METRIC=VALUE")]
    pub min: Vec<String>,
    /// validate's ceilings, METRIC=VALUE (repeatable)
    #[arg(long, value_name = "METRIC=VALUE")]
    pub max: Vec<String>,
    /// validate's latency budgets, [BATCH=]DURATION (repeatable)
    #[arg(long, value_name = "[BATCH=]DURATION")]
    pub max_p99: Vec<String>,
    /// validate's memory budget for the Deployment's request
    #[arg(long, value_name = "QUANTITY")]
    pub max_memory: Option<String>,
    /// The most a metric may fall against production on the same rows, METRIC=AMOUNT (repeatable)
    #[arg(long, value_name = "METRIC=AMOUNT")]
    pub max_drop: Vec<String>,
    /// The largest PSI of the predictions against production's
    #[arg(long, value_name = "PSI")]
    pub max_psi: Option<f64>,
    /// The version production serves, for the contract [default: NAME@production]
    #[arg(long, value_name = "REF")]
    pub against: Option<String>,
    /// The rollout spec of the canary
    #[arg(long, value_name = "FILE", default_value = "rollout.yaml")]
    pub spec: String,
    /// How long the canary may take before the job gives up (rollout --wait --timeout)
    #[arg(long, value_name = "DURATION", default_value = "2h")]
    pub rollout_timeout: String,
    /// The image repository, without a tag [default: ghcr.io/OWNER/REPO/NAME]
    #[arg(long, value_name = "REPOSITORY")]
    pub image: Option<String>,
    /// The branch whose pushes deploy
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    pub branch: String,
    /// The repository's tests, one line of shell
    #[arg(long, value_name = "COMMAND", default_value = "make test")]
    pub test_command: String,
    /// The runner
    #[arg(long, value_name = "LABEL", default_value = "ubuntu-24.04")]
    pub runner: String,
    /// The major version of the versions the pipeline registers (MAJOR.RUN.0); raise it for a
    /// deliberate contract break
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub major: u32,
    /// A /v1/predict body in the repository for the staging smoke test
    #[arg(long, value_name = "FILE")]
    pub smoke_request: Option<String>,
    /// Kubernetes: staging's namespace [default: NAME-staging]
    #[arg(long, value_name = "NAMESPACE")]
    pub staging_namespace: Option<String>,
    /// Kubernetes: production's namespace [default: NAME]
    #[arg(long, value_name = "NAMESPACE")]
    pub production_namespace: Option<String>,
    /// Lambda: the SAM template in the repository (`modelship deploy lambda` writes one)
    #[arg(long, value_name = "FILE", default_value = "deploy/template.yaml")]
    pub sam_template: String,
    /// Lambda: staging's stack [default: NAME-staging]
    #[arg(long, value_name = "STACK")]
    pub staging_stack: Option<String>,
    /// Lambda: production's stack [default: NAME]
    #[arg(long, value_name = "STACK")]
    pub production_stack: Option<String>,
    /// Lambda: an event in the repository for the smoke test (sam remote invoke)
    #[arg(long, value_name = "FILE")]
    pub smoke_event: Option<String>,
    /// Where the workflow installs modelship from (cargo install --git)
    #[arg(long, value_name = "URL", default_value = "https://github.com/modelship/modelship")]
    pub modelship_git: String,
    /// The tag it installs [default: this binary's version, v0.1.0]
    #[arg(long, value_name = "TAG")]
    pub modelship_tag: Option<String>,
    /// The repository's root, under which .github/workflows/deploy.yml is written
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Output format for the summary
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

pub fn main(o: &CiOptions) -> ExitCode {
    match run(o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The description's name and model file, when it exists (the flags win).
fn from_description(file: &Path) -> anyhow::Result<(Option<String>, Option<String>)> {
    if !file.is_file() {
        return Ok((None, None));
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML", file.display()))?;
    let name = value.get("name").and_then(|n| n.as_str()).map(str::to_owned);
    let model = value.get("model").and_then(|m| m.get("file")).and_then(|f| f.as_str()).map(str::to_owned);
    Ok((name, model))
}

fn run(o: &CiOptions) -> anyhow::Result<()> {
    let (described_name, described_model) = from_description(&o.file)?;
    let Some(name) = o.name.clone().or(described_name) else {
        bail!("the pipeline needs the model's name: pass --name NAME, or --file with a description that has `name:`");
    };
    let Some(model) = o.model.clone().or(described_model) else {
        bail!("the pipeline needs the ONNX file it ships: pass --model PATH (relative to the repository's root)");
    };
    // validate's own parsers: what the workflow would refuse is refused now.
    let mut problems = Vec::new();
    let mut check = |r: Result<(), modelship_validate::limit::LimitError>| {
        if let Err(e) = r {
            problems.push(e.to_string());
        }
    };
    let mut gates = Vec::new();
    for m in &o.min {
        check(Bound::min(m).map(|_| ()));
        gates.push(("--min".to_owned(), m.clone()));
    }
    for m in &o.max {
        check(Bound::max(m).map(|_| ()));
        gates.push(("--max".to_owned(), m.clone()));
    }
    for b in &o.max_p99 {
        check(LatencyBudget::parse(b).map(|_| ()));
        gates.push(("--max-p99".to_owned(), b.clone()));
    }
    if let Some(m) = &o.max_memory {
        check(parse_bytes("--max-memory", m).map(|_| ()));
        gates.push(("--max-memory".to_owned(), m.clone()));
    }
    let mut reference_gates = Vec::new();
    for d in &o.max_drop {
        check(Drop::parse(d).map(|_| ()));
        reference_gates.push(("--max-drop".to_owned(), d.clone()));
    }
    if let Some(psi) = o.max_psi {
        if !(psi.is_finite() && psi >= 0.0) {
            problems.push(format!("--max-psi {psi}: give a PSI of 0 or more, e.g. 0.1"));
        }
        reference_gates.push(("--max-psi".to_owned(), psi.to_string()));
    }
    if humantime::parse_duration(&o.rollout_timeout).is_err() {
        problems.push(format!("--rollout-timeout {}: give a duration like 2h or 45m", o.rollout_timeout));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n  "));
    }
    let target = match o.target {
        CiTargetArg::Kubernetes => CiTarget::Kubernetes,
        CiTargetArg::Compose => CiTarget::Compose,
        CiTargetArg::Swarm => CiTarget::Swarm,
        CiTargetArg::Lambda => CiTarget::Lambda,
    };
    let pipeline = Pipeline {
        target,
        description: o.file.to_string_lossy().into_owned(),
        model,
        data: o.data.clone(),
        label: o.label.clone(),
        gates,
        reference_gates,
        against: o.against.clone().unwrap_or_else(|| format!("{name}@production")),
        rollout_spec: o.spec.clone(),
        rollout_timeout: o.rollout_timeout.clone(),
        image: o.image.clone(),
        branch: o.branch.clone(),
        test_command: o.test_command.clone(),
        runner: o.runner.clone(),
        install: Install {
            git: o.modelship_git.clone(),
            tag: o.modelship_tag.clone().unwrap_or_else(|| format!("v{}", env!("CARGO_PKG_VERSION"))),
            ort_version: modelship_onnx::TESTED_ORT_VERSION.to_owned(),
        },
        major: o.major,
        smoke_request: o.smoke_request.clone(),
        namespaces: (o.staging_namespace.clone().unwrap_or_else(|| format!("{name}-staging")), o.production_namespace.clone().unwrap_or_else(|| name.clone())),
        sam_template: o.sam_template.clone(),
        stacks: (o.staging_stack.clone().unwrap_or_else(|| format!("{name}-staging")), o.production_stack.clone().unwrap_or_else(|| name.clone())),
        smoke_event: o.smoke_event.clone(),
        name,
    };
    pipeline.validate().map_err(|e| anyhow::anyhow!("the pipeline cannot be generated:\n  {}", e.0.join("\n  ")))?;
    // The workflow runs at the repository's root: say so when what it names is not there.
    let mut named: Vec<&str> = vec![&pipeline.model];
    named.extend(pipeline.data.as_deref());
    named.extend(pipeline.smoke_request.as_deref().into_iter().chain(pipeline.smoke_event.as_deref()));
    if target == CiTarget::Lambda {
        named.push(&pipeline.sam_template);
    } else {
        named.extend([pipeline.description.as_str(), pipeline.rollout_spec.as_str()]);
    }
    for path in named {
        if !o.out.join(path).exists() {
            eprintln!("note: {path} is not in {}; the workflow expects it in the repository", o.out.display());
        }
    }
    let files = ci::render(&pipeline, &Provenance::new(crate::deploy::command_line()));
    let mut written = Vec::new();
    for file in &files {
        let path = o.out.join(file.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("yml.tmp");
        std::fs::write(&tmp, &file.contents).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        written.push((path, file.contents.len()));
    }
    if o.output == OutputFormat::Json {
        let files: Vec<_> = written.iter().map(|(p, b)| json!({"path": p, "bytes": b})).collect();
        println!("{}", serde_json::to_string_pretty(&json!({"target": "ci", "deploys_to": target, "files": files}))?);
    } else {
        for (path, bytes) in &written {
            println!("wrote {} ({bytes} bytes)", path.display());
        }
        println!("next: commit it; in the repository's settings create the environments staging and production (required reviewers on production) with the secrets and variables its header lists");
    }
    Ok(())
}
