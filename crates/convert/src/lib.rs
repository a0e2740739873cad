//! Models people have, made ONNX: scikit-learn estimators and pipelines (pickle, joblib),
//! XGBoost (JSON, UBJSON, pickled estimators) and LightGBM (text, pickled estimators),
//! converted once, outside the server, in a sandbox, and proven equal before they are served.
//!
//! - [`format`]: what a file is, from its content (pure).
//! - [`env`]: the Python environments conversions run in, pinned, created from PyPI.
//! - [`sandbox`]: the converter as a separate process under bubblewrap and resource limits.
//! - [`judge`]: the original's answers against ONNX Runtime's on the same rows (pure).
//! - [`record`]: what a conversion was, as stored beside the model and as registry labels.
//! - [`Converter::prepare`]: all of it, with a cache by the source's digest.
//!
//! The server never converts: callers (the CLI's `serve`, `models push`, `models import-mlflow`,
//! `validate`, `deploy`) hand it ONNX. The Python side is `python/convert.py`, embedded.

pub mod env;
pub mod format;
pub mod judge;
pub mod record;
pub mod sandbox;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use modelship_inference::{Backend, InferRequest, LoadOptions, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use env::{DEFAULT_SKLEARN, Env, Envs, Spec};
pub use format::{Format, Unrecognized};
pub use judge::{Tolerance, Verdict};
pub use record::Conversion;
pub use sandbox::{Isolation, Limits};

/// The converter script, run inside the sandbox.
pub const SCRIPT: &str = include_str!("../python/convert.py");

/// Default rows of the equality proof.
pub const DEFAULT_ROWS: usize = 1000;

/// Why a model could not be made ONNX.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Unrecognized(#[from] Unrecognized),
    /// The converter refused the model (not a model, unsupported estimator, bad sample...).
    #[error("{0}")]
    Refused(String),
    #[error("the converted model does not answer as the original: {} of {} rows differ beyond the tolerance ({}); largest difference {:.3e}. Worst rows:\n{}", .0.rows_outside, .0.rows, describe_tolerance(&.0.tolerance), .0.max_abs_diff, .0.worst_rows_table())]
    NotEqual(Box<Verdict>),
    #[error("no sandbox for the conversion: {0}")]
    NoSandbox(String),
    #[error("{0}")]
    NeedsEnvironment(String),
    #[error("conversion environment: {0}")]
    Environment(String),
    #[error("the converter ran past its time limit ({0} s) and was stopped")]
    TimedOut(u64),
    #[error("ONNX Runtime cannot run the converted model: {0}")]
    Onnx(String),
    #[error("{0}")]
    Io(String),
}

fn describe_tolerance(t: &Tolerance) -> String {
    if t.relative > 0.0 {
        format!("{:e} on probabilities, {:e} + {:e} x |value| on predictions; another label counts", t.absolute, t.absolute, t.relative)
    } else {
        format!("{:e}; another label counts", t.absolute)
    }
}

/// What the equality proof runs on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SampleColumn {
    Numbers(Vec<f64>),
    Text(Vec<String>),
}

/// The user's sample rows, by column name (`--sample`, or `validate`'s data).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub columns: Vec<(String, SampleColumn)>,
}

impl Sample {
    fn json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, column) in &self.columns {
            let value = match column {
                SampleColumn::Numbers(v) => serde_json::json!(v),
                SampleColumn::Text(v) => serde_json::json!(v),
            };
            map.insert(name.clone(), value);
        }
        serde_json::json!({ "columns": map })
    }
}

/// How tree thresholds are written for float32 inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Thresholds {
    /// Each float64 threshold becomes the float32 that sends every float32 input the same way.
    #[default]
    Exact,
    /// As the converters write them (rounded to the nearest float32).
    AsConverted,
}

/// One conversion's knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub tolerance: Tolerance,
    /// Rows drawn when no sample is given.
    pub rows: usize,
    pub sample: Option<Sample>,
    pub thresholds: Thresholds,
    pub seed: u64,
    /// The scikit-learn version a caller knows from elsewhere (MLflow's MLmodel), for a pickle
    /// that records none.
    pub declared_sklearn: Option<String>,
    /// Where the bytes came from, for messages.
    pub label: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tolerance: Tolerance::default(),
            rows: DEFAULT_ROWS,
            sample: None,
            thresholds: Thresholds::Exact,
            seed: 0,
            declared_sklearn: None,
            label: "the model".to_owned(),
        }
    }
}

