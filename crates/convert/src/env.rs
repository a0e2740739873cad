//! The Python environments conversions run in: which packages (pure: [`Spec`]), and the
//! virtual environments modelship creates from PyPI under its home (`envs/<name>`), or one the
//! user points at (`--python`).
//!
//! A pickle must be loaded by the scikit-learn that wrote it: the default environment has
//! [`DEFAULT_SKLEARN`]; a pickle that records another version gets (or is refused, naming)
//! `envs/scikit-learn-<version>`, the same converters with that scikit-learn.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::ConvertError;

/// The scikit-learn of the default environment (MLServer's scikit-learn runtime in the peer
/// benchmark uses the same).
pub const DEFAULT_SKLEARN: &str = "1.9.1";

/// The converters and the libraries that read the models, pinned: a conversion is repeatable
/// only with the same versions. `xgboost-cpu` is XGBoost without the CUDA libraries (230 MB less).
const CONVERTERS: [&str; 9] = [
    "skl2onnx==1.20.0",
    "onnxmltools==1.16.0",
    "onnx==1.23.2",
    "xgboost-cpu==3.2.0",
    "lightgbm==4.7.0",
    "joblib==1.6.0",
    // onnxmltools imports it without declaring it; MLflow's sklearn flavour pickles with it.
    "packaging==26.4",
    "cloudpickle==3.1.3",
    // MLflow's sklearn flavour saves with skops by default.
    "skops==0.16.0",
];

/// The default environment's scientific stack, pinned too.
const DEFAULT_STACK: [&str; 4] = ["numpy==2.4.6", "scipy==1.17.1", "pandas==3.1.1", "protobuf==7.36.2"];

/// The oldest scikit-learn skl2onnx 1.20 converts.
const OLDEST_SKLEARN: (u32, u32) = (1, 1);

/// What goes into one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The directory name under `envs/`: `default` or `scikit-learn-<version>`.
    pub name: String,
    pub sklearn: String,
    /// Whether the model needs this scikit-learn (a pickle of scikit-learn estimators), or only
    /// the converters (XGBoost and LightGBM models): decides whether `--python`'s must match.
    pub needs_sklearn: bool,
    /// pip requirements, pinned.
    pub requirements: Vec<String>,
}

impl Spec {
    /// The default environment.
    pub fn default_env() -> Spec {
        let mut requirements = vec![format!("scikit-learn=={DEFAULT_SKLEARN}")];
        requirements.extend(CONVERTERS.iter().map(|s| (*s).to_owned()));
        requirements.extend(DEFAULT_STACK.iter().map(|s| (*s).to_owned()));
        Spec { name: "default".to_owned(), sklearn: DEFAULT_SKLEARN.to_owned(), needs_sklearn: true, requirements }
    }

    /// The default environment for a model that loads no scikit-learn estimator.
    pub fn converters_only() -> Spec {
        Spec { needs_sklearn: false, ..Spec::default_env() }
    }

    /// Every pin of every environment this build makes: part of the conversion cache's key.
    pub fn pins() -> String {
        format!("{DEFAULT_SKLEARN}|{}|{}", CONVERTERS.join(","), DEFAULT_STACK.join(","))
    }

    /// The environment for pickles written by scikit-learn `version`: the default one when it is
    /// the default's version. Refused for a version that is not a plain release number (it
    /// becomes a directory name) or older than the converters take.
    pub fn for_sklearn(version: &str) -> Result<Spec, String> {
        if version == DEFAULT_SKLEARN {
            return Ok(Spec::default_env());
        }
        let (major, minor) = parse_release(version).ok_or_else(|| format!("{version:?} is not a scikit-learn release number like 1.5.2"))?;
        if (major, minor) < OLDEST_SKLEARN {
            return Err(format!(
                "scikit-learn {version} is older than skl2onnx converts (>= {}.{}): load the model with a newer scikit-learn and pickle it again",
                OLDEST_SKLEARN.0, OLDEST_SKLEARN.1
            ));
        }
        let mut requirements = vec![format!("scikit-learn=={version}")];
        requirements.extend(CONVERTERS.iter().map(|s| (*s).to_owned()));
        // scikit-learn before 1.4.2 was built against NumPy 1 and does not import under NumPy 2.
        if (major, minor) < (1, 4) || version.starts_with("1.4.0") || version.starts_with("1.4.1") {
            requirements.push("numpy<2".to_owned());
        }
        requirements.push("pandas".to_owned());
        Ok(Spec { name: format!("scikit-learn-{version}"), sklearn: version.to_owned(), needs_sklearn: true, requirements })
    }
}

