//! `modelship models ...`: the registry from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use modelship_registry::mlflow::{MlflowClient, MlflowVersion};
use modelship_registry::{
    human_size,
    AliasMove, GcOptions, GcReport, ModelRef, Progress, PushOutcome, PushRequest, Registry, RegistryConfig, VersionRecord,
};
use serde_json::json;

use crate::cli::{ImportSource, ModelsArgs, ModelsCommand, OutputFormat};
use crate::config::{Env, ProcessEnv};
use crate::registry_config::registry_root;

pub fn main(args: ModelsArgs) -> ExitCode {
    crate::run_command(run(args))
}

pub fn open_registry(flag: Option<std::path::PathBuf>, artifacts: Option<String>, env: &dyn Env) -> anyhow::Result<Registry> {
    let root = registry_root(flag, env);
    let artifacts = artifacts.or_else(|| env.get("MODELSHIP_ARTIFACTS"));
    Registry::open(&RegistryConfig { root: root.clone(), artifacts })
        .with_context(|| format!("cannot open the registry at {}", root.display()))
}

/// `models fetch`: one artifact by digest from a store, with no catalog, written atomically
/// (a temporary file beside `out`, renamed), so a half-written model is never at `out`.
async fn fetch(store: Option<String>, digest: &str, out: &std::path::Path, json_out: bool) -> anyhow::Result<()> {
    let Some(location) = store else {
        bail!("models fetch needs the artifact store: --artifacts s3://bucket/prefix (or a directory), or MODELSHIP_ARTIFACTS");
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        bail!("'{digest}' is not a digest: sha256: and 64 lowercase hex digits, the version's digest in `modelship models show REF --output json`");
    }
    if !location.starts_with("s3://") && !std::path::Path::new(&location).is_dir() {
        bail!("the artifact store {location} is not a directory (or an s3://bucket/prefix URL)");
    }
    let store = if location.starts_with("s3://") {
        modelship_registry::artifacts::ArtifactStore::open(&location, std::path::Path::new("."))?
    } else {
        modelship_registry::artifacts::ArtifactStore::local(std::path::Path::new(&location))?
    };
    let bar = Bar::new();
    let bytes = store.get(hex, &bar).await.with_context(|| format!("cannot fetch sha256:{hex} from {location}"))?;
    bar.clear();
    let tmp = out.with_file_name(format!(".{}.tmp", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    if json_out {
        print_json(&json!({"digest": format!("sha256:{hex}"), "bytes": bytes.len(), "file": out}));
    } else {
        println!("wrote sha256:{} ({}) to {} (digest verified)", short(hex), human_size(bytes.len() as u64), out.display());
    }
    Ok(())
}

/// Whether a model file is in a format that is converted (a pickle, joblib, XGBoost or LightGBM
/// model) rather than pushed as it is; one that is clearly no model is refused here, with the
/// way to export it.
fn convertible(file: &Path) -> anyhow::Result<bool> {
    use modelship_convert::format::Head;
    match crate::convert::file_head(file)? {
        // Not read here: the registry's push names what it is.
        None => Ok(false),
        Some((Head::Convertible(_), _)) => Ok(true),
        // Not ONNX after all: said as for any other format, with what is taken. (A large file
        // is left to the registry's own check, which reads it once.)
        Some((Head::MaybeOnnx, len)) if len <= 256 << 20 => match modelship_convert::format::sniff(&crate::convert::read_model_file(file)?) {
            Ok(_) => Ok(false),
            Err(e) => bail!("{} is {e}", file.display()),
        },
        Some((Head::MaybeOnnx, _)) => Ok(false),
        Some((Head::Refused(e), _)) => bail!("{} is {e}", file.display()),
    }
}

/// Pushes a converted model: the original file first, beside the artifacts by its digest, then
/// the ONNX version with the conversion's labels (where it came from, how it was proven).
async fn push_converted(registry: &Registry, mut request: PushRequest, original: bytes::Bytes, prepared: &modelship_convert::Prepared) -> anyhow::Result<PushOutcome> {
    let Some(conversion) = prepared.conversion() else {
        return Ok(registry.push_bytes(request, prepared.onnx().clone()).await?);
    };
    let stored = registry.put_original(original).await?;
    request.labels.extend(conversion.labels());
    request.labels.insert(modelship_registry::SOURCE_DIGEST_LABEL.to_owned(), stored);
    Ok(registry.push_bytes(request, prepared.onnx().clone()).await?)
}

/// Who made a change, for the alias history.
fn actor(env: &dyn Env) -> String {
    env.get("USER").map_or_else(|| "cli".to_owned(), |u| format!("cli:{u}"))
}

async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let env = ProcessEnv;
    let json_out = args.output == OutputFormat::Json;
    if let ModelsCommand::Fetch { digest, out } = &args.command {
        return fetch(args.artifacts.or_else(|| env.get("MODELSHIP_ARTIFACTS")), digest, out, json_out).await;
    }
    if let ModelsCommand::Ls { name, admin: Some(admin), token_file } = &args.command {
        return served(admin, token_file.clone(), name.as_deref(), json_out, &env);
    }
    let registry = open_registry(args.registry, args.artifacts, &env)?;
    match args.command {
        ModelsCommand::Push { name, file, version, metrics, labels, description, max_size, warmup_sample, convert } => {
            let registry = registry.with_max_artifact_bytes(parse_bytes("--max-size", &max_size)?);
            let mut labels = parse_pairs(&labels, "--label")?;
            if let Some(path) = &warmup_sample {
                // Stored first: a version never names a sample that is not there.
                let bytes = read_warmup_sample(path)?;
                labels.insert(modelship_registry::WARMUP_SAMPLE_LABEL.to_owned(), registry.put_warmup_sample(bytes.into()).await?);
            }
            let request = PushRequest {
                name,
                version,
                metrics: parse_pairs(&metrics, "--metric")?
                    .into_iter()
                    .map(|(k, v)| {
                        v.parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite())
                            .map(|x| (k.clone(), x))
                            .with_context(|| format!("--metric {k}={v}: the value must be a finite number"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                labels,
                description,
                source: None,
            };
            let outcome = match convertible(&file)? {
                // Another format: converted and proven equal first, the original kept beside it.
                true => {
                    let original = crate::convert::read_model_file(&file)?;
                    let backend = crate::convert::backend(None)?;
                    let prepared = crate::convert::prepare_bytes(&file, original.clone(), &convert, backend.as_ref(), &env, &crate::convert::say).await?;
                    let mut request = request;
                    request.source = Some(file.display().to_string());
                    push_converted(&registry, request, original, &prepared).await?
                }
                false => {
                    let bar = Bar::new();
                    let outcome = registry.push(request, &file, &bar).await?;
                    bar.clear();
                    outcome
                }
            };
            report_push(outcome, json_out, "pushed");
        }
        ModelsCommand::Ls { name, .. } => {
            let records = registry.list(name.as_deref()).await?;
            if json_out {
                print_json(&records);
            } else if records.is_empty() {
                println!("the registry at {} is empty; add a model with `modelship models push NAME FILE --version V`", registry.root().display());
            } else {
                let mut table = table(&["NAME", "VERSION", "ALIASES", "SIZE", "CREATED", "METRICS", "DIGEST"]);
                for r in &records {
                    table.add_row(vec![
                        r.name.clone(),
                        r.version.clone(),
                        r.aliases.join(", "),
                        human_size(r.size),
                        time(r.created_ms),
                        metrics(&r.metrics),
                        short(&r.digest).to_owned(),
                    ]);
                }
                println!("{table}");
            }
        }
        ModelsCommand::Show { reference } => {
            let record = registry.resolve(&ModelRef::parse(&reference)?).await?;
            if json_out {
                print_json(&record);
            } else {
                show(&record, registry.artifact_location());
            }
        }
        ModelsCommand::Pull { reference, out } => {
            let record = registry.resolve(&ModelRef::parse(&reference)?).await?;
            let bar = Bar::new();
            registry.pull(&record, &out, &bar).await?;
            bar.clear();
            if json_out {
                print_json(&json!({"pulled": format!("{}:{}", record.name, record.version), "digest": record.digest, "file": out}));
            } else {
                println!("wrote {}:{} to {} (sha256:{} verified)", record.name, record.version, out.display(), short(&record.digest));
            }
        }
        ModelsCommand::Fetch { .. } => unreachable!("fetched above, without a catalog"),
        ModelsCommand::Rm { reference, force } => {
            let ModelRef::Version(name, version) = ModelRef::parse(&reference)? else {
                bail!("'{reference}': name the version to remove as NAME:VERSION");
            };
            registry.remove(&name, &version, force, &actor(&env)).await?;
            if json_out {
                print_json(&json!({"removed": format!("{name}:{version}")}));
            } else {
                println!("removed {name}:{version}");
            }
        }
        ModelsCommand::Alias { name, alias, version, force } => {
            if !force {
                let record = registry.resolve(&ModelRef::Version(name.clone(), version.clone())).await?;
                if record.failed_validation() {
                    bail!(
                        "{name}:{version} failed validation (validate=fail, recorded by `modelship validate --record`; `modelship models show {name}:{version}` shows why); point {alias} at it anyway with --force"
                    );
                }
            }
            let moved = registry.set_alias(&name, &alias, &version, &actor(&env)).await?;
            if json_out {
                print_json(&json!({"alias": alias, "name": name, "version": version, "move": moved}));
            } else {
                match moved {
                    Some(m) => match m.previous {
                        Some(p) => println!("{name}@{alias}: {p} -> {version}"),
                        None => println!("{name}@{alias} -> {version}"),
                    },
                    None => println!("{name}@{alias} already points at {version}; nothing changed"),
                }
            }
        }
        ModelsCommand::Import(ImportSource::Mlflow { tracking_uri, name, version, as_name, max_size, convert }) => {
            let max_size = parse_bytes("--max-size", &max_size)?;
            let registry = registry.with_max_artifact_bytes(max_size);
            let uri = tracking_uri
                .or_else(|| env.get("MLFLOW_TRACKING_URI"))
                .context("no MLflow server given: pass --tracking-uri URL or set MLFLOW_TRACKING_URI")?;
            let basic = env.get("MLFLOW_TRACKING_USERNAME").zip(env.get("MLFLOW_TRACKING_PASSWORD"));
            let client = MlflowClient::new(&uri, env.get("MLFLOW_TRACKING_TOKEN"), basic)?.with_max_bytes(max_size);
            let bar = Bar::new();
            let wanted = MlflowVersion::parse(&version);
            let imported = tokio::task::block_in_place(|| client.fetch(&name, &wanted, &bar))
                .with_context(|| format!("cannot import {name} {version} from {uri}"))?;
            bar.clear();
            let mut request = imported.request;
            if let Some(local) = as_name {
                request.name = local;
            }
            let path = PathBuf::from(format!("mlflow:{name}/{}/{}", imported.mlflow_version, imported.file));
            let head = &imported.bytes[..imported.bytes.len().min(modelship_convert::format::HEAD)];
            let outcome = match modelship_convert::format::classify_head(head, imported.bytes.len() as u64) {
                modelship_convert::format::Head::MaybeOnnx => registry.push_bytes(request, imported.bytes).await?,
                _ => {
                    let backend = crate::convert::backend(None)?;
                    let mut convert = convert;
                    let declared = imported.declared_sklearn.clone();
                    convert.declared_sklearn = declared;
                    let prepared = crate::convert::prepare_bytes(&path, imported.bytes.clone(), &convert, backend.as_ref(), &env, &crate::convert::say).await?;
                    push_converted(&registry, request, imported.bytes, &prepared).await?
                }
            };
            report_push(outcome, json_out, &format!("imported MLflow {name} version {} as", imported.mlflow_version));
        }
        ModelsCommand::Gc { older_than, unreferenced, dry_run } => {
            let older_than = humantime::parse_duration(&older_than)
                .with_context(|| format!("--older-than {older_than}: give a duration like 1h, 30m or 0s"))?;
            let report = registry.gc(GcOptions { older_than, unreferenced, dry_run }).await?;
            if json_out {
                let mut value = serde_json::to_value(&report)?;
                value["files"] = json!(report.partial.len() + report.unreferenced.len());
                value["bytes"] = json!(report.bytes());
                print_json(&value);
            } else {
                print_gc(&report, registry.artifact_location());
            }
        }
        ModelsCommand::History { name } => {
            let moves = registry.history(&name).await?;
            if json_out {
                print_json(&moves);
            } else if moves.is_empty() {
                println!("no alias of {name} has moved yet; set one with `modelship models alias {name} production VERSION`");
            } else {
                let mut table = table(&["#", "TIME", "ALIAS", "FROM", "TO", "BY"]);
                for AliasMove { id, alias, version, previous, at_ms, actor, .. } in moves {
                    table.add_row(vec![
                        id.to_string(),
                        time(at_ms),
                        alias,
                        previous.unwrap_or_else(|| "-".to_owned()),
                        version.unwrap_or_else(|| "(removed)".to_owned()),
                        actor,
                    ]);
                }
                println!("{table}");
            }
        }
    }
    Ok(())
}

/// `models gc` for people: each file, then the totals and what was left and why.
fn print_gc(report: &GcReport, location: &str) {
    let files = report.partial.len() + report.unreferenced.len();
    let verb = if report.dry_run { "would remove" } else { "removed" };
    for (kind, list) in [("partial", &report.partial), ("unreferenced", &report.unreferenced)] {
        for f in list {
            println!("{verb} {kind} {} ({})", f.path.display(), human_size(f.bytes));
        }
    }
    if files == 0 {
        println!("nothing to remove in {location}");
    } else {
        let plural = if files == 1 { "" } else { "s" };
        println!("{verb} {files} file{plural}, {} ({} partial, {} unreferenced)", human_size(report.bytes()), report.partial.len(), report.unreferenced.len());
    }
    if report.kept_young > 0 {
        println!("kept {} file(s) younger than --older-than (a push may still be writing them)", report.kept_young);
    }
    if report.kept_unreferenced > 0 {
        println!("kept {} complete artifact(s) no version references; remove them with --unreferenced", report.kept_unreferenced);
    }
}

/// A size flag (`4Gi`, `500Mi`, bytes), or what is wrong with it.
fn parse_bytes(flag: &'static str, given: &str) -> anyhow::Result<u64> {
    Ok(modelship_validate::limit::parse_bytes(flag, given)?)
}

/// Prints what a push or an import did: `{what} NAME:VERSION (sha256:..., size)` for a new version.
fn report_push(outcome: PushOutcome, json_out: bool, what: &str) {
    let (status, record) = match outcome {
        PushOutcome::Created(r) => ("created", r),
        PushOutcome::Unchanged(r) => ("unchanged", r),
    };
    if json_out {
        print_json(&json!({"status": status, "version": record}));
    } else if status == "created" {
        println!("{what} {}:{} (sha256:{}, {})", record.name, record.version, short(&record.digest), human_size(record.size));
    } else {
        println!("{}:{} is already registered with identical content; nothing changed", record.name, record.version);
    }
}

fn parse_pairs(pairs: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => bail!("{flag} '{p}': expected KEY=VALUE"),
        })
        .collect()
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// `models ls --admin URL`: what a running server serves, one row a model.
fn served(admin: &str, token_file: Option<PathBuf>, only: Option<&str>, json_out: bool, env: &dyn Env) -> anyhow::Result<()> {
    let admin = crate::traffic::Admin::connect(Some(admin.to_owned()), token_file, env)?;
    let mut served: modelship_protocol::admin::ServedModels = admin.get("/models")?;
    if let Some(only) = only {
        served.models.retain(|m| m.name == only);
        if served.models.is_empty() {
            bail!("the server does not serve '{only}'; `modelship models ls --admin URL` lists what it serves");
        }
    }
    if json_out {
        print_json(&served);
        return Ok(());
    }
    let mut rows = table(&["NAME", "STATE", "STABLE", "LOADED", "MEMORY", "REVISION", "ROLLOUT"]);
    for m in &served.models {
        // Nothing loaded (loading, failed): no figure, rather than 0 B.
        let memory: Option<u64> = if m.versions.is_empty() { None } else { m.versions.iter().map(|v| v.memory_bytes).sum() };
        rows.add_row(vec![
            if m.configured { m.name.clone() } else { format!("{} (repository)", m.name) },
            m.error.as_ref().map_or_else(|| m.state.clone(), |e| format!("{}: {e}", m.state)),
            m.stable.clone().unwrap_or_else(|| "-".to_owned()),
            m.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", "),
            memory.map_or_else(|| "-".to_owned(), human_size),
            m.revision.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            m.rollout.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    println!("{rows}");
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    // Not a terminal (a pipe, a CI log): wrapped at 100 columns, never padded to the widest
    // value (`--output json` is the machine's form).
    if table.width().is_none() {
        table.set_width(100);
    }
    if header.iter().any(|h| !h.is_empty()) {
        table.set_header(header.to_vec());
    }
    table
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn show(r: &VersionRecord, location: &str) {
    let mut about = table(&["", ""]);
    let rows: Vec<(&str, String)> = vec![
        ("name", r.name.clone()),
        ("version", r.version.clone()),
        ("aliases", r.aliases.join(", ")),
        ("digest", format!("sha256:{}", r.digest)),
        ("size", human_size(r.size)),
        ("created", time(r.created_ms)),
        ("description", r.description.clone().unwrap_or_default()),
        ("source", r.source.clone().unwrap_or_default()),
        // One a line: `validate --record` adds many.
        ("metrics", r.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")),
        ("labels", r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")),
        ("producer", r.onnx.producer.clone().unwrap_or_default()),
        ("opsets", r.onnx.opsets.iter().map(|o| format!("{} {}", o.domain, o.version)).collect::<Vec<_>>().join(", ")),
        ("ir version", r.onnx.ir_version.to_string()),
        ("artifacts", location.to_owned()),
    ];
    for (k, v) in rows {
        about.add_row(vec![k.to_owned(), v]);
    }
    println!("{about}");
    let mut io = table(&["", "NAME", "DATATYPE", "SHAPE"]);
    for (kind, list) in [("input", &r.onnx.inputs), ("output", &r.onnx.outputs)] {
        for t in list {
            io.add_row(vec![kind.to_owned(), t.name.clone(), t.datatype.clone(), format!("{:?}", t.shape)]);
        }
    }
    println!("{io}");
}

/// A progress bar on standard error, drawn only when it is a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::hidden();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_style(
            ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Bar(bar)
    }

    fn clear(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        self.0.set_message(phase.to_owned());
        self.0.set_length(total);
        self.0.set_position(0);
        // Draw now: a transfer may end before the first periodic refresh.
        self.0.tick();
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        // Show the completed bar once before it is cleared.
        self.0.tick();
    }
}

/// A warm-up sample file, checked: a regular file of at most 16 MiB holding a V2 inference
/// request with at least one input (whether its inputs fit the model, the server's warm-up tells).
fn read_warmup_sample(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read the warm-up sample {}", path.display()))?;
    if !meta.is_file() || meta.len() > modelship_registry::MAX_WARMUP_SAMPLE_BYTES {
        anyhow::bail!(
            "the warm-up sample {} must be a regular file of at most {} bytes (a few rows are enough)",
            path.display(),
            modelship_registry::MAX_WARMUP_SAMPLE_BYTES
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the warm-up sample {}", path.display()))?;
    modelship_server::WarmUpSample::from_v2_json(&path.display().to_string(), &bytes).map_err(|e| anyhow::anyhow!(e))?;
    Ok(bytes)
}