/// Where conversions run and are kept.
#[derive(Debug, Clone)]
pub struct Converter {
    /// `envs/`, `cache/`, `tmp/`, `script/` live here.
    pub home: PathBuf,
    /// An existing interpreter to use instead of the managed environments.
    pub python: Option<PathBuf>,
    /// The interpreter environments are created with.
    pub base_python: PathBuf,
    /// Create a missing environment from PyPI (else refuse, naming the command).
    pub install: bool,
    /// Convert without a sandbox (`--trust-pickle`).
    pub trust: bool,
    /// bubblewrap's path, when not `bwrap` on the PATH.
    pub bwrap: Option<PathBuf>,
    pub limits: Limits,
}

/// The model as ONNX: the file itself, or a conversion.
#[derive(Debug, Clone)]
pub enum Prepared {
    Onnx(Bytes),
    Converted(Box<Converted>),
}

impl Prepared {
    pub fn onnx(&self) -> &Bytes {
        match self {
            Prepared::Onnx(b) => b,
            Prepared::Converted(c) => &c.onnx,
        }
    }

    pub fn conversion(&self) -> Option<&Conversion> {
        match self {
            Prepared::Onnx(_) => None,
            Prepared::Converted(c) => Some(&c.record),
        }
    }
}

/// A converted model.
#[derive(Debug, Clone)]
pub struct Converted {
    pub onnx: Bytes,
    pub record: Conversion,
    /// Taken from the cache (converted earlier).
    pub cached: bool,
}

/// The converter's `inspect` answer.
#[derive(Debug, Clone, Deserialize)]
struct Inspection {
    modules: Vec<String>,
    #[serde(default)]
    versions: BTreeMap<String, Vec<String>>,
}

/// The converter's `convert` answer.
#[derive(Debug, Deserialize)]
struct Outcome {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    task: String,
    #[serde(default)]
    estimator: String,
    #[serde(default)]
    estimators: Vec<String>,
    #[serde(default)]
    features: usize,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    #[serde(default)]
    columns: Option<Vec<record::Column>>,
    #[serde(default)]
    classes: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    options: serde_json::Value,
    #[serde(default)]
    libraries: BTreeMap<String, String>,
    #[serde(default)]
    python: String,
    #[serde(default)]
    sample: record::SampleInfo,
    #[serde(default)]
    inputs: Vec<SampleInput>,
    #[serde(default)]
    expected: BTreeMap<String, Expected>,
}