/// `1.5.2` → (1, 5); only digits and dots, two or three parts.
fn parse_release(version: &str) -> Option<(u32, u32)> {
    let parts: Vec<&str> = version.split('.').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some((parts[0].parse().ok()?, parts[1].parse().ok()?))
}

/// An interpreter ready to convert: where it is, what it can see, what it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Env {
    /// `default`, `scikit-learn-1.5.2`, or `--python PATH`.
    pub name: String,
    pub python: PathBuf,
    pub python_version: String,
    /// Directories the interpreter reads (its prefixes and `sys.path`): bound read-only into
    /// the sandbox.
    pub paths: Vec<PathBuf>,
    /// Distribution name → version.
    pub libraries: BTreeMap<String, String>,
    /// What it was created with (a managed environment): one created with other pins (an
    /// earlier modelship) is created again.
    #[serde(default)]
    pub requirements: Vec<String>,
}

impl Env {
    pub fn sklearn(&self) -> Option<&str> {
        self.libraries.get("scikit-learn").map(String::as_str)
    }
}

#[derive(Deserialize)]
struct Described {
    executable: PathBuf,
    python_version: String,
    paths: Vec<PathBuf>,
    libraries: BTreeMap<String, String>,
}

/// Asks an interpreter (a trusted one: an environment modelship made, or the user's own)
/// what it is.
pub fn describe(name: &str, python: &Path) -> Result<Env, ConvertError> {
    // The converter's own `describe`, the script read from standard input.
    let output = (|| {
        use std::io::Write as _;
        let mut child = Command::new(python)
            .args(["-I", "-", "describe"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().map(|mut stdin| stdin.write_all(crate::SCRIPT.as_bytes())).transpose()?;
        child.wait_with_output()
    })()
    .map_err(|e| ConvertError::Environment(format!("cannot run {}: {e}", python.display())))?;
    if !output.status.success() {
        return Err(ConvertError::Environment(format!("{} failed: {}", python.display(), tail(&output.stderr))));
    }
    let d: Described = serde_json::from_slice(&output.stdout)
        .map_err(|e| ConvertError::Environment(format!("{} did not describe itself: {e}", python.display())))?;
    // What the sandbox may show: never `/`, the home directory or a directory above it (a
    // prefix or a .pth entry there would expose every file of the user's).
    let home = std::env::var_os("HOME").and_then(|h| std::fs::canonicalize(h).ok());
    let exposes = |p: &Path| p == Path::new("/") || home.as_deref().is_some_and(|h| h.starts_with(p));
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in d.paths {
        let Ok(p) = std::fs::canonicalize(&p) else { continue };
        if exposes(&p) {
            tracing::warn!(path = %p.display(), python = %python.display(), "not shown to the converter: it would show the home directory");
            continue;
        }
        if p.is_dir() && !paths.iter().any(|q| p.starts_with(q)) {
            paths.retain(|q| !q.starts_with(&p));
            paths.push(p);
        }
    }
    // The interpreter as it ran: an absolute path (`python3` is looked up here, on this PATH;
    // the sandbox has another). A virtual environment's `bin/python` stays itself (not the
    // interpreter it links to), so that the environment is found.
    let executable = match (d.executable.parent().and_then(|p| std::fs::canonicalize(p).ok()), d.executable.file_name()) {
        (Some(dir), Some(file)) => dir.join(file),
        _ => d.executable,
    };
    Ok(Env { name: name.to_owned(), python: executable, python_version: d.python_version, paths, libraries: d.libraries, requirements: Vec::new() })
}

/// The last lines of a process's output, for an error message.
pub(crate) fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let joined = lines[start..].join(" | ");
    if joined.len() > 600 { format!("...{}", &joined[joined.len() - 600..]) } else { joined }
}

/// The environments under `<home>/envs`.
pub struct Envs {
    dir: PathBuf,
}

impl Envs {
    pub fn new(home: &Path) -> Envs {
        Envs { dir: home.join("envs") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The environment, when it was created completely (its `modelship-env.json` is written last).
    pub fn find(&self, spec: &Spec) -> Option<Env> {
        let env = self.read(&self.dir.join(&spec.name))?;
        (env.python.exists() && env.requirements == spec.requirements).then_some(env)
    }

    /// An environment's record, with its interpreter where the directory really is (`envs` may
    /// be a link, and the sandbox binds real paths).
    fn read(&self, dir: &Path) -> Option<Env> {
        let record = std::fs::read(dir.join("modelship-env.json")).ok()?;
        let mut env: Env = serde_json::from_slice(&record).ok()?;
        env.python = std::fs::canonicalize(dir).ok()?.join("bin").join("python");
        Some(env)
    }

    /// Every complete environment.
    pub fn list(&self) -> Vec<Env> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut envs: Vec<Env> = entries.flatten().filter_map(|e| self.read(&e.path())).collect();
        envs.sort_by(|a: &Env, b: &Env| a.name.cmp(&b.name));
        envs
    }

    /// Creates the environment from PyPI with `base_python -m venv` and pip (one process at a
    /// time per environment: a lock file beside it). `say` gets one line per step.
    pub fn create(&self, spec: &Spec, base_python: &Path, say: &dyn Fn(&str)) -> Result<Env, ConvertError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ConvertError::Environment(format!("cannot create {}: {e}", self.dir.display())))?;
        let lock = std::fs::File::create(self.dir.join(format!("{}.lock", spec.name)))
            .map_err(|e| ConvertError::Environment(format!("cannot lock {}: {e}", self.dir.display())))?;
        lock.lock().map_err(|e| ConvertError::Environment(format!("cannot lock {}: {e}", self.dir.display())))?;
        if let Some(env) = self.find(spec) {
            return Ok(env);
        }
        let dir = self.dir.join(&spec.name);
        let _ = std::fs::remove_dir_all(&dir);
        say(&format!("creating the conversion environment {} with {} (python -m venv)", dir.display(), base_python.display()));
        run_step(Command::new(base_python).args(["-m", "venv"]).arg(&dir), "python -m venv")?;
        let python = std::fs::canonicalize(&dir).map_err(|e| ConvertError::Environment(format!("{}: {e}", dir.display())))?.join("bin").join("python");
        say(&format!("installing {} from PyPI (once; a minute or two)", spec.requirements.join(" ")));
        run_step(
            Command::new(&python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", "--only-binary=:all:"])
                .args(&spec.requirements),
            "pip install",
        )
        .map_err(|e| ConvertError::Environment(format!("{e}; no wheels for Python on this machine? create the environment with another interpreter: modelship convert setup --scikit-learn {} --base-python python3.X", spec.sklearn)))?;
        let mut env = describe(&spec.name, &python)?;
        env.requirements = spec.requirements.clone();
        let record = serde_json::to_vec_pretty(&env).map_err(|e| ConvertError::Environment(e.to_string()))?;
        // Written last, whole: an environment without it is not one (`find`).
        let staged = dir.join(format!("modelship-env.json.{}", std::process::id()));
        std::fs::write(&staged, record)
            .and_then(|()| std::fs::rename(&staged, dir.join("modelship-env.json")))
            .map_err(|e| ConvertError::Environment(format!("cannot write {}: {e}", dir.display())))?;
        say(&format!("conversion environment {} ready: Python {}, scikit-learn {}", spec.name, env.python_version, env.sklearn().unwrap_or("?")));
        Ok(env)
    }
}

fn run_step(command: &mut Command, what: &str) -> Result<(), ConvertError> {
    let output = command.output().map_err(|e| ConvertError::Environment(format!("{what}: cannot start: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ConvertError::Environment(format!("{what} failed: {}", tail(&output.stderr))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_for_scikit_learn_versions() {
        let d = Spec::for_sklearn(DEFAULT_SKLEARN).unwrap();
        assert_eq!(d.name, "default");
        assert!(d.requirements.iter().any(|r| r == "numpy==2.4.6"));
        let old = Spec::for_sklearn("1.5.2").unwrap();
        assert_eq!(old.name, "scikit-learn-1.5.2");
        assert_eq!(old.requirements[0], "scikit-learn==1.5.2");
        assert!(!old.requirements.iter().any(|r| r.starts_with("numpy")));
        assert!(Spec::for_sklearn("1.3.2").unwrap().requirements.iter().any(|r| r == "numpy<2"));
        assert!(Spec::for_sklearn("1.4.1.post1").is_err());
        for bad in ["../x", "1", "1.5.2; rm -rf", "", "1..2", "0.24.2", "1.0.2"] {
            assert!(Spec::for_sklearn(bad).is_err(), "{bad}");
        }
        assert!(Spec::for_sklearn("0.24.2").unwrap_err().contains("older than skl2onnx converts"));
    }
}
