//! A Triton model repository, read as Triton reads it: `DIR/NAME/config.pbtxt` (optional) and
//! `DIR/NAME/VERSION/model.onnx` (or the configuration's `default_model_filename`), the version
//! served picked by the configuration's `version_policy` (default: the newest). Each model becomes
//! an entry of the `models` list, named by its directory, with the configuration's instances as
//! its workers, its `dynamic_batching` as its batching, and its declared inputs and outputs
//! checked against the model once it loads.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use modelship_inference::{DataType, TensorSpec};
use modelship_protocol::triton_config::{self, TritonConfig, VersionPolicy};

use crate::config::{RawBatching, RawMoreModel};

/// Larger files are not a model configuration.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The ONNX platforms and backends of Triton; any other is a model modelship cannot serve.
const ONNX: &[&str] = &["onnxruntime_onnx", "onnxruntime", ""];

/// Every model of the repository at `dir`, in name order, as `models` entries. Every problem of
/// every model is reported at once.
pub fn read(dir: &Path) -> anyhow::Result<Vec<RawMoreModel>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the model repository {}", dir.display()))?;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read the model repository {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden entries (.git, editors' files) are not models; files beside the models neither.
        // A link to a directory is one (volumes mount them so).
        if name.starts_with('.') || !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        names.push((name, entry.path()));
    }
    names.sort();
    if names.is_empty() {
        bail!("the model repository {} holds no model: each model is a directory NAME/ with a version directory NAME/1/model.onnx (and optionally NAME/config.pbtxt)", dir.display());
    }
    let mut models = Vec::new();
    let mut problems = Vec::new();
    for (name, path) in names {
        match model(&name, &path) {
            Ok(m) => models.push(m),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("the model repository {} cannot be served:\n  - {}", dir.display(), problems.join("\n  - "));
    }
    Ok(models)
}

/// One model directory.
fn model(name: &str, dir: &Path) -> anyhow::Result<RawMoreModel> {
    let config_path = dir.join("config.pbtxt");
    let source = config_path.display().to_string();
    let config = match std::fs::metadata(&config_path) {
        // No configuration: Triton completes one from the model; so does modelship.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TritonConfig::default(),
        Err(e) => bail!("cannot read {source}: {e}"),
        Ok(meta) if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES => {
            bail!("{source} must be a file of at most {MAX_CONFIG_BYTES} bytes")
        }
        Ok(_) => {
            use std::io::Read as _;
            let mut text = String::new();
            std::fs::File::open(&config_path)
                .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
                .with_context(|| format!("cannot read {source}"))?;
            triton_config::parse(&source, &text).map_err(anyhow::Error::msg)?
        }
    };
    if let Some(tensor) = config.inputs.iter().chain(&config.outputs).find(|t| t.reshape) {
        bail!(
            "{source}: tensor '{}' has a reshape, which modelship does not apply to requests; declare the model's own dims instead",
            tensor.name
        );
    }
    if !config.name.is_empty() && config.name != name {
        bail!("{source} names the model '{}', and its directory is '{name}': Triton requires them to agree", config.name);
    }
    for platform in [&config.platform, &config.backend] {
        if !ONNX.contains(&platform.as_str()) {
            bail!("model '{name}' runs on Triton's '{platform}' ({source}); modelship serves ONNX models: export it to ONNX (platform onnxruntime_onnx)");
        }
    }
    if let Some(scheduling) = &config.scheduling {
        bail!("model '{name}' uses {scheduling} ({source}), which modelship does not serve; serve its ONNX models one by one");
    }
    // KIND_GPU: the model runs on the first GPU its groups name (Triton's default: every GPU;
    // modelship runs one model on one card), through ONNX Runtime's CUDA provider, when that GPU
    // works: `auto`, so that a repository written for GPUs still serves on a CPU machine (said
    // in the log). An explicit --device (or model.device) decides for every model instead.
    let device = config.instance_kinds.iter().any(|k| k == "KIND_GPU").then(|| format!("auto:{}", config.instance_gpus.first().copied().unwrap_or(0)));
    if !config.ignored.is_empty() {
        tracing::info!(model = %name, fields = ?config.ignored, "config.pbtxt fields modelship does not act on");
    }
    let (version, file) = version(name, dir, &config)?;
    let batched = config.max_batch_size > 0;
    let tensors = |declared: &[triton_config::TensorConfig]| -> anyhow::Result<Vec<TensorSpec>> {
        declared
            .iter()
            .map(|t| {
                let datatype: DataType = t
                    .datatype
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{source}: tensor '{}' has data type TYPE_{}, which modelship does not serve", t.name, t.datatype))?;
                let shape = batched.then_some(-1).into_iter().chain(t.dims.iter().copied()).collect();
                Ok(TensorSpec::new(t.name.clone(), datatype, shape))
            })
            .collect()
    };
    let declared = modelship_server::Declared { source: source.clone(), inputs: tensors(&config.inputs)?, outputs: tensors(&config.outputs)? };
    let max_batch_size = usize::try_from(config.max_batch_size).unwrap_or(0);
    let dynamic_batching = match (&config.dynamic_batching, max_batch_size) {
        (Some(_), 0) => bail!("{source} turns dynamic_batching on with max_batch_size 0; set max_batch_size above 0 (the largest batch) or drop dynamic_batching"),
        (Some(b), max) => Some(RawBatching {
            max_batch_size: Some(max),
            max_queue_delay_microseconds: Some(b.max_queue_delay_microseconds),
            preferred_batch_size: b.preferred_batch_sizes.clone(),
        }),
        (None, _) => None,
    };
    Ok(RawMoreModel {
        name: Some(name.to_owned()),
        path: file,
        version: Some(version),
        workers: config.instances,
        max_queue: None,
        intra_op_threads: None,
        dynamic_batching,
        device,
        declared: Some(declared),
        features: None,
    })
}