#[derive(Debug, Deserialize)]
struct SampleInput {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    data: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Expected {
    data: Vec<serde_json::Value>,
}

impl Converter {
    /// The home from the environment: `MODELSHIP_CONVERT_HOME`, else
    /// `$XDG_CACHE_HOME/modelship/convert`, else `~/.cache/modelship/convert`; absolute (a
    /// relative one is taken from the current directory). `None` when none is set: never a
    /// shared directory such as /tmp, where another user could plant environments or cached models.
    pub fn default_home(get: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        let set = |k: &str| get(k).filter(|s| !s.is_empty()).map(PathBuf::from);
        let home = set("MODELSHIP_CONVERT_HOME")
            .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("modelship").join("convert")))
            .or_else(|| set("HOME").map(|h| h.join(".cache").join("modelship").join("convert")))?;
        Some(if home.is_absolute() { home } else { std::env::current_dir().ok()?.join(home) })
    }

    /// Creates the home's directories, readable by this user only.
    fn make_dir(&self, dir: &Path) -> Result<(), ConvertError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| ConvertError::Io(format!("cannot create {}: {e}", dir.display())))
    }

    pub fn envs(&self) -> Envs {
        Envs::new(&self.home)
    }

    /// The environment for `spec`: the user's `--python` when given (refused if its
    /// scikit-learn differs), else the managed one, created when missing and allowed.
    pub fn environment(&self, spec: &Spec, say: &dyn Fn(&str)) -> Result<Env, ConvertError> {
        if let Some(python) = &self.python {
            let env = env::describe(&format!("--python {}", python.display()), python)?;
            let have = env.sklearn().unwrap_or("none");
            if spec.needs_sklearn && have != spec.sklearn {
                return Err(ConvertError::NeedsEnvironment(format!(
                    "the model needs scikit-learn {}, and --python {} has scikit-learn {have}: point --python at an environment with scikit-learn {}, or leave --python out and let modelship use its own (modelship convert setup --scikit-learn {})",
                    spec.sklearn,
                    python.display(),
                    spec.sklearn,
                    spec.sklearn
                )));
            }
            return Ok(env);
        }
        let envs = self.envs();
        if let Some(env) = envs.find(spec) {
            return Ok(env);
        }
        if !self.install {
            return Err(ConvertError::NeedsEnvironment(format!(
                "the model was written by scikit-learn {}, and there is no conversion environment with it: run `modelship convert setup --scikit-learn {}` (it installs scikit-learn {} and the converters from PyPI into {})",
                spec.sklearn,
                spec.sklearn,
                spec.sklearn,
                envs.dir().join(&spec.name).display()
            )));
        }
        envs.create(spec, &self.base_python, say).map_err(|e| match e {
            ConvertError::Environment(why) => ConvertError::NeedsEnvironment(format!(
                "the model needs scikit-learn {}, and its conversion environment could not be created ({why}); run `modelship convert setup --scikit-learn {}` once it can reach PyPI, or point --python at an environment with it",
                spec.sklearn, spec.sklearn
            )),
            other => other,
        })
    }

    /// The sandbox when it works here; without it, `--trust-pickle` converts anyway (said and
    /// logged), and otherwise the caller decides.
    fn isolation(&self, say: &dyn Fn(&str)) -> Result<Isolation, ConvertError> {
        match sandbox::probe(self.bwrap.as_deref()) {
            Ok(isolation) => Ok(isolation),
            Err(ConvertError::NoSandbox(why)) if self.trust => {
                let warning = format!("converting without a sandbox (--trust-pickle): the model file's code runs with this user's rights. The sandbox: {why}");
                tracing::warn!("{warning}");
                say(&format!("warning: {warning}"));
                Ok(Isolation::Trusted)
            }
            Err(e) => Err(e),
        }
    }

    /// The script on disk (content-addressed under `script/`), bound read-only into the sandbox.
    fn script_dir(&self) -> Result<PathBuf, ConvertError> {
        let dir = self.home.join("script").join(&hex::encode(Sha256::digest(SCRIPT.as_bytes()))[..16]);
        let file = dir.join("convert.py");
        if std::fs::read_to_string(&file).ok().as_deref() != Some(SCRIPT) {
            self.make_dir(&dir)?;
            let staged = dir.join(format!("convert.py.{}", std::process::id()));
            std::fs::write(&staged, SCRIPT).and_then(|()| std::fs::rename(&staged, &file)).map_err(|e| ConvertError::Io(format!("cannot write {}: {e}", file.display())))?;
        }
        Ok(dir)
    }

    /// `bytes` (the file at `source`) as ONNX: ONNX as it is; any other accepted format converted
    /// in the sandbox and proven equal on sample rows in ONNX Runtime (`backend`), or taken from
    /// the cache when the same bytes were converted with the same options before.
    pub fn prepare(&self, source: &Path, bytes: Bytes, options: &Options, backend: &dyn Backend, say: &dyn Fn(&str)) -> Result<Prepared, ConvertError> {
        let format = format::sniff(&bytes).map_err(|mut e| {
            e.looks_like = format!("{} is {}", options.label, e.looks_like);
            e
        })?;
        if format == Format::Onnx {
            return Ok(Prepared::Onnx(bytes));
        }
        let source_digest = hex::encode(Sha256::digest(&bytes));
        let key = self.cache_key(&source_digest, options);
        let cached = self.home.join("cache").join(&key);
        if let Some(hit) = read_cached(&cached) {
            tracing::info!(source = %source.display(), digest = %source_digest, "conversion taken from the cache");
            return Ok(Prepared::Converted(Box::new(hit)));
        }
        let isolation = match self.isolation(say) {
            Ok(i) => i,
            // Data formats (not pickles) run no code of the file's: without a sandbox they are
            // converted anyway, with a warning.
            Err(ConvertError::NoSandbox(why)) if !format.runs_code() => {
                tracing::warn!(reason = %why, "no sandbox; converting a model format that runs no code without one");
                say(&format!("warning: {why}; {} runs no code of its own, so it is converted without one", format.describe()));
                Isolation::Unsandboxed
            }
            Err(e) => return Err(e),
        };
        let script = self.script_dir()?;
        let tmp = self.home.join("tmp");
        self.make_dir(&tmp)?;
        self.make_dir(&self.home.join("cache"))?;
        let scratch = tempfile::Builder::new().prefix("convert-").tempdir_in(&tmp).map_err(|e| ConvertError::Io(format!("cannot create a scratch directory in {}: {e}", tmp.display())))?;
        // The source as a file the sandbox can bind (the caller may hold only bytes).
        let staged = scratch.path().with_extension("source");
        std::fs::write(&staged, &bytes).map_err(|e| ConvertError::Io(format!("cannot stage the model: {e}")))?;
        let _staged_guard = RemoveOnDrop(staged.clone());
        let run = Run { isolation: &isolation, script: &script, source: &staged, scratch: scratch.path(), limits: &self.limits };

        let spec = if format.runs_code() {
            let base = env::describe("base", &self.base_python).or_else(|_| self.environment(&Spec::default_env(), say))?;
            let inspection = run.inspect(&base)?;
            spec_for(&inspection, options)?
        } else {
            Spec::converters_only()
        };
        let environment = self.environment(&spec, say)?;
        let started = Instant::now();
        say(&format!("converting {} ({}) with scikit-learn {} in {}", options.label, format.describe(), environment.sklearn().unwrap_or("?"), isolation.describe()));
        let outcome = run.convert(&environment, format, options)?;
        let onnx = read_output(&scratch.path().join("model.onnx"), self.limits.file_bytes).map_err(|e| ConvertError::Io(format!("the converter wrote no usable model: {e}")))?;
        let onnx = Bytes::from(onnx);
        let verdict = prove(&onnx, &outcome, options.tolerance, backend)?;
        let record = Conversion {
            format: format.name().to_owned(),
            format_description: format.describe(),
            source_digest: source_digest.clone(),
            source_bytes: bytes.len() as u64,
            kind: outcome.kind,
            task: outcome.task,
            estimator: outcome.estimator,
            estimators: outcome.estimators,
            features: outcome.features,
            feature_names: outcome.feature_names,
            columns: outcome.columns,
            classes: outcome.classes,
            environment: environment.name.clone(),
            python: outcome.python,
            libraries: outcome.libraries,
            options: outcome.options,
            isolation: isolation.describe(),
            sample: outcome.sample,
            verdict: verdict.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        if !verdict.equal() {
            return Err(ConvertError::NotEqual(Box::new(verdict)));
        }
        if record.sample.unranged_features > 0 {
            say(&format!(
                "note: the model records no range for {} of its {} features; their rows were drawn from [-3.3, 3.3], which may not look like your data: pass --sample FILE for a stronger proof",
                record.sample.unranged_features, record.features
            ));
        }
        write_cached(&cached, &onnx, &record);
        tracing::info!(source = %source.display(), digest = %source_digest, seconds = record.seconds, max_abs_diff = verdict.max_abs_diff, rows = verdict.rows, "converted to ONNX and proven equal");
        Ok(Prepared::Converted(Box::new(Converted { onnx, record, cached: false })))
    }

    fn cache_key(&self, source_digest: &str, options: &Options) -> String {
        let mut h = Sha256::new();
        h.update(source_digest.as_bytes());
        h.update(SCRIPT.as_bytes());
        // Everything that changes the result: the request's constants, the pins of the managed
        // environments, or what a `--python` environment holds.
        h.update(format!("{:?}|{}|{}|{:?}|{:?}|{OPSET}|{ML_OPSET}|{PRECISION}|{}", options.tolerance, options.rows, options.seed, options.thresholds, options.declared_sklearn, Spec::pins()).as_bytes());
        if let Some(python) = &self.python {
            let libraries = env::describe("--python", python).map(|e| format!("{:?}{:?}", e.python, e.libraries)).unwrap_or_default();
            h.update(format!("{}|{libraries}", python.display()).as_bytes());
        }
        if let Some(sample) = &options.sample {
            h.update(sample.json().to_string().as_bytes());
        }
        hex::encode(h.finalize())[..32].to_owned()
    }
}

