//! Finding ONNX Runtime's shared library.

use std::path::{Path, PathBuf};
use std::process::Command;

const LIB_PREFIX: &str = "libonnxruntime.so";

/// ONNX Runtime could not be loaded. The messages say what was tried and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error(
        "ONNX Runtime's shared library ({LIB_PREFIX}) was not found; looked in: {}. \
         Install it with `pip install onnxruntime=={tested}` (modelship finds it in the active Python \
         environment or in ./.venv), or point ORT_DYLIB_PATH (or --ort-lib) at {LIB_PREFIX}.{tested}",
        .searched.join("; "),
        tested = crate::TESTED_ORT_VERSION
    )]
    NotFound { searched: Vec<String> },
    #[error(
        "ONNX Runtime at {} cannot be used: {reason}. modelship needs ONNX Runtime {min} or newer: \
         `pip install onnxruntime=={tested}`, or point ORT_DYLIB_PATH (or --ort-lib) at another {LIB_PREFIX}",
        .path.display(),
        min = crate::MIN_ORT_VERSION,
        tested = crate::TESTED_ORT_VERSION
    )]
    Unusable { path: PathBuf, reason: String },
}

/// Where to look, in order: the explicit path (from `--ort-lib` or `ORT_DYLIB_PATH`; when given,
/// nothing else is tried), beside the executable and in `../lib`, the active virtualenv and
/// `./.venv`, the `onnxruntime` package of `python3` on the PATH, then the system's library path.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, LibraryError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(LibraryError::NotFound { searched: vec![format!("{} (given explicitly; no such file)", path.display())] })
        };
    }
    let mut searched = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join("../lib"));
        dirs.push(exe_dir);
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        dirs.extend(site_packages(Path::new(&venv)));
    }
    dirs.extend(site_packages(Path::new(".venv")));
    for dir in &dirs {
        if let Some(found) = find_in(dir) {
            return Ok(found);
        }
        searched.push(dir.display().to_string());
    }
    match python_package_dir() {
        Some(dir) => {
            if let Some(found) = find_in(&dir) {
                return Ok(found);
            }
            searched.push(dir.display().to_string());
        }
        None => searched.push("python3's onnxruntime package (not installed)".to_owned()),
    }
    for dir in ["/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"] {
        if let Some(found) = find_in(Path::new(dir)) {
            return Ok(found);
        }
    }
    searched.push("the system library directories".to_owned());
    Err(LibraryError::NotFound { searched })
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi`
fn site_packages(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .collect();
    dirs.sort();
    dirs
}

fn python_package_dir() -> Option<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("capi"))
}

/// The ONNX Runtime library in `dir`: `libonnxruntime.so` or a versioned `libonnxruntime.so.1.x.y`
/// (the newest when there are several).
fn find_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == LIB_PREFIX || name.starts_with(&format!("{LIB_PREFIX}."))
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_reported_alone() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so (given explicitly; no such file)"), "{msg}");
        assert!(msg.contains("pip install onnxruntime=="), "{msg}");
    }

    #[test]
    fn finds_versioned_library_in_a_directory() {
        let dir = std::env::temp_dir().join(format!("modelship-lib-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(find_in(&dir), None);
        std::fs::write(dir.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(find_in(&dir), Some(dir.join("libonnxruntime.so.1.31.1")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
