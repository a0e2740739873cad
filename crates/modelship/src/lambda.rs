//! `modelship lambda`, which is what the binary does when it is named `bootstrap`: the AWS Lambda
//! custom runtime (`provided.al2023`). Cold start resolves the model (a file in the package, by
//! default `$LAMBDA_TASK_ROOT/model.onnx`, or an artifact from the registry's S3 store, its digest
//! checked) and loads it; then the Runtime API (`lambda_runtime`) hands over one event at a time,
//! and `modelship_server::lambda::invoke` answers it through the same pipeline as HTTP.
//!
//! A failed cold start is reported to the Runtime API's `/init/error` (Lambda shows it as the
//! function's init error and retries on the next invocation), then the process exits 1.
//! Each invocation writes one CloudWatch embedded-metric line to standard output (5xx and 4xx
//! answers and the latency, by function and version): what the SAM template's rollback alarm on
//! server errors reads, since a 5xx answer is not a Lambda error.

use clap::{Args, ValueEnum};

use crate::cli::DeployOptions;

/// `modelship lambda --help`.
pub const HELP: &str = "\
Inside Lambda (provided.al2023) or its Runtime Interface Emulator: loads the model once at cold \
start, then answers each event through the same pipeline as `serve` answers HTTP. Events: API \
Gateway REST and HTTP API proxy events and function URLs (POST /predict, /v1/predict, \
/v2/models/{m}/infer), or a direct invocation whose payload is the body ({\"features\": [[...]]}, \
{\"inputs\": [...]}, or the seed's {\"body\": \"...\"}). Every answer is a proxy response \
{\"statusCode\", \"headers\", \"body\"}; a bad event is a 4xx with {\"error\"}, never a crash. \
Needs the cargo feature `lambda` (`modelship deploy lambda` writes a Makefile that builds it).

