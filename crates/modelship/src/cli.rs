//! Command-line arguments, parsed low: every value optional, checked later by `config::resolve`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "modelship",
    version,
    about = "Serve, version and safely roll out ONNX models",
    long_about = "modelship takes a trained ONNX model to production: one binary serves it over the \
                  Open Inference Protocol V2 and the simple /v1/predict API, with probes, Prometheus \
                  metrics, JSON logs and graceful drain.",
    after_help = "Examples:\n  modelship serve examples/models/fraud.onnx\n  modelship serve --config serving.yaml --port 9000\n\nRun `modelship serve --help` for every serving option."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the process's arguments. A mistake clap reports gets a hint instead of clap's own tip
/// where a common one is known (see [`hint`]); exit code 2, as clap's.
pub fn parse() -> Cli {
    let argv: Vec<String> = std::env::args().collect();
    match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => match hint(&e, &argv) {
            Some(hint) => {
                eprint!("{}", with_hint(&e.render().to_string(), &hint));
                std::process::exit(e.exit_code());
            }
            None => e.exit(),
        },
    }
}

/// Clap's rendered error with its tips replaced by `hint`.
fn with_hint(rendered: &str, hint: &str) -> String {
    let mut out = String::new();
    let mut hinted = false;
    for line in rendered.lines() {
        if line.trim_start().starts_with("tip:") {
            if !hinted {
                out.push_str(&format!("  tip: {hint}\n"));
                hinted = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if !hinted && line.starts_with("error:") {
            out.push_str(&format!("\n  tip: {hint}\n"));
            hinted = true;
        }
    }
    out
}

/// Flags people reach for that modelship spells otherwise: (command, flag given, what to write).
const SPELLED_OTHERWISE: &[(&str, &str, &str)] = &[
    ("serve", "--version", "the version a model is served as is --model-version VERSION (`modelship --version` is the program's own)"),
    ("serve", "--model", "the model is the first argument: `modelship serve FILE` or `modelship serve NAME@ALIAS`"),
    ("serve", "--model-path", "the model is the first argument: `modelship serve FILE` or `modelship serve NAME@ALIAS`"),
    ("serve", "--registry-dir", "the registry directory is --registry DIR"),
];

/// Flags whose value is KEY=VALUE in one argument.
const KEY_VALUE_FLAGS: &[&str] = &["--min", "--max", "--metric", "-m", "--label", "-l"];

/// A hint for clap's error `e` on `argv`, where a common mistake is recognised.
pub fn hint(e: &clap::Error, argv: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidArg) else { return None };
    let given = given.split('=').next().unwrap_or(given);
    // `--min auc 0.9`: the value taken as KEY, and the number left over.
    for w in argv.windows(3) {
        if KEY_VALUE_FLAGS.contains(&w[0].as_str()) && !w[1].contains('=') && w[2] == given {
            return Some(format!("{} takes METRIC=VALUE as one argument: write {} {}={}", w[0], w[0], w[1], w[2]));
        }
    }
    let command = argv.iter().skip(1).find(|a| !a.starts_with('-'))?;
    SPELLED_OTHERWISE.iter().find(|(c, flag, _)| c == command && *flag == given).map(|(_, _, hint)| (*hint).to_owned())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP (Open Inference Protocol V2 and /v1/predict)
    #[command(after_help = SERVE_HELP)]
    Serve(Box<ServeArgs>),
    /// Keep model versions: push, list, show, pull, remove, alias
    #[command(after_help = MODELS_HELP)]
    Models(ModelsArgs),
    /// Route a running server's traffic between versions: canary, shadow, blue-green, rollback
    #[command(after_help = TRAFFIC_HELP)]
    Traffic(TrafficArgs),
    /// Roll a new version out automatically: steps, checks against stable, promotion or rollback
    #[command(after_help = ROLLOUT_HELP)]
    Rollout(RolloutArgs),
    /// Work with the feature store (Redis) that enriches requests by entity
    #[command(after_help = FEATURES_HELP)]
    Features(FeaturesArgs),
    /// Judge a model before deploying it: quality on data, API contract, latency, memory, drift
    #[command(after_help = crate::validate::HELP)]
    Validate(Box<crate::validate::ValidateArgs>),
    /// Generate a Dockerfile, a Compose file, a Swarm stack, Kubernetes manifests, a SAM template or a CI pipeline from one description
    #[command(after_help = DEPLOY_HELP)]
    Deploy(DeployArgs),
    /// Exit 0 when the server on this machine is ready, 1 when not (the image's HEALTHCHECK)
    #[command(after_help = HEALTHCHECK_HELP)]
    Healthcheck(HealthcheckArgs),
    /// Run as an AWS Lambda function: the custom runtime's bootstrap (what a binary named
    /// `bootstrap` does by itself)
    #[command(after_help = crate::lambda::HELP)]
    Lambda,
    /// Drive a rollout through an Istio VirtualService or a Gateway API HTTPRoute on a cluster,
    /// judged by Prometheus (build feature `kubernetes`)
    #[command(after_help = crate::controller::CONTROLLER_HELP)]
    Controller(Box<crate::controller::ControllerArgs>),
    /// Convert a scikit-learn, XGBoost or LightGBM model to ONNX in a sandbox, proven equal on
    /// sample rows (what serve, models push and validate do by themselves)
    #[command(after_help = crate::convert::HELP)]
    Convert(ConvertArgs),
    /// Score a file of rows (CSV or Parquet) with a model through the server's pipeline, in
    /// chunks side by side, with a progress bar; resumable after a kill
    #[command(after_help = crate::predict::HELP)]
    Predict(Box<PredictArgs>),
    /// Read what a server's prediction log kept (--prediction-log): list, export, rollback
    /// marks, shadow disagreements; purge what rolled-back versions said (audited)
    #[command(after_help = crate::predictions::HELP)]
    Predictions(PredictionsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// The model: a file (ONNX, or a pickle, XGBoost or LightGBM model, converted first), or a
    /// registry model NAME@ALIAS, NAME:VERSION or NAME [default: --config's model.path]
    #[arg(value_name = "MODEL", required_unless_present_any = ["server", "config"], conflicts_with = "server")]
    pub model: Option<PathBuf>,

    /// Score on a running endpoint instead of in this process: chunks are POSTed to URL/v1/predict
    /// (a modelship server, or a Lambda function's URL or API); the answering version is kept per row
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// The endpoint's API key, sent as x-api-key with --server [default: $MODELSHIP_API_KEY]
    #[arg(long, value_name = "KEY", requires = "server")]
    pub api_key: Option<String>,

    /// The rows: .csv (with a header row) or .parquet
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,

    /// The predictions: .parquet, .csv or .jsonl
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,

    /// A column naming each row, copied to the output (not a feature)
    #[arg(long, value_name = "COLUMN")]
    pub id_column: Option<String>,

    /// The feature columns, in the model's order [default: every column but --id-column, in
    /// file order]
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    pub columns: Vec<String>,

    /// Rows per request through the pipeline
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub chunk_rows: usize,

    /// Chunks scored at once, each by its own worker [default: the CPUs]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Registry for NAME@ALIAS models: a directory, or s3://bucket/prefix [env: MODELSHIP_REGISTRY]
    #[arg(long, value_name = "DIR|URL")]
    pub registry: Option<PathBuf>,

    /// Rows are entities: each row's columns are the entity's fields, and the model's features
    /// come from the feature store of --config's features section (as /v1/predict by entities)
    #[arg(long)]
    pub entities: bool,

    /// A serving config (serving.yaml) whose features section gives the feature store
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Discard the parts an interrupted run left and score every row again
    #[arg(long)]
    pub restart: bool,

    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,

    /// Path to ONNX Runtime's libonnxruntime.so (overrides ORT_DYLIB_PATH)
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    #[command(flatten)]
    pub convert: ConvertFlags,
}

#[derive(Debug, Clone, Args)]
pub struct PredictionsArgs {
    /// The log: the directory or s3://BUCKET/PREFIX the server was given (--prediction-log)
    /// [default: $MODELSHIP_PREDICTION_LOG]
    #[arg(long, global = true, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub log: Option<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: PredictionsCommand,
}

/// Which stored predictions a command reads.
#[derive(Debug, Clone, Args, Default)]
pub struct PredictionFilter {
    /// Only this model's
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Only this version's
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Only answers in this role: stable, candidate, pinned or shadow
    #[arg(long, value_name = "ROLE", value_parser = ["stable", "candidate", "pinned", "shadow"])]
    pub role: Option<String>,
    /// Only predictions made by a version that a rollback later stopped
    #[arg(long)]
    pub rolled_back: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Parquet,
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PredictionsCommand {
    /// List stored predictions, newest last, with whether a rollback marked each
    Ls {
        #[command(flatten)]
        filter: PredictionFilter,
        /// Show at most this many (the newest)
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Write stored predictions to a file, with rolled_back, label and reward joined
    Export {
        #[command(flatten)]
        filter: PredictionFilter,
        /// The file to write
        #[arg(long, value_name = "FILE")]
        to: std::path::PathBuf,
        /// parquet, csv or jsonl [default: from the file's extension]
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
    },
    /// The marks rollbacks left: version, routing revisions, when, by whom, why
    Rollbacks {
        /// Only this model's
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
    },
    /// Shadow answers that disagreed with the answer the client got, side by side
    Diff {
        /// The model whose shadow answers to compare
        #[arg(long, value_name = "NAME")]
        model: String,
        /// Show at most this many
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Remove the predictions of rolled-back versions from the store; recorded in the audit table
    Purge {
        /// Only this model's
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        /// What to remove: the predictions a rollback marked (required: nothing else is purged)
        #[arg(long)]
        rolled_back: bool,
        /// Remove them (without it, says how many would go)
        #[arg(long)]
        yes: bool,
        /// Who purges, for the audit table [default: $USER]
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
    },
    /// What was purged, when and by whom
    Audit,
}

/// How a model file in another format than ONNX is converted (every command that takes one).
#[derive(Debug, Clone, Args, Default, PartialEq)]
#[command(next_help_heading = "Converting pickles, XGBoost and LightGBM models")]
pub struct ConvertFlags {
    /// Rows to prove the conversion on: CSV or Parquet with the model's feature columns
    /// [default: 1000 rows drawn from the ranges and split thresholds the model records]
    #[arg(long, value_name = "FILE")]
    pub sample: Option<PathBuf>,
    /// Largest difference allowed between the original's and ONNX Runtime's outputs: absolute
    /// on probabilities, absolute plus relative on predictions [default: 1e-5]
    #[arg(long, value_name = "X")]
    pub tolerance: Option<f64>,
    /// Rows drawn for the proof when no --sample is given [default: 1000]
    #[arg(long, value_name = "N")]
    pub rows: Option<usize>,
    /// Tree thresholds: exact (each float64 threshold written as the float32 that sends every
    /// float32 input the same way) or as-converted (rounded to nearest, as the converters do)
    #[arg(long, value_enum, value_name = "HOW")]
    pub thresholds: Option<ThresholdsArg>,
    /// Load a pickle without the sandbox, when bubblewrap cannot run here: its code then runs
    /// with your rights (logged, and recorded on the conversion)
    #[arg(long)]
    pub trust_pickle: bool,
    /// A Python with scikit-learn, skl2onnx and onnxmltools to convert with, instead of
    /// modelship's own environments [env: MODELSHIP_CONVERT_PYTHON]
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Refuse, naming the command, when the environment a model needs is not there, instead of
    /// creating it from PyPI
    #[arg(long)]
    pub no_install: bool,
    /// The scikit-learn version the model's metadata declares (MLflow's MLmodel), for a pickle
    /// that records none.
    #[arg(skip)]
    pub declared_sklearn: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ThresholdsArg {
    Exact,
    AsConverted,
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConvertArgs {
    #[command(subcommand)]
    pub command: Option<ConvertCommand>,
    /// The model: a pickle or joblib file, an XGBoost .json/.ubj, a LightGBM text model
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Write the ONNX model here
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// ONNX Runtime's library, for the proof [env: ORT_DYLIB_PATH; default: found by itself]
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    /// How to print the result: a summary for people, or the whole conversion record as JSON
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub flags: ConvertFlags,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConvertCommand {
    /// Create a conversion environment from PyPI: the default one, or one with the
    /// scikit-learn version a pickle was written by
    Setup {
        /// The scikit-learn version, e.g. 1.5.2 [default: the default environment's]
        #[arg(long, value_name = "VERSION")]
        scikit_learn: Option<String>,
        /// The Python to create it with [default: python3; env: MODELSHIP_CONVERT_BASE_PYTHON]
        #[arg(long, value_name = "PYTHON")]
        base_python: Option<PathBuf>,
    },
    /// List the conversion environments and what they hold
    Envs,
}

const HEALTHCHECK_HELP: &str = "\
Asks http://HOST:PORT/health/ready (every check: model loaded, startup complete, feature store \
connected where configured) and exits 0 on 200, 1 otherwise with the reason on standard error. \
It is the binary's own probe, so an image needs no curl or shell for its HEALTHCHECK.

Examples:
  # http://127.0.0.1:8000/health/ready
  modelship healthcheck
  modelship healthcheck --port 9000 --timeout 1
  HEALTHCHECK CMD [\"/usr/local/bin/modelship\", \"healthcheck\", \"--port\", \"8000\"]";

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server's HTTP port
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The server's address
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The probe to ask: /health/ready, /health/live or /health/startup
    #[arg(long, default_value = "/health/ready", value_parser = ["/health/ready", "/health/live", "/health/startup"])]
    pub path: String,
    /// Seconds to wait for the answer
    #[arg(long, default_value_t = 2.0)]
    pub timeout: f64,
}

const DEPLOY_HELP: &str = "\
One description (a YAML file, `--file`, default ./deploy.yaml when present; flags override it) \
says what runs; each target writes its files into --out (default ./deploy), every file headed by \
the command that made it, and lists them in DIR/.modelship-generated: the next run removes those it \
no longer writes (never a file it did not write, or one changed since). A key the target does not \
read (replicas for compose) is named in a warning. --apply checks first (the images, a mounted \
registry writable by uid 10001, free host ports), then hands the files to the real tool; --down \
(compose, swarm) removes what --apply started. The image's tag is the description's plus the \
digest of what goes into it (0.1.0-0123456789ab), unless --image NAME:TAG names one:
  docker    Dockerfile (+ Dockerfile.gpu with --gpu) and .dockerignore; --apply
            stages this very binary and its ONNX Runtime library beside them
            and runs `docker build`
  compose   docker-compose.yml (server, Redis, Prometheus); --apply builds the
            image and runs `docker-compose up -d`
  swarm     stack.yml (replicas, rolling update start-first with rollback,
            restart policy, health check, Redis, fleet store); --apply builds
            the image and runs `docker stack deploy` (after `docker swarm
            init`)
  k8s       one manifest per object and kustomization.yaml: rolling,
            blue-green, canary and shadow (Istio, Gateway API or no mesh);
            `modelship deploy k8s --help`. No --apply: review the files, then
            `kubectl apply -k DIR`
  lambda    template.yaml (SAM: custom runtime, alias, gradual deployment,
            alarms, traffic hooks) and a Makefile that packages the bootstrap;
            `modelship deploy lambda --help`. No --apply: `make -f DIR/Makefile
            package`, then `sam deploy`
  ci        .github/workflows/deploy.yml: tests, validate, image, staging, and
            a canary judged by `rollout start --wait` before promotion, for any
            of these targets or Lambda; `modelship deploy ci --help`

The description:
  name: fraud                              # project, stack and service name
  # mount (replace the file to update) or bake
  model: {file: models/fraud.onnx, delivery: mount}
  # or follow a registry alias:
  # model: {registry: fraud@production, registry_dir: registry}
  # mounted read-only at /etc/modelship/serving.yaml
  config: serving.yaml
  image: {name: modelship, tag: 0.1.0, build: binary, gpu: false,
          # every base image is a build argument
          bases: {tools: debian:bookworm-slim}}
  replicas: 3
  resources: {cpus: 1.0, memory: 512M}
  # admin: loopback only
  ports: {http: 8000, grpc: 8081, admin: 8001, publish_admin: false}
  # REDIS_HOST=redis
  feature_store: {service: true, image: redis:7.4-bookworm}
  # the fleet store; emitted only when set
  control_store: redis://redis:6379/1
  strategy: {parallelism: 1, delay: 10s, order: start-first,
             failure_action: rollback, monitor: 30s}
  restart: {condition: on-failure, delay: 5s, max_attempts: 3}
  # SIGTERM: keep accepting, then drain
  drain: {delay: 5s, grace: 30s}
  prometheus: {}                           # scrapes every replica
  # `modelship deploy k8s --help`
  kubernetes: {namespace: ml, strategy: canary, mesh: istio,
               # canary, shadow, blue-green need it
               candidate: {version: \"2\", tag: 0.2.0}}

Examples:
  modelship deploy docker --model models/fraud.onnx --delivery bake --apply
  modelship deploy compose --file deploy.yaml --apply
  modelship deploy compose --file deploy.yaml --down
  modelship deploy swarm --file deploy.yaml --replicas 3 --out deploy/swarm
  modelship deploy compose --name fraud --model fraud@production \\
      --registry-dir registry --redis
  modelship deploy docker --file deploy.yaml --output json
  # canary, shadow and blue-green need kubernetes.candidate in the description:
  modelship deploy k8s --file deploy.yaml --strategy canary --mesh istio \\
      --out deploy/k8s
  modelship deploy lambda --model models/nepse.onnx --name nepse
  modelship deploy ci --model models/fraud.onnx --data data/holdout.csv \\
      --label is_fraud \\
      --min auc=0.92";

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub target: DeployTarget,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeployTarget {
    /// The image: a multi-stage Dockerfile ending FROM scratch (binary, ONNX Runtime, their libraries)
    Docker(DeployOptions),
    /// docker-compose.yml: the server, Redis, optionally Prometheus
    Compose(DeployOptions),
    /// A Docker Swarm stack: replicas, rolling updates with rollback, Redis, the fleet store
    Swarm(DeployOptions),
    /// Kubernetes manifests and a kustomization.yaml: rolling, blue-green, canary and shadow
    /// (Istio, Gateway API or no mesh)
    #[command(name = "k8s", visible_alias = "kubernetes", after_help = K8S_HELP)]
    K8s(K8sOptions),
    /// An AWS SAM template (the binary as a custom runtime, alias, gradual deployment with alarms
    /// and traffic hooks) and the Makefile that packages the bootstrap
    #[command(after_help = crate::lambda::DEPLOY_HELP)]
    Lambda(crate::lambda::LambdaOptions),
    /// Google Cloud Run: a Knative Service (gcloud run services replace) and the gcloud commands;
    /// probes, concurrency, instances, a canary between revisions with traffic tags
    #[command(name = "cloudrun", visible_alias = "cloud-run", after_help = CLOUDRUN_HELP)]
    Cloudrun(DeployOptions),
    /// Azure Functions: the binary as a custom handler (host.json, the function, the Makefile
    /// that zips the package)
    #[command(name = "azure-functions", visible_alias = "azure", after_help = AZURE_HELP)]
    AzureFunctions(DeployOptions),
    /// Prometheus alerting rules (errors, latency, no traffic, not ready, rollouts stuck or
    /// rolled back, prediction drift, stores unreachable, queues full) and a Grafana dashboard
    #[command(after_help = ALERTS_HELP)]
    Alerts(DeployOptions),
    /// The CI/CD pipeline: a GitHub Actions workflow of tests, validate, image, staging, and a
    /// canary judged by `rollout --wait` before promotion
    #[command(after_help = crate::deploy_ci::HELP)]
    Ci(Box<crate::deploy_ci::CiOptions>),
}

const AZURE_HELP: &str = "\
Writes host.json (the binary as the app's custom handler, every HTTP request forwarded to it as it \
came: enableForwardingHttpRequest, the /api route prefix, which the server strips), function.json \
(one HTTP trigger for every path, behind a function key unless azure_functions.auth_level says \
otherwise) and a Makefile that lays out and zips the package (binary, ONNX Runtime's library, the \
model). The server listens on FUNCTIONS_CUSTOMHANDLER_PORT, which the Functions host sets. Settings \
come from the description's azure_functions: section (auth_level, timeout, route_prefix, \
max_concurrent_requests).

Examples:
  modelship deploy azure-functions --name nepse --model model.onnx \\
      --out deploy/azure
  make -f deploy/azure/Makefile package
  az functionapp deployment source config-zip -g ml -n nepse-app \\
      --src deploy/azure/app.zip";

const CLOUDRUN_HELP: &str = "\
Writes service.yaml (a serving.knative.dev/v1 Service, as `gcloud run services replace` takes it) \
and cloudrun.sh (the gcloud commands). The server listens on the PORT Cloud Run gives the container \
(ports.http). A model file must be baked into the image (--delivery bake here and when building it: `modelship \
deploy docker --delivery bake --apply --image REGION-docker.pkg.dev/PROJECT/REPO/modelship:TAG`, then `docker push`); a registry \
model (NAME@ALIAS) is followed from the registry's bucket (cloudrun.bucket: Cloud Storage through its \
S3-compatible API, HMAC keys from Secret Manager). The service requires IAM authentication unless you \
open it. Settings come from the description's cloudrun: section (region, concurrency, min_instances, \
max_instances, timeout, cpu, memory, ingress, service_account, probes, canary).

Examples:
  modelship deploy cloudrun --name nepse --model model.onnx --delivery bake \\
      --out deploy/cloudrun
  modelship deploy cloudrun --file deploy.yaml --out deploy/cloudrun
  bash deploy/cloudrun/cloudrun.sh";

const ALERTS_HELP: &str = "\
Writes modelship-alerts.yml (Prometheus alerting rules: every rule with a for:, a severity label \
and a runbook_url annotation into the alerts guide) and grafana-dashboard.json (one model's \
versions: traffic split, error rate, latency quantiles, score distribution, rollout steps as \
annotations). Thresholds come from the description's alerts: section (see the alerts guide); \
the model file is not needed. Load the rules with rule_files: in prometheus.yml (deploy compose \
and deploy swarm do it for their own Prometheus; deploy k8s writes a PrometheusRule when the \
description has alerts:), check them with `promtool check rules modelship-alerts.yml`, and import \
the dashboard in Grafana (Dashboards > New > Import).

Examples:
  modelship deploy alerts --file deploy.yaml --out monitoring
  promtool check rules monitoring/modelship-alerts.yml";

const K8S_HELP: &str = "\
Writes one file per object into --out, and kustomization.yaml listing them (kubectl apply -k DIR):
the Namespace, a ServiceAccount, the serving config as a ConfigMap, the Deployment(s) (rolling \
update maxSurge 1 / maxUnavailable 0, probes on /health/startup, /health/ready, /health/live, a \
preStop sleep of drain.delay, non-root and read-only, anti-affinity and a zone spread, Prometheus \
annotations, POD_NAME/POD_NAMESPACE), a ClusterIP Service, an HPA on CPU and the pods metric \
http_requests_per_second, a PodDisruptionBudget, an nginx Ingress with TLS, and the Prometheus \
Adapter rule that makes modelship_requests_total that metric. Kubernetes 1.30 or newer (the \
preStop sleep action). Nothing here talks to a cluster: review the files, then kubectl apply -k.

The model reaches a pod baked into the image (model.delivery: bake) or from the registry's S3 \
store by digest: an init container runs this image's `modelship models fetch` (build the image \
with --features s3) with AWS keys from a Secret you create; no key is ever written:
  kubectl -n NAMESPACE create secret generic NAME-aws \\
      --from-literal=AWS_ACCESS_KEY_ID=... \\
      --from-literal=AWS_SECRET_ACCESS_KEY=...

Strategies (--strategy, kubernetes.strategy):
  rolling      one Deployment replaced pod by pod (the default)
  blue-green   NAME-blue runs the model, NAME-green the candidate; the Service
               selects kubernetes.blue_green.active, NAME-preview the other:
               switch by changing it
  canary       the candidate gets kubernetes.traffic.weight (5%) and every
               request with the header (x-canary: true)
  shadow       the candidate gets a copy of kubernetes.traffic.mirror (100%) of
               the requests
blue-green, canary and shadow run a second version: the description's kubernetes.candidate \
{version, tag (another image) or digest (another model artifact)} names it. \
Meshes for canary and shadow (--mesh, kubernetes.mesh):
  istio        VirtualService + DestinationRule; weights are whole percents
  gateway-api  HTTPRoute with weighted backendRefs in basis points (of 10000)
               and RequestMirror
  none         one Deployment whose pods hold both versions and split by basis
               points themselves (modelship traffic / rollout) through the
               control store; its Kubernetes backend
               (MODELSHIP_CONTROL_STORE=kubernetes) needs a modelship built
               with the cargo feature `kubernetes` and has only run against a
               mocked API server: set control_store to a Redis URL otherwise

The description's kubernetes section (every key optional):
  kubernetes:
    namespace: ml-serving
    artifact: {store: s3://models/fraud, digest: sha256:HEX}
    aws: {secret: fraud-aws, region: eu-west-1, endpoint: http://minio:9000}
    image_digest: sha256:HEX               # run IMAGE@sha256:HEX
    resources: {requests: {cpu: 500m, memory: 512Mi},
                limits: {cpu: \"1\", memory: 1Gi}}
    autoscaling: {min_replicas: 3, max_replicas: 20, cpu_percent: 70,
                  requests_per_second: \"100\"}
    disruption: {min_available: 2}
    ingress: {host: fraud.example.com, tls_secret: fraud-tls, class: nginx}
    strategy: canary
    mesh: gateway-api
    traffic: {weight: 2.5%, header: {name: x-canary, value: \"true\"},
              mirror: 100%, replicas: 1}
    candidate: {version: 1.3.0, digest: sha256:HEX, tag: 0.2.0}
    gateway: {name: public, namespace: gateway-system, section_name: https}

Examples:
  modelship deploy k8s --file deploy.yaml --out deploy/k8s
  # canary and shadow need kubernetes.candidate in the description:
  modelship deploy k8s --file deploy.yaml --strategy canary --mesh istio \\
      --weight 5% \\
      --out deploy/k8s
  modelship deploy k8s --file deploy.yaml --strategy shadow \\
      --mesh gateway-api --mirror 12.5% \\
      --out deploy/k8s
  modelship deploy k8s --file deploy.yaml --namespace ml-serving --output json";

#[derive(Debug, Clone, Args)]
pub struct K8sOptions {
    #[command(flatten)]
    pub common: DeployOptions,
    /// How a new version meets traffic [default: the description's kubernetes.strategy, rolling]
    #[arg(long, value_enum)]
    pub strategy: Option<K8sStrategyArg>,
    /// What splits canary and shadow traffic [default: the description's kubernetes.mesh, istio]
    #[arg(long, value_enum)]
    pub mesh: Option<MeshArg>,
    /// Namespace of every object [default: the description's, else the deployment's name]
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
    /// Canary: the candidate's share, e.g. 5% or 0.25% (Istio: whole percents)
    #[arg(long, value_name = "PERCENT")]
    pub weight: Option<String>,
    /// Shadow: the share of requests copied to the candidate, e.g. 100%
    #[arg(long, value_name = "PERCENT")]
    pub mirror: Option<String>,
    /// Run the image by digest (IMAGE@sha256:HEX, as `docker push` printed it) instead of its tag
    #[arg(long, value_name = "sha256:HEX")]
    pub image_digest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum K8sStrategyArg {
    Rolling,
    BlueGreen,
    Canary,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MeshArg {
    Istio,
    GatewayApi,
    None,
}

#[derive(Debug, Clone, Args)]
pub struct DeployOptions {
    /// The deployment description (YAML) [default: ./deploy.yaml when it exists]
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Directory to write the files into (created if needed)
    #[arg(long, short = 'o', value_name = "DIR", default_value = "deploy")]
    pub out: PathBuf,
    /// Then build the image (docker), start the services (compose) or deploy the stack (swarm)
    #[arg(long)]
    pub apply: bool,
    /// With --apply for compose or swarm: use the image as it is, do not build it first
    #[arg(long, requires = "apply")]
    pub no_build: bool,
    /// Compose or swarm: take down what --apply started (containers, networks, the deployment's
    /// own volumes; never a file of yours)
    #[arg(long, conflicts_with = "apply")]
    pub down: bool,
    /// Deployment name: project, stack and service
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The model: an ONNX file, or a registry reference NAME@ALIAS, NAME:VERSION
    #[arg(long, value_name = "FILE|REF")]
    pub model: Option<String>,
    /// How a model file reaches the container
    #[arg(long, value_enum)]
    pub delivery: Option<DeliveryArg>,
    /// With a registry model: the registry directory to mount
    #[arg(long, value_name = "DIR")]
    pub registry_dir: Option<PathBuf>,
    /// Serving config to mount (the seed's serving.yaml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Image: NAME[:TAG]. A tag given here is used as given; otherwise the description's tag
    /// gets the digest of what goes into the image (TAG-0123456789ab)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Replicas (Swarm)
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Also write Dockerfile.gpu (onnxruntime-gpu on a CUDA base)
    #[arg(long)]
    pub gpu: bool,
    /// Run Redis beside the server as the feature store
    #[arg(long)]
    pub redis: bool,
    /// Run Prometheus beside the server, scraping every replica
    #[arg(long)]
    pub prometheus: bool,
    /// The fleet control store, redis://HOST:PORT/DB (passed as MODELSHIP_CONTROL_STORE)
    #[arg(long, value_name = "URL")]
    pub control_store: Option<String>,
    /// Base image of the Dockerfile's tools stage (bash, ldd, coreutils)
    #[arg(long, value_name = "IMAGE")]
    pub tools_image: Option<String>,
    /// Output format for the summary
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub convert: ConvertFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryArg {
    /// Mount the model's directory read-only; replacing the file updates what is served
    Mount,
    /// Copy the model into the image
    Bake,
}

const FEATURES_HELP: &str = "\
A server with a feature store answers requests that name entities instead of carrying every \
feature: /v1/predict {\"entities\": [{\"customer_id\": \"c1\", \"amount\": 12.5}]}, or V2 infer with \
parameters.entities. `features load` fills the store from a file of entities, one row each.

Examples:
  modelship features load customers.csv --config serving.yaml
  modelship features load customers.parquet --store redis://localhost:6379 \\
      --key 'features:customer:{customer_id}' --storage hash
  modelship features load customers.csv --config serving.yaml --output json";

#[derive(Debug, Clone, Args)]
pub struct FeaturesArgs {
    /// Output format for the summary
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: FeaturesCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FeaturesCommand {
    /// Load entities from a CSV or Parquet file (one row per entity, a header of column names)
    Load {
        /// The file: .csv, or .parquet (with the `parquet` build feature, on by default)
        file: std::path::PathBuf,
        /// The serving config whose `features` section gives the store, key, storage and the
        /// store features (their values are type-checked before anything is written)
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// The store, overriding the config: redis://[user:password@]host:port[/db]
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// The key pattern, overriding the config: placeholders name columns
        #[arg(long, value_name = "PATTERN")]
        key: Option<String>,
        /// How an entity is stored [default: the config's, else hash]
        #[arg(long, value_enum)]
        storage: Option<StorageArg>,
        /// Columns to store (default: the config's store features, else every non-key column)
        #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
        columns: Vec<String>,
        /// Entities written per round trip
        #[arg(long, default_value_t = 1000, value_name = "N")]
        batch: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageArg {
    /// A Redis hash per entity (HSET key field value ...)
    Hash,
    /// One JSON object per entity (SET key '{...}')
    Json,
}

const ROLLOUT_HELP: &str = "\
A rollout moves traffic to a new version step by step (shadow, header, weights, approval and webhook \
gates) while checks compare it with the stable version over the same window (error rate, latency \
by Mann-Whitney, shadow agreement, prediction drift, quality on delayed labels). Too few samples \
hold the rollout; failures past the policy roll it back (or pause it). Uses the same admin API \
and token as `modelship traffic`.

A spec (YAML):
  to: 1.3.0
  # or linear: {step: 10%, every: 1m}, blue_green: {preview: 10m}, or steps:
  canary: {weights: [5, 25, 50, 100], every: 5m}
  checks:
    - error_rate: {}
    - latency: {max_ratio: 1.2}
    - drift: {max_psi: 0.1}
  failure: {consecutive: 3, total: 5, min_samples: 100, on_no_data: hold,
            deadline: 2h}
  on_failure: rollback
  interval: 30s

In CI, `rollout start ... --wait` (or `rollout wait MODEL`) replaces a sleep and a separate canary \
check: it follows the rollout until the server's own verdict and exits 0 when it promoted, 3 when \
it rolled back, 4 when --timeout passed first, 1 when the server cannot be reached; it prints a \
line per decision and per change of step or verdict (a live view on a terminal).

Examples:
  modelship rollout start fraud --to 1.3.0 --spec canary.yaml
  modelship rollout start fraud --to 1.3.0 --spec canary.yaml --wait \\
      --timeout 2h
  modelship rollout wait fraud
  modelship rollout status fraud --watch
  modelship rollout approve fraud
  modelship rollout abort fraud --reason \"latency\"
  modelship rollout history fraud";

#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout from a spec file
    Start {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// The version to roll out (overrides the spec's `to`)
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// The rollout spec (YAML or JSON); `-` reads it from standard input
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
        /// Then wait until the rollout ends, as `rollout wait` does: exit 0 when it promotes, 3
        /// when it rolls back
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting after this long (exit 4), e.g. 45m [default: until it ends]
        #[arg(long, value_name = "DURATION", requires = "wait")]
        timeout: Option<String>,
        /// Roll out a version that failed validation (labelled validate=fail by
        /// `modelship validate --record`)
        #[arg(long)]
        force: bool,
    },
    /// Wait until the rollout ends: exit 0 when it promotes, 3 when it rolls back, 4 on
    /// --timeout; progress lines for CI logs, a live view on a terminal
    Wait {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// Stop waiting after this long (exit 4), e.g. 45m [default: until the rollout ends]
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Phase, step, each check's latest verdict
    Status {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// Refresh every 2 s until the rollout ends
        #[arg(long)]
        watch: bool,
    },
    /// Pass an approval gate
    Approve {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Hold the rollout at its step: no step is taken and no check fails it until resumed
    Pause {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Go on from where it was paused
    Resume {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Roll back now
    Abort {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Every decision, with its reason and evidence
    History {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
}

const TRAFFIC_HELP: &str = "\
Talks to a running server's admin API (--admin, MODELSHIP_ADMIN_URL, default http://127.0.0.1:8001) \
with its token (MODELSHIP_ADMIN_TOKEN, else --token-file, default ~/.local/state/modelship/admin-token, \
which the server writes when no token is configured). Versions are loaded from the server's registry \
on demand. Every change is a numbered revision with time, actor and reason.

Examples:
  modelship traffic status fraud
  modelship traffic set fraud --candidate 1.3.0 --weight 5% --reason \"canary\"
  modelship traffic set fraud --weight 25%
  modelship traffic set fraud --sticky-header x-user-id
  modelship traffic promote fraud
  modelship traffic shadow fraud --version 1.4.0 --percent 100
  # blue-green: preview first with x-model-version: 1.3.0
  modelship traffic switch fraud 1.3.0
  # back to the routing before the last change
  modelship traffic rollback fraud
  modelship traffic history fraud";

/// How to reach a server's admin API, shared by `traffic` and `rollout`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The server's admin API [env: MODELSHIP_ADMIN_URL] [default: http://127.0.0.1:8001]
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,

    /// File with the admin token (when MODELSHIP_ADMIN_TOKEN is not set)
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Why (recorded in the history)
    #[arg(long, global = true, default_value = "")]
    pub reason: String,

    /// Output format
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    #[command(flatten)]
    pub admin: AdminArgs,

    #[command(subcommand)]
    pub command: TrafficCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TrafficCommand {
    /// Versions, weights, shadow agreement and the revision in force
    Status {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Start or adjust a canary, or set sticky assignment
    Set {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// The version under test (loaded from the registry if needed)
        #[arg(long, value_name = "VERSION")]
        candidate: Option<String>,
        /// Its share of live traffic: 5%, 0.25%, 250bp
        #[arg(long, value_name = "SHARE")]
        weight: Option<String>,
        /// Same user, same version: hash this request header
        #[arg(long, value_name = "HEADER", conflicts_with = "sticky_field")]
        sticky_header: Option<String>,
        /// Same user, same version: hash this body field (V2: parameters.FIELD)
        #[arg(long, value_name = "FIELD")]
        sticky_field: Option<String>,
    },
    /// The candidate becomes stable; the old stable stays warm for rollback
    Promote {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Remove the candidate: all traffic to stable
    Abort {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
    /// Mirror a share of requests to a version whose answers are compared, never returned
    Shadow {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// The version that gets the copies (loaded from the registry if needed)
        #[arg(long, value_name = "VERSION", required_unless_present = "off")]
        version: Option<String>,
        /// Share of requests mirrored: 100%, 10%...
        #[arg(long, value_name = "SHARE", default_value = "100%")]
        percent: String,
        /// Stop mirroring
        #[arg(long)]
        off: bool,
    },
    /// Blue-green: make VERSION stable at once (the old one stays warm; switching back is the same)
    Switch {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// The version that becomes stable (loaded from the registry if needed)
        version: String,
    },
    /// Restore the routing of the previous revision (or --to-revision N)
    Rollback {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
        /// The revision whose routing to restore (`traffic history` lists them)
        #[arg(long, value_name = "N")]
        to_revision: Option<u64>,
    },
    /// Every routing revision
    History {
        /// The model, by the name the server serves it under (as in /v2/models/NAME)
        model: String,
    },
}

const MODELS_HELP: &str = "\
The registry is a directory (--registry, MODELSHIP_REGISTRY, default ~/.local/share/modelship/registry):
metadata in SQLite, artifacts addressed by their SHA-256 under artifacts/ or in S3-compatible storage \
(--artifacts s3://bucket/prefix when the registry is created; builds with the `s3` feature). \
Or it is a bucket alone (--registry s3://bucket/prefix): the catalog as one document per model, \
changed only by conditional writes, beside the artifacts, so servers on hosts that share no disk \
and CI jobs use one registry at once (credentials and endpoint from the AWS_* variables).

Examples:
  modelship models push fraud model.onnx --version 1.3.0 --metric auc=0.931 \\
      --label team=risk
  modelship models ls
  modelship models show fraud@production
  modelship models alias fraud production 1.3.0
  modelship models history fraud
  modelship models pull fraud:1.3.0 -o model.onnx
  modelship models fetch --artifacts s3://models/fraud sha256:608b7f20... \\
      -o /models/model.onnx
  modelship models rm fraud:1.2.0
  # partial files of interrupted pushes, over 1h old
  modelship models gc --dry-run
  modelship models gc --unreferenced --older-than 0s
  modelship models import mlflow \\
      --tracking-uri http://mlflow:5000 fraud @champion
  modelship serve fraud@production          # follows the alias as it moves";

#[derive(Debug, Clone, Args)]
pub struct ModelsArgs {
    /// Registry directory, or s3://bucket/prefix for a registry wholly in a bucket
    /// [env: MODELSHIP_REGISTRY] [default: ~/.local/share/modelship/registry]
    #[arg(long, global = true, value_name = "DIR|URL")]
    pub registry: Option<PathBuf>,

    /// Where a new registry keeps artifacts: `local` or s3://bucket/prefix [env: MODELSHIP_ARTIFACTS]
    #[arg(long, global = true, value_name = "URL")]
    pub artifacts: Option<String>,

    /// Output format: tables for people, JSON for scripts
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ModelsCommand {
    /// Register FILE as version VERSION of model NAME (immutable; same bytes again is a no-op)
    Push {
        /// Model name: letters, digits, '.', '_', '-'
        name: String,
        /// The model file: ONNX, or a pickle, joblib, XGBoost or LightGBM model (converted to
        /// ONNX and proven equal first; the original is kept beside it)
        file: PathBuf,
        /// Version string, e.g. 1.3.0
        #[arg(long = "version", short = 'v', value_name = "VERSION")]
        version: String,
        /// A metric of this version, KEY=NUMBER (repeatable)
        #[arg(long = "metric", short = 'm', value_name = "KEY=NUMBER")]
        metrics: Vec<String>,
        /// A label of this version, KEY=VALUE (repeatable)
        #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Free text shown by `models show`
        #[arg(long, short = 'd')]
        description: Option<String>,
        /// The largest file it takes, e.g. 8Gi or 500Mi (a larger one is refused before it is
        /// read: a mistaken path such as /dev/zero or a data file stops at once)
        #[arg(long, value_name = "SIZE", default_value = "4Gi")]
        max_size: String,
        /// A V2 inference request (JSON, as POSTed to /v2/models/M/infer) with a few of the
        /// model's own rows: stored with the version, and every server sends it to the version
        /// before serving it (a version that fails it is refused)
        #[arg(long, value_name = "FILE")]
        warmup_sample: Option<PathBuf>,
        #[command(flatten)]
        convert: ConvertFlags,
    },
    /// List models and versions: the registry's, or with --admin what a running server holds
    /// loaded (versions, the memory each took, routing revision, rollout)
    Ls {
        /// Only this model
        name: Option<String>,
        /// A running server's admin API (http://HOST:PORT): list what it serves instead
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        /// The admin token's file [env: MODELSHIP_ADMIN_TOKEN; default: STATE_DIR/admin-token]
        #[arg(long, value_name = "FILE", requires = "admin")]
        token_file: Option<PathBuf>,
    },
    /// Show one version: NAME (latest), NAME:VERSION or NAME@ALIAS
    Show {
        /// NAME (the newest version), NAME:VERSION or NAME@ALIAS
        reference: String,
    },
    /// Write a version's ONNX file, checked against its digest
    Pull {
        /// NAME:VERSION, NAME@ALIAS or NAME (latest)
        reference: String,
        /// Destination file
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: PathBuf,
    },
    /// Write one artifact straight from the artifact store (--artifacts: s3://bucket/prefix or
    /// a directory), checked against its digest; needs no catalog (a Kubernetes init container's
    /// way to the model)
    Fetch {
        /// sha256:HEX (the version's digest: `models show REF --output json`)
        digest: String,
        /// Destination file
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: PathBuf,
    },
    /// Remove a version (refused while an alias points at it, unless --force)
    Rm {
        /// NAME:VERSION
        reference: String,
        /// Also remove the aliases that point at it
        #[arg(long)]
        force: bool,
    },
    /// Point ALIAS of model NAME at VERSION (recorded in the history)
    Alias {
        /// The model
        name: String,
        /// The alias, e.g. production or staging
        alias: String,
        /// The version it names from now on
        version: String,
        /// Point the alias at a version that failed validation (validate=fail)
        #[arg(long)]
        force: bool,
    },
    /// Every alias move of a model, oldest first
    History {
        /// The model
        name: String,
    },
    /// Remove what interrupted pushes left behind: partial artifact files, and with
    /// --unreferenced complete artifacts no version uses. Never an artifact any version of any
    /// model references, never a file younger than --older-than (a push may be writing it)
    Gc {
        /// Only files last written at least this long ago, e.g. 1h, 30m, 0s
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        older_than: String,
        /// Also remove complete artifacts that no version of any model references (left by a
        /// push killed after its upload); best run when no push is running
        #[arg(long)]
        unreferenced: bool,
        /// Report what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy a model version from another registry
    #[command(subcommand)]
    Import(ImportSource),
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImportSource {
    /// From an MLflow model registry, over its REST API: the model (an ONNX artifact, or the
    /// sklearn, xgboost or lightgbm flavour, converted), the run's metrics and
    /// the version's tags (credentials: MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)
    Mlflow {
        /// The MLflow tracking server [env: MLFLOW_TRACKING_URI]
        #[arg(long, value_name = "URI")]
        tracking_uri: Option<String>,
        /// The registered model's name in MLflow
        name: String,
        /// An MLflow version number, or @ALIAS
        version: String,
        /// Register it under this name here [default: the MLflow name]
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        /// The largest model file it downloads, e.g. 8Gi
        #[arg(long, value_name = "SIZE", default_value = "4Gi")]
        max_size: String,
        #[command(flatten)]
        convert: ConvertFlags,
    },
}

const SERVE_HELP: &str = "\
Configuration comes from, lowest precedence first: built-in defaults, the config file \
(--config or CONFIG_PATH), environment variables (MODEL_PATH, MODEL_NAME, MODEL_VERSION, \
LOG_LEVEL, LOG_FORMAT, ORT_DYLIB_PATH, MODELSHIP_API_KEYS, MODELSHIP_ADMIN_TOKEN), then these flags.

The config file is the seed's serving.yaml; examples/serving.yaml runs as it is \
(`modelship serve --config examples/serving.yaml`):
  model:
    path: examples/models/fraud.onnx
    name: fraud
    version: '1'
    max_queue: 128
    dynamic_batching: {max_batch_size: 32, max_queue_delay_microseconds: 500}
  server:
    port: 8000
    workers: 2
    # tls_cert_file: cert.pem       # with tls_key_file: TLS on every listener
    # api_keys_file: keys.txt       # one key a line: inference needs a key
  logging: {level: INFO, format: json}
Every key: docs/src/reference/config.md in the repository.

The model answers Open Inference Protocol V2 over REST (with Triton's binary tensor, model \
configuration and statistics extensions) and over gRPC (Triton's GRPCInferenceService, so \
tritonclient and perf_analyzer work), plus /v1/predict.

Once the model is loaded and the ports bound, one JSON line goes to standard output:
  {\"event\":\"ready\",\"http\":\"0.0.0.0:8000\",\"grpc\":\"0.0.0.0:8081\",...}
Logs go to standard error. SIGTERM or SIGINT drains in-flight requests and exits 0.

Examples:
  # port 8000, name from the file
  modelship serve model.onnx
  # any free port; read it from the ready line
  modelship serve model.onnx --port 0
  modelship serve --config serving.yaml --workers 2
  MODEL_PATH=/models/model.onnx modelship serve
  # from the registry; follows the alias
  modelship serve fraud@production
  # an edge board: follows the alias in a bucket, keeps serving
  # (and restarts on its kept copy) when the network goes
  modelship serve fraud@production --registry s3://models/reg
  # dynamic batching of concurrent requests
  modelship serve mlp.onnx --max-batch-size 32
  # a Triton model repository, as it is (NAME/config.pbtxt, NAME/1/model.onnx)
  modelship serve --model-repository /models/triton
  # fifty models, at most ten in memory; the others load on their next request
  modelship serve --model-repository /models/triton --max-loaded-models 10
  modelship serve model.onnx --tls-cert cert.pem --tls-key key.pem \\
      --api-keys-file keys.txt

Security: the admin API (traffic, rollouts, repository loads, labels) always needs the admin \
token; POST /v1/feedback on the inference port needs it too, since labels decide rollouts.";

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// The model file (ONNX, or a pickle, joblib, XGBoost or LightGBM model, converted first), or
    /// a registry model: NAME@ALIAS (followed as it moves), NAME:VERSION or NAME (overrides
    /// model.path and MODEL_PATH)
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,

    /// More models to serve beside the first, each a file or a registry model like MODEL, named
    /// after its file (or registry name), each with its own routing, rollouts and metrics;
    /// /v1/models/NAME/predict and /v2/models/NAME/infer name them (/v1/predict stays the
    /// first's). Adds to the config file's models list
    #[arg(value_name = "MORE")]
    pub more: Vec<PathBuf>,

    /// The models to serve, comma-separated (the first is the server's own unless MODEL is
    /// given): `--models fraud@production,churn@production --registry s3://...`
    #[arg(long, value_delimiter = ',', value_name = "M1,M2,...")]
    pub models: Vec<PathBuf>,

    /// A Triton model repository, served as it is: DIR/NAME/config.pbtxt (optional) and
    /// DIR/NAME/VERSION/model.onnx, each model named by its directory, at the version its
    /// version_policy picks (default: the newest), with its instance_group count as workers and
    /// its dynamic_batching; declared inputs and outputs are checked against the model
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// Config file in the seed's serving.yaml shape (default: CONFIG_PATH when set)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Model name in URLs and metrics [default: the file name without .onnx]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Model version reported in responses [default: 1]
    #[arg(long = "model-version", value_name = "VERSION")]
    pub model_version: Option<String>,

    /// Serve the REST API under this path too, e.g. /api (Azure Functions forwards
    /// /api/v1/predict to a custom handler as it came) [default: none]
    #[arg(long, value_name = "PATH")]
    pub path_prefix: Option<String>,

    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,

    /// HTTP port; 0 picks a free port [default: 8000]
    #[arg(long, short = 'p', value_name = "PORT")]
    pub port: Option<u16>,

    /// Inference workers, each with its own model session [default: number of CPUs]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Threads one inference may use; raise it for large networks [default: 1]
    #[arg(long, value_name = "N")]
    pub intra_op_threads: Option<usize>,

    /// Where the model runs: cpu, auto[:N] (the GPU when one works, else the CPU, logged) or
    /// cuda[:N] (ONNX Runtime's CUDA provider; needs the onnxruntime-gpu library; a start fails
    /// without a usable GPU). With cuda, workers default to 1 [default: cpu; env: MODELSHIP_DEVICE]
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,

    /// Requests that may wait for a worker before new ones get 429 [default: 128]
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,

    /// gRPC port (Open Inference Protocol V2, Triton's `inference.GRPCInferenceService`, and
    /// `grpc.health.v1`); 0 picks a free port [default: 8081; 0 when --port is 0]
    #[arg(long, value_name = "PORT")]
    pub grpc_port: Option<u16>,

    /// Dynamic batching: join concurrent requests into one runtime call of up to N rows
    /// (the model needs a dynamic first dimension on every input and output) [default: off]
    #[arg(long, value_name = "N")]
    pub max_batch_size: Option<usize>,

    /// With --max-batch-size: how long the first request of a batch may wait for others, in
    /// microseconds [default: 500]
    #[arg(long, value_name = "MICROSECONDS")]
    pub max_queue_delay_us: Option<u64>,

    /// Run each request on its own. By default a worker joins the concurrent requests already
    /// waiting into one runtime call (never waiting for more), for a model whose rows passed the
    /// independence probe at load (config: model.opportunistic_batching)
    #[arg(long)]
    pub no_opportunistic_batching: bool,

    /// Largest accepted request body in bytes [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Seconds in-flight requests get to finish after SIGTERM [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_grace: Option<f64>,

    /// File of inference API keys, one a line (`#` comments); with keys, inference over REST
    /// and gRPC needs `x-api-key: KEY` or `Authorization: Bearer KEY` (probes and /metrics
    /// never do) [env: MODELSHIP_API_KEYS, comma-separated] [default: no keys]
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// TLS certificate chain (PEM) for the HTTP, gRPC and admin listeners; needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client gets to send a request's headers (and finish the TLS handshake) before
    /// the connection is closed [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub header_read_timeout: Option<f64>,

    /// Seconds a request body may pause between bytes; a body must also average
    /// server.min_body_bytes_per_second (default 16384) after the first pause allowed. A slower
    /// one gets 408 and its connection is closed [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub body_read_timeout: Option<f64>,

    /// Open connections per listener; at the cap the oldest connection still waiting for its
    /// client (headers or body) is closed to admit the new one [default: the file limit less 64]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Models kept in memory at once. Past it, the least recently used model that routes all
    /// its traffic to one version is unloaded (never one under rollout); its routing stays, and
    /// the next request for it loads it again, waiting up to server.load_wait_seconds (default
    /// 10) before it is told to retry (503, Retry-After) [default: no bound]
    #[arg(long, value_name = "N")]
    pub max_loaded_models: Option<usize>,

    /// The loaded models' size together, in bytes (each counted at its file size or the resident
    /// memory its load took, whichever is larger); unloads as --max-loaded-models does
    /// [default: no bound]
    #[arg(long, value_name = "BYTES")]
    pub max_loaded_bytes: Option<u64>,

    /// Keep predictions as data: each answer (inputs, outputs, version, routing revision, role,
    /// latency) as Parquet files in DIR or s3://BUCKET/PREFIX, with the labels and rewards posted
    /// for them and a mark on what a rollback stopped. Never in a request's way: a full queue
    /// drops and counts. Read it with `modelship predictions` or DuckDB (config: prediction_log)
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub prediction_log: Option<String>,

    /// The share of each role's predictions the log keeps, e.g. stable=0.01,candidate=1,shadow=1;
    /// roles left out keep everything [default: 1 for every role]
    #[arg(long, value_name = "ROLE=RATE,...", value_parser = parse_sampling)]
    pub prediction_log_sample: Option<SampleRates>,

    /// Requests a model version must answer before it serves; one that fails refuses the
    /// version (at startup: the server exits 1) [default: 2: zeros, then rows drawn to the
    /// model's signature]
    #[arg(long, value_name = "N")]
    pub warmup_requests: Option<usize>,

    /// A V2 inference request (JSON, as POSTed to /v2/models/M/infer) with the model's own
    /// inputs: the first warm-up request (config: model.warmup_sample)
    #[arg(long, value_name = "FILE")]
    pub warmup_sample: Option<PathBuf>,

    /// Seconds to keep accepting after SIGTERM while readiness reports 503 [default: 0]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_delay: Option<f64>,

    /// Log level: error, warn, info, debug or trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// Registry for NAME@ALIAS models: a directory, or s3://bucket/prefix [env: MODELSHIP_REGISTRY]
    #[arg(long, value_name = "DIR|URL")]
    pub registry: Option<PathBuf>,

    /// Seconds between checks of a followed alias [default: 2]
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<f64>,

    /// Admin API address [default: 127.0.0.1]; it always requires the admin token
    #[arg(long, value_name = "HOST")]
    pub admin_host: Option<String>,

    /// Admin API port [default: 8001; 0 when --port is 0]
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,

    /// File holding the admin token (written, mode 0600, when absent and MODELSHIP_ADMIN_TOKEN is
    /// not set) [default: STATE_DIR/admin-token]
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Directory for traffic history [env: MODELSHIP_STATE_DIR] [default: ~/.local/state/modelship]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Where routing revisions are committed: `embedded` (this server's state directory, one
    /// replica), redis://HOST:PORT[/DB], redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE
    /// (the primary Redis Sentinels name, followed through failovers; each write waits for a
    /// replica) or kubernetes[://NAMESPACE] (ConfigMaps and a Lease; the cargo feature
    /// `kubernetes`), shared by every replica of a fleet, which then route from one revisioned
    /// table [env: MODELSHIP_CONTROL_STORE] [default: embedded]
    #[arg(long, value_name = "STORE")]
    pub control_store: Option<String>,

    /// This replica's name in the fleet (unique among live replicas; shown in rollout logs and
    /// reports) [env: MODELSHIP_REPLICA, else POD_NAME] [default: HOSTNAME-PID]
    #[arg(long, value_name = "NAME")]
    pub replica: Option<String>,

    /// Seconds the rollout leader's lease lives unless renewed: when the leading replica dies,
    /// another takes its rollouts over within this time [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub lease_ttl: Option<f64>,

    /// Report this replica not ready once the fleet's control store has not answered for this
    /// many seconds (a load balancer then stops sending it requests until it reaches the store
    /// again); unset, it keeps serving its last routing however long the store is away
    #[arg(long, value_name = "SECONDS")]
    pub unready_without_store: Option<f64>,

    /// Seconds a version replaced by a switch or promotion stays loaded for instant rollback [default: 1800]
    #[arg(long, value_name = "SECONDS")]
    pub keep_warm: Option<f64>,

    /// Path to ONNX Runtime's libonnxruntime.so (overrides ORT_DYLIB_PATH)
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    #[command(flatten)]
    pub convert: ConvertFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Text,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::help_examples::help_examples;

    use super::*;

    fn args(line: &str) -> Vec<String> {
        std::iter::once("modelship").chain(line.split_whitespace()).map(str::to_owned).collect()
    }

    #[test]
    fn common_mistakes_get_a_hint_naming_what_to_write() {
        // (command line, a fragment of the hint; None: clap's own message)
        let cases = [
            ("serve fraud.onnx --version 2", Some("--model-version VERSION")),
            ("serve --model fraud.onnx", Some("the model is the first argument")),
            ("validate fraud.onnx --data d.csv --label y --min auc 0.9", Some("write --min auc=0.9")),
            ("models push fraud f.onnx --version 1 --metric auc 0.9", Some("write --metric auc=0.9")),
            ("serve fraud.onnx --frobnicate", None),
        ];
        for (line, want) in cases {
            let argv = args(line);
            let e = Cli::try_parse_from(&argv).expect_err(line);
            let got = hint(&e, &argv);
            match (&got, want) {
                (Some(h), Some(fragment)) => {
                    assert!(h.contains(fragment), "{line}: {h}");
                    let shown = with_hint(&e.render().to_string(), h);
                    assert!(shown.contains(&format!("tip: {h}")) && !shown.contains("use '--"), "{line}: {shown}");
                }
                (None, None) => {}
                _ => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Every command, subcommand first.
    fn every_command(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            every_command(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_command_says_what_it_is() {
        let mut commands = Vec::new();
        every_command(&Cli::command(), "modelship".to_owned(), &mut commands);
        let mut silent = Vec::new();
        for (path, cmd) in &commands {
            if cmd.get_about().is_none() && path != "modelship" {
                silent.push(format!("{path} (the command)"));
            }
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    silent.push(format!("{path} {}", arg.get_id()));
                }
            }
        }
        assert!(silent.is_empty(), "arguments with no description in --help:\n  {}", silent.join("\n  "));
    }

    #[test]
    fn examples_in_help_are_never_wrapped_on_an_80_column_terminal() {
        let mut commands = Vec::new();
        every_command(&Cli::command(), "modelship".to_owned(), &mut commands);
        let mut broken = Vec::new();
        for (path, cmd) in commands {
            let Some(after) = cmd.get_after_help().map(|h| h.to_string()) else { continue };
            let rendered = cmd.clone().term_width(80).render_help().to_string();
            // Indented lines (examples, YAML, tables) must stay whole; a prose paragraph is one
            // logical line that clap wraps to the terminal.
            // A word longer than a line (a sha256 digest) cannot help it.
            let unbreakable = |l: &str| l.split_whitespace().any(|w| w.chars().count() > 60);
            for line in after.lines().filter(|l| l.starts_with(' ') && !l.trim().is_empty() && !unbreakable(l)) {
                if !rendered.lines().any(|r| r == line) {
                    broken.push(format!("{path}: {line} ({} columns)", line.chars().count()));
                }
            }
        }
        assert!(broken.is_empty(), "indented help lines wrapped at 80 columns (keep them under 80):\n  {}", broken.join("\n  "));
    }

    #[test]
    fn every_deploy_help_example_parses_as_written() {
        let helps = [("deploy", DEPLOY_HELP), ("deploy k8s", K8S_HELP), ("deploy lambda", crate::lambda::DEPLOY_HELP), ("deploy ci", crate::deploy_ci::HELP)];
        for (what, help) in helps {
            let examples = help_examples(help);
            assert!(!examples.is_empty(), "`modelship {what} --help` has no example");
            for argv in examples {
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("`modelship {what} --help`'s example `{}` does not parse:\n{e}", argv.join(" "));
                }
            }
        }
    }

    #[test]
    fn examples_are_split_as_a_shell_would() {
        let help = "Examples:\n  modelship deploy k8s --out deploy/k8s   # rolling\n  modelship deploy ci --a \\\n      --b 'x y'\n  make -f M && sam deploy\n";
        assert_eq!(help_examples(help), [vec!["modelship", "deploy", "k8s", "--out", "deploy/k8s"], vec!["modelship", "deploy", "ci", "--a", "--b", "x y"]]);
    }
}

/// Roles and the share of their predictions the log keeps (`--prediction-log-sample`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleRates(pub Vec<(String, f64)>);

/// `stable=0.01,candidate=1,shadow=1`: roles and the share of their predictions kept.
fn parse_sampling(text: &str) -> Result<SampleRates, String> {
    text.split(',')
        .map(|part| {
            let (role, rate) = part.split_once('=').ok_or_else(|| format!("'{part}' is not ROLE=RATE (e.g. stable=0.01)"))?;
            let role = role.trim();
            if !matches!(role, "stable" | "candidate" | "shadow") {
                return Err(format!("'{role}' is not a role: use stable, candidate or shadow"));
            }
            let rate: f64 = rate.trim().parse().map_err(|_| format!("'{rate}' is not a number between 0 and 1"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{role}={rate}: a rate is between 0 and 1 (0.01 keeps 1 %)"));
            }
            Ok((role.to_owned(), rate))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(SampleRates)
}
