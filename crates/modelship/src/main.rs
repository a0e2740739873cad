//! The `modelship` command: parses arguments, reads configuration, installs logging, and hands
//! over to the library crates. Only this crate uses `anyhow`.

mod cli;
mod config;
mod deploy;
mod deploy_ci;
mod features;
mod healthcheck;
mod logging;
mod models;
mod registry_config;
mod rollout;
mod serve;
mod table_file;
mod traffic;
mod validate;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Serve(args) => serve::main(*args),
        cli::Command::Models(args) => models::main(args),
        cli::Command::Traffic(args) => traffic::main(args),
        cli::Command::Rollout(args) => rollout::main(args),
        cli::Command::Features(args) => features::main(args),
        cli::Command::Validate(args) => validate::main(*args),
        cli::Command::Deploy(args) => deploy::main(args),
        cli::Command::Healthcheck(args) => healthcheck::main(&args),
    }
}

/// Runs a command's async body on a small runtime; prints its error (with causes) and exits 1 on
/// failure.
pub fn run_command(body: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