The model, from the environment (or the CONFIG_PATH file, as for `serve`):
  MODEL_PATH                 a file [default: $LAMBDA_TASK_ROOT/model.onnx,
                             packaged beside it]
  MODELSHIP_ARTIFACTS, MODELSHIP_MODEL_DIGEST
                             or s3://bucket/prefix and sha256:HEX: fetched at
                             cold start from the registry's artifact store,
                             the digest checked (AWS credentials from the
                             function's role)
  MODEL_NAME, MODEL_VERSION  what answers report [default: model, 1]

A cold start that fails (no model, a corrupt artifact) is reported to Lambda as the init error.

Examples:
  # Lambda runs it with no arguments
  cp target/release/modelship package/bootstrap
  # the emulator; then POST an event to
  # http://localhost:8080/2015-03-31/functions/function/invocations
  aws-lambda-rie ./package/bootstrap
  aws lambda invoke --function-name nepse:live \\
      --payload '{\"features\": [[0.1, 0.2, 1.1, 0.02]]}' out.json";

/// `modelship deploy lambda --help`.
pub const DEPLOY_HELP: &str = "\
Writes into --out:
  template.yaml  the SAM template: the function (runtime provided.al2023,
                 bootstrap = modelship built with --features lambda, one
                 architecture, memory, timeout), its API event (POST /predict,
                 /v1/predict, /v2/models/{model}/infer on a REST API, an HTTP
                 API, or a function URL), AutoPublishAlias with provisioned
                 concurrency, a DeploymentPreference (a CodeDeploy preset)
                 rolled back by alarms on the new version's Lambda errors, its
                 5xx answers and its p99 duration, and pre/post traffic hooks
                 that send the check request and a bad one to the new version
                 (then the alias) and tell CodeDeploy; with the model in S3,
                 read access to its prefix only; reserved concurrency when
                 set and an SQS dead-letter queue for failed asynchronous
                 invocations
  Makefile       `make -f OUT/Makefile package` builds the bootstrap for the
                 architecture, takes ONNX Runtime's library from the
                 onnxruntime wheel and lays out OUT/package/
  Dockerfile     with --package image: the container image FROM scratch
                 (`make -f OUT/Makefile image`, or sam build), the bootstrap
                 as its entrypoint; PackageType: Image in the template
Nothing here talks to AWS: then `sam deploy --template-file OUT/template.yaml --guided`.

The description's lambda section (every key optional; the seed's values are the defaults):
  lambda:
    # or arm64 (Graviton: cross-built with aarch64-linux-gnu-gcc)
    architecture: x86_64
    memory: 1024                  # MB, 128-10240
    timeout: 30s                  # at most 900s
    api: rest                     # rest | http | url
    package: zip                  # zip | image (a container image, up to 10 GB)
    provisioned_concurrency: 5    # 0: none
    reserved_concurrency: 0       # the most instances at once; 0: none
    dead_letter_queue: true       # failed asynchronous invocations kept in SQS
    alias: live
    # Canary10Percent5Minutes, AllAtOnce, ...
    deployment: Linear10PercentEvery1Minute
    alarms: {server_errors: 0, latency_p99_ms: 1000}
    # default: zeros, the model's input width
    check: {features: [[0.01, -0.02, 1.3, 0.017]]}
    # else model.file is packaged
    artifact: {store: s3://models/nepse, digest: sha256:HEX}

Examples:
  modelship deploy lambda --model models/nepse.onnx --name nepse \\
      --out deploy/lambda
  modelship deploy lambda --file deploy.yaml --architecture arm64 \\
      --deployment Canary10Percent5Minutes
  modelship deploy lambda --name nepse --artifacts s3://models/nepse \\
      --digest sha256:608b7f20c1d1e3f0a5b6c7d8e9f00112233445566778899aabbccddeeff00112 \\
      --check '[[0, 0, 1, 0]]'
  make -f deploy/lambda/Makefile package && \\
      sam deploy --template-file deploy/lambda/template.yaml --guided";

#[derive(Debug, Clone, Args)]
pub struct LambdaOptions {
    #[command(flatten)]
    pub common: DeployOptions,
    /// The function's architecture [default: the description's, x86_64]
    #[arg(long, value_enum)]
    pub architecture: Option<ArchitectureArg>,
    /// Memory in MB, 128-10240 [default: 1024]
    #[arg(long, value_name = "MB")]
    pub memory: Option<u32>,
    /// Timeout, e.g. 30s [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// What fronts the function [default: rest]
    #[arg(long, value_enum)]
    pub api: Option<ApiArg>,
    /// zip (the bootstrap as a custom runtime) or image (a container image FROM scratch, up to
    /// 10 GB: large models) [default: zip]
    #[arg(long, value_enum)]
    pub package: Option<PackageArg>,
    /// Provisioned concurrency on the alias; 0 for none [default: 5]
    #[arg(long, value_name = "N")]
    pub provisioned_concurrency: Option<u32>,
    /// The CodeDeploy preset, e.g. Linear10PercentEvery1Minute, Canary10Percent5Minutes, AllAtOnce
    #[arg(long, value_name = "PRESET")]
    pub deployment: Option<String>,
    /// The registry's artifact store holding the model, s3://bucket/prefix (with --digest)
    #[arg(long, value_name = "URL", requires = "digest")]
    pub artifacts: Option<String>,
    /// The model's digest in the artifact store, sha256:HEX (`modelship models show REF --output json`)
    #[arg(long, value_name = "DIGEST", requires = "artifacts")]
    pub digest: Option<String>,
    /// The rows the traffic hooks send (JSON), e.g. '[[0.1, 0.2, 1.1, 0.02]]'
    #[arg(long, value_name = "JSON")]
    pub check: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchitectureArg {
    #[value(name = "x86_64")]
    X86_64,
    Arm64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PackageArg {
    Zip,
    Image,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiArg {
    Rest,
    Http,
    Url,
}

#[cfg(not(feature = "lambda"))]
pub fn main() -> std::process::ExitCode {
    eprintln!(
        "error: this modelship was built without AWS Lambda support; build the bootstrap with \
         `cargo build --release -p modelship --features lambda` (or `make -f DIR/Makefile package` \
         after `modelship deploy lambda`)"
    );
    std::process::ExitCode::from(2)
}

#[cfg(feature = "lambda")]
pub use runtime::main;

/// Whether this process is a Lambda function's `bootstrap` (Lambda runs it with no arguments).
pub fn is_bootstrap() -> bool {
    let mut args = std::env::args_os();
    let name = args.next().map(std::path::PathBuf::from);
    args.next().is_none() && name.as_deref().and_then(std::path::Path::file_name).is_some_and(|n| n == "bootstrap")
}

#[cfg(feature = "lambda")]
mod runtime {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use anyhow::{Context, bail};
    use lambda_runtime::{LambdaEvent, service_fn};
    use modelship_inference::Backend;
    use modelship_onnx::OnnxBackend;
    use modelship_protocol::lambda::LambdaResponse;
    use modelship_server::{AppState, Credentials, Model};
    use serde_json::{Value, json};

    use crate::cli::ServeArgs;
    use crate::config::{self, Env, ProcessEnv, ServeConfig};

    pub fn main() -> ExitCode {
        let started = Instant::now();
        let config = match configure() {
            Ok(c) => c,
            Err(e) => return init_failed(&e),
        };
        crate::logging::init(&config.log);
        // One event at a time per instance: one reactor thread, one inference worker.
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().thread_name("modelship-lambda").build() {
            Ok(rt) => rt,
            Err(e) => return init_failed(&anyhow::anyhow!("cannot start the async runtime: {e}")),
        };
        runtime.block_on(async move {
            let (state, source) = match cold_start(&config).await {
                Ok(ready) => ready,
                Err(e) => return init_failed(&e),
            };
            let init_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(model = %config.model_name, source = %source, init_ms, "cold start done; waiting for events");
            let metrics = Metrics::from_env();
            let handler = service_fn(move |event: LambdaEvent<Value>| {
                let (state, metrics) = (state.clone(), metrics.clone());
                async move {
                    let received = Instant::now();
                    let answer = modelship_server::lambda::invoke(&state, event.payload, Some(&event.context.request_id)).await;
                    metrics.emit(&answer, received);
                    Ok::<LambdaResponse, lambda_runtime::Error>(answer)
                }
            });
            match lambda_runtime::run(handler).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "the Lambda runtime loop stopped");
                    ExitCode::FAILURE
                }
            }
        })
    }

    /// The serving config: the seed's layers (`CONFIG_PATH` file < environment), with the
    /// packaged `model.onnx` as the model when neither names one.
    fn configure() -> anyhow::Result<ServeConfig> {
        let args = ServeArgs::default();
        let file = match config::config_path(&args, &ProcessEnv) {
            Some(path) => config::load_file(&path)?,
            None => config::RawConfig::default(),
        };
        let packaged = (file.model.path.is_none() && ProcessEnv.get("MODEL_PATH").is_none()).then(|| {
            let root = ProcessEnv.get("LAMBDA_TASK_ROOT").unwrap_or_else(|| ".".to_owned());
            Path::new(&root).join("model.onnx").to_string_lossy().into_owned()
        });
        let env = LambdaEnv { packaged };
        let mut config = config::resolve(file, &env, &args)?;
        if config.features.is_some() {
            bail!("features (a feature store) are not available on Lambda: requests carry their features; drop the config's features section");
        }
        config.workers = 1;
        if config.batching.take().is_some() {
            tracing::warn!("dynamic batching is off on Lambda: an instance gets one event at a time");
        }
        Ok(config)
    }

    /// The process environment, plus the packaged model's path when the configuration names no
    /// model (its name is then `model`, from the file, unless `MODEL_NAME` says otherwise).
    struct LambdaEnv {
        packaged: Option<String>,
    }

    impl Env for LambdaEnv {
        fn get(&self, key: &str) -> Option<String> {
            ProcessEnv.get(key).or_else(|| if key == "MODEL_PATH" { self.packaged.clone() } else { None })
        }
    }

    /// Reads and loads the model; the state every invocation shares.
    async fn cold_start(config: &ServeConfig) -> anyhow::Result<(AppState, String)> {
        let (bytes, source) = model_bytes(config).await?;
        let onnx = OnnxBackend::new(config.ort_lib.as_deref())?;
        tracing::info!(library = %onnx.library().display(), "ONNX Runtime loaded");
        let backend: Arc<dyn Backend> = Arc::new(onnx);
        let model = Model {
            name: config.model_name.clone(),
            version: config.model_version.clone(),
            bytes,
            warm_up: crate::startup::warm_up(config)?,
            described_as: source.clone(),
            limits: Default::default(),
            declared: None,
        };
        // Inference API keys only: a function has no admin API.
        let credentials = Credentials::new(None, &config.security.api_keys_env);
        let state = modelship_server::build_direct(&crate::startup::settings(config), credentials, model, backend).await?;
        Ok((state, source))
    }

    /// The model's bytes: from the artifact store by digest (`MODELSHIP_MODEL_DIGEST` with
    /// `MODELSHIP_ARTIFACTS`), else the file.
    async fn model_bytes(config: &ServeConfig) -> anyhow::Result<(Arc<[u8]>, String)> {
        let env = ProcessEnv;
        if let Some(digest) = env.get("MODELSHIP_MODEL_DIGEST") {
            let location = env.get("MODELSHIP_ARTIFACTS").context(
                "MODELSHIP_MODEL_DIGEST names the model, but MODELSHIP_ARTIFACTS (s3://bucket/prefix, where `modelship models push` put it) is not set",
            )?;
            let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
                bail!("MODELSHIP_MODEL_DIGEST '{digest}' is not sha256: and 64 lowercase hex digits");
            }
            let store = if location.starts_with("s3://") {
                modelship_registry::artifacts::ArtifactStore::open(&location, Path::new("."))?
            } else {
                modelship_registry::artifacts::ArtifactStore::local(&PathBuf::from(&location))?
            };
            let started = Instant::now();
            let bytes = store
                .get(hex, &modelship_registry::NoProgress)
                .await
                .with_context(|| format!("cannot fetch the model sha256:{hex} from {location}"))?;
            tracing::info!(digest = %format!("sha256:{hex}"), store = %location, bytes = bytes.len(), fetch_ms = started.elapsed().as_secs_f64() * 1000.0, "model fetched, digest verified");
            return Ok((bytes.to_vec().into(), format!("{location} sha256:{hex}")));
        }
        let path = &config.model_path;
        let bytes = std::fs::read(path).with_context(|| {
            format!("cannot read the model {} (package it as model.onnx beside the bootstrap, set MODEL_PATH, or set MODELSHIP_ARTIFACTS and MODELSHIP_MODEL_DIGEST)", path.display())
        })?;
        if bytes.is_empty() {
            bail!("the model file {} is empty", path.display());
        }
        Ok((bytes.into(), path.display().to_string()))
    }

    /// Tells Lambda the cold start failed (`/runtime/init/error`), then exits 1.
    fn init_failed(error: &anyhow::Error) -> ExitCode {
        let message = format!("{error:#}");
        tracing::error!(error = %message, "cold start failed");
        eprintln!("error: {message}");
        match std::env::var("AWS_LAMBDA_RUNTIME_API") {
            Ok(api) => {
                let url = format!("http://{api}/2018-06-01/runtime/init/error");
                let body = json!({"errorType": "Runtime.InitError", "errorMessage": message}).to_string();
                let sent = ureq::post(&url).header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError").content_type("application/json").send(body.as_str());
                if let Err(e) = sent {
                    eprintln!("error: cannot report the init error to the Lambda Runtime API at {api}: {e}");
                }
            }
            Err(_) => eprintln!("note: AWS_LAMBDA_RUNTIME_API is not set, so this is not running in Lambda (or its emulator); nothing to report to"),
        }
        ExitCode::FAILURE
    }

    /// The embedded-metric line each invocation writes (CloudWatch makes metrics of it).
    #[derive(Clone)]
    struct Metrics {
        function: String,
        version: String,
    }

    impl Metrics {
        fn from_env() -> Metrics {
            let get = |k: &str| ProcessEnv.get(k).unwrap_or_else(|| "unknown".to_owned());
            Metrics { function: get("AWS_LAMBDA_FUNCTION_NAME"), version: get("AWS_LAMBDA_FUNCTION_VERSION") }
        }

        fn emit(&self, answer: &LambdaResponse, received: Instant) {
            use std::io::Write;
            let status = answer.status_code;
            let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let line = json!({
                "_aws": {
                    "Timestamp": timestamp,
                    "CloudWatchMetrics": [{
                        "Namespace": modelship_deploy::lambda::METRICS_NAMESPACE,
                        "Dimensions": [["FunctionName", "Version"]],
                        "Metrics": [
                            {"Name": "ServerErrors", "Unit": "Count"},
                            {"Name": "ClientErrors", "Unit": "Count"},
                            {"Name": "Latency", "Unit": "Milliseconds"},
                        ],
                    }],
                },
                "FunctionName": self.function,
                "Version": self.version,
                "ServerErrors": u8::from(status >= 500),
                "ClientErrors": u8::from((400..500).contains(&status)),
                "Latency": received.elapsed().as_secs_f64() * 1000.0,
                "status": status,
            });
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}
