//! The `modelship` command: parses arguments, reads configuration, installs logging, and hands
//! over to the library crates. Only this crate uses `anyhow`.

mod cli;
mod config;
mod features;
mod logging;
mod models;
mod registry_config;
mod rollout;
mod serve;
mod traffic;

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
    }
}
