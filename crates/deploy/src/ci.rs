//! The CI/CD pipeline as a GitHub Actions workflow (`.github/workflows/deploy.yml`), from a
//! [`Pipeline`] description. The seed's pipeline was tests, `validate_model.py`, build and push,
//! staging, integration tests, a 5 % canary, `sleep 300` and `validate_canary.py`, then 100 %;
//! here each of those lines is a modelship command with an exit code:
//!
//! - `test`: the repository's own tests;
//! - `validate`: `modelship validate` with the thresholds given (quality, latency, resources),
//!   then against production (contract, regression, distribution); the reports go to the job
//!   summary and, on a pull request, a comment;
//! - `build` (pushes to the branch only): the image from `modelship deploy docker --apply` (the
//!   Dockerfile of the container target), pushed;
//! - `staging`: the target's files applied with the new image, the version registered under the
//!   `staging` alias, a smoke test that the new version answers;
//! - `production`, behind the `production` environment (give it required reviewers: the manual
//!   approval): the image rolled out, then the canary as `modelship rollout start ... --wait`,
//!   which exits 0 only when the rollout promoted on its evidence, then the `production` alias.
//!
//! Lambda differs: `sam build` / `sam deploy` of a template at a given path, the canary being the
//! template's own `DeploymentPreference` (CodeDeploy, alarms), which `sam deploy` waits on.
//!
//! Every value a user gives is checked before it reaches the file: names and paths are plain
//! (no quote, `$`, space, newline or `${{`), thresholds are `METRIC=NUMBER` shapes. Scripts read
//! values from `env:` and quote every expansion, and no `${{ }}` expression is pasted into a
//! script, so nothing reaches a shell unquoted. Actions are pinned to their current major
//! versions; each job asks only for the permissions it uses; secrets go to the one step that
//! needs them, through `env:`, and are never printed.

use serde::{Deserialize, Serialize};

use crate::github::{Branches, Concurrency, Empty, Environment, Job, Jobs, Map, Step, Triggers, Workflow};
use crate::{GeneratedFile, Provenance};

/// Where the workflow writes the file, relative to the repository root.
pub const FILE: &str = ".github/workflows/deploy.yml";

const CHECKOUT: &str = "actions/checkout@v6";
const CACHE: &str = "actions/cache@v5";
const DOCKER_LOGIN: &str = "docker/login-action@v4";
const AWS_CREDENTIALS: &str = "aws-actions/configure-aws-credentials@v6";

/// The deployment target the pipeline deploys to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CiTarget {
    Kubernetes,
    Compose,
    Swarm,
    Lambda,
}

/// How the runner gets modelship: `cargo install` from a Git tag (cached between runs), and ONNX
/// Runtime's library from the `onnxruntime` wheel into `./.venv`, where modelship finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub git: String,
    pub tag: String,
    pub ort_version: String,
}

/// What the pipeline runs. Paths are relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The model's name in the registry and on the server (and the deployment's).
    pub name: String,
    pub target: CiTarget,
    /// The deployment description (`deploy.yaml`) the target's files are generated from.
    pub description: String,
    /// The ONNX file the pipeline ships.
    pub model: String,
    /// Held-out rows and their label column, for the quality gates.
    pub data: Option<String>,
    pub label: Option<String>,
    /// `modelship validate` threshold flags without a reference: (`--min`, `auc=0.92`)...
    pub gates: Vec<(String, String)>,
    /// Threshold flags judged against the reference: (`--max-drop`, `auc=0.005`), (`--max-psi`, `0.1`).
    pub reference_gates: Vec<(String, String)>,
    /// The version production serves, for the contract (default `NAME@production`).
    pub against: String,
    /// The rollout spec for the canary.
    pub rollout_spec: String,
    /// How long `rollout --wait` may wait (`2h`).
    pub rollout_timeout: String,
    /// The image repository (no tag); `None`: `ghcr.io/OWNER/REPO/NAME`.
    pub image: Option<String>,
    /// The branch whose pushes deploy.
    pub branch: String,
    /// The repository's own tests.
    pub test_command: String,
    /// The runner label.
    pub runner: String,
    pub install: Install,
    /// The major version of the versions this pipeline registers (`MAJOR.RUN.0`); raise it for a
    /// deliberate contract break.
    pub major: u32,
    /// A request body for `/v1/predict` in the smoke test.
    pub smoke_request: Option<String>,
    /// Kubernetes namespaces of staging and production.
    pub namespaces: (String, String),
    /// Lambda: the SAM template, the stacks of staging and production, an event for the smoke test.
    pub sam_template: String,
    pub stacks: (String, String),
    pub smoke_event: Option<String>,
}