/// The most `result.json` may be: the sample's inputs and the original's answers.
const MAX_RESULT_BYTES: u64 = 512 << 20;

/// A file the converter wrote, read from the host: a regular file, not followed through a link
/// (the model's code chose what is in the scratch directory), opened without blocking (a FIFO),
/// and at most `cap` bytes.
fn read_output(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > cap {
        return Err(format!("{} is {} bytes, over {cap}", path.display(), meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(format!("{} grew over {cap} bytes", path.display()));
    }
    Ok(bytes)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Which environment a pickle needs, from what it records (pure).
fn spec_for(inspection: &Inspection, options: &Options) -> Result<Spec, ConvertError> {
    let has = |m: &str| inspection.modules.iter().any(|x| x == m);
    if !has("sklearn") && !has("xgboost") && !has("lightgbm") {
        let hint = if has("torch") {
            " It holds PyTorch objects: export the model with torch.onnx.export(model, example, \"model.onnx\")."
        } else if has("tensorflow") || has("keras") {
            " It holds TensorFlow/Keras objects: export the model with tf2onnx."
        } else {
            ""
        };
        return Err(ConvertError::Refused(format!(
            "{} is a pickle of none of scikit-learn, XGBoost or LightGBM (it names the modules {}); modelship takes {}.{hint}",
            options.label,
            if inspection.modules.is_empty() { "none".to_owned() } else { inspection.modules.join(", ") },
            format::ACCEPTED
        )));
    }
    if !has("sklearn") {
        return Ok(Spec::converters_only());
    }
    let recorded = inspection.versions.get("scikit-learn").cloned().unwrap_or_default();
    let version = match recorded.as_slice() {
        [one] => one.clone(),
        [] => match &options.declared_sklearn {
            Some(v) => v.clone(),
            None => {
                tracing::warn!(model = %options.label, "the pickle records no scikit-learn version; loading it with {DEFAULT_SKLEARN}");
                DEFAULT_SKLEARN.to_owned()
            }
        },
        many => {
            return Err(ConvertError::Refused(format!(
                "{} holds estimators pickled by several scikit-learn versions ({}): load it with one of them and pickle it again",
                options.label,
                many.join(", ")
            )));
        }
    };
    Spec::for_sklearn(&version).map_err(|why| ConvertError::NeedsEnvironment(format!("{} was written by {why}", options.label)))
}

/// One conversion's processes.
struct Run<'a> {
    isolation: &'a Isolation,
    script: &'a Path,
    source: &'a Path,
    scratch: &'a Path,
    limits: &'a Limits,
}

const INSIDE_SCRIPT: &str = "/opt/modelship";

/// The ONNX opsets asked of the converters (onnxmltools' boosters stop at 15), and the inputs' type.
const OPSET: u32 = 18;
const ML_OPSET: u32 = 3;
const PRECISION: &str = "float32";
const INSIDE_SOURCE: &str = "/in/model";

impl Run<'_> {
    fn inside(&self, host: &Path, inside: &str) -> PathBuf {
        match self.isolation {
            Isolation::Bubblewrap { .. } => PathBuf::from(inside),
            Isolation::Trusted | Isolation::Unsandboxed => host.to_path_buf(),
        }
    }

    fn view(&self, env: &Env) -> sandbox::View {
        let mut read_only = vec![(self.script.to_path_buf(), PathBuf::from(INSIDE_SCRIPT)), (self.source.to_path_buf(), PathBuf::from(INSIDE_SOURCE))];
        read_only.extend(env.paths.iter().filter(|p| !p.starts_with("/usr")).map(|p| (p.clone(), p.clone())));
        sandbox::View { read_only, scratch: self.scratch.to_path_buf() }
    }

    fn python(&self, env: &Env, args: Vec<OsString>) -> Result<sandbox::Ran, ConvertError> {
        let mut full: Vec<OsString> = vec!["-I".into(), "-B".into(), self.inside(self.script, INSIDE_SCRIPT).join("convert.py").into_os_string()];
        full.extend(args);
        let ran = sandbox::run(self.isolation, &self.view(env), &env.python, &full, self.limits)?;
        tracing::info!(pid = ran.pid, code = ?ran.code, isolation = %self.isolation.describe(), "the converter process ended");
        if ran.timed_out {
            return Err(ConvertError::TimedOut(self.limits.wall.as_secs()));
        }
        Ok(ran)
    }

    fn inspect(&self, env: &Env) -> Result<Inspection, ConvertError> {
        let source = self.inside(self.source, INSIDE_SOURCE);
        let ran = self.python(env, vec!["inspect".into(), source.into_os_string()])?;
        if ran.code != Some(0) {
            return Err(ConvertError::Refused(refusal(&ran.stderr)));
        }
        serde_json::from_slice(&ran.stdout).map_err(|e| ConvertError::Io(format!("the converter's inspection is not JSON: {e}")))
    }

    fn convert(&self, env: &Env, format: Format, options: &Options) -> Result<Outcome, ConvertError> {
        let scratch_inside = self.inside(self.scratch, sandbox::SCRATCH);
        let request = serde_json::json!({
            "source": self.inside(self.source, INSIDE_SOURCE),
            "format": format.name(),
            "output_dir": scratch_inside,
            "opset": OPSET,
            "ml_opset": ML_OPSET,
            "rows": options.rows,
            "seed": options.seed,
            "precision": PRECISION,
            "thresholds": match options.thresholds { Thresholds::Exact => "exact", Thresholds::AsConverted => "as-converted" },
            "sample": options.sample.as_ref().map(Sample::json),
        });
        std::fs::write(self.scratch.join("request.json"), request.to_string()).map_err(|e| ConvertError::Io(format!("cannot write the request: {e}")))?;
        let ran = self.python(env, vec!["convert".into(), scratch_inside.join("request.json").into_os_string()])?;
        let result = read_output(&self.scratch.join("result.json"), MAX_RESULT_BYTES).ok();
        let outcome: Option<Outcome> = result.as_deref().and_then(|r| serde_json::from_slice(r).ok());
        match (ran.code, outcome) {
            (_, Some(Outcome { error: Some(e), .. })) => Err(ConvertError::Refused(format!("{} cannot be converted: {e}", options.label))),
            (Some(0), Some(outcome)) => Ok(outcome),
            (code, _) => Err(ConvertError::Refused(format!(
                "{} cannot be converted: the converter {} ({})",
                options.label,
                match code {
                    Some(c) => format!("exited with {c}"),
                    None => "was killed (memory or CPU limit?)".to_owned(),
                },
                refusal(&ran.stderr)
            ))),
        }
    }
}

/// The converter's one-line error, from its standard error.
fn refusal(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    for line in text.lines().rev() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(e) = v.get("error").and_then(|e| e.as_str())
        {
            return e.to_owned();
        }
    }
    env::tail(stderr)
}

