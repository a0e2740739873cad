//! `modelship serve`: load one model and serve it until SIGTERM/SIGINT. The configuration is
//! resolved here and in [`crate::startup`]; the server is composed by `modelship_server::Config::build`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use modelship_inference::Backend;
use modelship_onnx::OnnxBackend;
use modelship_server::BuildError;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::config::{self, ProcessEnv, ServeConfig};

pub fn main(args: ServeArgs) -> ExitCode {
    let started = Instant::now();
    let env = ProcessEnv;
    let mut file = match config::config_path(&args, &env) {
        Some(path) => match config::load_file(&path) {
            Ok(raw) => raw,
            Err(e) => return usage_error(&e.to_string()),
        },
        None => config::RawConfig::default(),
    };
    // A Triton model repository's models join the list (read here: `resolve` reads no files).
    if let Some(dir) = args.model_repository.clone().or_else(|| file.model_repository.clone()) {
        match crate::model_repository::read(&dir) {
            Ok(models) => file.models.extend(models),
            Err(e) => return usage_error(&format!("{e:#}")),
        }
    }
    let config = match config::resolve(file, &env, &args) {
        Ok(c) => c,
        Err(e) => return usage_error(&e.to_string()),
    };
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("modelship-io").build() {
        Ok(rt) => rt,
        Err(e) => return failure(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(config, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(&e),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn failure(error: &anyhow::Error) -> ExitCode {
    tracing::error!(error = %format!("{error:#}"), "modelship stopped");
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

async fn run(config: ServeConfig, started: Instant) -> anyhow::Result<()> {
    // Signals are watched from the start: SIGTERM during a long model load stops the server too.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let onnx = OnnxBackend::new(config.ort_lib.as_deref())?;
    tracing::info!(library = %onnx.library().display(), "ONNX Runtime loaded");
    let backend: Arc<dyn Backend> = Arc::new(onnx);
    let server = crate::startup::server_config(&config, &backend, started).await?;
    let app = match server.build(backend, &shutdown).await {
        Ok(app) => app,
        Err(BuildError::Stopped) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The one machine-readable line on standard output: where the server listens, once ready.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", app.ready_line());
        let _ = stdout.flush();
    }
    app.run_until(shutdown.cancelled()).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