/// Every problem with a pipeline description, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct PipelineError(pub Vec<String>);

/// A name or path that a YAML string and a quoted shell word both keep as it is, and that GitHub
/// does not evaluate.
fn plain(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('-')
        && !value.contains("${{")
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "._/@:+-".contains(c))
}

const GATE_FLAGS: [&str; 4] = ["--min", "--max", "--max-p99", "--max-memory"];
const REFERENCE_FLAGS: [&str; 2] = ["--max-drop", "--max-psi"];

impl Pipeline {
    pub fn validate(&self) -> Result<(), PipelineError> {
        let mut problems = Vec::new();
        let mut fields: Vec<(&str, &str)> = vec![
            ("name", &self.name),
            ("model", &self.model),
            ("against", &self.against),
            ("branch", &self.branch),
            ("runner", &self.runner),
            ("rollout timeout", &self.rollout_timeout),
            ("modelship tag", &self.install.tag),
            ("ONNX Runtime version", &self.install.ort_version),
        ];
        if self.target == CiTarget::Lambda {
            fields.extend([("SAM template", self.sam_template.as_str()), ("staging stack", &self.stacks.0), ("production stack", &self.stacks.1)]);
        } else {
            fields.extend([("description", self.description.as_str()), ("rollout spec", &self.rollout_spec)]);
        }
        if self.target == CiTarget::Kubernetes {
            fields.extend([("staging namespace", self.namespaces.0.as_str()), ("production namespace", &self.namespaces.1)]);
        }
        let optional = [("data", &self.data), ("label", &self.label), ("image", &self.image), ("smoke request", &self.smoke_request), ("smoke event", &self.smoke_event)];
        fields.extend(optional.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))));
        for (what, value) in fields {
            if !plain(value) {
                problems.push(format!("{what} '{value}': use letters, digits and . _ / @ : + - only (it becomes part of the workflow's scripts)"));
            }
        }
        if !self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            problems.push(format!("name '{}': lowercase letters, digits and '-' (it names images, stacks and Kubernetes objects)", self.name));
        }
        if !(self.install.git.starts_with("https://") && plain(&self.install.git)) {
            problems.push(format!("modelship's git repository '{}': an https:// URL", self.install.git));
        }
        if self.data.is_some() != self.label.is_some() {
            problems.push("data and label go together: the quality gates need both".to_owned());
        }
        for (flags, list) in [(&GATE_FLAGS[..], &self.gates), (&REFERENCE_FLAGS[..], &self.reference_gates)] {
            for (flag, value) in list {
                if !flags.contains(&flag.as_str()) {
                    problems.push(format!("{flag}: not a threshold of this pipeline's validate steps ({})", flags.join(", ")));
                }
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "._=%-".contains(c)) || value.starts_with('-') {
                    problems.push(format!("{flag} '{value}': a threshold is METRIC=NUMBER, [BATCH=]DURATION or a quantity"));
                }
            }
        }
        if self.gates.iter().chain(&self.reference_gates).any(|(f, _)| f == "--min" || f == "--max" || f == "--max-drop") && self.data.is_none() {
            problems.push("--min, --max and --max-drop need the held-out data and its label (--data, --label)".to_owned());
        }
        if self.test_command.trim().is_empty() || self.test_command.contains(['\n', '\r']) || self.test_command.contains("${{") {
            problems.push("the test command is one line of shell, with no ${{ }} expression".to_owned());
        }
        if self.major == 0 {
            problems.push("the major version is 1 or more".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(PipelineError(problems)) }
    }
}