/// Runs the converted model in ONNX Runtime on the sample's inputs and judges it against the
/// original's outputs.
fn prove(onnx: &Bytes, outcome: &Outcome, tolerance: Tolerance, backend: &dyn Backend) -> Result<Verdict, ConvertError> {
    let mut session = backend.load(onnx, &LoadOptions::default()).map_err(|e| ConvertError::Onnx(e.to_string()))?;
    let rows = outcome.inputs.first().and_then(|i| i.shape.first().copied()).unwrap_or(0);
    if rows == 0 || outcome.inputs.iter().any(|i| i.shape.first() != Some(&rows)) {
        return Err(ConvertError::Io("the converter's sample inputs do not have one row count".to_owned()));
    }
    let names: Vec<String> = outcome.expected.keys().cloned().collect();
    let wanted: &[&str] = if outcome.task == "classifier" { &["label", "probabilities"] } else { &["prediction"] };
    if names != wanted {
        return Err(ConvertError::Io(format!("the converter answered the outputs {names:?}, not a {}'s {wanted:?}", outcome.task)));
    }
    let declared: Vec<&str> = session.info().signature.outputs.iter().map(|o| o.name.as_str()).collect();
    if let Some(missing) = wanted.iter().find(|w| !declared.contains(w)) {
        return Err(ConvertError::Onnx(format!("the converted model has no output {missing} (it has {declared:?})")));
    }
    let mut got: BTreeMap<String, judge::Values> = BTreeMap::new();
    const CHUNK: usize = 256;
    let mut start = 0;
    while start < rows {
        let end = (start + CHUNK).min(rows);
        let inputs = outcome.inputs.iter().map(|i| chunk(i, start, end)).collect::<Result<Vec<_>, _>>()?;
        let request = InferRequest { id: None, inputs, outputs: Some(names.clone()) };
        let prepared = session.info().signature.prepare(request).map_err(|e| ConvertError::Onnx(e.to_string()))?;
        let outputs = session.run(&prepared).map_err(|e| ConvertError::Onnx(e.to_string()))?;
        for tensor in outputs {
            let values = got.entry(tensor.name().to_owned()).or_insert_with(|| match tensor.data() {
                TensorData::Bytes(_) => judge::Values::Labels(Vec::new()),
                _ => judge::Values::Numbers(Vec::new()),
            });
            append(values, &tensor);
        }
        start = end;
    }
    let expected: BTreeMap<&String, judge::Values> = outcome.expected.iter().map(|(k, v)| (k, values_of(&v.data, k == "label"))).collect();
    let onnx_values: BTreeMap<&String, judge::Values> = names
        .iter()
        .map(|n| {
            let v = got.remove(n).unwrap_or(judge::Values::Numbers(Vec::new()));
            (n, if n == "label" { as_labels(v) } else { v })
        })
        .collect();
    let pairs: Vec<judge::Pair<'_>> = names.iter().map(|n| judge::Pair { name: n, original: &expected[n], onnx: &onnx_values[n] }).collect();
    let inputs_of = |row: usize| render_row(&outcome.inputs, row);
    judge::judge(&pairs, rows, tolerance, &inputs_of).map_err(ConvertError::Io)
}