/// The version served and its file: the newest the policy allows (Triton's default policy is the
/// newest one). A policy that asks for several serves the newest of them, said in the log.
fn version(name: &str, dir: &Path, config: &TritonConfig) -> anyhow::Result<(String, PathBuf)> {
    let filename = if config.default_model_filename.is_empty() { "model.onnx" } else { config.default_model_filename.as_str() };
    if filename.contains('/') || filename.starts_with('.') {
        bail!("{}: default_model_filename '{filename}' must be a file name in the version directory", dir.join("config.pbtxt").display());
    }
    // Version directories are named by a number as Triton writes it (`1`, not `01` or `+1`).
    let mut versions: Vec<u64> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir()))
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok().filter(|v| v.to_string() == n)))
        .filter(|v| *v > 0)
        .collect();
    versions.sort_unstable();
    let allowed: Vec<u64> = match &config.versions {
        VersionPolicy::Latest(n) => versions.iter().rev().take(*n as usize).copied().collect(),
        VersionPolicy::All => versions.iter().rev().copied().collect(),
        VersionPolicy::Specific(wanted) => versions.iter().rev().filter(|v| wanted.contains(&(**v as i64))).copied().collect(),
    };
    let Some(&newest) = allowed.first() else {
        bail!(
            "model '{name}' has no version directory its version_policy allows ({}): put the model at {}/1/{filename}",
            if versions.is_empty() { "it has none".to_owned() } else { format!("it has {versions:?}") },
            dir.display()
        );
    };
    if allowed.len() > 1 {
        tracing::warn!(model = %name, versions = ?allowed, serving = newest, "version_policy asks for several versions; modelship serves the newest (push the others to a registry to route between them)");
    }
    let file = dir.join(newest.to_string()).join(filename);
    if !file.is_file() {
        bail!("model '{name}' version {newest} has no {} (Triton's ONNX backend reads {filename} there)", file.display());
    }
    Ok((newest.to_string(), file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Models by name: their `config.pbtxt`, if any, and their version directories.
    type Models<'a> = &'a [(&'a str, Option<&'a str>, &'a [&'a str])];

    fn repository(models: Models<'_>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, config, versions) in models {
            let model = dir.path().join(name);
            std::fs::create_dir_all(&model).unwrap();
            if let Some(config) = config {
                std::fs::write(model.join("config.pbtxt"), config).unwrap();
            }
            for v in *versions {
                std::fs::create_dir_all(model.join(v)).unwrap();
                std::fs::write(model.join(v).join("model.onnx"), b"onnx").unwrap();
            }
        }
        dir
    }

    #[test]
    fn models_are_read_as_triton_reads_them() {
        let dir = repository(&[
            ("fraud", Some("platform: \"onnxruntime_onnx\" max_batch_size: 8 input [{name: \"x\" data_type: TYPE_FP32 dims: [30]}] dynamic_batching {max_queue_delay_microseconds: 200} instance_group [{count: 2 kind: KIND_CPU}]"), &["1", "3", "2"]),
            ("churn", None, &["7"]),
        ]);
        let models = read(dir.path()).unwrap();
        let summary: Vec<(Option<&str>, Option<&str>, Option<usize>)> = models.iter().map(|m| (m.name.as_deref(), m.version.as_deref(), m.workers)).collect();
        assert_eq!(summary, [(Some("churn"), Some("7"), None), (Some("fraud"), Some("3"), Some(2))]);
        let fraud = &models[1];
        assert!(fraud.path.ends_with("fraud/3/model.onnx"));
        assert_eq!(fraud.dynamic_batching, Some(RawBatching { max_batch_size: Some(8), max_queue_delay_microseconds: Some(200), preferred_batch_size: vec![] }));
        let declared = fraud.declared.as_ref().unwrap();
        assert_eq!(declared.inputs, [TensorSpec::new("x", DataType::Fp32, vec![-1, 30])]);
    }

    #[test]
    fn every_problem_is_named() {
        // (models, what the error must say)
        let cases: &[(Models<'_>, &str)] = &[
            (&[("a", Some("platform: \"tensorrt_plan\""), &["1"])], "export it to ONNX"),
            (&[("a", Some("name: \"b\""), &["1"])], "names the model 'b'"),
            (&[("a", None, &[])], "no version directory"),
            (&[("a", Some("version_policy: {specific: {versions: [4]}}"), &["1", "2"])], "it has [1, 2]"),
            (&[("a", Some("dynamic_batching {}"), &["1"])], "max_batch_size 0"),
            (&[("a", Some("max_batch_sise: 4"), &["1"])], "max_batch_sise"),
            (&[("a", Some("ensemble_scheduling {}"), &["1"]), ("b", Some("backend: \"python\""), &["1"])], "'b' runs on Triton's 'python'"),
            (&[], "holds no model"),
        ];
        for (models, expected) in cases {
            let dir = repository(models);
            let e = format!("{:#}", read(dir.path()).unwrap_err());
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }
}