fn checkout() -> Step {
    Step::uses("check out", CHECKOUT, Map::of([("persist-credentials", "false")]))
}

/// ONNX Runtime's library and modelship itself (from the cache when this tag was built before).
fn install(p: &Pipeline) -> Vec<Step> {
    let features = if p.target == CiTarget::Kubernetes { " --features s3" } else { "" };
    let cargo = format!("command -v modelship || cargo install --locked --git \"$MODELSHIP_GIT\" --tag \"$MODELSHIP_TAG\"{features} modelship");
    vec![
        Step::run("ONNX Runtime (its library, into ./.venv where modelship finds it)", &["python3 -m venv .venv", ".venv/bin/pip install --quiet --no-deps \"onnxruntime==$ORT_VERSION\""]),
        Step::uses(
            "modelship from the cache",
            CACHE,
            Map::of([("path", "~/.cargo/bin/modelship"), ("key", "modelship-${{ runner.os }}-${{ env.MODELSHIP_TAG }}")]),
        ),
        Step::run("modelship", &[cargo.as_str(), "modelship --version"]),
    ]
}

fn image_name() -> Step {
    Step::run("image name", &["echo \"IMAGE=${IMAGE_REPOSITORY,,}:${GITHUB_SHA::12}\" >> \"$GITHUB_ENV\""])
}

/// A `modelship validate` step whose Markdown report goes to the job summary and to `report`,
/// failing the step when a gate failed.
fn validate_step(name: &str, report: &str, args: &str) -> Step {
    let command = format!("modelship validate \"$MODEL_FILE\" --model-version \"$MODEL_VERSION\"{args} --output markdown > {report} || status=$?");
    Step::run(name, &["status=0", command.as_str(), &format!("cat {report} >> \"$GITHUB_STEP_SUMMARY\""), "exit \"$status\""])
}

fn flags(list: &[(String, String)]) -> String {
    list.iter().map(|(f, v)| format!(" {f} {v}")).collect()
}

fn job(name: &str, runner: &str, needs: Vec<&'static str>, permissions: &[(&str, &str)], timeout: u32, steps: Vec<Step>) -> Job {
    Job {
        name: name.to_owned(),
        runs_on: runner.to_owned(),
        needs,
        condition: None,
        environment: None,
        permissions: Map::of(permissions.iter().copied()),
        timeout_minutes: timeout,
        env: Map::default(),
        steps,
    }
}

fn validate_job(p: &Pipeline) -> Job {
    let mut steps = vec![checkout()];
    steps.extend(install(p));
    let data = if p.data.is_some() { " --data \"$HOLDOUT\" --label \"$LABEL\"" } else { "" };
    let own = format!("{data}{} --gate latency --gate resources{}", flags(&p.gates), if p.data.is_some() { " --gate quality" } else { "" });
    steps.push(validate_step("quality, latency and memory", "validate.md", &own));
    let distribution = if p.data.is_some() { " --gate distribution --gate quality" } else { "" };
    let against = format!(" --against \"$REFERENCE\"{data}{} --gate contract{distribution}", flags(&p.reference_gates));
    // Run even when the first gates failed, so that the report shows every gate.
    steps.push(validate_step("contract and distribution against production", "against.md", &against).when("!cancelled()"));
    steps.push(
        Step::run(
            "comment on the pull request",
            &[
                "cat validate.md against.md > comment.md 2>/dev/null || true",
                "gh pr comment \"$PR\" --body-file comment.md --edit-last 2>/dev/null || gh pr comment \"$PR\" --body-file comment.md \\",
                "  || echo \"::warning::no comment: a pull request from a fork gets a read-only token; the report is in the job summary\"",
            ],
        )
        .when("always() && github.event_name == 'pull_request'")
        .env(Map::of([("GH_TOKEN", "${{ github.token }}"), ("PR", "${{ github.event.pull_request.number }}")])),
    );
    job("validate the model", &p.runner, vec!["test"], &[("contents", "read"), ("pull-requests", "write")], 60, steps)
}

