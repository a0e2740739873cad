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
    use modelship_inference::{Backend, LoadOptions};
    use modelship_onnx::OnnxBackend;
    use modelship_protocol::lambda::LambdaResponse;
    use modelship_server::auth::Credentials;
    use modelship_server::model::{LoadedModel, ModelSlot, ModelSpec, Served};
    use modelship_server::pool::PoolConfig;
    use modelship_server::{AppState, Limits};
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
        let api_keys = config.security.api_keys_env.clone();
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            max_tensor_elements: config.max_tensor_elements,
            max_rows: config.max_rows,
            ..Limits::default()
        };
        let state = AppState::with_credentials(limits, Credentials::new(None, &api_keys));
        let spec = ModelSpec {
            name: config.model_name.clone(),
            version: config.model_version.clone(),
            pool: PoolConfig {
                workers: 1,
                max_queue: config.max_queue,
                load: LoadOptions { intra_op_threads: config.intra_op_threads },
                batching: None,
                inline_below: config.inline_below,
            },
        };
        let metrics = Arc::clone(&state.metrics);
        let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(backend, bytes, &spec, &metrics))
            .await
            .context("model loading stopped unexpectedly")?
            .with_context(|| format!("cannot load model {source}"))?;
        tracing::info!(model = %loaded.name, version = %loaded.version, load_seconds = loaded.load_seconds, inputs = ?loaded.info.signature.input_names(), "model loaded");
        state.models.set(&config.model_name, ModelSlot::Ready(Arc::new(Served::single(Arc::new(loaded)))));
        state.health.mark_started();
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