fn chunk(input: &SampleInput, start: usize, end: usize) -> Result<Tensor, ConvertError> {
    let width: usize = input.shape[1..].iter().product();
    let slice = input.data.get(start * width..end * width).ok_or_else(|| ConvertError::Io(format!("sample input {} is shorter than its shape", input.name)))?;
    let mut shape = input.shape.clone();
    shape[0] = end - start;
    let data = match input.datatype.as_str() {
        "FP32" => TensorData::Fp32(slice.iter().map(|v| v.as_f64().unwrap_or(f64::NAN) as f32).collect()),
        "FP64" => TensorData::Fp64(slice.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect()),
        "BYTES" => TensorData::Bytes(slice.iter().map(|v| v.as_str().unwrap_or_default().as_bytes().to_vec()).collect()),
        other => return Err(ConvertError::Io(format!("sample input {} has datatype {other}", input.name))),
    };
    Tensor::new(input.name.clone(), shape, data).map_err(|e| ConvertError::Io(e.to_string()))
}

fn append(values: &mut judge::Values, tensor: &Tensor) {
    match (values, tensor.data()) {
        (judge::Values::Labels(v), TensorData::Bytes(b)) => v.extend(b.iter().map(|x| String::from_utf8_lossy(x).into_owned())),
        (judge::Values::Numbers(v), data) => v.extend((0..data.len()).map(|i| data.get_f64(i).unwrap_or(f64::NAN))),
        (judge::Values::Labels(_), _) => {}
    }
}