fn build_job(p: &Pipeline) -> Job {
    let mut steps = vec![checkout()];
    steps.extend(install(p));
    steps.push(image_name());
    let host = p.image.as_deref().and_then(|i| i.split_once('/')).map(|(h, _)| h).filter(|h| h.contains('.') || h.contains(':')).unwrap_or("ghcr.io");
    let with = if host == "ghcr.io" {
        Map::of([("registry", "ghcr.io"), ("username", "${{ github.actor }}"), ("password", "${{ secrets.GITHUB_TOKEN }}")])
    } else {
        Map::of([("registry", host), ("username", "${{ vars.REGISTRY_USERNAME }}"), ("password", "${{ secrets.REGISTRY_PASSWORD }}")])
    };
    steps.push(Step::uses("log in to the image registry", DOCKER_LOGIN, with));
    // The runner's binary is what the image packages: the tools stage must have its C library.
    steps.push(Step::run(
        "build the image (the binary, ONNX Runtime and their libraries, FROM scratch)",
        &["modelship deploy docker --file \"$DEPLOY_FILE\" --out build/image --image \"$IMAGE\" --tools-image ubuntu:24.04 --apply"],
    ));
    steps.push(Step::run("push the image", &["docker push \"$IMAGE\""]));
    let mut job = job("build and push the image", &p.runner, vec!["validate"], &[("contents", "read"), ("packages", "write")], 60, steps);
    job.condition = Some(deploys(p));
    job
}

/// Pushes to the deploying branch (and manual runs on it); never pull requests.
fn deploys(p: &Pipeline) -> String {
    format!("github.event_name != 'pull_request' && github.ref == 'refs/heads/{}'", p.branch)
}

fn kubeconfig() -> Step {
    Step::run(
        "cluster credentials (the environment's KUBECONFIG secret, base64)",
        &["umask 077", "printf '%s' \"$KUBECONFIG_DATA\" | base64 --decode > \"$RUNNER_TEMP/kubeconfig\"", "echo \"KUBECONFIG=$RUNNER_TEMP/kubeconfig\" >> \"$GITHUB_ENV\""],
    )
    .env(Map::of([("KUBECONFIG_DATA", "${{ secrets.KUBECONFIG }}")]))
}

fn ssh_credentials() -> Step {
    Step::run(
        "Docker host credentials (the environment's SSH key and known hosts)",
        &[
            "install -m 700 -d ~/.ssh",
            "umask 077",
            "printf '%s\\n' \"$SSH_KEY\" > ~/.ssh/id_ed25519",
            "printf '%s\\n' \"$KNOWN_HOSTS\" > ~/.ssh/known_hosts",
        ],
    )
    .env(Map::of([("SSH_KEY", "${{ secrets.SSH_PRIVATE_KEY }}"), ("KNOWN_HOSTS", "${{ secrets.SSH_KNOWN_HOSTS }}")]))
}

/// Lines that check the server at 127.0.0.1:18000: ready, its metadata, and with a smoke
/// request, that the new version answers it.
fn smoke_lines(p: &Pipeline) -> Vec<String> {
    let mut lines = vec![
        "curl -fsS --retry 30 --retry-connrefused --retry-delay 2 http://127.0.0.1:18000/health/ready".to_owned(),
        "curl -fsS \"http://127.0.0.1:18000/v2/models/$MODEL_NAME\"".to_owned(),
    ];
    if p.smoke_request.is_some() {
        lines.extend([
            "for _ in $(seq 60); do".to_owned(),
            "  version=$(curl -fsS -o /dev/null -w '%header{x-model-version}' -H 'content-type: application/json' --data-binary @\"$SMOKE_REQUEST\" http://127.0.0.1:18000/v1/predict)".to_owned(),
            "  [ \"$version\" = \"$MODEL_VERSION\" ] && exit 0".to_owned(),
            "  sleep 2".to_owned(),
            "done".to_owned(),
            "echo \"::error::staging still answers with version $version, not $MODEL_VERSION\"".to_owned(),
            "exit 1".to_owned(),
        ]);
    }
    lines
}

