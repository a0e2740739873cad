//! Models in the formats people have (pickles, joblib, XGBoost, LightGBM) made ONNX before
//! anything serves them: the `modelship convert` command, and [`prepare_file`] /
//! [`prepare_bytes`], which every command that takes a model file calls (`serve`, `models push`,
//! `models import mlflow`, `validate`, `deploy`). The conversion itself is
//! `modelship_convert`: a sandboxed child process, proven equal in ONNX Runtime, cached by the
//! source's digest. This process never unpickles anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use modelship_convert::{Conversion, Converter, Options, Prepared, Sample, SampleColumn, Spec, Thresholds, Tolerance};
use modelship_inference::Backend;

use crate::cli::{ConvertArgs, ConvertCommand, ConvertFlags, OutputFormat, ThresholdsArg};
use crate::config::{Env, ProcessEnv};

pub const HELP: &str = "\
modelship serves ONNX. A scikit-learn estimator or pipeline (pickle or joblib), an XGBoost model \
(.json, .ubj, or a pickled XGBClassifier/XGBRegressor) or a LightGBM model (text, or a pickled \
LGBMClassifier/LGBMRegressor) is converted to ONNX once, with skl2onnx or onnxmltools, and \
accepted only when ONNX Runtime answers as the original on sample rows. `serve`, `models push`, \
`models import mlflow`, `validate` and `deploy` do this by themselves; this command shows it.

A pickle is code. It is loaded in a separate process under bubblewrap: no network, a read-only \
view of the system and the Python environment, one scratch directory, limits on memory and time. \
Without bubblewrap (sudo apt-get install bubblewrap) a pickle is refused unless you pass \
--trust-pickle.

