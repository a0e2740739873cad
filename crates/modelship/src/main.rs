//! The `modelship` command: parses arguments, reads configuration, installs logging, and hands
//! over to the library crates. Only this crate uses `anyhow`.

mod cli;
mod config;
mod controller;
mod convert;
mod deploy;
mod deploy_ci;
mod deploy_preflight;
mod features;
mod healthcheck;
#[cfg(test)]
mod help_examples;
mod lambda;
mod logging;
mod model_repository;
mod models;
mod predict;
mod predictions;
mod registry_config;
mod rollout;
mod serve;
mod startup;
mod table_file;
mod traffic;
mod validate;

use std::process::ExitCode;

// mimalloc, not glibc's malloc: a request allocates and frees many small buffers across
// threads, and glibc's allocator was ~15 % of the server's CPU per request (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Lambda runs a custom runtime's `bootstrap` with no arguments.
    if lambda::is_bootstrap() {
        return lambda::main();
    }
    let cli = cli::parse();
    match cli.command {
        cli::Command::Serve(args) => serve::main(*args),
        cli::Command::Models(args) => models::main(args),
        cli::Command::Traffic(args) => traffic::main(args),
        cli::Command::Rollout(args) => rollout::main(args),
        cli::Command::Features(args) => features::main(args),
        cli::Command::Validate(args) => validate::main(*args),
        cli::Command::Deploy(args) => deploy::main(args),
        cli::Command::Healthcheck(args) => healthcheck::main(&args),
        cli::Command::Lambda => lambda::main(),
        cli::Command::Controller(args) => controller::main(*args),
        cli::Command::Convert(args) => convert::main(args),
        cli::Command::Predictions(args) => predictions::main(args),
        cli::Command::Predict(args) => predict::main(*args),
    }
}

/// Runs a command's async body on a small runtime; prints its error (with causes) and exits 1 on
/// failure.
pub fn run_command(body: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_command_with_code(async { body.await.map(|()| ExitCode::SUCCESS) })
}

/// [`run_command`] for a body that decides its own exit code (an outcome, not an error).
pub fn run_command_with_code(body: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
