//! What the deploy crate's test binaries share: where the crate is, the programs
//! `scripts/setup.sh --test` installs into `.cache/VENV`, and the CRD validator.
#![allow(dead_code, reason = "each test binary uses its own part of this module")]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `.cache/VENV/bin/NAME`, or `None` (with the reason on standard error) when it is not
/// installed and nothing requires it; under `MODELSHIP_REQUIRE_TOOLS` (as `scripts/test.sh`
/// sets it) its absence fails the test. `installs` says what the venv holds.
pub fn tool(venv: &str, name: &str, installs: &str) -> Option<PathBuf> {
    let path = manifest_dir().join("../../.cache").join(venv).join("bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{} is missing: run scripts/setup.sh --test (it installs {installs})", path.display());
    assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The Kubernetes tools' Python (kubernetes-validate, jsonschema, cel-python).
pub fn k8s_python() -> Option<PathBuf> {
    tool("k8s-venv", "python", "kubernetes-validate, jsonschema and cel-python")
}

/// `crd_validate.py` on `files` against the vendored CRDs of `tests/schemas/`: whether every
/// object passed, and the report.
pub fn crd_validate(files: &[PathBuf]) -> (bool, String) {
    let python = k8s_python().expect("checked by the caller");
    let out = Command::new(python).arg(manifest_dir().join("tests/crd_validate.py")).arg(manifest_dir().join("tests/schemas")).args(files).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