The Python environments (pinned converters, from PyPI) live under MODELSHIP_CONVERT_HOME \
(default ~/.cache/modelship/convert: envs/ for the environments, cache/ for conversions, by the \
file's digest). The converter may take 8 GiB and 900 s (MODELSHIP_CONVERT_MEMORY, MODELSHIP_CONVERT_TIMEOUT). A pickle is loaded by the scikit-learn that wrote it: one that records another version than \
the default environment's gets its own environment, created on first use.

Examples:
  modelship convert model.pkl -o model.onnx
  modelship convert xgb.json --sample holdout.csv --tolerance 1e-6
  modelship convert model.joblib --output json
  modelship convert setup
  modelship convert setup --scikit-learn 1.5.2
  modelship convert envs
";

pub fn main(args: ConvertArgs) -> ExitCode {
    crate::run_command_with_code(run(args))
}

async fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let env = ProcessEnv;
    let json_out = args.output == OutputFormat::Json;
    match args.command {
        Some(ConvertCommand::Setup { scikit_learn, base_python }) => {
            let spec = match &scikit_learn {
                Some(v) => Spec::for_sklearn(v).map_err(|e| anyhow::anyhow!("--scikit-learn {v}: {e}"))?,
                None => Spec::default_env(),
            };
            let mut converter = converter(&args.flags, &env)?;
            if let Some(base) = base_python {
                converter.base_python = base;
            }
            let environment = tokio::task::block_in_place(|| converter.envs().create(&spec, &converter.base_python, &say))?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&environment)?);
            } else {
                println!("{} ready: {} (Python {}, scikit-learn {})", environment.name, environment.python.display(), environment.python_version, environment.sklearn().unwrap_or("?"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(ConvertCommand::Envs) => {
            let converter = converter(&args.flags, &env)?;
            let envs = converter.envs().list();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&envs)?);
            } else if envs.is_empty() {
                println!("no conversion environments under {} yet; the first conversion creates the default one (or run `modelship convert setup`)", converter.envs().dir().display());
            } else {
                let mut table = comfy_table::Table::new();
                table.load_style(comfy_table::presets::NOTHING).set_header(vec!["ENVIRONMENT", "PYTHON", "SCIKIT-LEARN", "XGBOOST", "LIGHTGBM", "SKL2ONNX", "ONNXMLTOOLS"]);
                for e in &envs {
                    let v = |k: &str| e.libraries.get(k).cloned().unwrap_or_else(|| "-".to_owned());
                    table.add_row(vec![e.name.clone(), e.python_version.clone(), v("scikit-learn"), v("xgboost"), v("lightgbm"), v("skl2onnx"), v("onnxmltools")]);
                }
                println!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let Some(model) = args.model else {
                bail!("give the model file: `modelship convert model.pkl -o model.onnx` (or `modelship convert setup` to create the environment)");
            };
            let backend = backend(args.ort_lib.as_deref())?;
            let prepared = prepare_file(&model, &args.flags, backend.as_ref(), &env).await?;
            let Prepared::Converted(converted) = &prepared else {
                if json_out {
                    println!("{}", serde_json::json!({"model": model, "format": "onnx", "converted": false}));
                } else {
                    println!("{} is ONNX already; nothing to convert", model.display());
                }
                return Ok(ExitCode::SUCCESS);
            };
            if let Some(out) = &args.out {
                std::fs::write(out, &converted.onnx).with_context(|| format!("cannot write {}", out.display()))?;
            }
            if json_out {
                let mut value = serde_json::to_value(&converted.record)?;
                value["cached"] = serde_json::json!(converted.cached);
                value["written"] = serde_json::json!(args.out);
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", describe(&converted.record, converted.cached));
                match &args.out {
                    Some(out) => println!("wrote {} ({} bytes)", out.display(), converted.onnx.len()),
                    None => println!("(pass -o model.onnx to write the ONNX model; `serve` and `models push` take {} as it is)", model.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A conversion for people: what it was, what it ran in, how equal it is.
pub fn describe(c: &Conversion, cached: bool) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line(&mut out, "source", format!("{} (sha256:{}, {} bytes)", c.format_description, &c.source_digest[..12], c.source_bytes));
    line(&mut out, "model", format!("{} {} ({}), {} features", c.estimator.rsplit('.').next().unwrap_or(&c.estimator), c.task, c.model_library(), c.features));
    if let Some(classes) = &c.classes {
        line(&mut out, "classes", classes.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "));
    }
    line(&mut out, "converter", format!("{} ({}; {})", c.converter(), c.opsets(), c.options_text()));
    line(&mut out, "ran in", format!("{} environment (Python {}), {}", c.environment, c.python, c.isolation));
    line(
        &mut out,
        "equal",
        format!("on {} {} rows: largest difference {:.3e} (tolerance {:e})", c.verdict.rows, c.sample.origin, c.verdict.max_abs_diff, c.verdict.tolerance.absolute),
    );
    line(&mut out, "took", if cached { "0 s (from the cache; converted before)".to_owned() } else { format!("{:.1} s", c.seconds) });
    out
}

/// ONNX Runtime, for the equality proof: the library the server uses.
pub fn backend(ort_lib: Option<&Path>) -> anyhow::Result<Arc<dyn Backend>> {
    let env_lib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    Ok(Arc::new(modelship_onnx::OnnxBackend::new(ort_lib.or(env_lib.as_deref()))?))
}

/// The converter's limits: the defaults, or `MODELSHIP_CONVERT_TIMEOUT` (seconds of wall and
/// CPU time) and `MODELSHIP_CONVERT_MEMORY` (bytes, or `4Gi`, `512Mi`); a value that does not
/// read keeps the default, with a warning.
fn limits(env: &dyn Env) -> modelship_convert::Limits {
    let mut limits = modelship_convert::Limits::default();
    if let Some(t) = env.get("MODELSHIP_CONVERT_TIMEOUT") {
        match t.trim().parse::<u64>() {
            Ok(seconds) if seconds > 0 => {
                limits.wall = std::time::Duration::from_secs(seconds);
                limits.cpu_seconds = seconds;
            }
            _ => eprintln!("warning: MODELSHIP_CONVERT_TIMEOUT={t} is not a number of seconds; the converter gets {} s", limits.wall.as_secs()),
        }
    }
    if let Some(m) = env.get("MODELSHIP_CONVERT_MEMORY") {
        match modelship_validate::limit::parse_bytes("MODELSHIP_CONVERT_MEMORY", &m) {
            Ok(bytes) if bytes >= 256 << 20 => limits.memory_bytes = bytes,
            _ => eprintln!("warning: MODELSHIP_CONVERT_MEMORY={m} is not a size of 256Mi or more; the converter gets {} bytes", limits.memory_bytes),
        }
    }
    limits
}

/// The converter as the flags and environment configure it.
pub fn converter(flags: &ConvertFlags, env: &dyn Env) -> anyhow::Result<Converter> {
    let get = |k: &str| env.get(k);
    let Some(home) = Converter::default_home(&get) else {
        bail!("no place for the conversion environments and cache: set MODELSHIP_CONVERT_HOME (or HOME)");
    };
    Ok(Converter {
        home,
        python: flags.python.clone().or_else(|| env.get("MODELSHIP_CONVERT_PYTHON").map(PathBuf::from)),
        base_python: env.get("MODELSHIP_CONVERT_BASE_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from),
        install: !flags.no_install,
        trust: flags.trust_pickle,
        bwrap: env.get("MODELSHIP_BWRAP").map(PathBuf::from),
        limits: limits(env),
    })
}

/// The conversion options from the flags (the sample file read here).
pub fn options(flags: &ConvertFlags, label: &str) -> anyhow::Result<Options> {
    let mut options = Options { label: label.to_owned(), declared_sklearn: flags.declared_sklearn.clone(), ..Options::default() };
    if let Some(t) = flags.tolerance {
        if !(t.is_finite() && t >= 0.0) {
            bail!("--tolerance {t}: give a difference like 1e-5 (zero or more)");
        }
        options.tolerance = Tolerance { absolute: t, relative: t };
    }
    if let Some(rows) = flags.rows {
        if rows == 0 || rows > 1_000_000 {
            bail!("--rows {rows}: give 1 to 1000000 rows");
        }
        options.rows = rows;
    }
    if let Some(ThresholdsArg::AsConverted) = flags.thresholds {
        options.thresholds = Thresholds::AsConverted;
    }
    if let Some(path) = &flags.sample {
        options.sample = Some(read_sample(path)?);
    }
    Ok(options)
}

/// A CSV or Parquet file as sample columns: numbers where every value of a column is one,
/// text otherwise.
pub fn read_sample(path: &Path) -> anyhow::Result<Sample> {
    let table = crate::table_file::read_table(path).with_context(|| format!("--sample {}", path.display()))?;
    if table.rows.is_empty() {
        bail!("--sample {}: the file has no rows", path.display());
    }
    if table.rows.len() > 1_000_000 {
        bail!("--sample {}: {} rows; give at most 1000000 (the proof needs a few thousand at most)", path.display(), table.rows.len());
    }
    let mut columns = Vec::new();
    for (i, name) in table.columns.iter().enumerate() {
        let texts: Vec<String> = table.rows.iter().map(|r| r.get(i).cloned().unwrap_or_default()).collect();
        let numbers: Option<Vec<f64>> = texts.iter().map(|t| t.trim().parse::<f64>().ok()).collect();
        columns.push((name.clone(), match numbers {
            Some(n) => SampleColumn::Numbers(n),
            None => SampleColumn::Text(texts),
        }));
    }
    Ok(Sample { columns })
}

/// Prints progress lines on standard error (a command's).
pub fn say(line: &str) {
    eprintln!("{line}");
}

/// Logs progress lines (the server's; its warnings are logged as warnings where they arise).
pub fn log_line(line: &str) {
    if !line.starts_with("warning:") {
        tracing::info!("{line}");
    }
}

/// Reads a model file (bounded: 4 GiB) and makes it ONNX.
pub async fn prepare_file(path: &Path, flags: &ConvertFlags, backend: &dyn Backend, env: &dyn Env) -> anyhow::Result<Prepared> {
    let bytes = read_model_file(path)?;
    prepare_bytes(path, bytes, flags, backend, env, &say).await
}

/// What a model file's first bytes say it is, and its length; `None` when it is no regular file
/// (missing, a directory, a device: the caller's own check names it).
pub fn file_head(path: &Path) -> anyhow::Result<Option<(modelship_convert::format::Head, u64)>> {
    use std::io::Read as _;
    // Checked before opening: opening a named pipe would wait for a writer.
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    if !meta.is_file() {
        return Ok(None);
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut head = Vec::with_capacity(modelship_convert::format::HEAD);
    file.take(modelship_convert::format::HEAD as u64).read_to_end(&mut head).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some((modelship_convert::format::classify_head(&head, meta.len()), meta.len())))
}

/// The most a model file may be.
const MAX_MODEL_BYTES: u64 = 4 << 30;

pub fn read_model_file(path: &Path) -> anyhow::Result<Bytes> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read model file {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    if meta.len() > MAX_MODEL_BYTES {
        bail!("{} is {} bytes, over the limit of {MAX_MODEL_BYTES} for a model file", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read model file {}", path.display()))?;
    if bytes.is_empty() {
        bail!("model file {} is empty", path.display());
    }
    Ok(bytes.into())
}

/// `bytes` (from `path`, or named by it) as ONNX, converting on a blocking thread (of a
/// multi-threaded runtime).
pub async fn prepare_bytes(path: &Path, bytes: Bytes, flags: &ConvertFlags, backend: &dyn Backend, env: &dyn Env, say: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Prepared> {
    let options = options(flags, &path.display().to_string())?;
    tokio::task::block_in_place(|| prepare_with(path, bytes, flags, options, backend, env, say))
}

/// [`prepare_bytes`] on this thread, with the options given.
pub fn prepare_with(path: &Path, bytes: Bytes, flags: &ConvertFlags, options: Options, backend: &dyn Backend, env: &dyn Env, say: &dyn Fn(&str)) -> anyhow::Result<Prepared> {
    let converter = converter(flags, env)?;
    let prepared = converter.prepare(path, bytes, &options, backend, say)?;
    if let Prepared::Converted(c) = &prepared {
        if c.cached {
            tracing::info!(model = %path.display(), "converted before: the cached ONNX model is used");
        } else {
            say(&format!(
                "{}: converted to ONNX in {:.1} s, equal to the original on {} rows (largest difference {:.3e})",
                path.display(),
                c.record.seconds,
                c.record.verdict.rows,
                c.record.verdict.max_abs_diff
            ));
        }
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_and_the_converter_name_the_original_alike() {
        // The registry counts the original as referenced by this label (gc keeps it); the
        // converter writes it.
        assert_eq!(modelship_registry::SOURCE_DIGEST_LABEL, modelship_convert::record::SOURCE_LABEL);
    }

    #[test]
    fn a_sample_file_becomes_columns_typed_by_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rows.csv");
        std::fs::write(&file, "amount,city\n1.5,kathmandu\n2,pokhara\n").unwrap();
        let sample = super::read_sample(&file).unwrap();
        assert_eq!(sample.columns[0], ("amount".to_owned(), modelship_convert::SampleColumn::Numbers(vec![1.5, 2.0])));
        assert_eq!(sample.columns[1], ("city".to_owned(), modelship_convert::SampleColumn::Text(vec!["kathmandu".into(), "pokhara".into()])));
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "a,b\n").unwrap();
        assert!(super::read_sample(&empty).unwrap_err().to_string().contains("no rows"));
    }
}