fn lines(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The target's files with the new image, applied, waited on; `model` overrides the
/// description's model (staging follows the `staging` alias).
fn apply_steps(p: &Pipeline, stage: &str, model: Option<&str>) -> Vec<Step> {
    let model = model.map(|m| format!(" --model \"{m}\"")).unwrap_or_default();
    match p.target {
        CiTarget::Kubernetes => vec![Step::run(
            format!("deploy to {stage}"),
            &[
                &format!("modelship deploy k8s --file \"$DEPLOY_FILE\" --out build/{stage} --namespace \"$NAMESPACE\" --image \"$IMAGE\"{model}"),
                &format!("kubectl apply -k build/{stage}"),
                "kubectl -n \"$NAMESPACE\" rollout status \"deployment/$MODEL_NAME\" --timeout 10m",
            ],
        )],
        CiTarget::Compose => vec![Step::run(
            format!("deploy to {stage}"),
            &[&format!("modelship deploy compose --file \"$DEPLOY_FILE\" --out build/{stage} --image \"$IMAGE\"{model} --apply --no-build")],
        )],
        CiTarget::Swarm => vec![Step::run(
            format!("deploy to {stage}"),
            &[
                &format!("modelship deploy swarm --file \"$DEPLOY_FILE\" --out build/{stage} --image \"$IMAGE\"{model} --apply --no-build"),
                "for _ in $(seq 120); do",
                "  replicas=$(docker service ls --filter \"name=${MODEL_NAME}_${MODEL_NAME}\" --format '{{.Replicas}}')",
                "  [ -n \"$replicas\" ] && [ \"${replicas%/*}\" = \"${replicas#*/}\" ] && exit 0",
                "  sleep 5",
                "done",
                "echo \"::error::the stack did not converge: $replicas\"",
                "exit 1",
            ],
        )],
        CiTarget::Lambda => vec![],
    }
}

/// A tunnel to the server's HTTP port at 127.0.0.1:18000, kept for the rest of the step.
fn tunnel(p: &Pipeline) -> Vec<String> {
    match p.target {
        CiTarget::Kubernetes => vec![
            "kubectl -n \"$NAMESPACE\" port-forward \"service/$MODEL_NAME\" 18000:8000 > \"$RUNNER_TEMP/port-forward.log\" 2>&1 &".to_owned(),
            "trap 'kill %1' EXIT".to_owned(),
        ],
        _ => vec!["ssh -o ExitOnForwardFailure=yes -f -N -L 18000:127.0.0.1:8000 \"${DOCKER_HOST#ssh://}\"".to_owned()],
    }
}

/// `modelship rollout start ... --wait` run by the server's own binary, inside its container, so
/// the admin token never leaves the host; the spec goes in on standard input.
fn canary(p: &Pipeline) -> Step {
    let rollout = "/usr/local/bin/modelship rollout start \"$MODEL_NAME\" --to \"$MODEL_VERSION\" --spec - --wait --timeout \"$ROLLOUT_TIMEOUT\" < \"$ROLLOUT_SPEC\"";
    let script = match p.target {
        CiTarget::Kubernetes => vec![format!("kubectl -n \"$NAMESPACE\" exec -i \"deployment/$MODEL_NAME\" -c server -- {rollout}")],
        CiTarget::Compose => vec![format!("docker compose -p \"$MODEL_NAME\" -f build/production/docker-compose.yml exec -T \"$MODEL_NAME\" {rollout}")],
        CiTarget::Swarm => vec![
            "task=$(docker ps -q --filter \"label=com.docker.swarm.service.name=${MODEL_NAME}_${MODEL_NAME}\" | head -n 1)".to_owned(),
            "[ -n \"$task\" ] || { echo \"::error::no replica of ${MODEL_NAME}_${MODEL_NAME} runs on the manager this job reaches\"; exit 1; }".to_owned(),
            format!("docker exec -i \"$task\" {rollout}"),
        ],
        CiTarget::Lambda => vec![],
    };
    Step::run("canary: the rollout's verdict (exit 0 promoted, 3 rolled back, 4 timed out)", &lines(&script))
}

fn environment_job(p: &Pipeline, stage: &'static str, needs: &'static str) -> Job {
    let production = stage == "production";
    let mut steps = vec![checkout()];
    let env: Map;
    let mut permissions = vec![("contents", "read")];
    if p.target == CiTarget::Lambda {
        permissions.push(("id-token", "write"));
        let stack = if production { &p.stacks.1 } else { &p.stacks.0 };
        env = Map::of([("STACK_NAME", stack.as_str())]);
        steps.push(Step::uses(
            "AWS credentials (OpenID Connect: the environment's role, no stored key)",
            AWS_CREDENTIALS,
            Map::of([("role-to-assume", "${{ vars.AWS_ROLE_ARN }}"), ("aws-region", "${{ vars.AWS_REGION }}")]),
        ));
        steps.push(Step::run("sam build", &["sam build --template-file \"$SAM_TEMPLATE\""]));
        let what = if production { "sam deploy: the template's DeploymentPreference shifts traffic on alarms, and the deploy fails if they roll it back" } else { "sam deploy" };
        steps.push(Step::run(what, &["sam deploy --stack-name \"$STACK_NAME\" --resolve-s3 --capabilities CAPABILITY_IAM --no-confirm-changeset --no-fail-on-empty-changeset"]));
        if p.smoke_event.is_some() {
            steps.push(Step::run("smoke test", &["sam remote invoke --stack-name \"$STACK_NAME\" --event-file \"$SMOKE_EVENT\""]));
        }
    } else {
        steps.extend(install(p));
        steps.push(image_name());
        match p.target {
            CiTarget::Kubernetes => {
                env = Map::of([("NAMESPACE", if production { p.namespaces.1.as_str() } else { p.namespaces.0.as_str() })]);
                steps.push(kubeconfig());
            }
            _ => {
                env = Map::of([("DOCKER_HOST", "ssh://${{ vars.DOCKER_HOST }}")]);
                steps.push(ssh_credentials());
            }
        }
        if production {
            steps.extend(apply_steps(p, stage, None));
            steps.push(canary(p));
            steps.push(Step::run("promote: the production alias follows the rollout", &["modelship models alias \"$MODEL_NAME\" production \"$MODEL_VERSION\""]));
        } else {
            steps.push(Step::run(
                "register the version as staging",
                &["modelship models push \"$MODEL_NAME\" \"$MODEL_FILE\" --version \"$MODEL_VERSION\"", "modelship models alias \"$MODEL_NAME\" staging \"$MODEL_VERSION\""],
            ));
            steps.extend(apply_steps(p, stage, Some("$MODEL_NAME@staging")));
            let script: Vec<String> = tunnel(p).into_iter().chain(smoke_lines(p)).collect();
            steps.push(Step::run("smoke test", &lines(&script)));
        }
    }
    let timeout = if production { 60 + timeout_minutes(&p.rollout_timeout) } else { 45 };
    let name = if production { "production: canary, then promotion" } else { "staging: deploy and smoke test" };
    let mut job = job(name, &p.runner, vec![needs], &permissions, timeout, steps);
    job.condition = Some(deploys(p));
    job.environment = Some(Environment { name: stage.to_owned() });
    job.env = env;
    job
}

/// Minutes in a duration like `2h`, `45m` or `1h30m` (a generous 120 when it does not read).
fn timeout_minutes(duration: &str) -> u32 {
    let mut total = 0u32;
    let mut number = String::new();
    for c in duration.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u32 = number.parse().unwrap_or(0);
                total += match c {
                    'h' => n * 60,
                    'm' => n,
                    _ => n.div_ceil(60),
                };
                number.clear();
            }
            _ => return 120,
        }
    }
    if total == 0 || !number.is_empty() { 120 } else { total }
}

