//! The SAM templates, checked the ways AWS would check them, without AWS: `cfn-lint` twice,
//! because neither setup catches everything. cfn-lint 1.53.3 with `aws-sam-translator` turns the
//! SAM transform into CloudFormation and lints the result (it finds, for one, the circular
//! dependency a post-traffic hook that names the alias makes); cfn-lint 1.54 and later dropped
//! the transform and lint the SAM resources themselves against newer schemas (on these templates
//! every breakage tried that the newer one refuses, the older one refuses too; it is kept for
//! the schemas it will know first). Each lives in its
//! own venv (`scripts/setup.sh --test`: `.cache/cfn-lint-sam-venv`, `.cache/cfn-lint-venv`).
//! Without them these tests say so and pass, unless `MODELSHIP_REQUIRE_TOOLS` is set, as
//! `scripts/test.sh` (CI) does.

mod common;

use std::path::{Path, PathBuf};

use common::manifest_dir;
use std::process::Command;

const LINTERS: [&str; 2] = ["cfn-lint-sam-venv", "cfn-lint-venv"];

/// The venv's program (`.cache/VENV`).
fn tool(venv: &str, name: &str) -> Option<PathBuf> {
    common::tool(venv, name, "cfn-lint with and without the SAM translator")
}

/// Every generated template: `tests/golden/lambda-*/lambda/template.yaml`.
fn templates() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path().join("lambda/template.yaml"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected a golden template per Lambda case, found {files:?}");
    files
}

/// Lints `templates` in one run (cfn-lint takes a few seconds to start).
fn lint(cfn_lint: &Path, templates: &[PathBuf]) -> (bool, String) {
    let out = Command::new(cfn_lint).args(["--format", "parseable", "--"]).args(templates).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_template_passes_both_cfn_lint_setups() {
    for venv in LINTERS {
        let Some(cfn_lint) = tool(venv, "cfn-lint") else { return };
        let (ok, findings) = lint(&cfn_lint, &templates());
        assert!(ok && findings.trim().is_empty(), "{venv} refuses a generated template:\n{findings}");
    }
}

#[test]
fn both_setups_refuse_a_broken_template() {
    let template = std::fs::read_to_string(manifest_dir().join("tests/golden/lambda-seed/lambda/template.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // What each setup alone catches, and what both do.
    let breakages = [
        ("a memory size Lambda does not have", "MemorySize: 1024", "MemorySize: 64", [true, true]),
        ("a missing-data rule CloudWatch does not have", "TreatMissingData: \"notBreaching\"", "TreatMissingData: \"sometimes\"", [true, true]),
        ("a runtime that does not exist", "Runtime: \"provided.al2023\"", "Runtime: \"provided.al2099\"", [true, false]),
        ("an architecture that does not exist", "- \"x86_64\"", "- \"arm65\"", [true, false]),
        ("a post-traffic hook that names the alias", "\"Fn::Sub\": \"${Function}:live\"\n          CHECK", "Ref: \"Function.Alias\"\n          CHECK", [true, false]),
    ];
    for (what, from, to, refused_by) in breakages {
        assert!(template.contains(from), "{what}: the template has no {from:?}");
        let broken = dir.path().join("template.yaml");
        std::fs::write(&broken, template.replacen(from, to, 1)).unwrap();
        for (venv, refuses) in LINTERS.iter().zip(refused_by) {
            let Some(cfn_lint) = tool(venv, "cfn-lint") else { return };
            let (ok, findings) = lint(&cfn_lint, std::slice::from_ref(&broken));
            assert_eq!(!ok, refuses, "{venv} on {what}:\n{findings}");
        }
    }
}

#[test]
fn the_hooks_code_is_python_that_compiles() {
    let Some(python) = tool("cfn-lint-sam-venv", "python") else { return };
    let text = std::fs::read_to_string(&templates()[0]).unwrap();
    let template: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let code = template["Resources"]["PreTrafficHook"]["Properties"]["InlineCode"].as_str().unwrap();
    // CloudFormation caps inline code at 4 KB.
    assert!(code.len() < 4096, "the hook is {} bytes", code.len());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.py"), code).unwrap();
    // boto3 is in the venv (the SAM translator needs it) as it is in Lambda's Python runtime.
    let out = Command::new(python).args(["-c", "import index; print(index.handler.__name__, index.check.__name__)"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "handler check");
}

#[test]
fn the_makefile_packages_what_the_template_names() {
    for template in templates() {
        let dir = template.parent().unwrap();
        let out = Command::new("make").args(["-n", "-f"]).arg(dir.join("Makefile")).args(["package", "BOOTSTRAP=/bin/true", "ORT_LIB=/bin/true"]).output().unwrap();
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        assert!(plan.contains("cp /bin/true ") && plan.contains("package/bootstrap") && plan.contains("--strip-all"), "{plan}");
        let text = std::fs::read_to_string(&template).unwrap();
        if text.contains("PackageType: \"Image\"") {
            // The image is built from the package directory the template's Metadata names, with
            // the Dockerfile beside what it copies.
            assert!(text.contains("DockerContext: \"./package\"") && text.contains("Dockerfile: \"Dockerfile\"") && !text.contains("CodeUri"), "{text}");
            assert!(plan.contains("package/Dockerfile"), "{plan}");
            let out = Command::new("make").args(["-n", "-f"]).arg(dir.join("Makefile")).args(["image", "BOOTSTRAP=/bin/true", "ORT_LIB=/bin/true", "TOOLS_IMAGE=base:1"]).output().unwrap();
            let plan = String::from_utf8_lossy(&out.stdout);
            assert!(plan.contains("docker build --platform linux/amd64 -t nepse:0.1.0 --build-arg TOOLS_IMAGE=base:1 ") && plan.trim_end().ends_with("package"), "{plan}");
            let hadolint = manifest_dir().join("../../.cache/hadolint-venv/bin/hadolint");
            if hadolint.exists() || std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_some() {
                let out = Command::new(&hadolint).arg(dir.join("Dockerfile")).output().unwrap();
                assert!(out.status.success(), "hadolint: {}", String::from_utf8_lossy(&out.stdout));
            }
        } else {
            assert!(text.contains("CodeUri: \"package/\""), "{text}");
        }
    }
}