fn values_of(data: &[serde_json::Value], labels: bool) -> judge::Values {
    if labels || data.iter().any(serde_json::Value::is_string) {
        judge::Values::Labels(data.iter().map(label_text).collect())
    } else {
        judge::Values::Numbers(data.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
    }
}

fn label_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        // ONNX writes boolean classes as 0 and 1.
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => judge::number_label(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn as_labels(v: judge::Values) -> judge::Values {
    match v {
        judge::Values::Numbers(n) => judge::Values::Labels(n.into_iter().map(judge::number_label).collect()),
        labels => labels,
    }
}

fn render_row(inputs: &[SampleInput], row: usize) -> String {
    let mut parts = Vec::new();
    for input in inputs {
        let width: usize = input.shape[1..].iter().product();
        let values: Vec<String> = input.data[row * width..(row + 1) * width]
            .iter()
            .take(6)
            .map(|v| match v {
                serde_json::Value::Number(n) => n.as_f64().map(|f| format!("{f:.9}").trim_end_matches('0').trim_end_matches('.').to_owned()).unwrap_or_default(),
                serde_json::Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            })
            .collect();
        let more = if width > 6 { ", ..." } else { "" };
        parts.push(if inputs.len() == 1 { format!("[{}{more}]", values.join(", ")) } else { format!("{}=[{}{more}]", input.name, values.join(", ")) });
    }
    parts.join(" ")
}

fn read_cached(dir: &Path) -> Option<Converted> {
    let record: Conversion = serde_json::from_slice(&std::fs::read(dir.join("conversion.json")).ok()?).ok()?;
    let onnx = std::fs::read(dir.join("model.onnx")).ok()?;
    Some(Converted { onnx: onnx.into(), record, cached: true })
}

/// Stages the entry beside it and renames it into place: readers see all of it or none.
fn write_cached(dir: &Path, onnx: &[u8], record: &Conversion) {
    let Some(parent) = dir.parent() else { return };
    let staged = parent.join(format!(".{}.{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"), std::process::id()));
    let result = std::fs::create_dir_all(&staged)
        .and_then(|()| std::fs::write(staged.join("model.onnx"), onnx))
        .and_then(|()| std::fs::write(staged.join("conversion.json"), serde_json::to_vec_pretty(record).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&staged, dir));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.exists() {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the conversion in the cache; the next start converts again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspection(modules: &[&str], sklearn: &[&str]) -> Inspection {
        let mut versions = BTreeMap::new();
        if !sklearn.is_empty() {
            versions.insert("scikit-learn".to_owned(), sklearn.iter().map(|s| (*s).to_owned()).collect());
        }
        Inspection { modules: modules.iter().map(|s| (*s).to_owned()).collect(), versions }
    }

    #[test]
    fn which_environment_a_pickle_needs() {
        let o = Options::default();
        let name = |r: Result<Spec, ConvertError>| match r {
            Ok(s) => s.name,
            Err(e) => format!("refused: {e}"),
        };
        assert_eq!(name(spec_for(&inspection(&["numpy", "sklearn"], &[DEFAULT_SKLEARN]), &o)), "default");
        assert_eq!(name(spec_for(&inspection(&["numpy", "sklearn"], &["1.5.2"]), &o)), "scikit-learn-1.5.2");
        assert_eq!(name(spec_for(&inspection(&["builtins", "xgboost"], &[]), &o)), "default");
        assert_eq!(name(spec_for(&inspection(&["lightgbm", "numpy"], &["1.5.2"]), &o)), "default");
        let declared = Options { declared_sklearn: Some("1.6.1".to_owned()), ..Options::default() };
        assert_eq!(name(spec_for(&inspection(&["sklearn"], &[]), &declared)), "scikit-learn-1.6.1");
        assert!(name(spec_for(&inspection(&["sklearn"], &["1.5.2", "1.6.1"]), &o)).contains("several scikit-learn versions (1.5.2, 1.6.1)"));
        let torch = name(spec_for(&inspection(&["collections", "torch"], &[]), &o));
        assert!(torch.contains("torch.onnx.export") && torch.contains("names the modules collections, torch"), "{torch}");
        assert!(name(spec_for(&inspection(&["posix"], &[]), &o)).contains("none of scikit-learn"));
        assert!(name(spec_for(&inspection(&["sklearn"], &["0.22"]), &o)).contains("older than skl2onnx converts"));
    }

    #[test]
    fn rows_render_short() {
        let inputs = vec![SampleInput { name: "input".into(), datatype: "FP32".into(), shape: vec![2, 2], data: vec![0.5.into(), 1.25.into(), 0.1.into(), 2.0.into()] }];
        assert_eq!(render_row(&inputs, 1), "[0.1, 2]");
    }
}