/// The workflow, headed by the command that made it and what it needs from the repository's
/// settings.
pub fn render(p: &Pipeline, provenance: &Provenance) -> Vec<GeneratedFile> {
    let repository_image = format!("ghcr.io/${{{{ github.repository }}}}/{}", p.name);
    let mut env = vec![
        ("MODEL_NAME", p.name.clone()),
        ("MODEL_FILE", p.model.clone()),
        ("MODEL_VERSION", format!("{}.${{{{ github.run_number }}}}.0", p.major)),
        ("REFERENCE", p.against.clone()),
    ];
    if let (Some(data), Some(label)) = (&p.data, &p.label) {
        env.extend([("HOLDOUT", data.clone()), ("LABEL", label.clone())]);
    }
    if p.target == CiTarget::Lambda {
        env.push(("SAM_TEMPLATE", p.sam_template.clone()));
        env.extend(p.smoke_event.clone().map(|e| ("SMOKE_EVENT", e)));
    } else {
        env.extend([
            ("DEPLOY_FILE", p.description.clone()),
            ("ROLLOUT_SPEC", p.rollout_spec.clone()),
            ("ROLLOUT_TIMEOUT", p.rollout_timeout.clone()),
            ("IMAGE_REPOSITORY", p.image.clone().unwrap_or(repository_image)),
        ]);
        env.extend(p.smoke_request.clone().map(|r| ("SMOKE_REQUEST", r)));
    }
    env.extend([
        ("MODELSHIP_GIT", p.install.git.clone()),
        ("MODELSHIP_TAG", p.install.tag.clone()),
        ("ORT_VERSION", p.install.ort_version.clone()),
        ("MODELSHIP_REGISTRY", "${{ vars.MODELSHIP_REGISTRY }}".to_owned()),
        ("MODELSHIP_ARTIFACTS", "${{ vars.MODELSHIP_ARTIFACTS }}".to_owned()),
    ]);
    let test = job("tests", &p.runner, vec![], &[("contents", "read")], 30, vec![checkout(), Step::run("tests", &[p.test_command.as_str()])]);
    let mut jobs = vec![("test", test), ("validate", validate_job(p))];
    if p.target == CiTarget::Lambda {
        jobs.push(("staging", environment_job(p, "staging", "validate")));
    } else {
        jobs.push(("build", build_job(p)));
        jobs.push(("staging", environment_job(p, "staging", "build")));
    }
    jobs.push(("production", environment_job(p, "production", "staging")));
    let workflow = Workflow {
        name: format!("deploy {}", p.name),
        on: Triggers { push: Branches { branches: vec![p.branch.clone()] }, pull_request: Branches { branches: vec![p.branch.clone()] }, workflow_dispatch: Empty {} },
        permissions: Map::of([("contents", "read")]),
        concurrency: Concurrency { group: format!("deploy-{}-${{{{ github.ref }}}}", p.name), cancel_in_progress: false },
        env: Map::of(env),
        jobs: Jobs(jobs),
    };
    let needs = match p.target {
        CiTarget::Kubernetes => "the secret KUBECONFIG (a kubeconfig, base64)",
        CiTarget::Compose | CiTarget::Swarm => "the variable DOCKER_HOST (user@host) and the secrets SSH_PRIVATE_KEY and SSH_KNOWN_HOSTS",
        CiTarget::Lambda => "the variables AWS_ROLE_ARN (a role trusting GitHub's OpenID Connect) and AWS_REGION",
    };
    let notes = format!(
        "#\n# It needs, in the repository's settings:\n\
         # - environments `staging` and `production`, each with {needs};\n\
         #   required reviewers on `production` are the manual approval before the canary;\n\
         # - variables MODELSHIP_REGISTRY (and MODELSHIP_ARTIFACTS for S3): the registry the servers\n\
         #   load versions from, which this workflow reads (the contract) and pushes to.\n"
    );
    vec![GeneratedFile { path: FILE, contents: format!("{}{notes}{}", provenance.header(), crate::yaml::to_string(&workflow)) }]
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pipeline(target: CiTarget) -> Pipeline {
        Pipeline {
            name: "fraud".into(),
            target,
            description: "deploy.yaml".into(),
            model: "models/fraud.onnx".into(),
            data: Some("data/holdout.csv".into()),
            label: Some("is_fraud".into()),
            gates: vec![("--min".into(), "auc=0.92".into()), ("--max-p99".into(), "20ms".into())],
            reference_gates: vec![("--max-drop".into(), "auc=0.005".into()), ("--max-psi".into(), "0.1".into())],
            against: "fraud@production".into(),
            rollout_spec: "rollout.yaml".into(),
            rollout_timeout: "2h".into(),
            image: None,
            branch: "main".into(),
            test_command: "make test".into(),
            runner: "ubuntu-24.04".into(),
            install: Install { git: "https://github.com/modelship/modelship".into(), tag: "v0.1.0".into(), ort_version: "1.31.1".into() },
            major: 1,
            smoke_request: None,
            namespaces: ("fraud-staging".into(), "fraud".into()),
            sam_template: "deploy/template.yaml".into(),
            stacks: ("fraud-staging".into(), "fraud".into()),
            smoke_event: None,
        }
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut p = pipeline(CiTarget::Kubernetes);
        p.name = "Fraud Model".into();
        p.model = "models/$(rm -rf ~).onnx".into();
        p.branch = "${{ github.head_ref }}".into();
        p.gates.push(("--min".into(), "auc=0.9; curl evil".into()));
        p.gates.push(("--exec".into(), "x".into()));
        p.label = None;
        p.test_command = "make test\nrm -rf /".into();
        let err = p.validate().unwrap_err();
        let text = err.to_string();
        for want in [
            "name 'Fraud Model': use letters",
            "name 'Fraud Model': lowercase",
            "model 'models/$(rm -rf ~).onnx'",
            "branch '${{ github.head_ref }}'",
            "--min 'auc=0.9; curl evil'",
            "--exec: not a threshold",
            "data and label go together",
            "the test command is one line",
        ] {
            assert!(text.contains(want), "{text}\n(want {want})");
        }
        assert_eq!(err.0.len(), 8, "{text}");
        assert_eq!(pipeline(CiTarget::Lambda).validate(), Ok(()));
    }

    #[test]
    fn durations_in_minutes() {
        for (d, want) in [("2h", 120), ("45m", 45), ("1h30m", 90), ("90s", 2), ("soon", 120), ("10", 120)] {
            assert_eq!(timeout_minutes(d), want, "{d}");
        }
    }

    #[test]
    fn the_workflow_reads_back_as_yaml_with_its_jobs_in_order() {
        for target in [CiTarget::Kubernetes, CiTarget::Compose, CiTarget::Swarm, CiTarget::Lambda] {
            let files = render(&pipeline(target), &Provenance::new("modelship deploy ci"));
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[0].contents).unwrap();
            let jobs: Vec<&str> = doc["jobs"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
            let want: &[&str] = if target == CiTarget::Lambda { &["test", "validate", "staging", "production"] } else { &["test", "validate", "build", "staging", "production"] };
            assert_eq!(jobs, want, "{target:?}");
            assert_eq!(doc["jobs"]["production"]["environment"]["name"], "production");
            assert_eq!(doc["permissions"]["contents"], "read");
            // No expression inside a script: values reach the shell through env only.
            for job in doc["jobs"].as_mapping().unwrap().values() {
                for step in job["steps"].as_sequence().unwrap() {
                    if let Some(run) = step["run"].as_str() {
                        assert!(!run.contains("${{"), "{run}");
                    }
                }
            }
        }
    }
}
